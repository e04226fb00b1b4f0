"""MELD: ``{train,dev,test}_sent_emo.csv`` plus ``dia{D}_utt{U}.mp4`` in the split folders.

The CSVs of the ``MELD.Raw.tar.gz`` release (2018) hold Windows-1252 punctuation stored as C1
control characters (U+0085 for "…", U+0091-U+0097 for quotes and dashes) and U+00A0 spaces. They
are mapped as the maintainers mapped them when they cleaned the CSVs of their repository in 2020
(each C1 character to its cp1252 glyph, U+00A0 to a space), so every word stays a word; and the
CSV is split into records only where the CSV format does (U+0085 is a line break to
``str.splitlines``, which used to cut rows apart). With these the 2018 CSVs give the official
9,989 / 1,109 / 2,610 utterances.

Videos without a CSV row (``final_videos_test*.mp4``, ``train/dia110_utt7``) and macOS ``._*``
files are not samples: they are recorded as extras.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from conclugen.data.manifest import Adapter, one_hot
from conclugen.ledger import FailureLedger

CLASSES = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
SPLITS = {  # MELD split -> (video folder, manifest split)
    "train": ("train_splits", "train"),
    "dev": ("dev_splits_complete", "val"),
    "test": ("output_repeated_splits_test", "test"),
}


def _c1_glyph(code: int) -> str:
    try:
        return bytes([code]).decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8D, 0x8F, 0x90, 0x9D: no glyph; a space keeps words apart
        return " "


#: C1 control characters (U+0080-U+009F) and the no-break space, as the maintainers mapped them.
CP1252_PUNCTUATION = str.maketrans(
    {code: _c1_glyph(code) for code in range(0x80, 0xA0)} | {0xA0: " "}
)


def read_csv(path: Path) -> list[dict]:
    """The CSV's records with their utterances cleaned (see the module docstring)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:  # a CSV saved as Windows-1252 bytes
        text = raw.decode("cp1252", errors="replace")
    return list(csv.DictReader(io.StringIO(text.translate(CP1252_PUNCTUATION), newline="")))


def _find(raw_dir: Path, name: str, want_dir: bool) -> Path:
    hits = sorted(p for p in raw_dir.rglob(name) if p.is_dir() == want_dir)
    if not hits:
        raise FileNotFoundError(f"{raw_dir}: no {name} found")
    return hits[0]


def rows(raw_dir: Path, ledger: FailureLedger) -> list[dict]:
    out = []
    for split, (folder, split_name) in SPLITS.items():
        videos = _find(raw_dir, folder, want_dir=True)
        annotated = set()
        for row in read_csv(_find(raw_dir, f"{split}_sent_emo.csv", want_dir=False)):
            emotion = (row.get("Emotion") or "").strip().lower()
            try:
                dia, utt = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
            except (KeyError, TypeError, ValueError):
                fields = {k: row.get(k) for k in ("Dialogue_ID", "Utterance_ID", "Emotion")}
                ledger.drop(f"{split}_row{row.get('Sr No.')}", f"unreadable label row: {fields}")
                continue
            name = f"dia{dia}_utt{utt}.mp4"
            annotated.add(name)
            sample_id = f"{split}_dia{dia}_utt{utt}"
            if emotion not in CLASSES:
                ledger.drop(sample_id, f"unreadable label row: unknown emotion {emotion!r}")
                continue
            out.append(
                {
                    "sample_id": sample_id,
                    "split": split_name,
                    "video": str(videos / name),
                    "start": 0.0,
                    "text": (row.get("Utterance") or "").strip(),
                    "labels": one_hot(emotion, CLASSES),
                    "speaker": (row.get("Speaker") or "").strip() or None,
                }
            )
        for path in sorted(videos.iterdir()):
            if path.name.startswith("._"):
                ledger.extra(f"{split}_{path.name}", "macOS AppleDouble metadata file, not a video")
            elif path.name not in annotated:
                ledger.extra(
                    f"{split}_{path.stem}", f"video without an annotation row: {path.name}"
                )
    return out


ADAPTER = Adapter("meld", "single_label", CLASSES, rows)
