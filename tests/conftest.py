"""Shared fixtures. Importing this module blocks network access beyond loopback for the test
process and, through PYTHONPATH, for every Python subprocess (Snakemake runs and their jobs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NETGUARD = Path(__file__).parent / "netguard"

os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(NETGUARD), str(ROOT), os.environ.get("PYTHONPATH")) if p
)
# Libraries that would reach for a hub must stay offline.
os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
sys.path.insert(0, str(NETGUARD))
import sitecustomize  # noqa: E402,F401  (installs the guard in this process)

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def run_snakemake(args: list[str], cwd: Path, timeout: float = 900, check: bool = True):
    """Run this checkout's Snakefile in ``cwd``; return the completed process."""
    cmd = [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(cwd), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
