"""CMU-MOSEI: segments defined by the SDK's label intervals inside full videos.

- labels: ``CMU_MOSEI_Labels.csd`` (HDF5 computational sequence): ``All Labels/data/<vid>/
  features [n, 7]`` = [sentiment, happy, sad, anger, surprise, disgust, fear] and ``intervals
  [n, 2]`` in seconds; the manifest keeps the six emotion intensities as ``labels``
  (multi-label, 0..3) and the sentiment (-3..3) as ``sentiment``.
- splits: the SDK's ``cmu_mosei_std_folds.py`` (video-level standard folds), read with ``ast``.
- videos: ``Raw/Videos/Full/Combined/<vid>.mp4``; text: the line of
  ``Raw/Transcript/Segmented/Combined/<vid>.txt`` (``vid___k___start___end___text``) whose
  interval overlaps the segment most.
- sample ids ``<vid>_<k>`` follow the official segment numbering (``k`` of that transcript line,
  as in ``Raw/Videos/Segmented/Combined/<vid>_<k>.mp4``): the ``.csd`` rows of a video are not
  in time order. A segment that no line overlaps is numbered by its rank in time (recorded).
- real intervals can start before 0 (by up to ~0.5 s): the start is clamped to 0.
- labelled videos in no standard fold (~66) are extras, not failures, and so are the fold
  videos without labels (two test-fold videos).
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


def read_transcript(path: Path) -> list[tuple[int, float, float, str]]:
    """``(segment number, start, end, text)`` per line ``vid___k___start___end___text``."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("___", 4)
        if len(parts) == 5:
            try:
                lines.append((int(parts[1]), float(parts[2]), float(parts[3]), parts[4].strip()))
            except ValueError:
                continue
    return lines


def _best_line(lines, start: float, end: float):
    """The transcript line that overlaps ``[start, end]`` most, or None."""
    best, best_overlap = None, 0.0
    for line in lines:
        overlap = min(line[2], end) - max(line[1], start)
        if overlap > best_overlap:
            best, best_overlap = line, overlap
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
        data = csd[next(iter(csd))]["data"]  # the SDK reads the first root group
        for vid in sorted(set(split_of) - set(data)):
            ledger.extra(vid, f"video of the standard {split_of[vid]} fold without labels")
        for vid in sorted(data):
            features = np.asarray(data[vid]["features"], dtype=np.float64)
            intervals = np.asarray(data[vid]["intervals"], dtype=np.float64)
            split = split_of.get(vid)
            lines = read_transcript(transcripts / f"{vid}.txt")
            if (
                intervals.ndim != 2
                or intervals.shape[1:] != (2,)
                or len(features) != len(intervals)
            ):
                shapes = f"features {features.shape}, intervals {intervals.shape}"
                ledger.drop(vid, f"unreadable label entry: {shapes}")
                continue
            for rank, row in enumerate(np.argsort(intervals[:, 0], kind="stable")):
                feat, (start, end) = features[row], intervals[row]
                line = _best_line(lines, start, end)
                sample_id = f"{vid}_{rank if line is None else line[0]}"
                start = max(0.0, float(start))  # real intervals start up to ~0.5 s before 0
                if feat.shape != (7,) or not np.isfinite(feat).all() or not end > start:
                    ledger.drop(
                        sample_id, f"unreadable label row: features {feat}, interval {start}-{end}"
                    )
                    continue
                if split is None:
                    ledger.extra(sample_id, "video in no standard fold (not a benchmark sample)")
                    continue
                if line is None:
                    ledger.keep(
                        sample_id,
                        "no transcript line overlaps the segment: no text, numbered by its rank",
                    )
                out.append(
                    {
                        "sample_id": sample_id,
                        "split": split,
                        "video": str(combined / f"{vid}.mp4"),
                        "start": start,
                        "end": float(end),
                        "text": None if line is None else line[3],
                        "labels": [float(x) for x in feat[1:]],
                        "sentiment": float(feat[0]),
                        "speaker": vid,
                    }
                )
    return out


ADAPTER = Adapter("mosei", "multi_label", CLASSES, rows)
