"""Manifests: one row per sample, the contract every later stage reads.

``results/{dataset}/manifest.parquet`` columns:

========== ==================================================================================
sample_id  unique id (conventions in docs/lookalike-spec.md)
split      ``train``, ``val`` or ``test`` (each dataset's official split, names normalised)
video      path of the video file
audio      path of a separate audio file (VoxCeleb2's .m4a), null: the video's own track
start, end segment bounds in seconds inside ``video`` (CMU-MOSEI); 0 and null: the whole file
text       transcript or gold utterance; null where the dataset has none (CAER, VoxCeleb2)
labels     list of floats: one-hot over ``classes`` (single-label), intensities (multi-label),
           null (unlabeled)
sentiment  continuous sentiment in [-3, 3] (CMU-MOSEI's first label column, apart from the
           emotion intensities in ``labels``); null where the dataset has none
speaker    speaker or identity where known, else null
shard      stable shard index (:func:`conclugen.shards.shard_of`)
========== ==================================================================================

The schema metadata holds ``dataset``, ``task`` (``single_label``, ``multi_label`` or
``unlabeled``) and ``classes`` (JSON list).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from conclugen.io import read_parquet_metadata, write_parquet
from conclugen.ledger import FailureLedger
from conclugen.shards import shard_ids

COLUMNS = [
    "sample_id",
    "split",
    "video",
    "audio",
    "start",
    "end",
    "text",
    "labels",
    "sentiment",
    "speaker",
]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Adapter:
    """How one dataset's real on-disk layout becomes manifest rows."""

    name: str
    task: str
    classes: tuple[str, ...]
    rows: Callable[[Path, FailureLedger], list[dict]]


def audio_source(clip: dict) -> str:
    """The file a clip's audio is read from: its ``audio`` file where the dataset has one
    (VoxCeleb2's .m4a), else its video's own track."""
    return clip["audio"] if isinstance(clip.get("audio"), str) else clip["video"]


def resolved_ends(clips: pd.DataFrame) -> pd.Series:
    """Each clip's end in seconds: ``end`` where the manifest has one, else (the whole file)
    ``start`` + the probe's ``duration``; ``clips`` must carry the probe's columns."""
    return clips["end"].where(clips["end"].notna(), clips["start"] + clips["duration"])


def one_hot(cls: str, classes: tuple[str, ...]) -> list[float]:
    return [1.0 if c == cls else 0.0 for c in classes]


def load_exclusions(path: str | os.PathLike | None, dataset: str) -> dict[str, str]:
    """``sample_id -> reason`` for ``dataset`` from the exclusion list (config/exclusions.yaml)."""
    if not path:
        return {}
    table = yaml.safe_load(Path(path).read_text()) or {}
    return {str(k): str(v) for k, v in (table.get(dataset) or {}).items()}


def build_manifest(
    adapter: Adapter,
    raw_dir: str | os.PathLike,
    num_shards: int,
    ledger: FailureLedger,
    exclusions: dict[str, str] | None = None,
) -> pd.DataFrame:
    """The adapter's rows, one per sample id, minus excluded samples and missing videos, sorted
    by id, with their shard.

    A sample id that several rows share keeps its first row (the others are recorded); the
    exclusion list is applied before the files are checked, so an excluded sample is recorded
    with the list's reason even when its video is absent.
    """
    frame = pd.DataFrame(adapter.rows(Path(raw_dir), ledger), columns=COLUMNS)
    repeats = frame.loc[frame["sample_id"].duplicated(keep="first"), "sample_id"].value_counts()
    for sample_id, n in repeats.items():
        ledger.keep(sample_id, f"duplicate sample id: {n} later row(s) ignored, the first kept")
    frame = frame.drop_duplicates("sample_id", keep="first")
    exclusions = exclusions or {}
    excluded = frame["sample_id"].isin(exclusions)
    for sample_id in frame.loc[excluded, "sample_id"]:
        ledger.drop(sample_id, f"excluded by the exclusion list: {exclusions[sample_id]}")
    frame = frame[~excluded]
    missing = ~frame["video"].map(os.path.exists)
    for sample_id, video in frame.loc[missing, ["sample_id", "video"]].itertuples(index=False):
        ledger.drop(sample_id, f"video file missing: {Path(video).name}")
    frame = frame[~missing]
    bad_split = ~frame["split"].isin(SPLITS)
    if bad_split.any():
        raise ValueError(
            f"{adapter.name}: adapter produced unknown splits {set(frame['split'][bad_split])}"
        )
    frame = frame.sort_values("sample_id", ignore_index=True)
    frame["start"] = frame["start"].astype("float64")
    frame["end"] = frame["end"].astype("float64")
    frame["sentiment"] = frame["sentiment"].astype("float64")
    frame["shard"] = shard_ids(frame["sample_id"], num_shards)
    return frame


def write_manifest(frame: pd.DataFrame, path: str | os.PathLike, adapter: Adapter) -> None:
    meta = {"dataset": adapter.name, "task": adapter.task, "classes": json.dumps(adapter.classes)}
    write_parquet(frame, path, metadata=meta)


def read_manifest(path: str | os.PathLike, shard: int | None = None) -> tuple[pd.DataFrame, dict]:
    """The manifest (optionally one shard of it) and its metadata (``classes`` decoded)."""
    filters = [("shard", "==", shard)] if shard is not None else None
    frame = pd.read_parquet(path, filters=filters)
    meta = read_parquet_metadata(path)
    meta["classes"] = json.loads(meta["classes"])
    return frame, meta
