"""Packing rendered media into each dataset's real distribution form: byte-split zip parts
(VoxCeleb2), a zip (CAER), nested tarballs and CSVs (MELD), a zip and HDF5 ``.csd`` files
(CMU-MOSEI)."""

from __future__ import annotations

import csv
import gzip
import io
import math
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from conclugen.lookalike.plan import (
    CSD_METADATA,
    FIXED_DATE,
    FIXED_MTIME,
    FPS,
    MELD_COLUMNS,
    MELD_SPLITS,
    Plan,
    Sample,
    Video,
)

# --- packing into the real distribution form ----------------------------------------------------


def _parents(names: list[str]) -> list[str]:
    """Every folder above ``names`` as ``a/``, ``a/b/``, ... (archives list them, like the real)."""
    folders = set()
    for name in names:
        parts = name.split("/")[:-1]
        folders.update("/".join(parts[: i + 1]) + "/" for i in range(len(parts)))
    return sorted(folders)


def _write_zip(path: Path, members: Mapping[str, bytes | Path]) -> None:
    """A zip with folder entries and fixed dates; media stored (incompressible), text deflated."""
    with zipfile.ZipFile(path, "w") as archive:
        for folder in _parents(list(members)):
            info = zipfile.ZipInfo(folder, FIXED_DATE)
            info.external_attr = (0o40755 << 16) | 0x10
            archive.writestr(info, b"")
        for name in sorted(members):
            content = members[name]
            data = content.read_bytes() if isinstance(content, Path) else content
            info = zipfile.ZipInfo(name, FIXED_DATE)
            info.external_attr = 0o644 << 16
            text = name.endswith((".txt", ".csv", ".py"))
            info.compress_type = zipfile.ZIP_DEFLATED if text else zipfile.ZIP_STORED
            archive.writestr(info, data)


def _write_tar_gz(path: Path, members: Mapping[str, bytes | Path]) -> None:
    """A gzipped tar with folder entries, fixed times and owners (gzip header time 0 too)."""
    with open(path, "wb") as raw, gzip.GzipFile("", "wb", 6, raw, mtime=0) as packed:
        with tarfile.open(fileobj=packed, mode="w", format=tarfile.GNU_FORMAT) as archive:
            for name in [*_parents(list(members)), *sorted(members)]:
                info = tarfile.TarInfo(name.rstrip("/"))
                info.mtime, info.uname, info.gname = FIXED_MTIME, "", ""
                if name.endswith("/"):
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    archive.addfile(info)
                    continue
                content = members[name]
                data = content.read_bytes() if isinstance(content, Path) else content
                info.size, info.mode = len(data), 0o644
                archive.addfile(info, io.BytesIO(data))


def _split(source: Path, folder: Path, prefix: str, parts: int) -> None:
    """Cut ``source`` into ``parts`` byte ranges ``{prefix}aa``, ``{prefix}ab``, ... (``cat``
    joins them back)."""
    data = source.read_bytes()
    step = math.ceil(len(data) / parts)
    for i in range(parts):
        suffix = chr(ord("a") + i // 26) + chr(ord("a") + i % 26)
        (folder / f"{prefix}{suffix}").write_bytes(data[i * step : (i + 1) * step])


def _media_members(videos: list[Video], media: Path) -> dict[str, Path]:
    return {v.member: media / v.member for v in videos}


def _pack_voxceleb2(out: Path, media: Path, plan: Plan, size: dict) -> None:
    audio = {v.m4a_member: media / v.m4a_member for v in plan.videos}
    audio = {name: path for name, path in audio.items() if path.exists()}  # no_audio: none
    for stem, members in (
        ("vox2_dev_mp4", _media_members(plan.videos, media)),
        ("vox2_dev_aac", audio),
    ):
        whole = media.parent / f"{stem}.zip"
        _write_zip(whole, members)
        _split(whole, out, f"{stem}_part", size["parts"])


def _pack_caer(out: Path, media: Path, plan: Plan, size: dict) -> None:
    _write_zip(out / "CAER.zip", _media_members(plan.videos, media))


def _clock(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def _meld_csv(samples: list[Sample]) -> bytes:
    """A ``*_sent_emo.csv``: the samples' label fields, numbered, with episode clock times."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, MELD_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for number, sample in enumerate(samples, start=1):
        start = sample.extra["clock"]
        end = start + (sample.last - sample.first) / FPS
        times = {"StartTime": _clock(start), "EndTime": _clock(end)}
        writer.writerow({**sample.extra, "Sr No.": number, **times})
    return buffer.getvalue().encode("utf-8")


def _pack_meld(out: Path, media: Path, plan: Plan, size: dict) -> None:
    staging = media.parent
    outer: dict[str, bytes | Path] = {}
    for split, (folder, _, _) in MELD_SPLITS.items():
        videos = [v for v in plan.videos if v.member.startswith(folder + "/")]
        members: dict[str, bytes | Path] = _media_members(videos, media)
        csv_bytes = _meld_csv([v.samples[0] for v in videos])
        if split == "train":  # the train CSV ships inside train.tar.gz, the others beside it
            members["train_sent_emo.csv"] = csv_bytes
        else:
            outer[f"MELD.Raw/{split}_sent_emo.csv"] = csv_bytes
        if split == "test":
            members.update(_media_members(plan.extras, media))
            members.update(plan.files)
        inner = staging / f"{split}.tar.gz"
        _write_tar_gz(inner, members)
        outer[f"MELD.Raw/{split}.tar.gz"] = inner
    _write_tar_gz(out / "MELD.Raw.tar.gz", outer)


def _pack_mosei(out: Path, media: Path, plan: Plan, size: dict) -> None:
    members: dict[str, bytes | Path] = _media_members(plan.videos, media)
    for video in plan.videos:
        vid = Path(video.member).stem
        lines = []
        for k, s in enumerate(video.samples):
            start, end = round(s.first / FPS, 3), round(s.last / FPS, 3)
            lines.append(f"{vid}___{k}___{start}___{end}___{s.speech.text}\n")
        members[f"Raw/Transcript/Segmented/Combined/{vid}.txt"] = "".join(lines).encode()
    _write_zip(out / "CMU_MOSEI.zip", members)
    _write_csd(out / "CMU_MOSEI_Labels.csd", plan.videos)
    folds = "".join(f"{name}={ids!r}\n" for name, ids in plan.meta["folds"].items())
    (out / "cmu_mosei_std_folds.py").write_text(folds)


def _write_csd(path: Path, videos: list[Video]) -> None:
    """The SDK's computational sequence: ``All Labels/{data/<vid>/{features, intervals},
    metadata/<key>}`` (metadata as one-element string datasets, as the SDK writes them)."""
    with h5py.File(path, "w") as handle:
        root = handle.create_group("All Labels")
        data = root.create_group("data")
        for video in videos:
            group = data.create_group(Path(video.member).stem)
            features = np.array([s.extra["features"] for s in video.samples], dtype=np.float32)
            intervals = np.array([[s.first / FPS, s.last / FPS] for s in video.samples])
            group.create_dataset("features", data=features, track_times=False)
            group.create_dataset("intervals", data=intervals, track_times=False)
        metadata = root.create_group("metadata")
        for key, value in CSD_METADATA.items():
            metadata.create_dataset(key, data=[value], dtype=h5py.string_dtype(), track_times=False)


PACKERS = {
    "voxceleb2": _pack_voxceleb2,
    "caer": _pack_caer,
    "meld": _pack_meld,
    "mosei": _pack_mosei,
}
