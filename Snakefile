# ConCluGen reproduction: download -> manifest -> probe -> ... -> tables.
# `snakemake --profile slurm all` runs the paper config (config/config.yaml);
# `snakemake --configfile config/demo.yaml ...` runs the embedded demo instead (not merged).
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")

# The package of this checkout; jobs import it from the venv (`pip install -e .`).
sys.path.insert(0, workflow.basedir)

from conclugen.config import ConfigError, load_checked
from conclugen.weights import OFFLINE_ENV

if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


try:
    load_checked(config, Path(workflow.basedir) / "config" / "schema.yaml")
except ConfigError as error:
    raise WorkflowError(str(error)) from None

# Every job reads weights from the caches only, with the hubs offline (set after the config
# check, which looks into the caches only when the user set HF_HUB_OFFLINE): `make weights`
# fills them beforehand (rules/weights.smk, conclugen.weights).
os.environ.update(OFFLINE_ENV)


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/weights.smk"
include: "rules/manifest.smk"
include: "rules/faces.smk"
include: "rules/subtitles.smk"
include: "rules/features.smk"
include: "rules/pretrain.smk"
include: "rules/downstream.smk"
include: "rules/tables.smk"


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
        report_figures(),
