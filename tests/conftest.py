"""Shared fixtures. Importing this module blocks network access beyond loopback for the test
process and, through PYTHONPATH, for every Python subprocess (Snakemake runs and their jobs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
TINY_SIZES = {
    "voxceleb2": {"identities": 2, "videos_per_identity": 2, "clips_per_video": 2, "parts": 2},
    "caer": {"train": 2, "validation": 1, "test": 1},
    "meld": {"train": 2, "dev": 1, "test": 1},
    "mosei": {"videos": 5, "segments_per_video": [2, 3]},
}


def tiny_config() -> dict:
    """The demo config at the tiny sizes the workflow tests run (a few minutes on 2 cores)."""
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config["exclusions"] = str(ROOT / "config" / "exclusions.yaml")
    config["max_failure_fraction"] = 0.6
    for dataset in config["datasets"].values():
        dataset["shards"] = 2  # the demo has one: the tests cover sharding and the merge
    config["lookalike"]["sizes"] = TINY_SIZES
    config["lookalike"]["bad_fraction"] = 0.1
    config["faces"]["detect_every"] = 8
    config["features"]["crop_size"] = 64
    # The tiny VoxCeleb2 has too few clips to train on; MELD's train split stands in.
    config["pretrain"].update(dataset="meld", methods=["conclugen", "multicont_wo_audio"])
    config["pretrain"]["hparams"].update(
        epochs=3, cluster_start_epoch=1, eval_samples=2, num_clusters=3
    )
    config["downstream"].update(datasets=["caer", "mosei"], seeds=2)
    config["downstream"]["regression"]["loss_methods"] = []  # the pretext table's jobs only
    config["downstream"]["hparams"].update(max_epochs=30, patience=5)
    return config


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


@pytest.fixture(scope="module")
def tiny_backbones(tmp_path_factory):
    """Small ResNets (2D, 3D) of the real architectures with look-alike weights."""
    from conclugen import backbones
    from conclugen.lookalike import weights as lookalike_weights

    root = tmp_path_factory.mktemp("weights")
    widths = (8, 16, 16, 32)
    lookalike_weights.write_torchvision_resnet(root / "r2d.pth", depth=18, widths=widths)
    lookalike_weights.write_hara_resnet3d(root / "r3d.pth", depth=18, widths=widths,
                                          packaging="hara2020")  # fmt: skip
    return backbones.load_resnet2d(str(root / "r2d.pth")), backbones.load_resnet3d(
        str(root / "r3d.pth")
    )
