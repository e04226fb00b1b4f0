"""claim_gpu: concurrent jobs on one machine each get a GPU of their own."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conclugen.torchutil import claim_gpu, visible_gpus

CLAIM = """
import os, sys, time
from conclugen.torchutil import claim_gpu
gpu = claim_gpu(1, candidates=["0", "1"], lock_dir=sys.argv[1])
print(gpu, os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
time.sleep(float(sys.argv[2]))
"""


def claimer(lock_dir, hold: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLAIM, str(lock_dir), str(hold)], stdout=subprocess.PIPE, text=True
    )


def test_concurrent_jobs_get_different_gpus_and_a_third_waits(tmp_path):
    first, second = claimer(tmp_path, 30), claimer(tmp_path, 30)
    claimed = [first.stdout.readline().split(), second.stdout.readline().split()]
    assert sorted(gpu for gpu, _ in claimed) == ["0", "1"]
    assert all(gpu == visible for gpu, visible in claimed)  # the job sees only its own GPU
    third = claimer(tmp_path, 0)
    time.sleep(2.0)
    assert third.poll() is None  # both GPUs held: it waits
    first.kill()  # SIGKILL: the kernel drops its lock
    first.wait()
    gpu, _ = third.stdout.readline().split()
    assert gpu == claimed[0][0]
    assert third.wait(timeout=30) == 0
    second.kill()
    second.wait()


def test_nothing_to_choose(tmp_path, monkeypatch):
    assert claim_gpu(0, candidates=["0", "1"], lock_dir=tmp_path) is None  # a CPU job
    assert claim_gpu(1, candidates=[], lock_dir=tmp_path) is None  # no GPU here
    assert claim_gpu(1, candidates=["3"], lock_dir=tmp_path) == "3"  # SLURM gave this one
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="one GPU"):
        claim_gpu(2, candidates=["0", "1"], lock_dir=tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


# ------------------------------------------------------------------------------------------------
# Precision: bf16 where the hardware multiplies it natively


@pytest.mark.parametrize(
    ("device", "flags", "amx", "cuda_bf16", "expected"),
    [
        ("cpu", {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, False, None, "bf16"),
        ("cpu", {"avx2"}, True, None, "bf16"),  # torch's own AMX check, flags unreadable
        ("cpu", {"avx2", "avx512f", "avx512_bf16"}, False, None, "fp32"),  # no tiles: slower
        ("cpu", {"avx2"}, False, None, "fp32"),
        ("cpu", set(), False, None, "fp32"),  # no /proc/cpuinfo
        ("cuda", set(), False, True, "bf16"),  # Ampere and later
        ("cuda", {"amx_bf16"}, True, False, "fp32"),  # a Turing or older GPU: emulated only
        ("mps", {"amx_bf16"}, True, True, "fp32"),
    ],
)
def test_auto_precision_follows_the_hardware(monkeypatch, device, flags, amx, cuda_bf16, expected):
    from conclugen import torchutil

    monkeypatch.setattr(torchutil, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    emulated = []
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda e=True: emulated.append(e) or bool(cuda_bf16)
    )
    assert torchutil.resolve_precision("auto", device) == expected
    assert emulated in ([], [False])  # emulated bf16 (a slow path) does not count
    assert torchutil.resolve_precision("fp32", device) == "fp32"
    assert torchutil.resolve_precision("bf16", device) == "bf16"
    with pytest.raises(ValueError, match="unknown precision"):
        torchutil.resolve_precision("fp16", device)


def test_cpu_flags_are_read_from_proc_cpuinfo():
    from conclugen.torchutil import cpu_flags

    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "flags :")
    assert cpu_flags() == frozenset(line.split(":", 1)[1].split())


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16", torch.bfloat16), ("fp32", torch.float32)]
)
def test_autocast_runs_matrix_products_in_the_precision(precision, dtype):
    from conclugen.torchutil import autocast

    a = torch.randn(8, 8)
    with autocast("cpu", precision):
        assert (a @ a).dtype == dtype
    assert (a @ a).dtype == torch.float32
