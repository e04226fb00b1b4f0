"""Pretraining in fp32 and in bf16 on the same features: loss curves and time per epoch.

Runs :func:`conclugen.pretrain.pretrain` for each ``--methods`` entry three times: from the same
seed with ``precision`` forced to fp32 and then to bf16 (whatever ``auto`` would pick: printed),
and in fp32 from another seed, the yardstick of what a loss curve varies anyway; on a
``features.zarr`` (by default the demo's VoxCeleb2 look-alike, ``results/voxceleb2/features.zarr``
after ``make demo``) with the demo config's pretraining hyperparameters. Prints per method the
median seconds per epoch in each precision and their ratio, and how far bf16's per-epoch total loss
strays from fp32's (the largest and the last epoch's relative difference) beside how far the
other seed's strays, and the held-out recall@1 of the runs. Usage::

    python benchmarks/pretrain_precision.py [--features PATH] [--methods conclugen byol]
        [--epochs N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

import torch
import yaml

from conclugen.pretrain import method_config, pretrain
from conclugen.torchutil import cpu_flags, resolve_precision

ROOT = Path(__file__).resolve().parents[1]


def run(features: Path, method: str, hp: dict, device: str, out: Path) -> dict:
    """model.pt's record of one pretraining run."""
    path = pretrain(features, out, method_config(method), hp, device)
    return torch.load(path, map_location="cpu", weights_only=False)


def strays(reference: list[float], other: list[float]) -> list[float]:
    """Per epoch, |other - reference| / |reference|."""
    pairs = zip(reference, other, strict=True)
    return [abs(b - a) / max(abs(a), 1e-12) for a, b in pairs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=Path, default=ROOT / "results/voxceleb2/features.zarr")
    ap.add_argument("--methods", nargs="+", default=["conclugen", "instancecont", "byol"])
    ap.add_argument("--epochs", type=int, default=None, help="default: the demo config's")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    demo = yaml.safe_load((ROOT / "config/demo.yaml").read_text())["pretrain"]["hparams"]
    if args.epochs:
        demo["epochs"] = args.epochs
    flags = sorted(f for f in cpu_flags() if f.startswith("amx") or f == "avx512_bf16")
    print(
        f"{args.features}, demo hparams ({demo['epochs']} epochs, batch {demo['batch_size']}), "
        f"device {args.device}, {torch.get_num_threads()} threads, CPU flags {flags}, "
        f"auto -> {resolve_precision('auto', torch.device(args.device))}"
    )
    print(
        f"{'method':<14}{'fp32 s/epoch':>13}{'bf16 s/epoch':>13}{'fp32/bf16':>10}"
        f"{'bf16: max rel. diff':>20}{'last':>8}{'seed: max':>11}{'last':>8}"
        f"  {'recall@1 fp32 / bf16 / seed'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            records = {}
            runs = {
                "fp32": dict(precision="fp32"),
                "bf16": dict(precision="bf16"),
                "seed": dict(precision="fp32", seed=demo.get("seed", 127) + 1),
            }
            for name, change in runs.items():
                out = Path(tmp) / f"{method}-{name}"
                records[name] = run(args.features, method, demo | change, args.device, out)
                retrieval = json.loads((out / "retrieval.json").read_text())
                records[name]["recall"] = [v["pretrained"] for v in retrieval.values()]
            curves = {p: [row["total"] for row in r["history"]] for p, r in records.items()}
            rel, noise = (strays(curves["fp32"], curves[o]) for o in ("bf16", "seed"))
            # the median epoch's own training time (history): not the loading, the retrieval,
            # or a first epoch's warm-up
            per_epoch = {
                p: statistics.median(row["seconds"] for row in records[p]["history"])
                for p in ("fp32", "bf16")
            }
            recall = " / ".join(
                ",".join(f"{v:.2f}" for v in records[p]["recall"]) or "-" for p in records
            )
            print(
                f"{method:<14}{per_epoch['fp32']:>13.3f}{per_epoch['bf16']:>13.3f}"
                f"{per_epoch['fp32'] / per_epoch['bf16']:>9.2f}x{max(rel):>20.4f}"
                f"{rel[-1]:>8.4f}{max(noise):>11.4f}{noise[-1]:>8.4f}  {recall}"
            )


if __name__ == "__main__":
    main()
