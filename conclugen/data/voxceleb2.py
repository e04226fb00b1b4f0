"""VoxCeleb2 dev (pretraining, unlabeled): ``dev/mp4/idNNNNN/<ytid>/NNNNN.mp4`` plus the audio
release ``dev/aac/idNNNNN/<ytid>/NNNNN.m4a``.

The two releases do not pair exactly: a clip whose ``.m4a`` is absent uses the mp4's own audio
track (recorded as kept), and an ``.m4a`` without its mp4 is an extra, like macOS ``._*`` files.
"""

from __future__ import annotations

import os
from pathlib import Path

from conclugen.data.manifest import Adapter
from conclugen.ledger import FailureLedger


def _walk(top: Path, suffix: str, ledger: FailureLedger):
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
                if not clip.name.endswith(suffix):
                    continue
                if clip.name.startswith("._"):
                    reason = "macOS AppleDouble metadata file, not a clip"
                    ledger.extra(f"{ident.name}_{yt.name}_{clip.name}", reason)
                    continue
                yield ident.name, yt.name, clip.name[: -len(suffix)], clip.path


def rows(raw_dir: Path, ledger: FailureLedger) -> list[dict]:
    audio = {(i, y, c): p for i, y, c, p in _walk(raw_dir / "dev" / "aac", ".m4a", ledger)}
    out = []
    for ident, yt, clip, path in _walk(raw_dir / "dev" / "mp4", ".mp4", ledger):
        sample_id = f"{ident}_{yt}_{clip}"
        m4a = audio.pop((ident, yt, clip), None)
        if m4a is None:
            ledger.keep(
                sample_id, "no .m4a in the audio release: the mp4's own audio track is used"
            )
        out.append(
            {
                "sample_id": sample_id,
                "split": "train",
                "video": path,
                "audio": m4a,
                "start": 0.0,
                "speaker": ident,
            }
        )
    if not out:
        raise FileNotFoundError(f"{raw_dir}: no dev/mp4/id*/*/*.mp4 files")
    for ident, yt, clip in sorted(audio):
        ledger.extra(f"{ident}_{yt}_{clip}", "an .m4a of the audio release without its mp4")
    return out


ADAPTER = Adapter("voxceleb2", "unlabeled", (), rows)
