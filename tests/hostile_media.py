"""Hostile but real-world media files, generated with ffmpeg (never checked in).

:func:`write_hostile_caer` lays out a small CAER release (``CAER/{train,validation,test}/
<Class>/*.avi``) of ordinary clips plus one file of every hostile kind, and returns
``sample_id -> kind`` for the hostile ones. CAER's adapter takes any ``*.avi``, and FFmpeg
recognises a container by its content, not its name, so mp4 files named ``.avi`` stand for the
phone clips that carry a display rotation.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from matplotlib import cbook

FACE = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
CLASSES = ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *args], check=True)


def face_clip(out: Path, size: str = "320x240", seconds: float = 2.0, audio: str | None = "tone",
              fmt: str = "avi", extra: tuple[str, ...] = (), fps: int = 25) -> Path:  # fmt: skip
    """A still face (matplotlib's Grace Hopper photo), with a tone, silence or no audio."""
    out.parent.mkdir(parents=True, exist_ok=True)
    inputs = ["-loop", "1", "-framerate", str(fps), "-i", str(FACE)]
    if audio == "tone":
        inputs += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000"]
    elif audio == "silence":
        inputs += ["-f", "lavfi", "-i", "anullsrc=channel_layout=mono:sample_rate=16000"]
    elif audio is not None:  # a lavfi audio source
        inputs += ["-f", "lavfi", "-i", audio]
    codec = (
        ["-c:v", "mpeg4", "-q:v", "5"]
        if fmt == "avi"
        else ["-c:v", "libx264", "-preset", "ultrafast"]
    )
    maps = ["-map", "0:v"] + (["-map", "1:a", "-c:a", "aac"] if audio else [])
    width, height = size.split("x")
    ffmpeg(*inputs, "-t", str(seconds), *maps, *codec, "-pix_fmt", "yuv420p",
           "-vf", f"scale={width}:{height},setsar=1", *extra, "-f", fmt, str(out))  # fmt: skip
    return out


def write_hostile_caer(root: Path) -> dict[str, str]:
    """Ordinary clips (one per class in train, a few in validation/test) plus the hostile kinds."""
    caer = root / "CAER"
    for i, cls in enumerate(CLASSES):
        face_clip(caer / "train" / cls / f"{i:04d}.avi")
    for split in ("validation", "test"):
        for i, cls in enumerate(CLASSES[:2]):
            face_clip(caer / split / cls / f"{i:04d}.avi")
    happy = caer / "train" / "Happy"
    hostile = {
        "tiny_frame": face_clip(happy / "0101.avi", size="16x16"),
        "flat_frame": face_clip(happy / "0102.avi", size="1280x16"),
        "six_channel_48k": face_clip(
            happy / "0104.avi",
            audio="sine=frequency=440:sample_rate=48000",
            extra=("-ac", "6", "-ar", "48000"),
        ),
        "ten_minute_silence": face_clip(
            happy / "0105.avi", size="64x48", seconds=600, audio="silence", fps=5
        ),
        "one_frame": face_clip(happy / "0106.avi", seconds=0.04),
        "unicode name": face_clip(happy / "été à Paris 0107.avi"),
        "video_only": face_clip(happy / "0113.avi", audio=None),
    }
    # A phone clip: portrait content stored landscape with a 90° display rotation (mp4 only).
    landscape = face_clip(root / "rotated_source.mp4", fmt="mp4")
    hostile["rotated"] = happy / "0103.avi"
    ffmpeg("-i", str(landscape), "-c", "copy", "-metadata:s:v:0", "rotate=90", "-f", "mp4",
           str(hostile["rotated"]))  # fmt: skip
    landscape.unlink()
    whole = face_clip(root / "whole.avi").read_bytes()
    (root / "whole.avi").unlink()
    (hostile_path := happy / "0108.avi").write_bytes(whole[: len(whole) // 2])
    hostile["truncated"] = hostile_path
    flipped = bytearray(whole)
    for i in range(len(flipped) // 3, len(flipped) // 3 + 4096, 7):
        flipped[i] ^= 0xFF
    (hostile_path := happy / "0109.avi").write_bytes(bytes(flipped))
    hostile["bit_flipped"] = hostile_path
    (hostile_path := happy / "0110.avi").write_bytes(b"")
    hostile["zero_bytes"] = hostile_path
    (hostile_path := happy / "0111.avi").write_text("This is not a video, just a text file.\n")
    hostile["text_file"] = hostile_path
    hostile_path = happy / "0112.avi"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "2", "-c:a", "mp3",
           "-f", "avi", str(hostile_path))  # fmt: skip
    hostile["audio_only"] = hostile_path
    return {f"train_Happy_{path.stem}": kind for kind, path in hostile.items()}
