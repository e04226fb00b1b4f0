"""Held-out cross-modal retrieval of one pretraining method over several seeds.

Each seed holds out its own clips and starts from its own initialisation, so the spread shows
how much a single run's recall@1 (the one `make demo` logs, seed 127) says. Hyperparameters are
the config's `pretrain.hparams` over the paper defaults, as the `pretrain` rule takes them.
After `make demo`::

    python benchmarks/retrieval_seeds.py [--features results/voxceleb2/features.zarr]
        [--config config/demo.yaml] [--method conclugen] [--seeds 0 1 2 3 4 127]
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

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ("video->text", "video->audio")


def run(features: str, method: str, hparams: dict, seed: int) -> dict:
    """``{pair: (init, pretrained, chance)}`` of one run with ``seed``."""
    with tempfile.TemporaryDirectory(prefix="retrieval-") as out:
        pretrain(features, out, method_config(method), {**hparams, "seed": seed}, "cpu")
        report = json.loads((Path(out) / "retrieval.json").read_text())
    return {p: (r["init"], r["pretrained"], r["chance"]) for p, r in report.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", default=str(ROOT / "results/voxceleb2/features.zarr"))
    parser.add_argument("--config", default=str(ROOT / "config/demo.yaml"))
    parser.add_argument("--method", default="conclugen")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 127])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    hparams = yaml.safe_load(Path(args.config).read_text())["pretrain"].get("hparams", {})
    print(f"{args.method} on {args.features}, hparams {hparams}")
    print(f"{'seed':>5} " + " ".join(f"{p + ' init -> pretrained':>32}" for p in PAIRS))
    results = []
    for seed in args.seeds:
        r = run(args.features, args.method, hparams, seed)
        results.append(r)
        cells = [f"{r[p][0]:>14.2f} -> {r[p][1]:<14.2f}" if p in r else f"{'-':>32}" for p in PAIRS]
        print(f"{seed:>5} " + " ".join(cells), flush=True)
    for p in PAIRS:
        runs = [r[p] for r in results if p in r]
        if not runs:
            continue
        init = statistics.mean(x[0] for x in runs)
        trained = [x[1] for x in runs]
        chance = runs[0][2]
        print(
            f"{p}: mean recall@1 {init:.2f} at init -> {statistics.mean(trained):.2f} pretrained "
            f"(min {min(trained):.2f}, max {max(trained):.2f}; chance {chance:.3f}, "
            f"{statistics.mean(trained) / chance:.1f}x chance)"
        )


if __name__ == "__main__":
    main()
