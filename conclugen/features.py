"""Frozen-backbone features of one shard, one backbone at a time.

Four roles, each one backbone (:mod:`conclugen.backbones`) and one job per (dataset, shard, role):

- ``video2d``: 2D ResNet on frames at 1 fps (every 16th frame of the 16 fps grid the face tracks
  use), avgpool vector per frame, **mean over frames**;
- ``video3d``: Hara 3D ResNet on non-overlapping 16-frame windows of the 16 fps frames, one vector
  per window, **mean over windows**. The last window of a clip is completed by repeating its last
  frame (a clip shorter than 16 frames is one such window), so every real frame counts once and
  no window is pure padding;
- ``audio``: ResDAVEnet on the mel spectrogram of the 16 kHz mono track (torchaudio's
  ``MelSpectrogram`` defaults as the authors used them: n_fft 2048, hop 160, 128 HTK mels, power 2,
  no log; min-max normalised per clip), **mean over all output positions** of the clip;
- ``text``: a Hugging Face encoder, mean of the last hidden state over tokens.

Frames are cropped by the face track (:mod:`conclugen.faces`; the full frame for datasets that
are not cropped, such as VoxCeleb2) and resized to ``crop_size`` squared (180 in the paper) by
one batched ``grid_sample`` call per chunk and view, then normalised with the backbone's mean
and std. The authors swapped ImageNet's mean and std for the 2D frames; we normalise correctly.

Long clips: memory is bounded by a chunk, not by the clip. Video is decoded and cropped
``CHUNK_FRAMES`` sampled frames at a time (whole 16-frame windows for 3D) and pooled as a
running sum over the clip's chunks; audio's spectrogram is computed in STFT chunks and the model
runs on windows of ``AUDIO_WINDOW`` frames with the receptive field's context on either side
(:class:`AudioRunner`). Both give the whole clip's features up to float rounding (tested).

Errors: a clip that cannot be decoded, or whose input makes the backbone or the tokenizer raise
inside a batch, is that clip's ledger entry with the error's message; the batch is run again
without it (each member alone), so its batch-mates keep their features. Errors that are not a
clip's (:func:`conclugen.ledger.is_fatal`: out of memory, a broken device, missing files) fail
the job.

Augmented views (Instance-Cont): for datasets in ``views.datasets`` each clip also yields K
features of augmented copies: random resized crop (taken inside the face box), horizontal flip,
colour jitter, grayscale and Gaussian blur (:func:`view_params`; how these differ from the
authors' views: docs/fidelity.md), with parameters drawn once per clip (temporally consistent)
from a generator seeded by (seed, sample id, view), so the 2D and 3D jobs augment the same view
identically and a rerun reproduces it.

Speed: clips are decoded, cropped and augmented by DataLoader workers; the main process gathers
the inputs of several clips into batches of ``batch_size`` model inputs (frames, windows,
spectrogram windows or texts), runs them and pools per clip with tensor operations. Nothing
loops over frames in Python. The vision and audio models run with BatchNorm folded into their
convolutions, in channels_last, and in bf16 where the hardware multiplies bf16 natively (a GPU,
or a CPU with AMX; config ``features.precision``): bf16 features differ from fp32 ones by
~0.3-0.7 % (relative L2), below what float16 storage keeps of a feature's small components.

Per-shard stores (:func:`write_shard`) hold ``sample_id``, ``split``, ``feature [N, D]``,
``present [N]`` (False where the clip has no such modality: no or silent audio track, no text)
and ``views [N, K, D]``; :func:`merge_shards` joins them into ``features.zarr``
(:mod:`conclugen.featstore` layout, video = 2D || 3D).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import zarr

from conclugen import featstore
from conclugen.backbones import for_inference
from conclugen.io import atomic_path
from conclugen.ledger import is_fatal
from conclugen.media import SILENCE_PEAK, MediaError, read_audio, read_frames, sample_times
from conclugen.progress import progress
from conclugen.shards import stable_hash

log = logging.getLogger("conclugen")

ROLES = ("video2d", "video3d", "audio", "text")
VIDEO_ROLES = ("video2d", "video3d")
FPS = 16  # the face tracks' frame grid; 2D takes every FPS-th frame (1 fps)
WINDOW = 16  # frames per 3D window
CHUNK_FRAMES = 128  # sampled frames decoded and cropped at a time (8 s at 16 fps, 128 s at 1 fps)
SAMPLE_RATE = 16000
N_FFT, HOP, N_MELS = 2048, 160, 128
AUDIO_WINDOW = 2048  # spectrogram frames per audio model input (20.5 s), plus context each side


# ---------------------------------------------------------------------------------------------
# Clips of a shard


def shard_clips(
    manifest: pd.DataFrame,
    probe: pd.DataFrame,
    faces: pd.DataFrame | None = None,
    subtitles: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The usable clips of one shard: manifest rows that passed the probe (and got a face track
    when ``faces`` is given), with ``end`` filled from the probe and ``text`` from the subtitles
    when the dataset has them (empty where Whisper heard no speech)."""
    clips = manifest.merge(probe, on="sample_id")
    if faces is not None:
        clips = clips[clips["sample_id"].isin(faces["sample_id"])]
    clips = clips.copy()
    clips["end"] = clips["end"].where(clips["end"].notna(), clips["start"] + clips["duration"])
    if subtitles is not None:
        text = subtitles.set_index("sample_id")["text"]
        clips["text"] = clips["sample_id"].map(text)
    return clips.reset_index(drop=True)


def face_boxes(faces: pd.DataFrame | None) -> dict[str, np.ndarray]:
    """sample_id -> [T, 4] smoothed track boxes on the 16 fps grid (empty without faces)."""
    if faces is None:
        return {}
    faces = faces.sort_values(["sample_id", "frame"])
    boxes = faces[["tx1", "ty1", "tx2", "ty2"]].to_numpy(np.float32)
    ids = faces["sample_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return {ids[a]: boxes[a:b] for a, b in zip(starts, np.r_[starts[1:], len(ids)], strict=True)}


# ---------------------------------------------------------------------------------------------
# Cropping and augmentation (one call per clip and view, never per frame)


@dataclass(frozen=True)
class ViewParams:
    """One augmented view's parameters, shared by all frames of a clip."""

    crop: tuple[float, float, float, float]  # x0, y0, w, h as fractions of the face box
    flip: bool
    jitter: tuple[float, float, float, float] | None  # brightness, contrast, saturation, hue
    gray: bool
    blur_sigma: float | None


def view_params(sample_id: str, view: int, seed: int) -> ViewParams:
    """Draw the augmentation of ``view`` of a clip (random resized crop scale 0.8-1 ratio
    0.8-1.2, flip p 0.5, colour jitter 0.8/0.8/0.8/0.2 p 0.8, grayscale p 0.2, blur sigma 0.1-2
    p 0.5), deterministically from its seed. The crop ranges are not the authors' SimCLR ones
    (docs/fidelity.md)."""
    rng = np.random.default_rng([seed, stable_hash(sample_id), view])
    crop = (0.0, 0.0, 1.0, 1.0)
    for _ in range(10):
        area = rng.uniform(0.8, 1.0)
        ratio = np.exp(rng.uniform(np.log(0.8), np.log(1.2)))
        w, h = np.sqrt(area * ratio), np.sqrt(area / ratio)
        if w <= 1 and h <= 1:
            crop = (rng.uniform(0, 1 - w), rng.uniform(0, 1 - h), w, h)
            break
    flip = bool(rng.random() < 0.5)
    jitter = None
    if rng.random() < 0.8:
        b, c, s = rng.uniform(0.2, 1.8, size=3)
        jitter = (float(b), float(c), float(s), float(rng.uniform(-0.2, 0.2)))
    gray = bool(rng.random() < 0.2)
    blur = float(rng.uniform(0.1, 2.0)) if rng.random() < 0.5 else None
    return ViewParams(tuple(float(v) for v in crop), flip, jitter, gray, blur)


def clamp_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes clipped to the frame; a box that collapses there becomes the whole frame."""
    boxes = np.asarray(boxes, dtype=np.float32).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    bad = (boxes[:, 2] - boxes[:, 0] < 2) | (boxes[:, 3] - boxes[:, 1] < 2) | np.isnan(boxes).any(1)
    boxes[bad] = (0, 0, width, height)
    return boxes


def crop_frames(
    frames: np.ndarray,
    boxes: np.ndarray,
    size: int,
    views: list[ViewParams] = (),
    pool_boxes: np.ndarray | None = None,
) -> torch.Tensor:
    """Crop ``frames`` [T, H, W, 3] uint8 to ``boxes`` [T, 4] and resize to ``size`` squared:
    uint8 [1 + len(views), T, 3, size, size], the plain crop first, then each augmented view.

    All frames of a view are sampled in one bilinear ``grid_sample`` call, each frame through
    its own box (an affine map; a flip is a negative x scale). When every box is at least twice the
    crop size the frames are first average-pooled by the whole factor, so shrinking a large face
    does not alias. ``pool_boxes`` (default ``boxes``) are the boxes that factor is taken from:
    the whole clip's, when ``frames`` are one chunk of it, so every chunk is pooled alike.
    """
    from torchvision.transforms.v2 import functional as F

    if len(frames) == 0:
        return torch.zeros(1 + len(views), 0, 3, size, size, dtype=torch.uint8)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    boxes = torch.from_numpy(clamp_boxes(boxes, x.shape[3], x.shape[2]))
    pool = boxes if pool_boxes is None else clamp_boxes(pool_boxes, x.shape[3], x.shape[2])
    pool = torch.as_tensor(pool)
    factor = int(torch.minimum(pool[:, 2] - pool[:, 0], pool[:, 3] - pool[:, 1]).min()) // size
    if factor >= 2:
        x = torch.nn.functional.avg_pool2d(x, factor, ceil_mode=True)
        boxes = boxes / factor
    height, width = x.shape[2:]
    out = []
    for p in [None, *views]:
        b = boxes
        if p is not None:
            x0, y0, w, h = p.crop
            bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            left, top = boxes[:, 0] + x0 * bw, boxes[:, 1] + y0 * bh
            b = torch.stack([left, top, left + w * bw, top + h * bh], 1)
        sign = -1.0 if p is not None and p.flip else 1.0
        theta = torch.zeros(len(x), 2, 3)
        theta[:, 0, 0] = sign * (b[:, 2] - b[:, 0]) / width
        theta[:, 0, 2] = (b[:, 0] + b[:, 2]) / width - 1
        theta[:, 1, 1] = (b[:, 3] - b[:, 1]) / height
        theta[:, 1, 2] = (b[:, 1] + b[:, 3]) / height - 1
        grid = torch.nn.functional.affine_grid(theta, [len(x), 3, size, size], align_corners=False)
        crop = (
            torch.nn.functional.grid_sample(
                x, grid, mode="bilinear", padding_mode="border", align_corners=False
            )
            / 255
        )
        if p is not None:
            if p.jitter is not None:
                bright, contrast, saturation, hue = p.jitter
                crop = F.adjust_brightness(crop, bright)
                crop = F.adjust_contrast(crop, contrast)
                crop = F.adjust_saturation(crop, saturation)
                crop = F.adjust_hue(crop, hue)
            if p.gray:
                crop = F.rgb_to_grayscale(crop, num_output_channels=3)
            if p.blur_sigma is not None:
                k = int(0.1 * size) // 2 * 2 + 1
                crop = F.gaussian_blur(crop, [k, k], [p.blur_sigma, p.blur_sigma])
        out.append((crop.clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.stack(out)


def windows(clip: torch.Tensor, length: int = WINDOW) -> torch.Tensor:
    """[V, T, 3, H, W] frames -> [V, ceil(T / length), 3, length, H, W] non-overlapping windows;
    the last window is completed by repeating the clip's last frame."""
    v, t = clip.shape[:2]
    n = -(-t // length)
    pad = n * length - t
    if pad:
        clip = torch.cat([clip, clip[:, -1:].expand(v, pad, *clip.shape[2:])], 1)
    return clip.reshape(v, n, length, *clip.shape[2:]).transpose(2, 3)


# ---------------------------------------------------------------------------------------------
# Whose error: a clip's (its ledger entry) or the machine's (the job fails)


def describe(error: Exception) -> str:
    """A clip's error as its ledger reason: the type and message, at most 500 characters."""
    return f"{type(error).__name__}: {error}"[:500]


def _each_or_alone(forward, items: list) -> list:
    """``forward(items)``, one output per item; when that raises an error that is not fatal
    (:func:`is_fatal`), every item is run again alone, so one clip whose input makes the model or
    the tokenizer raise costs only itself: its slot holds the exception. Fatal errors propagate."""
    try:
        return list(forward(items))
    except Exception as e:
        if is_fatal(e):
            raise
        if len(items) == 1:
            return [e]
    outs = []
    for item in items:
        try:
            outs.extend(forward([item]))
        except Exception as e:
            if is_fatal(e):
                raise
            outs.append(e)
    return outs


# ---------------------------------------------------------------------------------------------
# Decoding workers


@dataclass
class ClipInputs:
    """What a worker prepared for one chunk of a clip: model inputs, or why there are none."""

    sample_id: str
    inputs: torch.Tensor | None  # video: [V, n, ...] (n may be 0); audio: [F, T] spectrogram
    present: bool = True  # False: the clip lacks this modality (not an error)
    error: str | None = None  # the clip is unusable (ledger)
    last: bool = True  # the clip's last chunk


class VideoClips(torch.utils.data.Dataset):
    """Decodes, crops and augments clips for ``video2d`` (1 fps frames) or ``video3d`` (16 fps
    frames in 16-frame windows), one chunk of at most ``chunk_frames`` sampled frames per item.

    Items run through each clip's chunks in order, then the next clip's. A chunk is decoded by its
    own :func:`~conclugen.media.read_frames` call on its times (which starts at the keyframe before
    them), so a long clip is never held whole: memory is bounded by the chunk, at the price of
    decoding up to one keyframe interval again per chunk after the first. For ``video3d``
    ``chunk_frames`` is a multiple of :data:`WINDOW`, so a chunk holds whole windows and chunking
    does not change them.
    An exception raised while preparing a chunk (other than :func:`is_fatal` ones) is its clip's
    error.
    """

    read = staticmethod(read_frames)  # (path, times) -> (frames, found)

    def __init__(self, clips: pd.DataFrame, role: str, boxes: dict[str, np.ndarray],
                 crop_size: int, views: int = 0, view_seed: int = 0,
                 chunk_frames: int = CHUNK_FRAMES):  # fmt: skip
        if role not in VIDEO_ROLES:
            raise ValueError(f"not a video role: {role}")
        if chunk_frames <= 0 or (role == "video3d" and chunk_frames % WINDOW):
            raise ValueError(f"chunk_frames {chunk_frames}: video3d needs a multiple of {WINDOW}")
        self.clips = clips[["sample_id", "video", "start", "end", "width", "height"]].to_dict(
            "records"
        )
        self.role, self.boxes, self.size = role, boxes, crop_size
        self.views, self.view_seed = views, view_seed
        self.items = []  # (clip, first and end sampled frame of the chunk)
        for i, clip in enumerate(self.clips):
            n = len(self.grid(clip)[1])
            self.items += [(i, a, min(a + chunk_frames, n)) for a in range(0, n, chunk_frames)]

    def grid(self, clip: dict) -> tuple[np.ndarray, np.ndarray]:
        """The clip's 16 fps times and the positions on that grid this role samples."""
        times = sample_times(clip["start"], clip["end"], FPS)
        return times, np.arange(0, len(times), FPS if self.role == "video2d" else 1)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> ClipInputs:
        i, a, b = self.items[k]
        clip = self.clips[i]
        last = k + 1 == len(self.items) or self.items[k + 1][0] != i
        try:
            return ClipInputs(clip["sample_id"], self.chunk(clip, a, b), last=last)
        except MediaError as e:
            return ClipInputs(clip["sample_id"], None, error=str(e), last=last)
        except Exception as e:
            if is_fatal(e):
                raise
            return ClipInputs(clip["sample_id"], None, error=describe(e), last=last)

    def chunk(self, clip: dict, a: int, b: int) -> torch.Tensor:
        """Sampled frames ``a:b`` of a clip, cropped: [V, n, 3, S, S] (2D) or windows (3D)."""
        times, index = self.grid(clip)
        track = self.boxes.get(clip["sample_id"])
        if track is None:
            boxes = np.tile([0, 0, clip["width"], clip["height"]], (len(index), 1))
        else:
            boxes = track[np.minimum(index, len(track) - 1)]
        frames, found = self.read(clip["video"], times[index[a:b]])
        # A clip always has its first frame; frames past the video's real end are dropped.
        keep = found | (np.arange(a, b) == 0)
        params = [view_params(clip["sample_id"], k, self.view_seed) for k in range(self.views)]
        crops = crop_frames(frames[keep], boxes[a:b][keep], self.size, params, pool_boxes=boxes)
        return crops if self.role == "video2d" else windows(crops)


def mel_filters() -> torch.Tensor:
    """[N_MELS, N_FFT // 2 + 1] HTK mel filterbank without area normalisation (torchaudio's
    ``MelSpectrogram`` defaults, which the authors used), 0-8 kHz."""
    import librosa

    fb = librosa.filters.mel(
        sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=SAMPLE_RATE / 2, htk=True,
        norm=None,
    )  # fmt: skip
    return torch.from_numpy(fb)


def spectrogram(audio: np.ndarray, filters: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Power mel spectrogram [N_MELS, 1 + len // HOP] of 16 kHz audio, min-max scaled to [0, 1]
    per clip (the authors' normalisation; no log).

    The frames are those of ``torch.stft(center=True, pad_mode="reflect")``, computed ``chunk``
    frames at a time: the complex STFT of 20 minutes whole would take ~1 GB, its mel rows 61 MB.
    """
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    n, pad, frames = len(x), N_FFT // 2, 1 + len(x) // HOP
    window = torch.hann_window(N_FFT)
    mel = torch.empty(filters.shape[0], frames)
    for first in range(0, frames, chunk):
        end = min(first + chunk, frames)
        # Samples of the reflect-padded signal that frames first..end-1 cover.
        index = (torch.arange(first * HOP, (end - 1) * HOP + N_FFT) - pad).abs()
        index = torch.where(index >= n, 2 * n - 2 - index, index)
        stft = torch.stft(x[index], N_FFT, HOP, window=window, center=False, return_complex=True)
        torch.matmul(filters, stft.abs().pow_(2), out=mel[:, first:end])
    low, high = mel.min(), mel.max()
    return mel.sub_(low).div_(high - low + 1e-8)


class AudioClips(torch.utils.data.Dataset):
    """Decodes one clip's audio per item into its mel spectrogram. No audio track (or one too
    short to frame) is an absent modality; another exception (other than :func:`is_fatal` ones)
    while preparing it is the clip's error."""

    def __init__(self, clips: pd.DataFrame):
        self.clips = clips.to_dict("records")
        self.filters = mel_filters()

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> ClipInputs:
        clip = self.clips[i]
        try:
            return self.prepare(clip)
        except Exception as e:
            if is_fatal(e):
                raise
            return ClipInputs(clip["sample_id"], None, error=describe(e))

    def prepare(self, clip: dict) -> ClipInputs:
        if not clip["has_audio"] or clip["audio_peak"] < SILENCE_PEAK:
            return ClipInputs(clip["sample_id"], None, present=False)
        source = clip["audio"] if isinstance(clip.get("audio"), str) else clip["video"]
        try:
            audio = read_audio(source, SAMPLE_RATE, clip["start"], clip["end"])
        except MediaError:
            return ClipInputs(clip["sample_id"], None, present=False)
        if len(audio) <= N_FFT // 2:  # too short to frame (reflect padding needs more)
            return ClipInputs(clip["sample_id"], None, present=False)
        return ClipInputs(clip["sample_id"], spectrogram(audio, self.filters))


def decoded(dataset, workers: int) -> Iterator[ClipInputs]:
    """The dataset's items in order, prepared by ``workers`` processes (0: in this process)."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )  # fmt: skip
    yield from loader


# ---------------------------------------------------------------------------------------------
# Running the backbones, batched across clips


@dataclass
class Result:
    sample_id: str
    feature: torch.Tensor | None  # [V, D] float32 on the CPU: the plain clip, then its views
    present: bool = True
    error: str | None = None


class _Pools:
    """Running per-clip sums of feature vectors whose inputs arrive in pieces (chunks, audio
    windows) that may span several batches; a clip's result is its sum over the count of vectors
    summed, ready once its last piece has arrived and nothing of it is pending."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, float] = {}
        self.decided: dict[str, Result] = {}  # clips without features: failed or absent
        self.finished: list[str] = []  # clips whose last piece arrived, in order

    def add(self, sample_id: str, total: torch.Tensor, count: float) -> None:
        if sample_id not in self.decided:
            self.sums[sample_id] = self.sums.get(sample_id, 0) + total
            self.counts[sample_id] = self.counts.get(sample_id, 0) + count

    def decide(self, result: Result) -> None:
        """A clip's result without features; the first one counts (later pieces are ignored)."""
        self.decided.setdefault(result.sample_id, result)

    def ready(self) -> list[Result]:
        """The finished clips' results (call when nothing is pending)."""
        done, self.finished = self.finished, []
        out = []
        for sample_id in done:
            total, count = self.sums.pop(sample_id, None), self.counts.pop(sample_id, 0)
            result = self.decided.pop(sample_id, None)
            if result is None and count:
                result = Result(sample_id, total / count)
            elif result is None:  # not expected: a clip's first frame is always kept
                result = Result(sample_id, None, error="no model inputs")
            out.append(result)
        return out


class VideoRunner:
    """Normalises uint8 frames [B, 3, H, W] or windows [B, 3, T, H, W] on the device and runs a
    2D or 3D backbone in its inference form (:func:`conclugen.backbones.for_inference`:
    BatchNorm folded, channels_last, bf16 or fp32 as ``precision`` says)."""

    def __init__(self, model: torch.nn.Module, mean, std, device: str, is_3d: bool,
                 precision: str = "fp32"):  # fmt: skip
        self.device = torch.device(device)
        self.format = torch.channels_last_3d if is_3d else torch.channels_last
        self.model = for_inference(model, self.device, precision, self.format)
        shape = (1, 3, 1, 1, 1) if is_3d else (1, 3, 1, 1)
        self.mean = torch.tensor(mean, device=self.device).reshape(shape)
        self.std = torch.tensor(std, device=self.device).reshape(shape)
        self.dim = model.feature_dim

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).float().div_(255)
        x = ((x - self.mean) / self.std).to(self.model.input_dtype)
        return self.model(x.contiguous(memory_format=self.format)).float().cpu()


def run_video(runner, chunks: Iterable[ClipInputs], batch_size: int) -> Iterator[Result]:
    """Pool each clip's frames (or windows) to one vector per view, the mean over all of them
    (a running sum over the clip's chunks), running ``batch_size`` inputs per forward pass
    gathered across chunks and clips. Results come in the clips' order. A chunk whose inputs
    make the model raise (:func:`_each_or_alone`) fails its clip with that message."""
    pools = _Pools()
    pending: list[ClipInputs] = []
    units = 0
    for chunk in chunks:
        if chunk.error is not None:
            pools.decide(Result(chunk.sample_id, None, error=chunk.error))
        elif chunk.sample_id not in pools.decided and chunk.inputs.shape[1]:
            pending.append(chunk)
            units += chunk.inputs.shape[0] * chunk.inputs.shape[1]
        if chunk.last:
            pools.finished.append(chunk.sample_id)
        if units >= batch_size:
            _flush_video(runner, pending, batch_size, pools)
            pending, units = [], 0
            yield from pools.ready()
    _flush_video(runner, pending, batch_size, pools)
    yield from pools.ready()


def _flush_video(runner, pending: list[ClipInputs], batch_size: int, pools: _Pools) -> None:
    """Run the pending chunks' inputs, ``batch_size`` per forward pass, into their clips' sums."""

    def forward(group: list[ClipInputs]) -> list[torch.Tensor]:
        flat = torch.cat([c.inputs.flatten(0, 1) for c in group])
        out = torch.cat([runner(flat[i : i + batch_size]) for i in range(0, len(flat), batch_size)])
        sizes = [c.inputs.shape[0] * c.inputs.shape[1] for c in group]
        parts = zip(group, out.split(sizes), strict=True)
        return [f.reshape(*c.inputs.shape[:2], -1).sum(1) for c, f in parts]

    if not pending:
        return
    for chunk, out in zip(pending, _each_or_alone(forward, pending), strict=True):
        if isinstance(out, Exception):
            pools.decide(Result(chunk.sample_id, None, error=f"backbone: {describe(out)}"))
        else:
            pools.add(chunk.sample_id, out, chunk.inputs.shape[1])


def _time_convs(model: torch.nn.Module) -> list[tuple[torch.nn.Conv2d, int]]:
    """ResDAVEnet's convolutions after the stem, each with its input's stride level along time
    (its input step is 2**level spectrogram frames); empty for a model without those layers."""
    stages = getattr(model, "stages", None)
    if not isinstance(stages, int) or not hasattr(model, "layer1"):
        return []
    convs, level = [], 0
    for i in range(1, stages + 1):
        for block in getattr(model, f"layer{i}"):
            if block.downsample is not None:
                convs.append((block.downsample[0], level))
            convs.append((block.conv1, level))
            level += block.conv1.stride[1].bit_length() - 1  # stride 2: one level
            convs.append((block.conv2, level))
    return convs


def time_context(model: torch.nn.Module) -> int | None:
    """Spectrogram frames on either side that one output step of ResDAVEnet depends on (its
    receptive field's radius along time), rounded up to whole output steps; None for a model
    whose layers are not ResDAVEnet's (it then runs on whole clips)."""
    convs = _time_convs(model)
    if not convs:
        return None
    radius = sum(conv.kernel_size[1] // 2 * 2**level for conv, level in convs)
    stride = 2**model.stages
    return -(-radius // stride) * stride


class AudioRunner:
    """Runs ResDAVEnet (inference form, as :class:`VideoRunner`) on padded batches of
    spectrogram pieces; pools each clip over its own output positions.

    Padding is exact: a forward pre-hook on every convolution after the stem zeroes each batch
    item's activations past its own length at that stride (``ceil(length / 2**level)``), which is
    what the convolutions' zero padding gives a clip run alone; without it the padded zeros' own
    activations (the folded BatchNorms' biases) reached a clip's last steps (3 % relative L2 for
    a 3-s clip batched with a 3.2-s one, demo model). So a feature does not depend on its batch.

    A spectrogram longer than ``window`` frames is cut into pieces of ``window`` frames (whole
    output steps), each given :func:`time_context` frames of the clip on either side; only the
    piece's own output steps count. The model is convolutional along time, so a piece's own steps
    are the whole clip's steps, and the mean over all positions equals the whole clip's up to
    float rounding (tested): memory is bounded by the window, not by the clip, at the cost of
    running the context too (2 x 432 frames per 2048 for the real ResDAVEnet, kernel 9).
    """

    def __init__(self, model: torch.nn.Module, device: str, precision: str = "fp32",
                 window: int | None = AUDIO_WINDOW):  # fmt: skip
        self.device = torch.device(device)
        self.context = time_context(model) if window else None
        self.stride = 2 ** getattr(model, "stages", 0)
        self.window = max(1, (window or 1) // self.stride) * self.stride
        self.model = for_inference(model, self.device, precision)
        self.dim = model.feature_dim
        self.lengths: torch.Tensor | None = None  # [B] input frames of the batch being run
        for conv, level in _time_convs(self.model):
            conv.register_forward_pre_hook(self._mask_past_end(level))

    def _mask_past_end(self, level: int):
        def hook(_module, args):
            # In place: the input is an activation of this forward pass, and positions past a
            # clip's end reach only outputs past its end (masked again, and left out of the mean).
            x = args[0]
            valid = -(-self.lengths // 2**level)
            past = torch.arange(x.shape[-1], device=x.device)[None] >= valid[:, None]
            x.masked_fill_(past[:, None, None], 0)

        return hook

    def pieces(self, spec: torch.Tensor) -> list[tuple[torch.Tensor, int, int]]:
        """``spec`` [F, T] as model inputs: ``(input [F, L], first, end)``, where output steps
        ``first:end`` of the input are the ones that count."""
        t = spec.shape[1]
        if self.context is None or t <= self.window:
            return [(spec, 0, int(self.model.output_steps(t)))]
        s, steps = self.stride, int(self.model.output_steps(t))
        w, c = self.window // s, self.context // s
        out = []
        for a in range(0, steps, w):
            b = min(a + w, steps)
            lo = max(0, a - c)  # in output steps, so the piece starts on the clip's stride grid
            out.append((spec[:, lo * s : min(t, (b + c) * s)], a - lo, b - lo))
        return out

    @torch.inference_mode()
    def sums(self, pieces: list[tuple[torch.Tensor, int, int]]) -> list[tuple[torch.Tensor, int]]:
        """One forward pass over ``pieces`` padded to the longest: per piece the sum [D] of its
        counted outputs over rows and steps, and how many positions that sum holds."""
        longest = max(p[0].shape[1] for p in pieces)
        batch = torch.zeros(len(pieces), pieces[0][0].shape[0], longest)
        for i, (x, _, _) in enumerate(pieces):
            batch[i, :, : x.shape[1]] = x
        self.lengths = torch.tensor([p[0].shape[1] for p in pieces], device=self.device)
        out = self.model(batch.to(self.device, self.model.input_dtype)).float()  # [B, D, H', T']
        first = torch.tensor([p[1] for p in pieces], device=self.device)
        end = torch.tensor([p[2] for p in pieces], device=self.device)
        steps = torch.arange(out.shape[3], device=self.device)[None]
        mask = (steps >= first[:, None]) & (steps < end[:, None])  # [B, T']
        total = (out * mask[:, None, None]).sum((2, 3)).cpu()
        counts = ((end - first) * out.shape[2]).tolist()
        return list(zip(total, counts, strict=True))

    def __call__(self, specs: list[torch.Tensor]) -> torch.Tensor:
        """The mean feature [B, D] of each spectrogram, all their pieces in one forward pass."""
        owners = [(i, p) for i, s in enumerate(specs) for p in self.pieces(s)]
        sums = torch.zeros(len(specs), self.dim)
        counts = torch.zeros(len(specs))
        for (i, _), (total, count) in zip(owners, self.sums([p for _, p in owners]), strict=True):
            sums[i] += total
            counts[i] += count
        return sums / counts[:, None]


def run_audio(runner, clips: Iterable[ClipInputs], batch_size: int) -> Iterator[Result]:
    """One vector per clip, the mean over all its output positions; ``batch_size`` pieces
    (:meth:`AudioRunner.pieces`) per forward pass, gathered across clips. A piece whose input
    makes the model raise (:func:`_each_or_alone`) fails its clip with that message."""
    pools = _Pools()
    pending: list[tuple[str, tuple]] = []

    def flush():
        if pending:
            outs = _each_or_alone(lambda group: runner.sums([p for _, p in group]), pending)
            for (sample_id, _), out in zip(pending, outs, strict=True):
                if isinstance(out, Exception):
                    pools.decide(Result(sample_id, None, error=f"backbone: {describe(out)}"))
                else:
                    pools.add(sample_id, out[0][None], out[1])
            pending.clear()
        return pools.ready()

    for clip in clips:
        if clip.inputs is None:
            pools.decide(Result(clip.sample_id, None, present=clip.present, error=clip.error))
        else:
            for piece in runner.pieces(clip.inputs):
                pending.append((clip.sample_id, piece))
                if len(pending) >= batch_size:
                    yield from flush()
        pools.finished.append(clip.sample_id)
    yield from flush()


def run_text(encoder, texts: list, batch_size: int, device: str) -> list[Result]:
    """One vector per text (absent where the text is missing or empty); texts are encoded in
    batches of similar length so padding stays small (padding does not change a feature). A
    text that makes the tokenizer or the model raise (:func:`_each_or_alone`) is an error
    result with that message."""
    clean = ["" if not isinstance(t, str) else t.strip() for t in texts]
    order = sorted((i for i, t in enumerate(clean) if t), key=lambda i: len(clean[i]))
    feats: dict[int, torch.Tensor | Exception] = {}

    def forward(group: list[str]) -> torch.Tensor:
        return encoder.encode(group, device).float().cpu()

    batches = range(0, len(order), batch_size)
    for start in progress(batches, len(batches), "text batches"):
        idx = order[start : start + batch_size]
        feats.update(zip(idx, _each_or_alone(forward, [clean[i] for i in idx]), strict=True))
    results = []
    for i in range(len(clean)):
        f = feats.get(i)
        if f is None:
            results.append(Result(str(i), None, present=False))
        elif isinstance(f, Exception):
            results.append(Result(str(i), None, error=f"text encoder: {describe(f)}"))
        else:
            results.append(Result(str(i), f[None]))
    return results


# ---------------------------------------------------------------------------------------------
# One shard, one role


@dataclass
class ShardFeatures:
    """The features of one shard for one role, in the clips' order."""

    sample_id: np.ndarray  # [N]
    split: np.ndarray  # [N]
    feature: torch.Tensor  # [N, D] float32
    present: torch.Tensor  # [N] bool
    views: torch.Tensor | None  # [N, K, D]


def extract_shard(
    role: str,
    clips: pd.DataFrame,
    model,
    ledger,
    device: str = "cpu",
    batch_size: int = 32,
    workers: int = 1,
    boxes: dict[str, np.ndarray] | None = None,
    crop_size: int = 180,
    mean=None,
    std=None,
    views: int = 0,
    view_seed: int = 0,
    precision: str = "fp32",
    chunk_frames: int = CHUNK_FRAMES,
    audio_window: int | None = AUDIO_WINDOW,
) -> ShardFeatures:
    """Features of ``clips`` (:func:`shard_clips`) for ``role`` with a loaded backbone.

    Clips that cannot be decoded, or whose input makes the backbone (or tokenizer) raise, are
    recorded in ``ledger`` with the error's message and left out of this role's shard (the merge
    marks the modality absent for audio and text; the video roles decide whether a sample stays);
    the rest of their batch is run again without them. Errors that are not a clip's
    (:func:`is_fatal`: out of memory, missing files) propagate. Clips without the modality stay in
    with ``present=False`` and zeros. ``views`` applies to the video roles only. ``precision``
    (``bf16`` or ``fp32``) is the vision and audio backbones'; the text encoder always runs in
    fp32 (it is a small share of the time). ``chunk_frames`` (video) and ``audio_window``
    (spectrogram frames; None: whole clips) bound the memory a long clip takes.
    """
    views = views if role in VIDEO_ROLES else 0
    if role in VIDEO_ROLES:
        data = VideoClips(clips, role, boxes or {}, crop_size, views, view_seed, chunk_frames)
        runner = VideoRunner(model, mean, std, device, role == "video3d", precision)
        results = run_video(runner, decoded(data, workers), batch_size)
    elif role == "audio":
        # Batches of similar length waste little on padding; rows return to the clips' order.
        by_length = clips.assign(length=clips["end"] - clips["start"])
        by_length = by_length.sort_values(["length", "sample_id"], kind="stable")
        runner = AudioRunner(model, device, precision, audio_window)
        results = run_audio(runner, decoded(AudioClips(by_length), workers), batch_size)
    elif role == "text":
        results = run_text(model, list(clips["text"]), batch_size, device)
        ids = clips["sample_id"].to_numpy()
        results = [Result(ids[int(r.sample_id)], r.feature, r.present, r.error) for r in results]
    else:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    dim = model.feature_dim
    kept, feats, present = [], [], []
    for r in progress(results, len(clips), f"{role} clips"):
        if r.error is not None:
            ledger.drop(r.sample_id, r.error)
            continue
        kept.append(r.sample_id)
        present.append(r.present and r.feature is not None)
        feats.append(r.feature if r.feature is not None else torch.zeros(1 + views, dim))
    if role == "audio":  # back to the clips' order
        rank = {sample_id: i for i, sample_id in enumerate(clips["sample_id"])}
        order = sorted(range(len(kept)), key=lambda i: rank[kept[i]])
        kept, feats, present = ([x[i] for i in order] for x in (kept, feats, present))
    stacked = torch.stack(feats) if feats else torch.zeros(0, 1 + views, dim)
    split = clips.set_index("sample_id").loc[kept, "split"].to_numpy() if kept else np.array([])
    return ShardFeatures(
        sample_id=np.array(kept, dtype=str),
        split=np.asarray(split, dtype=str),
        feature=stacked[:, 0],
        present=torch.tensor(present, dtype=torch.bool),
        views=stacked[:, 1:] if views else None,
    )


def write_shard(path: str | os.PathLike, shard: ShardFeatures, dtype: str, attrs: dict) -> None:
    """Write one shard's features atomically; ``complete`` is set last."""
    with atomic_path(path) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        featstore.write_array(group, "sample_id", shard.sample_id, str)
        featstore.write_array(group, "split", shard.split, str)
        featstore.write_array(group, "feature", shard.feature, dtype)
        featstore.write_array(group, "present", shard.present, bool)
        if shard.views is not None:
            featstore.write_array(group, "views", shard.views, dtype)
        group.attrs.update(attrs, dim=int(shard.feature.shape[1]))
        group.attrs["complete"] = True


def open_shard(path: str | os.PathLike):
    """A finished shard store (refuses one without the ``complete`` attribute)."""
    group = zarr.open_group(path, mode="r")
    if not group.attrs.get("complete"):
        raise ValueError(f"{path} is not a complete shard store (no 'complete' attribute)")
    return group


# ---------------------------------------------------------------------------------------------
# Merging the shards of all roles into features.zarr


def merge_shards(
    shards: dict[str, list[str | os.PathLike]], out: str | os.PathLike, dtype: str = "float16"
) -> int:
    """Join per-shard, per-role stores into one :mod:`conclugen.featstore` store; returns N.

    ``shards``: role -> shard store paths (same shard order for every role). A sample is kept
    when both video roles have it; audio and text rows follow it (absent when missing). Rows are
    copied shard by shard, so a dataset larger than memory streams through.
    """
    missing = set(VIDEO_ROLES) - set(shards)
    if missing:
        raise ValueError(f"merging needs the video roles; missing {sorted(missing)}")
    counts = {len(paths) for paths in shards.values()}
    if len(counts) != 1:
        raise ValueError("every role needs the same number of shards")
    groups = {role: [open_shard(p) for p in paths] for role, paths in shards.items()}
    mods = ["video"] + [m for m in ("audio", "text") if m in groups]
    dims = {r: int(groups[r][0].attrs["dim"]) for r in groups}
    dims["video"] = dims["video2d"] + dims["video3d"]
    n_views = min(int(g.attrs.get("views", 0)) for r in VIDEO_ROLES for g in groups[r])

    per_shard = []  # (kept ids, split, {role: row index into that role's shard})
    for k in range(counts.pop()):
        ids = {r: featstore.read_strings(groups[r][k]["sample_id"]) for r in groups}
        kept = [s for s in ids["video2d"] if s in set(ids["video3d"])]
        lost = set(ids["video2d"]).symmetric_difference(ids["video3d"])
        if lost:
            log.warning("shard %d: %d clips lack one of the video features; left out", k, len(lost))
        rows = {r: pd.Index(ids[r]).get_indexer(kept) for r in groups}
        split = featstore.read_strings(groups["video2d"][k]["split"])[rows["video2d"]]
        per_shard.append((np.array(kept, dtype=str), split, rows))
    n = sum(len(p[0]) for p in per_shard)

    with atomic_path(out) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        arrays = {"sample_id": featstore.create_array(group, "sample_id", (n,), str),
                  "split": featstore.create_array(group, "split", (n,), str)}  # fmt: skip
        for m in mods:
            arrays[m] = featstore.create_array(group, m, (n, dims[m]), dtype)
            arrays[f"{m}_present"] = featstore.create_array(group, f"{m}_present", (n,), bool)
        if n_views:
            shape = (n, n_views, dims["video"])
            arrays["video_views"] = featstore.create_array(group, "video_views", shape, dtype)
        offset = 0
        for k, (kept, split, rows) in enumerate(per_shard):
            block = slice(offset, offset + len(kept))
            arrays["sample_id"][block], arrays["split"][block] = kept, split
            video = [groups[r][k]["feature"][:][rows[r]] for r in VIDEO_ROLES]
            arrays["video"][block] = np.concatenate(video, 1).astype(dtype)
            arrays["video_present"][block] = np.ones(len(kept), bool)
            if n_views:
                views = [groups[r][k]["views"][:][rows[r], :n_views] for r in VIDEO_ROLES]
                arrays["video_views"][block] = np.concatenate(views, 2).astype(dtype)
            for m in mods[1:]:
                r = rows[m]
                found = r >= 0
                feats = np.zeros((len(kept), dims[m]), dtype)
                present = np.zeros(len(kept), bool)
                feats[found] = groups[m][k]["feature"][:][r[found]]
                present[found] = groups[m][k]["present"][:][r[found]]
                arrays[m][block], arrays[f"{m}_present"][block] = feats, present
            offset += len(kept)
        group.attrs.update(
            modalities=mods,
            dims={m: dims[m] for m in mods},
            views=n_views,
            backbones={
                r: {k: v for k, v in groups[r][0].attrs.items() if k != "complete"} for r in groups
            },
        )
        group.attrs["complete"] = True
    return n
