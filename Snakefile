# ConCluGen reproduction: download -> manifest -> probe -> ... -> tables.
# `snakemake --profile slurm all` runs the paper config (config/config.yaml);
# `snakemake --configfile config/demo.yaml ...` runs the embedded demo instead (not merged).
# Config files given with --configfile replace config/config.yaml, so each set of them must be
# a whole config: one with only a few settings (your data's paths) is refused, with the command
# that reads it on top of the paper config, `--configfile config/config.yaml my_paths.yaml`.
# Relative paths in the config are the working directory's (`-d`), except `exclusions`, which
# are the checkout's (conclugen.config). Nothing in the DAG names the checkout, so a moved
# checkout, or another one, reruns nothing.
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import min_version

min_version("9.0")

# The package of this checkout; jobs import it from the venv (`pip install -e .`).
sys.path.insert(0, workflow.basedir)

from conclugen.config import (
    ConfigError,
    check_config,
    missing_message,
    needed_missing,
    overlay_problem,
)
from conclugen.weights import OFFLINE_ENV

CHECKOUT = Path(workflow.basedir)

if not workflow.overwrite_configfiles:

    configfile: CHECKOUT / "config" / "config.yaml"

else:
    problem = overlay_problem(
        config, CHECKOUT / "config" / "config.yaml", workflow.overwrite_configfiles
    )
    if problem:
        raise WorkflowError(problem)


try:
    MISSING_INPUTS = check_config(config, CHECKOUT / "config" / "schema.yaml", CHECKOUT)
except ConfigError as error:
    raise WorkflowError(str(error)) from None

# Missing data or weights do not stop planning (-n, --lint, --list-rules, --dag run no hooks);
# a run is refused before its first job when one of its jobs reads them (onstart, below).
if MISSING_INPUTS and workflow.is_main_process:
    logger.warning(missing_message(MISSING_INPUTS, planning=True))


onstart:
    needed = needed_missing(
        MISSING_INPUTS,
        (
            (job.rule.name, job.wildcards_dict)
            for job in workflow.dag.needrun_jobs()
        ),
    )
    if needed:
        raise WorkflowError(missing_message(needed))


# Every job reads weights from the caches only, with the hubs offline (set after the config
# check, which looks into the caches only when the user set HF_HUB_OFFLINE): `make weights`
# fills them beforehand (rules/weights.smk, conclugen.weights).
os.environ.update(OFFLINE_ENV)


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/lookalike.smk"
include: "rules/download.smk"
include: "rules/weights.smk"
include: "rules/manifest.smk"
include: "rules/faces.smk"
include: "rules/subtitles.smk"
include: "rules/features.smk"
include: "rules/pretrain.smk"
include: "rules/downstream.smk"
include: "rules/export.smk"
include: "rules/tables.smk"
include: "rules/figures.smk"


# Jobs Snakemake runs itself instead of submitting them (config `localrules`): under a cluster
# profile, on the login node, which has internet (download, weights) and no queue to wait in.
workflow.localrules(*config["localrules"])


rule all:
    default_target: True
    input:
        expand("results/{dataset}/manifest.parquet", dataset=DATASETS),
        expand("results/{dataset}/failures.tsv", dataset=DATASETS),
        expand("results/{dataset}/dataset_stats.html", dataset=DATASETS),
        expand("results/{dataset}/faces/preview.png", dataset=FACE_DATASETS),
        expand("results/{dataset}/features.zarr", dataset=DATASETS),
        expand("results/pretrain/{method}/model.pt", method=PRETRAIN["methods"]),
        "results/tables/tables.html",
        "results/report/front_page.html",
        report_figures(),
        regression_tables(),
        EXPORTS,
