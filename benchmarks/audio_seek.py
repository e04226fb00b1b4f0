"""Reading a segment deep inside a long file's audio: by seeking against decoding from the start.

Generates ``--minutes``-long files with ffmpeg (a wobbling tone plus a little noise: mp4 with
AAC at 44.1 kHz stereo beside a small H.264 video, as CMU-MOSEI's YouTube videos; m4a/AAC at
16 kHz mono, as VoxCeleb2's; mkv/Opus; mp3; wav), then times, best of ``--repeat``:

- ``whole``: :func:`conclugen.media.read_audio` of the whole track (start 0, no end);
- ``from start``: the segment as read_audio read it before it seeked, the track decoded from
  its start up to the segment's end and sliced;
- ``seek``: read_audio of the segment (``--segment`` seconds from ``--start``).

It prints each time, ``seek / whole`` (issue 22's target: <= 0.1x for a segment 9 minutes into
a 10-minute file) and ``seek / from start``, and checks that the segment equals the sliced one
(max difference in 16-bit steps, and the difference's RMS over the segment's; AAC's noise
substitution and Opus's decoder state differ after a seek, see read_audio). Usage::

    python benchmarks/audio_seek.py [--minutes 10] [--start 540] [--segment 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from conclugen import media

VOICE = "0.4*sin(2*PI*220*t-85.7*cos(2*PI*0.7*t))*(0.6+0.4*sin(2*PI*3*t))"
FORMATS = {  # name: (rate, channels, ffmpeg output arguments, with a video track)
    "mp4/aac 44.1k stereo": (44100, 2, ["-c:a", "aac"], True),
    "m4a/aac 16k mono": (16000, 1, ["-c:a", "aac"], False),
    "mkv/opus 48k stereo": (48000, 2, ["-c:a", "libopus"], False),
    "mp3 44.1k stereo": (44100, 2, ["-c:a", "libmp3lame", "-b:a", "128k"], False),
    "wav 16k mono": (16000, 1, ["-c:a", "pcm_s16le"], False),
}
EXT = {"mp4/aac": "mp4", "m4a/aac": "m4a", "mkv/opus": "mkv", "mp3": "mp3", "wav": "wav"}


def make_file(path: Path, seconds: float, rate: int, channels: int, args, video: bool) -> None:
    pan = "|".join(f"c{i}=c0" for i in range(channels))
    audio = (f"aevalsrc={VOICE}:s={rate}:d={seconds}[v];anoisesrc=r={rate}:d={seconds}:a=0.01[n];"
             f"[v][n]amix=2:normalize=0,pan={channels}c|{pan}[a]")  # fmt: skip
    cmd = ["ffmpeg", "-y", "-loglevel", "error"]
    if video:
        cmd += ["-f", "lavfi", "-i", f"testsrc=s=64x48:r=25:d={seconds}", "-map", "0:v",
                "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]  # fmt: skip
    subprocess.run([*cmd, "-filter_complex", audio, "-map", "[a]", *args, str(path)], check=True)


def from_start(path: Path, start: float, end: float) -> np.ndarray:
    """The segment as read_audio read it before seeking."""
    with av.open(str(path)) as container:
        stream, first, last = media._audio_range(container, 16000, start, end)
        audio = media._decoded(container.decode(stream), 16000, last)
    return audio[first:last].astype(np.float32) / 32768


def best(fn, repeat: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--start", type=float, default=540.0)
    ap.add_argument("--segment", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    end = args.start + args.segment
    print(f"{args.segment:g}-s segment at {args.start:g} s of a {args.minutes:g}-min file")
    print(f"{'format':22} {'whole':>8} {'from start':>10} {'seek':>8} {'seek/whole':>10} "
          f"{'seek/from start':>15} {'max diff (LSB)':>14} {'rms diff':>8}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name, (rate, channels, codec, video) in FORMATS.items():
            path = Path(tmp) / f"long.{EXT[name.split()[0]]}"
            make_file(path, args.minutes * 60, rate, channels, codec, video)
            whole, _ = best(lambda p=path: media.read_audio(p), args.repeat)
            old, want = best(lambda p=path: from_start(p, args.start, end), args.repeat)
            seek, got = best(
                lambda p=path: media.read_audio(p, 16000, args.start, end), args.repeat
            )
            assert len(got) == len(want), (len(got), len(want))
            diff = int(np.abs(got - want).max() * 32768) if len(want) else 0
            rms = np.sqrt(np.mean((got - want) ** 2) / np.mean(want**2)) if len(want) else 0.0
            print(f"{name:22} {whole:7.3f}s {old:9.3f}s {seek:7.3f}s {seek / whole:9.3f}x "
                  f"{seek / old:14.3f}x {diff:14d} {rms:8.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
