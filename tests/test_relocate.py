"""The workflow runs in any working directory (`-d`) and does not depend on where the checkout is:
no path in the DAG names the checkout, so a moved checkout reruns nothing."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, SNAKEMAKE, run_snakemake, tiny_config

# The cheapest finished stage: the tiny look-alike VoxCeleb2 (8 clips), downloaded and listed.
TARGET = "results/voxceleb2/manifest.parquet"
NOTHING_TO_DO = "Nothing to be done"


def snakemake(checkout, workdir, cfg, *args):
    """Snakemake with ``checkout``'s Snakefile in ``workdir``; its log (stdout and stderr)."""
    cmd = [*SNAKEMAKE, "-s", str(checkout / "Snakefile"), "-d", str(workdir), *args]
    proc = subprocess.run(
        [*cmd, "--configfile", str(cfg)], capture_output=True, text=True, timeout=600
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return log


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A working directory outside the checkout, with a config of relative paths (the shipped
    exclusions list, the look-alike root), after a run of TARGET."""
    top = tmp_path_factory.mktemp("relocate")
    config = tiny_config()
    config["exclusions"] = "config/exclusions.yaml"  # the checkout's, not the working directory's
    assert config["lookalike"]["root"] == "results/lookalike"  # the working directory's
    cfg = top / "my.yaml"
    cfg.write_text(yaml.safe_dump(config))
    workdir = top / "run"
    snakemake(ROOT, workdir, cfg, "--cores", "2", TARGET)
    return top, workdir, cfg


def test_a_run_in_another_directory_writes_there(finished):
    _, workdir, cfg = finished
    assert (workdir / TARGET).is_file()
    assert (workdir / "results" / "lookalike" / "voxceleb2" / "truth.parquet").is_file()
    assert NOTHING_TO_DO in snakemake(ROOT, workdir, cfg, "-n", TARGET)


def copy_checkout(dest):
    """The checkout's files (committed or not, less the ignored ones) copied to ``dest`` with
    their times, as `mv` or `cp -a` keep them."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():  # (a file deleted but not yet committed is listed too)
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def test_a_moved_checkout_reruns_nothing(finished):
    top, workdir, cfg = finished
    moved = copy_checkout(top / "moved-checkout")
    log = snakemake(moved, workdir, cfg, "-n", TARGET)
    assert f"Base directory: {moved}" in log
    assert NOTHING_TO_DO in log, log[-3000:]


def test_editing_the_lookalike_generator_regenerates_the_lookalikes(finished):
    """The generator is the modules the rule's script imports: their content is a param of rule
    lookalike (Snakemake's code trigger covers only the script itself)."""
    top, workdir, cfg = finished
    edited = copy_checkout(top / "edited-checkout")
    with open(edited / "conclugen" / "lookalike" / "render.py", "a") as f:
        f.write("# an edit\n")
    log = snakemake(edited, workdir, cfg, "-n", TARGET)
    assert "output: results/lookalike/voxceleb2/truth.parquet" in log
    assert "Params have changed since last execution" in log


def test_the_plan_names_no_path_in_the_checkout(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    proc = run_snakemake(["--configfile", str(cfg), "-n", "all"], tmp_path / "run")
    jobs = [line for line in proc.stdout.splitlines() if line.startswith("    ")]
    assert any(line.startswith("    input: ") for line in jobs)
    assert not [line for line in jobs if str(ROOT) in line]


def test_a_new_copy_of_a_users_archive_reruns_its_download(finished):
    """A ``path`` source's files (every part of a glob) are the download's inputs: a part
    replaced by other bytes reruns the download; a part merely touched does not."""
    top, workdir, _ = finished
    user = top / "my-data"
    user.mkdir()
    for part in (workdir / "results" / "lookalike" / "voxceleb2").glob("vox2_*_parta?"):
        shutil.copy2(part, user / part.name)
    config = tiny_config()
    config["exclusions"] = "config/exclusions.yaml"
    for archive in config["datasets"]["voxceleb2"]["source"]["archives"]:
        archive["path"] = str(user / Path(archive["path"]).name)  # the same glob, elsewhere
    cfg = top / "mine.yaml"
    cfg.write_text(yaml.safe_dump(config))
    snakemake(ROOT, workdir, cfg, "--cores", "2", TARGET)
    assert NOTHING_TO_DO in snakemake(ROOT, workdir, cfg, "-n", TARGET)
    part = sorted(user.glob("vox2_dev_aac_parta?"))[-1]
    later = os.stat(workdir / "results" / "voxceleb2" / "raw").st_mtime + 10
    os.utime(part, (later, later))  # the same bytes, newer: Snakemake's checksum sees no change
    assert NOTHING_TO_DO in snakemake(ROOT, workdir, cfg, "-n", TARGET)
    with open(part, "ab") as f:  # other bytes (only planned here, never extracted)
        f.write(b"\0")
    os.utime(part, (later + 10, later + 10))
    log = snakemake(ROOT, workdir, cfg, "-n", TARGET)
    assert "output: results/voxceleb2/raw" in log, log[-3000:]
    assert "Updated input files" in log and str(part) in log
