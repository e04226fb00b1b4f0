"""CMU-MOSEI: segments defined by the SDK's label intervals inside full videos.

- labels: ``CMU_MOSEI_Labels.csd`` (HDF5 computational sequence): ``All Labels/data/<vid>/
  features [n, 7]`` = [sentiment, happy, sad, anger, surprise, disgust, fear] and ``intervals
  [n, 2]`` in seconds; the manifest keeps the six emotion intensities (multi-label, 0..3).
- splits: the SDK's ``cmu_mosei_std_folds.py`` (video-level standard folds), read with ``ast``.
- videos: ``Raw/Videos/Full/Combined/<vid>.mp4``; text: the line of
  ``Raw/Transcript/Segmented/Combined/<vid>.txt`` (``vid___k___start___end___text``) whose
  interval overlaps the segment most.
"""

from __future__ import annotations

import ast
from pathlib import Path

import h5py
import numpy as np

from conclugen.data.manifest import Adapter
from conclugen.ledger import FailureLedger

CLASSES = ("happy", "sad", "anger", "surprise", "disgust", "fear")
FOLDS = {"standard_train_fold": "train", "standard_valid_fold": "val", "standard_test_fold": "test"}


def read_folds(path: Path) -> dict[str, str]:
    """``video id -> split`` from the SDK's folds file, parsed without executing it."""
    split_of = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            name = getattr(node.targets[0], "id", None)
            if name in FOLDS:
                for vid in ast.literal_eval(node.value):
                    split_of[str(vid)] = FOLDS[name]
    if set(split_of.values()) != set(FOLDS.values()):
        raise ValueError(f"{path}: expected the three standard folds {sorted(FOLDS)}")
    return split_of


def read_transcript(path: Path) -> list[tuple[float, float, str]]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("___", 4)
        if len(parts) == 5:
            try:
                lines.append((float(parts[2]), float(parts[3]), parts[4].strip()))
            except ValueError:
                continue
    return lines


def _best_text(lines, start: float, end: float) -> str | None:
    best, best_overlap = None, 0.0
    for s, e, text in lines:
        overlap = min(e, end) - max(s, start)
        if overlap > best_overlap:
            best, best_overlap = text, overlap
    return best


def _find_one(raw_dir: Path, name: str) -> Path:
    hits = sorted(raw_dir.rglob(name))
    if not hits:
        raise FileNotFoundError(f"{raw_dir}: no {name} found")
    return hits[0]


def rows(raw_dir: Path, ledger: FailureLedger) -> list[dict]:
    split_of = read_folds(_find_one(raw_dir, "cmu_mosei_std_folds.py"))
    combined = _find_one(raw_dir, "Raw") / "Videos" / "Full" / "Combined"
    transcripts = combined.parents[2] / "Transcript" / "Segmented" / "Combined"
    out = []
    with h5py.File(_find_one(raw_dir, "CMU_MOSEI_Labels.csd"), "r") as csd:
        data = csd["All Labels"]["data"]
        for vid in sorted(data):
            features = np.asarray(data[vid]["features"], dtype=np.float64)
            intervals = np.asarray(data[vid]["intervals"], dtype=np.float64)
            split = split_of.get(vid)
            video = combined / f"{vid}.mp4"
            lines = read_transcript(transcripts / f"{vid}.txt")
            for k, (feat, (start, end)) in enumerate(zip(features, intervals, strict=True)):
                sample_id = f"{vid}_{k}"
                if feat.shape != (7,) or not np.isfinite(feat).all() or not end > start:
                    ledger.drop(
                        sample_id, f"unreadable label row: features {feat}, interval {start}-{end}"
                    )
                elif split is None:
                    ledger.drop(sample_id, "video not in any standard fold")
                elif not video.exists():
                    ledger.drop(sample_id, f"video file missing: {video.name}")
                else:
                    out.append(
                        {
                            "sample_id": sample_id,
                            "split": split,
                            "video": str(video),
                            "start": float(start),
                            "end": float(end),
                            "text": _best_text(lines, start, end),
                            "labels": [float(x) for x in feat[1:]],
                            "speaker": vid,
                        }
                    )
    return out


ADAPTER = Adapter("mosei", "multi_label", CLASSES, rows)
