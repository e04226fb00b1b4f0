"""Device and precision choices shared by every GPU-capable stage."""

import torch


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other names pass through."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` multiplies bf16 in hardware: a CUDA GPU, or a CPU with AMX tiles
    (oneDNN then runs bf16 convolutions ~4x faster than fp32; without AMX they are slower)."""
    if torch.device(device).type == "cuda":
        return True
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_precision(name: str, device: str | torch.device) -> str:
    """``auto`` -> ``bf16`` where :func:`native_bf16`, else ``fp32``; other names pass through."""
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name not in ("bf16", "fp32"):
        raise ValueError(f"unknown precision {name!r}; expected auto, bf16 or fp32")
    return name
