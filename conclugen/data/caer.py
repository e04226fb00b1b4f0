"""CAER (video): ``CAER/{train,validation,test}/<Emotion>/NNNN.avi``; the folder is the label.

macOS ``._NNNN.avi`` files (AppleDouble metadata, found in zips made on a Mac) are not videos:
they are recorded as extras.
"""

from __future__ import annotations

from pathlib import Path

from conclugen.data.manifest import Adapter, one_hot
from conclugen.ledger import FailureLedger

CLASSES = ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
SPLITS = {"train": "train", "validation": "val", "test": "test"}


def find_root(raw_dir: Path) -> Path:
    """The folder holding train/validation/test (the zip's top folder ``CAER/`` or raw itself)."""
    for candidate in (raw_dir / "CAER", raw_dir):
        if all((candidate / s).is_dir() for s in SPLITS):
            return candidate
    raise FileNotFoundError(f"{raw_dir}: no CAER/{{train,validation,test}} folders")


def rows(raw_dir: Path, ledger: FailureLedger) -> list[dict]:
    root = find_root(raw_dir)
    out = []
    for split, split_name in SPLITS.items():
        for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            for video in sorted(class_dir.glob("*.avi")):
                sample_id = f"{split}_{class_dir.name}_{video.stem}"
                if video.name.startswith("._"):
                    ledger.extra(sample_id, "macOS AppleDouble metadata file, not a video")
                elif class_dir.name not in CLASSES:
                    ledger.drop(sample_id, f"unknown class folder {class_dir.name!r}")
                else:
                    out.append(
                        {
                            "sample_id": sample_id,
                            "split": split_name,
                            "video": str(video),
                            "start": 0.0,
                            "labels": one_hot(class_dir.name, CLASSES),
                        }
                    )
    return out


ADAPTER = Adapter("caer", "single_label", CLASSES, rows)
