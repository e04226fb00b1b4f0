"""claim_gpu: concurrent jobs on one machine each get a GPU of their own."""

import subprocess
import sys
import time

import pytest

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
