"""VoxCeleb2 dev (pretraining, unlabeled): ``dev/mp4/idNNNNN/<ytid>/NNNNN.mp4`` plus the audio
release ``dev/aac/idNNNNN/<ytid>/NNNNN.m4a`` (used when present, else the mp4's own track)."""

from __future__ import annotations

import os
from pathlib import Path

from conclugen.data.manifest import Adapter
from conclugen.ledger import FailureLedger


def _walk(top: Path, suffix: str):
    """``(identity, ytid, stem, path)`` under ``top``; os.scandir because there are 1.1 M files."""
    if not top.is_dir():
        return
    for ident in sorted(os.scandir(top), key=lambda e: e.name):
        if not ident.is_dir():
            continue
        for yt in sorted(os.scandir(ident.path), key=lambda e: e.name):
            if not yt.is_dir():
                continue
            for clip in sorted(os.scandir(yt.path), key=lambda e: e.name):
                if clip.name.endswith(suffix) and not clip.name.startswith("."):
                    yield ident.name, yt.name, clip.name[: -len(suffix)], clip.path


def rows(raw_dir: Path, ledger: FailureLedger) -> list[dict]:
    audio = {(i, y, c): p for i, y, c, p in _walk(raw_dir / "dev" / "aac", ".m4a")}
    out = []
    for ident, yt, clip, path in _walk(raw_dir / "dev" / "mp4", ".mp4"):
        out.append(
            {
                "sample_id": f"{ident}_{yt}_{clip}",
                "split": "train",
                "video": path,
                "audio": audio.get((ident, yt, clip)),
                "start": 0.0,
                "speaker": ident,
            }
        )
    if not out:
        raise FileNotFoundError(f"{raw_dir}: no dev/mp4/id*/*/*.mp4 files")
    return out


ADAPTER = Adapter("voxceleb2", "unlabeled", (), rows)
