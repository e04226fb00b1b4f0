"""The demo workflow (tiny look-alikes) through `--profile slurm` on a real one-node SLURM
cluster (tests/slurm_cluster.py): every job really submitted, a rerun submits nothing, a
changed pretraining parameter resubmits only what depends on it, and a run killed mid-way
(Snakemake and a running job, both SIGKILLed) resumes, as the README says, to the same outputs.

The tests build on each other in file order, on one working directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import ROOT, SNAKEMAKE, tiny_config
from tests.slurm_cluster import LocalSlurm

# The cluster has no accounting database: query job states with squeue (profile comment).
CLUSTER_ARGS = [
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "2",
]
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")
RUN_ID = re.compile(r"SLURM run ID: (\S+)")
pytestmark = pytest.mark.timeout(1800)  # the first run alone takes several minutes


@pytest.fixture(scope="module")
def cluster():
    slurm = LocalSlurm()
    slurm.start()
    yield slurm
    slurm.stop()


def slurm_command(workdir, cfg, *extra) -> list[str]:
    """The README's cluster command, run in ``workdir``, plus this cluster's status query."""
    return [
        *SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
        "--profile", str(ROOT / "slurm"), *CLUSTER_ARGS, *extra, "all", "--configfile", str(cfg),
    ]  # fmt: skip


def run(workdir, cfg, *extra, timeout=1800) -> str:
    proc = subprocess.run(
        slurm_command(workdir, cfg, *extra), capture_output=True, text=True, timeout=timeout
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return log


def submitted_rules(cluster, log: str) -> list[str]:
    """The rule of each SLURM job this run submitted (the plugin's job comment names it)."""
    ids = {slurm_id for _, slurm_id in SUBMITTED.findall(log)}
    jobs = [j for j in cluster.jobs() if j["id"] in ids]
    assert len(jobs) == len(ids), "a submitted job is missing from squeue"
    return [re.match(r"rule_(.+?)(?:_wildcards_.*)?$", j["comment"]).group(1) for j in jobs]


def outputs(workdir) -> dict:
    """What the workflow produced that a resumed run must reproduce exactly."""
    res = workdir / "results"
    out = {p.name: p.read_text() for p in sorted((res / "tables").glob("table*.csv"))}
    for runs in sorted((res / "downstream").glob("*/*/runs.csv")):
        out[str(runs.relative_to(res))] = runs.read_text()
    for model in sorted((res / "pretrain").glob("*/model.pt")):
        state = torch.load(model, map_location="cpu", weights_only=True)["state_dict"]
        out[str(model.relative_to(res))] = {k: v.clone() for k, v in state.items()}
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, dict):
            for name, tensor in value.items():
                assert torch.equal(tensor, b[key][name]), f"{key}: {name}"
        else:
            assert value == b[key], key


def config(workdir, name, **pretrain_hparams):
    cfg = tiny_config()
    for dataset in cfg["datasets"].values():
        dataset["shards"] = 1  # fewer jobs: test_workflow covers sharding
    # and label efficiency, the continuous labels and CMU-MOSEI, whose jobs are CAER's rules
    # again (each SLURM job costs seconds of polling)
    cfg["downstream"]["label_efficiency"]["datasets"] = []
    cfg["downstream"]["regression"]["datasets"] = []
    del cfg["datasets"]["mosei"]
    cfg["downstream"]["datasets"] = ["caer"]
    # Pretraining long enough to be killed mid-way: the kill comes 5 epochs in, and an epoch of
    # the tiny set takes ~0.03-0.1 s (checkpoint included), so seconds are left after it.
    cfg["pretrain"]["hparams"].update(dict(epochs=300) | pretrain_hparams)
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def first_run(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm")
    cfg = config(workdir, "tiny")
    log = run(workdir, cfg)
    return workdir, cfg, log, outputs(workdir)


def test_every_job_is_a_slurm_job(cluster, first_run):
    workdir, _, log, _ = first_run
    rules = submitted_rules(cluster, log)
    planned = re.findall(r"^rule (\w+):$", log, re.M)  # every job but the local target `all`
    assert len(rules) == len(planned) >= 40 and sorted(rules) == sorted(planned)
    run_id = RUN_ID.search(log).group(1)
    jobs = [j for j in cluster.jobs() if j["name"] == run_id]
    assert len(jobs) == len(rules) and all(j["state"] == "COMPLETED" for j in jobs)
    gpu_jobs = {j["comment"].split("_wildcards_")[0] for j in jobs if "gpu" in j["gres"]}
    assert {"rule_features", "rule_pretrain", "rule_downstream"} <= gpu_jobs
    assert "rule_manifest" not in gpu_jobs
    assert (workdir / "results" / "tables" / "headline.md").exists()
    slurm_logs = list((workdir / "results" / "logs" / "slurm").rglob("*.log"))
    assert len(slurm_logs) == len(rules)  # the profile's slurm-logdir


def test_a_second_run_submits_nothing(cluster, first_run):
    workdir, cfg, _, _ = first_run
    log = run(workdir, cfg)
    assert not SUBMITTED.search(log) and "Nothing to be done" in log


def test_a_pretraining_change_resubmits_only_what_depends_on_it(cluster, first_run):
    workdir, _, _, _ = first_run
    changed = config(workdir, "fewer-epochs", epochs=2)
    log = run(workdir, changed)
    rules = set(submitted_rules(cluster, log))
    assert {"pretrain", "downstream"} <= rules
    assert rules <= {"pretrain", "downstream", "embedding_figure"}
    assert "localrule tables:" in log  # light rules run on the submitting host (localrules)


def test_a_killed_run_resumes_to_the_same_outputs(cluster, first_run):
    """Back to the first config after the change above: pretraining and downstream rerun. Kill
    Snakemake and the running pretraining job, then follow the README: cancel the run's other
    jobs, unlock, rerun. The outputs match the first, uninterrupted run's."""
    workdir, cfg, _, reference = first_run
    log = workdir / "results/logs/pretrain/conclugen.log"
    log.unlink()
    proc = subprocess.Popen(
        slurm_command(workdir, cfg), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while not (log.exists() and "epoch 5/" in log.read_text()):  # a few epochs in
        assert time.monotonic() < deadline and proc.poll() is None, "pretraining never ran"
        time.sleep(0.1)
    victim = next(
        j for j in cluster.jobs()
        if j["state"] == "RUNNING" and j["comment"] == "rule_pretrain_wildcards_conclugen"
    )  # fmt: skip
    os.killpg(proc.pid, signal.SIGKILL)
    subprocess.run(["scancel", "--full", "--signal=KILL", victim["id"]], check=True)
    proc.wait()
    assert not (workdir / "results/pretrain/conclugen/model.pt").exists()
    # README, "Resuming": cancel the killed run's jobs (its run ID names them), unlock, rerun.
    subprocess.run(["scancel", f"--name={victim['name']}"], check=True)
    run(workdir, cfg, "--unlock")
    run(workdir, cfg)
    assert_same(outputs(workdir), reference)
    runs = pd.read_csv(workdir / "results/downstream/caer/conclugen/runs.csv")
    assert len(runs) > 0
