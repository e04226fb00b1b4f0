"""The profiles parse and set what README "On a SLURM cluster" says they set."""

import yaml

from tests.conftest import ROOT, run_snakemake, tiny_config


def test_workstation_profile_runs_gpu_jobs_one_per_gpu(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    args = ["--profile", str(ROOT / "workstation"), "-n", "all", "--configfile", str(cfg)]
    out = run_snakemake(args, tmp_path)
    log = out.stdout + out.stderr
    assert "Using profile" in log and "workstation" in log
    profile = yaml.safe_load((ROOT / "workstation" / "profile.yaml").read_text())
    assert profile["resources"] == ["gpu=1"]  # at most one GPU job at a time, per GPU
    for rule in ("features", "features_video"):
        job = log[log.index(f"rule {rule}:") :].split("\n\n")[0]
        assert "gpu=1" in job  # device auto: a GPU stage asks for one


def test_slurm_profile_sets_what_the_readme_promises():
    profile = yaml.safe_load((ROOT / "slurm" / "profile.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["rerun-incomplete"] and profile["keep-going"]
    assert profile["retries"] >= 1 and profile["latency-wait"] >= 60
    assert profile["slurm-logdir"] == "results/logs/slurm"
