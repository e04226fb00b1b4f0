"""Device and precision choices shared by every GPU-capable stage."""

import fcntl
import functools
import itertools
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other names pass through."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def make_scheduler(optimizer, hp: dict):
    """The schedule both training loops use, stepped once per epoch: ``warmup_epochs`` epochs of
    ``LinearLR`` from 0.1 of the learning rate, then ``CosineAnnealingWarmRestarts(T_0, T_mult,
    eta_min)`` (the authors' ``SequentialLR``); ``warmup_epochs`` 0 starts with the restarts.
    Pretraining's ``schedule: step`` is MPUC's instead: the learning rate times ``step_gamma``
    every ``step_epochs`` epochs (``StepLR``)."""
    if hp.get("schedule", "cosine") == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, hp["step_epochs"], hp["step_gamma"])
    cosine = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=hp["T_0"], T_mult=hp["T_mult"], eta_min=hp["eta_min"]
    )
    if not hp["warmup_epochs"]:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=0.1, total_iters=hp["warmup_epochs"]
    )
    return torch.optim.lr_scheduler.SequentialLR(
        optimizer, [warmup, cosine], milestones=[hp["warmup_epochs"]]
    )


PRECISIONS = ("auto", "bf16", "fp32")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where it does not exist)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    flags = (ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags"))
    return frozenset(next(flags, ()))


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` multiplies bf16 in hardware, fast enough to be worth autocasting to.

    A CUDA GPU whose compute capability has bf16 (Ampere on; not emulated), or a CPU with AMX
    tiles (``amx_bf16`` in /proc/cpuinfo, or torch's own check): oneDNN then runs bf16 matrix
    products and convolutions several times faster than fp32. ``avx512_bf16`` alone (Cooper
    Lake, Zen 4: dot products, no tiles) does not count: a pretraining step in bf16 took 1.7x
    the fp32 one on such a CPU (docs/benchmarks.md), whatever torch.backends.cpu.
    get_cpu_capability() says (AVX512 there, as on an AMX CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(False)  # False without a GPU
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        return "amx_bf16" in cpu_flags() or bool(amx())
    return False


def resolve_precision(name: str, device: str | torch.device) -> str:
    """``auto`` -> ``bf16`` where :func:`native_bf16`, else ``fp32``; other names pass through."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; expected auto, bf16 or fp32")
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return name


def autocast(device: str | torch.device, precision: str) -> torch.autocast:
    """The autocast context of a training or inference step on ``device``: bf16 where
    ``precision`` (auto, bf16, fp32) resolves to it (:func:`resolve_precision`), else off.
    Losses stay fp32 whatever it is (conclugen.losses)."""
    device = torch.device(device)
    bf16 = resolve_precision(precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


_HELD_GPU_LOCKS = []  # open lock files: a claim lasts as long as the process


def visible_gpus() -> list[str]:
    """This process's GPUs without initialising CUDA: ``CUDA_VISIBLE_DEVICES`` when set (SLURM
    sets it to the job's allocation), else one id per GPU the NVIDIA driver lists."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    driver = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(driver.iterdir())))] if driver.is_dir() else []


def claim_gpu(gpus: int, candidates: list[str] | None = None, lock_dir=None) -> str | None:
    """Pin this process to one GPU that no other job on this machine holds, and hold it until
    the process exits (an flock, so even a SIGKILLed job frees it). Returns the GPU's id, or None
    when ``gpus`` is 0 or no GPU is visible.

    Snakemake's local executor counts GPUs (``--resources gpu=N``) but does not say which one a
    job gets, so without this every job would run on GPU 0. Under SLURM a job sees only its
    allocation, and with one candidate there is nothing to choose. Waits while all are held.
    Call it before anything initialises CUDA: it works by narrowing ``CUDA_VISIBLE_DEVICES``.
    """
    candidates = visible_gpus() if candidates is None else candidates
    if gpus == 0 or not candidates:
        return None
    if gpus > 1:
        raise ValueError(f"a job runs on one GPU; {gpus} requested")
    if torch.cuda.is_initialized():
        raise RuntimeError("claim_gpu must run before CUDA is initialised")
    if len(candidates) == 1:
        return candidates[0]
    lock_dir = Path(lock_dir or tempfile.gettempdir()) / "conclugen-gpu-locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    for attempt in itertools.count():
        for gpu in candidates:
            handle = open(lock_dir / f"{gpu}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _HELD_GPU_LOCKS.append(handle)
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            log.info("GPU %s (of %s) claimed for this job", gpu, ", ".join(candidates))
            return gpu
        if attempt == 0:
            log.info("every GPU (%s) is held by another job; waiting", ", ".join(candidates))
        time.sleep(1.0)
