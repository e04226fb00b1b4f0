"""What the continuous-label downstream costs beside the classification one, in one process.

Trains the same protocols on the same synthetic CMU-MOSEI-like features (tests.synthetic, a
sentiment and six intensities read out linearly from them) for a fixed number of epochs (no
early stop) with :func:`conclugen.downstream.evaluate` (multi-label BCE over six outputs) and
:func:`conclugen.regression.evaluate_regression` under three loss combinations: SS-VAERR's best
(1 - CCC, MSE, 20-bin CE), 1 - CCC alone, and 1 - CCC with nCCE and MSE. Prints seconds per run
(best of ``--repeats``, after one untimed warm-up run) and the ratio to classification. Usage::

    python benchmarks/regression_cost.py [--samples 2000] [--epochs 30] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conclugen.data.mosei import CLASSES  # noqa: E402
from conclugen.downstream import evaluate, load_task  # noqa: E402
from conclugen.featstore import write_features  # noqa: E402
from conclugen.io import write_parquet  # noqa: E402
from conclugen.model import ConCluGenModel, save_model  # noqa: E402
from conclugen.regression import evaluate_regression, load_regression_task  # noqa: E402
from tests.synthetic import synthetic_features  # noqa: E402

DIMS = {"video": 64, "audio": 32, "text": 32}
LOSSES = {
    "ss_vaerr": {"ccc": 0.5, "mse": 0.25, "ce": 0.25, "ncce": 0.0},
    "ccc": {"ccc": 1.0, "mse": 0.0, "ce": 0.0, "ncce": 0.0},
    "ccc_ncce_mse": {"ccc": 0.5, "mse": 0.25, "ce": 0.0, "ncce": 0.25},
}


def store(tmp: Path, n: int):
    feats = synthetic_features(n, DIMS, num_classes=7, seed=0)
    x = {m: feats.features[m].numpy() for m in DIMS}
    rng = np.random.default_rng(0)
    values = np.column_stack(
        [np.clip(x["video"] @ rng.standard_normal(DIMS["video"]) / 4, -3, 3)]
        + [np.clip(x["audio"] @ rng.standard_normal(DIMS["audio"]) / 3 + 1, 0, 3)] * 6
    )
    write_features(tmp / "f.zarr", feats.sample_id, feats.split, x)
    frame = pd.DataFrame(
        {"sample_id": feats.sample_id, "split": feats.split, "labels": list(values[:, 1:]),
         "sentiment": values[:, 0]}
    )  # fmt: skip
    meta = {"dataset": "mosei", "task": "multi_label", "classes": json.dumps(list(CLASSES))}
    write_parquet(frame, tmp / "m.parquet", metadata=meta)
    torch.manual_seed(0)
    save_model(ConCluGenModel(DIMS, 64, 16, num_clusters=0, rec_dim=0), tmp / "model.pt")
    return tmp / "f.zarr", tmp / "m.parquet", tmp / "model.pt"


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hp = dict(batch_size=512, max_epochs=args.epochs, patience=args.epochs, warmup_epochs=0)
    with tempfile.TemporaryDirectory() as tmp:
        features, manifest, model = store(Path(tmp), args.samples)
        classes = load_task(features, manifest, "mosei")
        continuous = load_regression_task(features, manifest)
        print(f"{args.samples} samples, {args.epochs} epochs, {args.device}")
        evaluate(classes, "linear", model, hp, device=args.device)  # warm-up, untimed
        for protocol in ("linear", "finetune"):
            base = best_of(
                args.repeats,
                lambda p=protocol: evaluate(classes, p, model, hp, device=args.device),
            )
            print(f"{protocol}: classification {base:.2f} s", flush=True)
            for name, weights in LOSSES.items():
                seconds = best_of(
                    args.repeats,
                    lambda p=protocol, w=weights: evaluate_regression(
                        continuous, p, model, hp, device=args.device, loss_weights=w
                    ),
                )
                print(
                    f"{protocol}: regression {name} {seconds:.2f} s ({seconds / base:.2f}x)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
