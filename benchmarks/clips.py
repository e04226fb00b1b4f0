"""Look-alike clips shared by the benchmark scripts (run as `python benchmarks/<name>.py`)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd

from conclugen.lookalike import generate


def lookalike_clips(root: Path | None, n: int, workdir: Path) -> pd.DataFrame:
    """``n`` good CAER look-alike clips: sample_id, video, start, end, duration, sentence."""
    if root is None:
        root = workdir / "lookalike"
        per_split = max(1, -(-n // 21))  # 7 classes x 3 splits per unit
        sizes = {"caer": {"train": per_split, "validation": per_split, "test": per_split}}
        generate(root, ["caer"], seed=0, bad_fraction=0.0, sizes=sizes, workers=2)
    truth = pd.read_parquet(Path(root) / "caer" / "truth.parquet")
    truth = truth[truth["bad"].isna()].head(n).reset_index(drop=True)
    with zipfile.ZipFile(Path(root) / "caer" / "CAER.zip") as archive:
        archive.extractall(workdir / "raw")
    truth["video"] = [str(workdir / "raw" / "CAER" / s / c / f"{i}.avi")
                      for s, c, i in truth["sample_id"].str.split("_")]  # fmt: skip
    truth["duration"] = truth["end"] - truth["start"]
    return truth
