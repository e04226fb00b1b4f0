"""Peak memory of feature extraction on a long clip: a 20-minute clip against a 1-minute one.

Generates two clips with ffmpeg (H.264 at 25 fps, ``--size`` squared, ffmpeg's default keyframe
interval of 250 frames, a tone on an AAC track), then runs the features rule's extraction
(:func:`conclugen.features.extract_shard`) on each clip for the ``video2d``, ``video3d`` and
``audio`` roles, each (clip, role) in its own process, and prints that process's peak resident
memory (``ru_maxrss``; with ``--workers`` > 0 plus the largest decoding worker's) and the ratio
20-min / 1-min. Memory that grows with the clip shows up in the ratio: a clip held whole would
take gigabytes at 20 minutes (19,200 frames of 16 fps for the 3D role).

Backbones are the embedded demo's random look-alikes (:func:`conclugen.lookalike.weights.
write_demo_weights`: ResNet-18, 3D ResNet-18, narrow ResDAVEnet), or with ``--sizes tiny`` the
tests' narrow ResNets (widths 8-32), which keep the 3D role's 1,200 windows fast on a small CPU;
memory per chunk hardly depends on the model's width. Usage::

    python benchmarks/long_clip_memory.py [--minutes 1 20] [--size 224] [--crop-size 180]
        [--sizes demo|tiny] [--workers 0] [--roles video2d video3d audio] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from conclugen import backbones
from conclugen.features import extract_shard
from conclugen.ledger import FailureLedger
from conclugen.lookalike import weights as lookalike_weights
from conclugen.media import probe
from conclugen.torchutil import resolve_precision

ROLES = ("video2d", "video3d", "audio")
BATCH = {"video2d": 64, "video3d": 8, "audio": 16}
MEAN_STD = {
    "video2d": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "video3d": ([0.43216, 0.394666, 0.37645], [0.22803, 0.22145, 0.216989]),
    "audio": (None, None),
}
LOADERS = {"video2d": backbones.load_resnet2d, "video3d": backbones.load_resnet3d,
           "audio": backbones.load_davenet}  # fmt: skip


def make_clip(path: Path, minutes: float, size: int) -> None:
    seconds = minutes * 60
    cmd = ["ffmpeg", "-y", "-loglevel", "error",
           "-f", "lavfi", "-i", f"testsrc2=s={size}x{size}:r=25:d={seconds}",
           "-f", "lavfi", "-i", f"sine=f=440:r=16000:d={seconds}",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-shortest", str(path)]  # fmt: skip
    subprocess.run(cmd, check=True)


def write_weights(out: Path, sizes: str) -> dict[str, str]:
    if sizes == "demo":
        return lookalike_weights.write_demo_weights(out)
    out.mkdir(parents=True, exist_ok=True)
    widths = (8, 16, 16, 32)
    return {
        "video2d": str(lookalike_weights.write_torchvision_resnet(out / "r2d.pth", 18, widths)),
        "video3d": str(lookalike_weights.write_hara_resnet3d(
            out / "r3d.pth", depth=18, widths=widths, packaging="hara2020")),
        "audio": str(lookalike_weights.write_resdavenet(out / "davenet.pth",
                                                        widths=(16, 16, 32, 32, 64))),
    }  # fmt: skip


def clip_table(path: Path) -> pd.DataFrame:
    info = probe(path)
    return pd.DataFrame([{
        "sample_id": path.stem, "split": "train", "video": str(path), "audio": None,
        "start": 0.0, "end": info.duration, "width": info.width, "height": info.height,
        "has_audio": info.has_audio, "audio_peak": info.audio_peak, "text": None,
    }])  # fmt: skip


def child(role: str, clip: Path, weights: dict, args) -> dict:
    """One role on one clip in this process: peak RSS and seconds."""
    torch.set_num_threads(args.threads)
    model = LOADERS[role](weights[role])
    mean, std = MEAN_STD[role]
    ledger = FailureLedger("bench")
    batch = args.audio_batch if role == "audio" and args.audio_batch else BATCH[role]
    t0 = time.perf_counter()
    shard = extract_shard(
        role, clip_table(clip), model, ledger, batch_size=batch, workers=args.workers,
        crop_size=args.crop_size, mean=mean, std=std,
        precision=resolve_precision(args.precision, "cpu"),
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    if ledger.rows or not bool(shard.present.all()):
        raise SystemExit(f"{role} on {clip.name}: no feature ({ledger.rows})")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if args.workers else 0
    return {"peak_mb": (own + workers) / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", nargs=2, type=float, default=[1, 20],
                        metavar=("SHORT", "LONG"))  # fmt: skip
    parser.add_argument("--size", type=int, default=224, help="clip width and height")
    parser.add_argument("--crop-size", type=int, default=180)
    parser.add_argument("--sizes", choices=["demo", "tiny"], default="demo")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--roles", nargs="+", choices=ROLES, default=list(ROLES))
    parser.add_argument("--audio-batch", type=int, default=0,
                        help="audio windows per forward pass (default: the demo's 16)")  # fmt: skip
    parser.add_argument("--child", nargs=3, metavar=("ROLE", "CLIP", "WORKDIR"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.child:
        role, clip, work = args.child
        weights = json.loads((Path(work) / "weights.json").read_text())
        print(json.dumps(child(role, Path(clip), weights, args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = [work / f"clip_{m:g}min.mp4" for m in args.minutes]
        t0 = time.perf_counter()
        for path, minutes in zip(clips, args.minutes, strict=True):
            make_clip(path, minutes, args.size)
        (work / "weights.json").write_text(json.dumps(write_weights(work / "weights", args.sizes)))
        short, long = (f"{m:g} min" for m in args.minutes)
        print(f"clips {args.size}x{args.size} 25 fps H.264 ({time.perf_counter() - t0:.0f} s to "
              f"generate), {args.sizes} backbones, crop {args.crop_size}, {args.workers} decoding "
              f"worker(s), {args.threads} torch threads, precision "
              f"{resolve_precision(args.precision, 'cpu')}")  # fmt: skip
        print(f"{'role':8} {'peak MB ' + short:>16} {'peak MB ' + long:>16}  ratio  "
              f"seconds {short}/{long}")  # fmt: skip
        for role in args.roles:
            runs = []
            for clip in clips:
                cmd = [sys.executable, __file__, "--child", role, str(clip), str(work),
                       "--crop-size", str(args.crop_size), "--workers", str(args.workers),
                       "--threads", str(args.threads), "--precision", args.precision,
                       "--audio-batch", str(args.audio_batch)]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{role} on {clip.name} failed:\n{out.stderr[-3000:]}")
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            a, b = runs
            print(f"{role:8} {a['peak_mb']:16.0f} {b['peak_mb']:16.0f} "
                  f"{b['peak_mb'] / a['peak_mb']:6.2f}x  {a['seconds']:.0f}/{b['seconds']:.0f}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
