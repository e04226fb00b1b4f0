"""MELD: ``{train,dev,test}_sent_emo.csv`` plus ``dia{D}_utt{U}.mp4`` in the split folders.

Videos without a CSV row (``final_videos_test*.mp4``) and macOS ``._*`` files are not samples.
The real CSVs carry mis-encoded apostrophes (``\\x92``, ``’``), normalised to ``'``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from conclugen.data.manifest import Adapter, one_hot
from conclugen.ledger import FailureLedger

CLASSES = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
SPLITS = {  # MELD split -> (video folder, manifest split)
    "train": ("train_splits", "train"),
    "dev": ("dev_splits_complete", "val"),
    "test": ("output_repeated_splits_test", "test"),
}
APOSTROPHES = str.maketrans({"\x92": "'", "\u2019": "'"})


def _find(raw_dir: Path, name: str, want_dir: bool) -> Path:
    hits = sorted(p for p in raw_dir.rglob(name) if p.is_dir() == want_dir)
    if not hits:
        raise FileNotFoundError(f"{raw_dir}: no {name} found")
    return hits[0]


def _read_rows(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = path.read_text(encoding="cp1252")
    return list(csv.DictReader(text.splitlines()))


def rows(raw_dir: Path, ledger: FailureLedger) -> list[dict]:
    out = []
    for split, (folder, split_name) in SPLITS.items():
        videos = _find(raw_dir, folder, want_dir=True)
        for row in _read_rows(_find(raw_dir, f"{split}_sent_emo.csv", want_dir=False)):
            emotion = (row.get("Emotion") or "").strip().lower()
            try:
                dia, utt = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
            except (KeyError, TypeError, ValueError):
                fields = {k: row.get(k) for k in ("Dialogue_ID", "Utterance_ID", "Emotion")}
                ledger.drop(f"{split}_row{row.get('Sr No.')}", f"unreadable label row: {fields}")
                continue
            sample_id = f"{split}_dia{dia}_utt{utt}"
            if emotion not in CLASSES:
                ledger.drop(sample_id, f"unreadable label row: unknown emotion {emotion!r}")
                continue
            video = videos / f"dia{dia}_utt{utt}.mp4"
            if not video.exists():
                ledger.drop(sample_id, f"video file missing: {video.name}")
                continue
            out.append(
                {
                    "sample_id": sample_id,
                    "split": split_name,
                    "video": str(video),
                    "start": 0.0,
                    "text": (row.get("Utterance") or "").translate(APOSTROPHES).strip(),
                    "labels": one_hot(emotion, CLASSES),
                    "speaker": (row.get("Speaker") or "").strip() or None,
                }
            )
    return out


ADAPTER = Adapter("meld", "single_label", CLASSES, rows)
