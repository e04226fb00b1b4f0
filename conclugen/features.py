"""Frozen-backbone features of one shard.

Four roles, each one backbone (:mod:`conclugen.backbones`) and one shard store. Audio and text run
one role per call (:func:`extract_shard`); the two video roles run together
(:func:`extract_video_shards`), each chunk of a clip decoded once at 16 fps for both
(:class:`SharedVideoClips`):

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
bilinear ``interpolate`` on the uint8 frames, the box rounded to whole pixels (one call per
chunk and view for a full-frame crop; :func:`crop_frames`), then normalised with the backbone's
mean and std. The authors swapped ImageNet's mean and std for the 2D frames; we normalise
correctly.

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

Augmented views (Instance-Cont): for datasets in ``views.datasets`` the roles in
``views.roles`` (3D only by default, as the authors) also yield K features of augmented clips:
random resized crop (taken inside the face box), horizontal flip, colour jitter, grayscale and
Gaussian blur (:class:`ViewRecipe`, the authors' SimCLR values by default), with parameters
drawn once per clip (temporally consistent) from a generator seeded by (seed, sample id, view),
so the 2D and 3D backbones see the same view identically and a rerun reproduces it. The same
jobs can add DINO's local views (:class:`LocalViews`): more views of the same recipe with
small crops (0.05-0.4 of the box), drawn from generators of their own.

Downstream augmentation (:class:`Augment`, the authors' augmented downstream data): for
datasets in ``augment.datasets`` every clip of the train split also yields K augmented copies
per role, each drawn from (seed, sample id, copy, modality): video, a random resized crop and
flip by the views' machinery (2D and 3D alike); audio, the spectrogram with frequency and time
masks (:func:`spectrogram_masks`) through the audio backbone, pooled like the plain clip; text,
words swapped (:func:`swap_words`) through the text encoder. Clips of other splits get none.

Temporal windows (:class:`Windows`, MPUC's views): for datasets in ``windows.datasets`` every
clip also yields W features per role of stretches of whole seconds (:func:`window_span`: the
same seconds for every role of a clip; random within a train clip, at the start of the others).
Video pools the plain crop's inputs inside a window's seconds (no input of its own: one 3D
window and one 1 fps frame per second, so the stretch's own features); audio runs the
stretch's spectrogram; text repeats the whole clip's feature (no word timings). A clip's rows
are the plain clip, its views, local views, windows, then copies.

Speed: clips are decoded, cropped and augmented by DataLoader workers; the main process gathers
the inputs of several clips into batches of ``batch_size`` model inputs (frames, windows,
spectrogram windows or texts), runs them and pools per clip with tensor operations. Nothing
loops over frames in Python. The vision and audio models run with BatchNorm folded into their
convolutions, in channels_last, and in bf16 where the hardware multiplies bf16 natively (a GPU,
or a CPU with AMX; config ``features.precision``): bf16 features differ from fp32 ones by
~0.3-0.7 % (relative L2), below what float16 storage keeps of a feature's small components.

A shard's features (:class:`conclugen.featstore.ShardFeatures`: ``present`` False where the clip
has no such modality, no or silent audio track, no text) are written and merged into
``features.zarr`` by :mod:`conclugen.featstore`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd
import torch

from conclugen import featstore
from conclugen.backbones import for_inference
from conclugen.data.manifest import audio_source, resolved_ends
from conclugen.featstore import ROLES, VIDEO_ROLES, ShardFeatures
from conclugen.ledger import is_fatal
from conclugen.media import FPS, SILENCE_PEAK, MediaError, read_audio, read_frames, sample_times
from conclugen.progress import progress
from conclugen.shards import stable_hash

log = logging.getLogger("conclugen")

WINDOW = 16  # frames per 3D window
# Frames per pass of a view's colour ops and blur: 2 crops of 180x180 in float32 (0.8 MB) stay
# in a core's L2 cache through the ~60 elementwise passes; on a 2-core Xeon 2 frames at a time
# took 0.75x the time of 16 and 0.4x of all 128 at once (larger tensors also page-fault).
AUGMENT_FRAMES = 2
BLUR_BLOCK = 45  # output positions per banded matrix product of the blur (2/3 of the time of 180)
BLUR_TAP_FLOOR = 1e-20  # smaller blur taps are zero (no denormal floats; invisible in uint8)
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
    clips["end"] = resolved_ends(clips)
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


def _frozen(value):
    """A setting as a dataclass field holds it: a list (YAML's ranges) as a tuple."""
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class ViewRecipe:
    """How an augmented clip is drawn (config ``features.views``); the defaults are the authors'
    SimCLR views: random resized crop, horizontal flip, colour jitter, grayscale, Gaussian
    blur, each applied with its probability."""

    crop_scale: tuple[float, float] = (0.3, 1.0)  # crop area, fraction of the face box
    crop_ratio: tuple[float, float] = (0.5, 2.0)  # crop aspect ratio, drawn log-uniformly
    flip: float = 0.5
    jitter: float = 0.8
    jitter_strength: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)  # b, c, s, hue
    grayscale: float = 0.2
    blur: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    @classmethod
    def from_settings(cls, settings: dict) -> ViewRecipe:
        """The recipe of a settings dict holding (at least) its fields (lists become tuples)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: _frozen(v) for k, v in settings.items() if k in names})


@dataclass(frozen=True)
class Augment:
    """Downstream augmentation (config ``features.augment``): ``count`` copies per train clip
    and modality. Video: random resized crop and flip (no colour operations); audio:
    ``freq_masks`` frequency and ``time_masks`` time masks on the spectrogram, each of width
    below a maximum drawn in ``max_width`` of the axis; text: ``swaps`` swaps of a random word
    with a neighbour. The defaults are the authors' augmented downstream data."""

    count: int = 0
    seed: int = 0
    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (0.8, 1.2)
    flip: float = 0.5
    freq_masks: int = 1
    time_masks: int = 1
    max_width: tuple[float, float] = (0.15, 0.35)
    swaps: int = 1

    @classmethod
    def from_settings(cls, settings: dict) -> Augment:
        """From ``{count, seed, video: {...}, audio: {...}, text: {...}}`` (parts may be left
        out: a job gets its own modality's)."""
        parts = [settings.get(m, {}) for m in featstore.MODALITIES]
        given = {k: _frozen(v) for part in parts for k, v in part.items()}
        return cls(count=settings["count"], seed=settings["seed"], **given)

    @property
    def video(self) -> ViewRecipe:
        return ViewRecipe(self.crop_scale, self.crop_ratio, self.flip, jitter=0.0,
                          grayscale=0.0, blur=0.0)  # fmt: skip


NO_AUGMENT = Augment()

# Temporal windows start and end on whole seconds: one 3D window of 16 frames at 16 fps, one 1 fps
# frame of the 2D backbone, so a window's video features are the clip's own inputs of that
# stretch (no frame is decoded or run again) and equal what the window alone would give.
WINDOW_UNIT_FRAMES = WINDOW  # frames of the 16 fps grid per second-long unit
WINDOW_STREAM = 1 << 16  # the windows' draws: a stream apart from the views' and the copies'


@dataclass(frozen=True)
class Windows:
    """Temporal windows (config ``features.windows``; MPUC's temporal augmentation): ``count``
    windows of ``seconds`` whole seconds per clip and modality, drawn from ``seed``."""

    count: int = 0
    seconds: int = 4
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: dict | None) -> Windows:
        """From ``{count, seconds, seed}`` (None or count 0: no windows)."""
        return cls(**settings) if settings else cls()


NO_WINDOWS = Windows()


def clip_units(start: float, end: float) -> int:
    """A clip's length in window units: its 16 fps frames in whole seconds, rounded up."""
    return -(-len(sample_times(start, end, FPS)) // WINDOW_UNIT_FRAMES)


def window_span(sample_id: str, window: int, units: int, windows: Windows, train: bool):
    """``(first, end)``: the whole seconds [first, end) from the clip's start that window
    ``window`` of a clip of ``units`` seconds (:func:`clip_units`) covers, the same for every
    modality. Its length is ``windows.seconds``, clamped to the clip; for a clip of the train
    split its first second is drawn uniformly from those that fit, by (seed, sample id,
    window), so each window is drawn independently; for the other splits every window starts
    at the clip's start (MPUC's evaluation)."""
    length = max(1, min(windows.seconds, units))
    if not train:
        return 0, length
    rng = clip_rng(windows.seed, sample_id, window, WINDOW_STREAM)
    first = int(rng.integers(units - length + 1))
    return first, first + length


def window_spans(clip: dict, windows: Windows) -> list[tuple[int, int]]:
    """Every window of ``clip`` (a clips row: sample_id, split, start, end) by
    :func:`window_span`; empty without windows."""
    if not windows.count:
        return []
    units = clip_units(clip["start"], clip["end"])
    train = clip["split"] == "train"
    return [window_span(clip["sample_id"], w, units, windows, train) for w in range(windows.count)]


@dataclass(frozen=True)
class LocalViews:
    """DINO's local views (config ``features.local_views``): ``count`` more views per clip of
    the datasets and roles that have views, drawn as those (:class:`ViewRecipe`) but with crops
    of ``scale`` of the face box's area (DINO's local crops: 0.05-0.4). DINO shows its local
    crops to the network at 96 px; a frozen backbone here sees every crop at ``crop_size``, so a
    local view differs from a global one by the smaller area it magnifies, not by resolution."""

    count: int = 0
    scale: tuple[float, float] = (0.05, 0.4)

    @classmethod
    def from_settings(cls, settings: dict) -> LocalViews:
        return cls(**{k: _frozen(v) for k, v in settings.items()})


NO_LOCAL_VIEWS = LocalViews()
# The last key of a local view's generator (:func:`local_view_params`): nonzero, since numpy's
# SeedSequence pads entropy shorter than its 4-word pool with zero words (so a trailing 0 key
# can repeat a shorter key's stream), and none of the modality indices of the downstream
# copies' keys, so it shares its stream with no global view and no copy.
LOCAL_VIEW_KEY = 1000


def clip_rng(seed: int, sample_id: str, *keys: int) -> np.random.Generator:
    """The generator of one clip's draw: (seed, sample id, keys) fix it on every machine."""
    return np.random.default_rng([seed, stable_hash(sample_id), *keys])


def copy_rng(augment: Augment, sample_id: str, copy: int, modality: str) -> np.random.Generator:
    """The generator of one downstream copy of one modality of a clip."""
    return clip_rng(augment.seed, sample_id, copy, featstore.MODALITIES.index(modality))


@dataclass(frozen=True)
class ViewParams:
    """One augmented view's parameters, shared by all frames of a clip."""

    crop: tuple[float, float, float, float]  # x0, y0, w, h as fractions of the face box
    flip: bool
    jitter: tuple[tuple[str, float], ...] | None  # (adjustment, factor) in the order applied
    gray: bool
    blur_sigma: float | None


def draw_view(rng: np.random.Generator, recipe: ViewRecipe) -> ViewParams:
    """One view's parameters as torchvision draws them: RandomResizedCrop (10 tries, then the
    whole box: its fallback for a square), flip, ColorJitter (factors in [max(0, 1 - s),
    1 + s], hue in [-h, h], the four in a random order), grayscale, blur sigma uniform."""
    crop = (0.0, 0.0, 1.0, 1.0)
    (a_lo, a_hi), (r_lo, r_hi) = recipe.crop_scale, recipe.crop_ratio
    for _ in range(10):
        area = rng.uniform(a_lo, a_hi)
        ratio = np.exp(rng.uniform(np.log(r_lo), np.log(r_hi)))
        w, h = np.sqrt(area * ratio), np.sqrt(area / ratio)
        if w <= 1 and h <= 1:
            crop = (rng.uniform(0, 1 - w), rng.uniform(0, 1 - h), w, h)
            break
    flip = bool(rng.random() < recipe.flip)
    jitter = None
    if rng.random() < recipe.jitter:
        *strengths, hue = recipe.jitter_strength
        factors = [rng.uniform(max(0.0, 1 - s), 1 + s) for s in strengths]
        factors.append(rng.uniform(-hue, hue))
        names = ("brightness", "contrast", "saturation", "hue")
        jitter = tuple((names[i], float(factors[i])) for i in rng.permutation(4))
    gray = bool(rng.random() < recipe.grayscale)
    blur = float(rng.uniform(*recipe.blur_sigma)) if rng.random() < recipe.blur else None
    return ViewParams(tuple(float(v) for v in crop), flip, jitter, gray, blur)


def view_params(sample_id: str, view: int, seed: int, recipe: ViewRecipe = ViewRecipe()):
    """The Instance-Cont view ``view`` of a clip (:func:`draw_view`), drawn from (seed, sample
    id, view): the 2D and 3D jobs draw the same view, a rerun the same again."""
    return draw_view(clip_rng(seed, sample_id, view), recipe)


def local_view_params(sample_id: str, view: int, seed: int, recipe: ViewRecipe = ViewRecipe(),
                      local: LocalViews = LocalViews()) -> ViewParams:  # fmt: skip
    """DINO's local view ``view`` of a clip: :func:`draw_view` of ``recipe`` with the crop
    area ``local.scale``, from (seed, sample id, view, :data:`LOCAL_VIEW_KEY`), so the 2D and 3D
    jobs draw the same local view."""
    rng = clip_rng(seed, sample_id, view, LOCAL_VIEW_KEY)
    return draw_view(rng, replace(recipe, crop_scale=local.scale))


def copy_params(sample_id: str, copy: int, augment: Augment) -> ViewParams:
    """The video of downstream copy ``copy`` of a clip (crop and flip), shared by 2D and 3D."""
    return draw_view(copy_rng(augment, sample_id, copy, "video"), augment.video)


def spectrogram_masks(shape: tuple[int, int], rng: np.random.Generator, augment: Augment):
    """The masks of one audio copy as ``(axis, start, width)`` (axis 0: mel bins, 1: frames),
    each as the authors drew it: a maximum m uniform over the integers of [int(lo * size),
    int(hi * size)), then torchaudio's ``mask_along_axis``: width uniform in [0, m), start
    uniform in [0, size - width)."""
    lo, hi = augment.max_width
    masks = []
    for axis, n in ((0, augment.freq_masks), (1, augment.time_masks)):
        size = shape[axis]
        for _ in range(n):
            most = int(rng.integers(int(lo * size), max(int(hi * size), int(lo * size) + 1)))
            value = rng.random() * most
            start = int(rng.random() * (size - value))
            masks.append((axis, start, int(value)))
    return masks


def masked(spec: torch.Tensor, masks) -> torch.Tensor:
    """A copy of ``spec`` [F, T] with the masked bins and frames set to 0."""
    out = spec.clone()
    for axis, start, width in masks:
        out.narrow(axis, start, width).zero_()
    return out


def swap_words(text: str, rng: np.random.Generator, swaps: int) -> str:
    """``text`` with ``swaps`` times a word (drawn uniformly) swapped with its left or right
    neighbour (drawn; an edge word has one), as nlpaug's ``RandomWordAug(action="swap")``;
    texts of fewer than two words stay as they are. Words are split on whitespace."""
    words = text.split()
    if len(words) < 2:
        return text
    for _ in range(swaps):
        i = int(rng.integers(len(words)))
        j = i + 1 if i == 0 else i - 1 if i == len(words) - 1 else i + int(rng.choice([-1, 1]))
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


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

    Each box (a view's: its crop inside the frame's box) is rounded to whole source pixels and
    resized by bilinear ``interpolate`` on the uint8 frames (channels-last, no float copy of
    the frames), one call per run of frames sharing a rounded box: one call per view for a clip
    cropped to the full frame, a few frames per call for a face track; a flip reverses the
    columns. Against sampling the exact fractional box (``grid_sample``, before): a whole-pixel
    box (the full frame) gives the same pixels up to the uint8 kernel's rounding (at most 1 of
    255), a fractional one shifts the sampling by at most half a source pixel. When every box
    is at least twice the crop size the frames are first average-pooled by the whole factor, so
    shrinking a large face does not alias. ``pool_boxes`` (default ``boxes``) are the boxes that
    factor is taken from: the whole clip's, when ``frames`` are one chunk of it, so every chunk
    is pooled alike. A view's colour operations and blur run on float copies of its crops,
    ``AUGMENT_FRAMES`` frames at a time (:func:`augmented`).
    """
    t = len(frames)
    out = torch.empty(1 + len(views), t, 3, size, size, dtype=torch.uint8)
    if t == 0:
        return out
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # channels-last
    height, width = x.shape[2:]
    boxes = clamp_boxes(boxes, width, height).astype(np.float64)
    pool = boxes if pool_boxes is None else clamp_boxes(pool_boxes, width, height)
    factor = int(np.minimum(pool[:, 2] - pool[:, 0], pool[:, 3] - pool[:, 1]).min()) // size
    if factor >= 2:
        x = torch.nn.functional.avg_pool2d(x.float(), factor, ceil_mode=True)
        x = x.round_().to(torch.uint8).contiguous(memory_format=torch.channels_last)
        boxes = boxes / factor
        height, width = x.shape[2:]
    for v, p in enumerate([None, *views]):
        b = boxes
        if p is not None:
            x0, y0, w, h = p.crop
            bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            left, top = boxes[:, 0] + x0 * bw, boxes[:, 1] + y0 * bh
            b = np.stack([left, top, left + w * bw, top + h * bh], 1)
        pixels = np.round(b).astype(np.int64)
        pixels[:, [0, 1]] = np.minimum(pixels[:, [0, 1]], [width - 1, height - 1])
        pixels[:, [2, 3]] = np.maximum(pixels[:, [2, 3]], pixels[:, [0, 1]] + 1)
        # Runs of consecutive frames with one rounded box: one interpolate call each.
        starts = np.flatnonzero(np.r_[True, (pixels[1:] != pixels[:-1]).any(1), True])
        for a, e in zip(starts[:-1], starts[1:], strict=True):
            left, top, right, bottom = pixels[a]
            crop = torch.nn.functional.interpolate(
                x[a:e, :, top:bottom, left:right], size=(size, size), mode="bilinear",
                align_corners=False, antialias=False,
            )  # fmt: skip
            out[v, a:e] = crop.flip(-1) if p is not None and p.flip else crop
        if p is not None and (p.jitter or p.gray or p.blur_sigma is not None):
            for a in range(0, t, AUGMENT_FRAMES):
                out[v, a : a + AUGMENT_FRAMES] = augmented(out[v, a : a + AUGMENT_FRAMES], p, size)
    return out


def augmented(crops: torch.Tensor, p: ViewParams, size: int) -> torch.Tensor:
    """A view's colour jitter, grayscale and blur applied to its uint8 crops [T, 3, S, S]."""
    from torchvision.transforms.v2 import functional as F

    x = crops.float().div_(255)
    for name, factor in p.jitter or ():
        x = adjust_hue(x, factor) if name == "hue" else getattr(F, f"adjust_{name}")(x, factor)
    if p.gray:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    if p.blur_sigma is not None:
        x = gaussian_blur(x, int(0.1 * size) // 2 * 2 + 1, p.blur_sigma)
    return x.clamp(0, 1).mul_(255).round_().to(torch.uint8)  # not in place: gray is a view


def adjust_hue(x: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision's ``adjust_hue`` of [..., 3, H, W] float RGB in [0, 1] (hue turned by
    ``factor`` of a full turn), without its HSV round trip: the hue sector h6 in [0, 6) as
    torchvision computes it, then each channel as max - chroma * clamp(min(k, 4 - k), 0, 1)
    with k = (n + h6) mod 6 (n = 5, 3, 1 for R, G, B), the closed form of its sector table.
    The same result to float rounding, about 5x faster on a CPU (it gathers through an int64
    index per pixel)."""
    r, g, b = x.unbind(-3)
    # Elementwise float ops only, as few as the formula allows: aminmax over channels,
    # remainder and integer masks were each several times slower than the rest on a CPU.
    high, low = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)
    chroma = high - low
    inverse = chroma.clamp_min(1e-12).reciprocal_()  # grey pixels: chroma 0 keeps them grey
    h6 = torch.where(high == r, (g - b).mul_(inverse),
                     torch.where(high == g, (b - r).mul_(inverse).add_(2),
                                 (r - g).mul_(inverse).add_(4)))  # fmt: skip
    h6 += 6 * factor
    h6 -= torch.floor(h6 / 6).mul_(6)  # mod 6, into [0, 6)
    out = torch.empty_like(x)
    # Channel n's share of chroma, clamp(min(k, 4 - k), 0, 1) with k = (n + h6) mod 6, is
    # clamp(2 - d, 0, 1) with d h6's distance around the circle of 6 from centre 2 - n (mod 6:
    # 3, 5, 1 for R, G, B); with e = |h6 - centre| (d is e or 6 - e) that is
    # clamp(max(2 - e, e - 4), 0, 1) = clamp(|e - 3| - 1, 0, 1).
    for channel, centre in zip(out.unbind(-3), (3, 5, 1), strict=True):
        share = (h6 - centre).abs_().sub_(3).abs_().sub_(1).clamp_(0, 1)
        torch.addcmul(high, chroma, share, value=-1, out=channel)
    return out


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """torchvision's ``gaussian_blur`` of [..., H, W] float32 images (odd square ``kernel``,
    reflect padding), as matrix products per axis (:func:`blur_matrix`). The same result to
    float rounding, several times faster on a CPU than its depthwise convolution
    (docs/benchmarks.md)."""
    return _blur_last(_blur_last(x, kernel, sigma).transpose(-1, -2), kernel, sigma).mT


def _blur_last(x: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """``x`` blurred along its last axis: ``BLUR_BLOCK`` output positions per product, each from
    the input positions within the kernel's radius (the blur matrix is banded: a whole 180x180
    product multiplies 161 zeros per output for a 19-tap kernel)."""
    n, radius = x.shape[-1], kernel // 2
    m = blur_matrix(n, kernel, sigma)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    for a in range(0, n, BLUR_BLOCK):
        e = min(n, a + BLUR_BLOCK)
        lo, hi = max(0, a - radius), min(n, e + radius)
        out[..., a:e] = x[..., lo:hi] @ m[a:e, lo:hi].T
    return out


@functools.lru_cache(maxsize=16)  # a view's blocks of frames share its sigma
def blur_matrix(n: int, kernel: int, sigma: float) -> torch.Tensor:
    """[n, n] float32: row j is the 1-D Gaussian kernel blurring position j, with the reflection
    at both edges folded in. Taps below ``BLUR_TAP_FLOOR`` are zero: at small sigmas the outer
    taps are denormal floats (exp(-0.5 (4 / 0.3)^2) = 2.6e-39), which made the products 10-15x
    slower on a CPU while adding nothing a uint8 pixel can show."""
    half = kernel // 2
    t = torch.arange(-half, half + 1, dtype=torch.float32)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    w = w / w.sum()
    w = torch.where(w < BLUR_TAP_FLOOR, 0.0, w)
    source = torch.arange(n)[:, None] + t.long()[None, :]
    source = source.abs()  # reflect at 0 (no repeated edge), then at n - 1
    source = torch.where(source >= n, 2 * (n - 1) - source, source)
    return torch.zeros(n, n).scatter_add_(1, source, w.expand(n, kernel).contiguous())


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


def clip_error(error: Exception) -> str:
    """The ledger reason of an exception raised while decoding or cropping a clip: a media
    file's own reason (:class:`~conclugen.media.MediaError`), else :func:`describe`. An error
    that is not the clip's (:func:`is_fatal`) is raised again."""
    if isinstance(error, MediaError):
        return str(error)
    if is_fatal(error):
        raise error
    return describe(error)


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
    inputs: torch.Tensor | None  # video: [V, n, ...] (n may be 0); audio: [(V,) F, T]
    present: bool = True  # False: the clip lacks this modality (not an error)
    error: str | None = None  # the clip is unusable (ledger)
    last: bool = True  # the clip's last chunk
    # Temporal windows. Video: [W, n] 0/1, which of the plain crop's n inputs each window
    # pools; their rows come after the first ``window_row`` variants (the plain crop, views,
    # local views). Audio: each window's own spectrogram [F, T_w].
    window_mask: torch.Tensor | None = None
    window_row: int = 1
    window_specs: list[torch.Tensor] | None = None


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

    A chunk's inputs hold the plain crop, then ``views`` Instance-Cont views (``recipe``), then
    ``local.count`` DINO local views (:func:`local_view_params`), then, for a clip of the train
    split, ``augment.count`` downstream copies (:func:`copy_params`). Temporal ``windows``
    (:func:`window_spans`) cost no input of their own: each pools the plain crop's inputs that
    lie in its seconds (``window_mask``).
    """

    read = staticmethod(read_frames)  # (path, times) -> (frames, found)

    def __init__(self, clips: pd.DataFrame, role: str, boxes: dict[str, np.ndarray],
                 crop_size: int, views: int = 0, view_seed: int = 0,
                 chunk_frames: int = CHUNK_FRAMES, recipe: ViewRecipe = ViewRecipe(),
                 augment: Augment = NO_AUGMENT, local: LocalViews = NO_LOCAL_VIEWS,
                 windows: Windows = NO_WINDOWS):  # fmt: skip
        if role not in VIDEO_ROLES:
            raise ValueError(f"not a video role: {role}")
        if chunk_frames <= 0 or (role == "video3d" and chunk_frames % WINDOW):
            raise ValueError(f"chunk_frames {chunk_frames}: video3d needs a multiple of {WINDOW}")
        columns = ["sample_id", "split", "video", "start", "end", "width", "height"]
        self.clips = clips[columns].to_dict("records")
        self.role, self.boxes, self.size = role, boxes, crop_size
        self.views, self.view_seed, self.recipe, self.augment = views, view_seed, recipe, augment
        self.local, self.windows = local, windows
        self.items = []  # (clip, first and end sampled frame of the chunk)
        for i, clip in enumerate(self.clips):
            n = len(self.grid(clip)[1])
            self.items += [(i, a, min(a + chunk_frames, n)) for a in range(0, n, chunk_frames)]

    @property
    def step(self) -> int:
        """This role samples every ``step``-th position of the 16 fps grid."""
        return FPS if self.role == "video2d" else 1

    def grid(self, clip: dict) -> tuple[np.ndarray, np.ndarray]:
        """The clip's 16 fps times and the positions on that grid this role samples."""
        times = sample_times(clip["start"], clip["end"], FPS)
        return times, np.arange(0, len(times), self.step)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> ClipInputs:
        i, a, b = self.items[k]
        clip = self.clips[i]
        last = k + 1 == len(self.items) or self.items[k + 1][0] != i
        try:
            times, index = self.grid(clip)
            return self.prepared(clip, a, b, *self.read(clip["video"], times[index[a:b]]), last)
        except Exception as e:
            return ClipInputs(clip["sample_id"], None, error=clip_error(e), last=last)

    def prepared(self, clip: dict, a: int, b: int, frames: np.ndarray, found: np.ndarray,
                 last: bool) -> ClipInputs:  # fmt: skip
        """Sampled frames ``a:b`` of a clip (:meth:`cropped`) as a chunk's inputs, with the
        windows' masks over them (:meth:`window_mask`)."""
        inputs = self.cropped(clip, a, b, frames, found)
        mask = self.window_mask(clip, a, b, found, inputs.shape[1])
        return ClipInputs(clip["sample_id"], inputs, last=last, window_mask=mask,
                          window_row=1 + self.views + self.local.count)  # fmt: skip

    def window_mask(self, clip: dict, a: int, b: int, found: np.ndarray,
                    n: int) -> torch.Tensor | None:  # fmt: skip
        """[W, n]: 1 where the chunk's input lies in the window's seconds (None without
        windows). A 2D input is one frame, in the second of its grid position; a 3D input is
        one 16-frame window, in its own second (the chunk starts on a whole second)."""
        spans = window_spans(clip, self.windows)
        if not spans:
            return None
        if self.role == "video2d":
            keep = found | (np.arange(a, b) == 0)
            units = self.grid(clip)[1][a:b][keep] // WINDOW_UNIT_FRAMES
        else:
            units = a // WINDOW_UNIT_FRAMES + np.arange(n)
        units = torch.from_numpy(np.asarray(units, dtype=np.int64))
        first, end = (torch.tensor(x) for x in zip(*spans, strict=True))
        return ((units >= first[:, None]) & (units < end[:, None])).float()

    def cropped(self, clip: dict, a: int, b: int, frames: np.ndarray,
                found: np.ndarray) -> torch.Tensor:  # fmt: skip
        """Sampled frames ``a:b`` of a clip, decoded (``frames``, ``found``: :meth:`read` of
        their times), cropped: [V, n, 3, S, S] (2D) or windows (3D)."""
        index = self.grid(clip)[1]
        track = self.boxes.get(clip["sample_id"])
        if track is None:
            boxes = np.tile([0, 0, clip["width"], clip["height"]], (len(index), 1))
        else:
            boxes = track[np.minimum(index, len(track) - 1)]
        # A clip always has its first frame; frames past the video's real end are dropped.
        keep = found | (np.arange(a, b) == 0)
        sample_id = clip["sample_id"]
        params = [view_params(sample_id, k, self.view_seed, self.recipe) for k in range(self.views)]
        params += [local_view_params(sample_id, k, self.view_seed, self.recipe, self.local)
                   for k in range(self.local.count)]  # fmt: skip
        if clip["split"] == "train":
            params += [copy_params(sample_id, k, self.augment) for k in range(self.augment.count)]
        if not keep.all():  # (a copy of every frame otherwise: ~20 MB per 3D chunk)
            frames, boxes_ab = frames[keep], boxes[a:b][keep]
        else:
            boxes_ab = boxes[a:b]
        crops = crop_frames(frames, boxes_ab, self.size, params, pool_boxes=boxes)
        return crops if self.role == "video2d" else windows(crops)


class SharedVideoClips(torch.utils.data.Dataset):
    """Both video roles' chunks from one decode: each item decodes ``chunk_frames`` frames of a
    clip's 16 fps grid once (:meth:`VideoClips.read`) and hands every role its own sampled
    frames of them (``video2d`` every 16th), cropped by that role's :class:`VideoClips`
    (:meth:`VideoClips.cropped`): item ``{role: ClipInputs}``.

    Each role's inputs are those of its own :class:`VideoClips` over the same clips, in chunks of
    other sizes: its boxes, views, local views and copies, its first-frame and past-the-end
    rules, and its pooling factor (the whole clip's boxes of that role) are applied as there,
    and ``read`` picks the frame on screen at each time, so the 1 fps frames of a 16 fps decode
    are those decoded at 1 fps. The roles' views are the same views (drawn per sample and view),
    each role cropping its own frames. ``chunk_frames`` is a multiple of :data:`WINDOW` (whole
    3D windows); a ``video2d`` chunk holds ``chunk_frames / 16`` frames. A decoding error is
    every role's error for the clip; a cropping error only its role's.
    """

    def __init__(self, readers: dict[str, VideoClips], chunk_frames: int = CHUNK_FRAMES):
        if chunk_frames <= 0 or chunk_frames % WINDOW:
            raise ValueError(f"chunk_frames {chunk_frames}: needs a multiple of {WINDOW}")
        self.readers = readers
        self.clips = next(iter(readers.values())).clips
        self.items = []  # (clip, first and end position of the chunk on the 16 fps grid)
        for i, clip in enumerate(self.clips):
            n = len(sample_times(clip["start"], clip["end"], FPS))
            self.items += [(i, a, min(a + chunk_frames, n)) for a in range(0, n, chunk_frames)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, ClipInputs]:
        i, a, b = self.items[k]
        clip = self.clips[i]
        sample_id = clip["sample_id"]
        last = k + 1 == len(self.items) or self.items[k + 1][0] != i
        try:
            times = sample_times(clip["start"], clip["end"], FPS)
            frames, found = VideoClips.read(clip["video"], times[a:b])
        except Exception as e:
            failed = ClipInputs(sample_id, None, error=clip_error(e), last=last)
            return dict.fromkeys(self.readers, failed)
        out = {}
        for role, reader in self.readers.items():
            first, end = -(-a // reader.step), -(-b // reader.step)  # its sampled frames here
            picked = slice(first * reader.step - a, end * reader.step - a, reader.step)  # a view
            try:
                out[role] = reader.prepared(clip, first, end, frames[picked], found[picked], last)
            except Exception as e:
                out[role] = ClipInputs(sample_id, None, error=clip_error(e), last=last)
        return out


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
    """Decodes one clip's audio per item into its mel spectrogram [F, T]; a clip of the train
    split gets ``augment.count`` masked copies too: [1 + K, F, T], the plain one first. Temporal
    ``windows`` (:func:`window_spans`) are the spectrogram's frames of their seconds
    (``window_specs``, scaled with the whole clip; one past the audio's end is the whole
    spectrogram). No audio track (or one too short to frame) is an absent modality; another
    exception (other than :func:`is_fatal` ones) while preparing it is the clip's error."""

    def __init__(self, clips: pd.DataFrame, augment: Augment = NO_AUGMENT,
                 windows: Windows = NO_WINDOWS):  # fmt: skip
        self.clips = clips.to_dict("records")
        self.filters = mel_filters()
        self.augment = augment
        self.windows = windows

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
        try:
            audio = read_audio(audio_source(clip), SAMPLE_RATE, clip["start"], clip["end"])
        except MediaError:
            return ClipInputs(clip["sample_id"], None, present=False)
        if len(audio) <= N_FFT // 2:  # too short to frame (reflect padding needs more)
            return ClipInputs(clip["sample_id"], None, present=False)
        spec = spectrogram(audio, self.filters)
        per_second = SAMPLE_RATE // HOP
        windows = [
            spec[:, a * per_second : b * per_second] for a, b in window_spans(clip, self.windows)
        ]
        windows = [w if w.shape[1] else spec for w in windows] or None
        if clip["split"] != "train" or not self.augment.count:
            return ClipInputs(clip["sample_id"], spec, window_specs=windows)
        rngs = [
            copy_rng(self.augment, clip["sample_id"], k, "audio") for k in range(self.augment.count)
        ]
        copies = [masked(spec, spectrogram_masks(spec.shape, rng, self.augment)) for rng in rngs]
        return ClipInputs(clip["sample_id"], torch.stack([spec, *copies]), window_specs=windows)


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
    windows) that may span several batches; each row of a clip's result (the plain clip, its
    views, windows and copies) is its sum over the count of vectors summed into that row, ready
    once the clip's last piece has arrived and nothing of it is pending. A row nothing was
    summed into (a temporal window past the video's real end, whose frames the decoder lacks)
    takes the plain clip's row."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}  # [R, D]
        self.counts: dict[str, torch.Tensor] = {}  # [R]
        self.decided: dict[str, Result] = {}  # clips without features: failed or absent
        self.finished: list[str] = []  # clips whose last piece arrived, in order

    def add(self, sample_id: str, total: torch.Tensor, count, rows=None) -> None:
        """Add ``total`` [r, D] into the clip's ``rows`` (default the first r), each row a
        sum over ``count`` vectors (a number, or one per row)."""
        if sample_id in self.decided:
            return
        rows = torch.arange(len(total)) if rows is None else torch.as_tensor(rows)
        count = torch.as_tensor(count, dtype=torch.float32).expand(len(total))
        size = int(rows.max()) + 1
        sums = _grown(self.sums.get(sample_id, total.new_zeros(0, total.shape[1])), size)
        counts = _grown(self.counts.get(sample_id, torch.zeros(0)), size)
        self.sums[sample_id] = sums.index_add_(0, rows, total.float())
        self.counts[sample_id] = counts.index_add_(0, rows, count)

    def decide(self, result: Result) -> None:
        """A clip's result without features; the first one counts (later pieces are ignored)."""
        self.decided.setdefault(result.sample_id, result)

    def ready(self) -> list[Result]:
        """The finished clips' results (call when nothing is pending)."""
        done, self.finished = self.finished, []
        out = []
        for sample_id in done:
            total, count = self.sums.pop(sample_id, None), self.counts.pop(sample_id, None)
            result = self.decided.pop(sample_id, None)
            if result is None and count is not None and count[0]:
                mean = total / count.clamp(min=1)[:, None]
                result = Result(sample_id, torch.where(count[:, None] > 0, mean, mean[:1]))
            elif result is None:  # not expected: a clip's first frame is always kept
                result = Result(sample_id, None, error="no model inputs")
            out.append(result)
        return out


def _grown(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with zero rows appended up to ``rows`` rows."""
    if len(x) >= rows:
        return x
    return torch.cat([x, x.new_zeros(rows - len(x), *x.shape[1:])])


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
    batches = VideoBatches(runner, batch_size)
    for chunk in chunks:
        yield from batches.add(chunk)
    yield from batches.flush()


def run_videos(batches: dict[str, VideoBatches],
               items: Iterable[dict[str, ClipInputs]]) -> Iterator[tuple[str, Result]]:  # fmt: skip
    """:func:`run_video` of several roles fed by one stream of :class:`SharedVideoClips` items:
    ``(role, result)``, each role's results in the clips' order."""
    for item in items:
        for role, chunk in item.items():
            yield from ((role, r) for r in batches[role].add(chunk))
    for role, pool in batches.items():
        yield from ((role, r) for r in pool.flush())


class VideoBatches:
    """:func:`run_video`'s state, fed one chunk at a time: the chunks waiting for a forward pass
    and the clips' running sums."""

    def __init__(self, runner, batch_size: int):
        self.runner, self.batch_size = runner, batch_size
        self.pools = _Pools()
        self.pending: list[ClipInputs] = []
        self.units = 0

    def add(self, chunk: ClipInputs) -> list[Result]:
        """Take one chunk; run the pending ones once they fill a batch: the clips finished."""
        if chunk.error is not None:
            self.pools.decide(Result(chunk.sample_id, None, error=chunk.error))
        elif chunk.sample_id not in self.pools.decided and chunk.inputs.shape[1]:
            self.pending.append(chunk)
            self.units += chunk.inputs.shape[0] * chunk.inputs.shape[1]
        if chunk.last:
            self.pools.finished.append(chunk.sample_id)
        return self.flush() if self.units >= self.batch_size else []

    def flush(self) -> list[Result]:
        """Run the pending chunks: the results of the clips whose last chunk has arrived."""
        _flush_video(self.runner, self.pending, self.batch_size, self.pools)
        self.pending, self.units = [], 0
        return self.pools.ready()


def _flush_video(runner, pending: list[ClipInputs], batch_size: int, pools: _Pools) -> None:
    """Run the pending chunks' inputs, ``batch_size`` per forward pass, into their clips' sums."""

    def forward(group: list[ClipInputs]) -> list[torch.Tensor]:
        flat = torch.cat([c.inputs.flatten(0, 1) for c in group])
        out = torch.cat([runner(flat[i : i + batch_size]) for i in range(0, len(flat), batch_size)])
        sizes = [c.inputs.shape[0] * c.inputs.shape[1] for c in group]
        parts = zip(group, out.split(sizes), strict=True)
        return [_chunk_sums(c, f.reshape(*c.inputs.shape[:2], -1)) for c, f in parts]

    if not pending:
        return
    for chunk, out in zip(pending, _each_or_alone(forward, pending), strict=True):
        if isinstance(out, Exception):
            pools.decide(Result(chunk.sample_id, None, error=f"backbone: {describe(out)}"))
        else:
            pools.add(chunk.sample_id, *out)


def _chunk_sums(chunk: ClipInputs, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A chunk's rows and their counts from its inputs' features [V, n, D]: each variant's sum
    over its n inputs, with the temporal windows' sums of the plain crop's inputs
    (``window_mask``) after the first ``window_row`` variants."""
    sums = features.sum(1)
    counts = torch.full((len(sums),), float(features.shape[1]))
    mask = chunk.window_mask
    if mask is None:
        return sums, counts
    k = chunk.window_row
    return (torch.cat([sums[:k], mask @ features[0], sums[k:]]),
            torch.cat([counts[:k], mask.sum(1), counts[k:]]))  # fmt: skip


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
        """``spec`` [F, T] (or [V, F, T]: variants of one clip, masked copies) as model inputs:
        ``(input [V, F, L], first, end)``, where output steps ``first:end`` of the input are the
        ones that count."""
        spec = spec if spec.dim() == 3 else spec[None]
        t = spec.shape[2]
        if self.context is None or t <= self.window:
            return [(spec, 0, int(self.model.output_steps(t)))]
        s, steps = self.stride, int(self.model.output_steps(t))
        w, c = self.window // s, self.context // s
        out = []
        for a in range(0, steps, w):
            b = min(a + w, steps)
            lo = max(0, a - c)  # in output steps, so the piece starts on the clip's stride grid
            out.append((spec[..., lo * s : min(t, (b + c) * s)], a - lo, b - lo))
        return out

    @torch.inference_mode()
    def sums(self, pieces: list[tuple[torch.Tensor, int, int]]) -> list[tuple[torch.Tensor, int]]:
        """One forward pass over ``pieces`` (:meth:`pieces`) padded to the longest: per piece the
        sums [V, D] of its variants' counted outputs over rows and steps, and how many positions
        each sum holds."""
        rows = [(x, first, end) for p, first, end in pieces for x in p]
        longest = max(x.shape[1] for x, _, _ in rows)
        batch = torch.zeros(len(rows), rows[0][0].shape[0], longest)
        for i, (x, _, _) in enumerate(rows):
            batch[i, :, : x.shape[1]] = x
        self.lengths = torch.tensor([x.shape[1] for x, _, _ in rows], device=self.device)
        out = self.model(batch.to(self.device, self.model.input_dtype)).float()  # [B, D, H', T']
        first = torch.tensor([r[1] for r in rows], device=self.device)
        end = torch.tensor([r[2] for r in rows], device=self.device)
        steps = torch.arange(out.shape[3], device=self.device)[None]
        mask = (steps >= first[:, None]) & (steps < end[:, None])  # [B, T']
        total = (out * mask[:, None, None]).sum((2, 3)).cpu()
        variants = [len(p) for p, _, _ in pieces]
        counts = [(end - first) * out.shape[2] for _, first, end in pieces]
        return list(zip(total.split(variants), counts, strict=True))

    def __call__(self, specs: list[torch.Tensor]) -> torch.Tensor:
        """The mean feature [B, D] of each spectrogram [F, T], all their pieces in one pass."""
        owners = [(i, p) for i, s in enumerate(specs) for p in self.pieces(s)]
        sums = torch.zeros(len(specs), self.dim)
        counts = torch.zeros(len(specs))
        for (i, _), (total, count) in zip(owners, self.sums([p for _, p in owners]), strict=True):
            sums[i] += total[0]
            counts[i] += count
        return sums / counts[:, None]


def run_audio(runner, clips: Iterable[ClipInputs], batch_size: int) -> Iterator[Result]:
    """One vector per clip and variant (the plain spectrogram, then its temporal windows'
    spectrograms, then its masked copies), the mean over all its output positions;
    ``batch_size`` model inputs (:meth:`AudioRunner.pieces`, one per variant) per forward
    pass, gathered across clips. A piece whose input makes the model raise
    (:func:`_each_or_alone`) fails its clip with that message."""
    pools = _Pools()
    pending: list[tuple[str, tuple, list[int]]] = []  # (clip, piece, the rows of its variants)

    def flush():
        if pending:
            outs = _each_or_alone(lambda group: runner.sums([p for _, p, _ in group]), pending)
            for (sample_id, _, rows), out in zip(pending, outs, strict=True):
                if isinstance(out, Exception):
                    pools.decide(Result(sample_id, None, error=f"backbone: {describe(out)}"))
                else:
                    pools.add(sample_id, *out, rows=rows)
            pending.clear()
        return pools.ready()

    units = 0
    for clip in clips:
        if clip.inputs is None:
            pools.decide(Result(clip.sample_id, None, present=clip.present, error=clip.error))
        else:
            specs = clip.inputs if clip.inputs.dim() == 3 else clip.inputs[None]
            windows = clip.window_specs or []
            variants = [(specs, [0, *range(1 + len(windows), len(windows) + len(specs))])]
            variants += [(spec, [1 + w]) for w, spec in enumerate(windows)]
            for inputs, rows in variants:
                for piece in runner.pieces(inputs):
                    pending.append((clip.sample_id, piece, rows))
                    units += len(piece[0])
                    if units >= batch_size:
                        units = 0
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
    recipe: ViewRecipe = ViewRecipe(),
    augment: Augment = NO_AUGMENT,
    local_views: LocalViews = NO_LOCAL_VIEWS,
    windows: Windows = NO_WINDOWS,
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

    ``recipe`` is the views' augmentation; ``local_views`` DINO's local views (video roles
    only, ``local_views`` of the shard); ``augment`` the downstream copies, which every clip
    of the train split gets (``augmented``; zeros for the other clips and for absent
    modalities). A copy that fails fails its clip. ``windows``: every clip's temporal windows
    (``windows``; :func:`window_spans`): video pools the plain crop's inputs of each window's
    seconds, audio runs each window's spectrogram, text repeats the whole clip's feature (the
    transcripts have no word timings).
    """
    views = views if role in VIDEO_ROLES else 0
    local = local_views if role in VIDEO_ROLES else NO_LOCAL_VIEWS
    if role in VIDEO_ROLES:
        data, runner = _video_parts(
            role, clips, chunk_frames, model=model, device=device, boxes=boxes,
            crop_size=crop_size, mean=mean, std=std, views=views, view_seed=view_seed,
            precision=precision, recipe=recipe, augment=augment, local_views=local,
            windows=windows,
        )  # fmt: skip
        results = run_video(runner, decoded(data, workers), batch_size)
    elif role == "audio":
        # Batches of similar length waste little on padding; rows return to the clips' order.
        by_length = clips.assign(length=clips["end"] - clips["start"])
        by_length = by_length.sort_values(["length", "sample_id"], kind="stable")
        runner = AudioRunner(model, device, precision, audio_window)
        data = AudioClips(by_length, augment, windows)
        results = run_audio(runner, decoded(data, workers), batch_size)
    elif role == "text":
        results = text_results(model, clips, batch_size, device, augment, windows)
    else:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    results = progress(results, len(clips), f"{role} clips")
    widths = (views, local.count, windows.count, augment.count)
    return _shard_features(role, results, clips, model.feature_dim, widths, ledger)


def extract_video_shards(
    clips: pd.DataFrame,
    roles: dict[str, dict],
    ledgers: dict,
    workers: int = 1,
    chunk_frames: int = CHUNK_FRAMES,
) -> dict[str, ShardFeatures]:
    """:func:`extract_shard` of several video roles from one decode of each chunk of a clip
    (:class:`SharedVideoClips`): ``roles`` maps each role to the keywords of its
    :func:`extract_shard` call, all of ``model``, ``device``, ``batch_size``, ``boxes``,
    ``crop_size``, ``mean``, ``std``, ``views``, ``view_seed``, ``precision``, ``recipe`` and
    ``augment``, and optionally ``local_views`` and ``windows``; ``ledgers`` each role's
    ledger. Each role's shard equals its own :func:`extract_shard`'s up to float rounding (its
    frames arrive in chunks of other sizes, so its batches and running sums group other
    frames). A clip that cannot be decoded is an entry in every role's ledger; one whose crops
    or model input fail, only in that role's."""
    readers, batches = {}, {}
    for role, kw in roles.items():
        kw = dict(kw)
        batch_size = kw.pop("batch_size")
        readers[role], runner = _video_parts(role, clips, chunk_frames, **kw)
        batches[role] = VideoBatches(runner, batch_size)
    data = SharedVideoClips(readers, chunk_frames)
    results = {role: [] for role in roles}
    pairs = run_videos(batches, decoded(data, workers))
    for role, result in progress(pairs, len(roles) * len(clips), f"{'+'.join(roles)} results"):
        results[role].append(result)
    shards = {}
    for role, kw in roles.items():
        local = kw.get("local_views", NO_LOCAL_VIEWS).count
        windows = kw.get("windows", NO_WINDOWS).count
        widths = (kw["views"], local, windows, kw["augment"].count)
        dim = kw["model"].feature_dim
        shards[role] = _shard_features(role, results[role], clips, dim, widths, ledgers[role])
    return shards


def _video_parts(
    role: str, clips: pd.DataFrame, chunk_frames: int, *, model, device: str, boxes,
    crop_size: int, mean, std, views: int, view_seed: int, precision: str, recipe: ViewRecipe,
    augment: Augment, local_views: LocalViews = NO_LOCAL_VIEWS, windows: Windows = NO_WINDOWS,
) -> tuple[VideoClips, VideoRunner]:  # fmt: skip
    """A video role's reader and runner from :func:`extract_shard`'s keywords."""
    data = VideoClips(clips, role, boxes or {}, crop_size, views, view_seed, chunk_frames,
                      recipe, augment, local_views, windows)  # fmt: skip
    return data, VideoRunner(model, mean, std, device, role == "video3d", precision)


def _shard_features(role: str, results: Iterable[Result], clips: pd.DataFrame, dim: int,
                    widths: tuple[int, int, int, int], ledger) -> ShardFeatures:  # fmt: skip
    """One role's shard from its clips' results: failed clips to the ledger, rows of the
    others (zeros where a modality or a copy is absent) in the clips' order. ``widths``: the
    views, local views, temporal windows and copies per clip, the rows after the plain one in
    that order."""
    views, local, windows, copies = widths
    width = 1 + views + local + windows + copies
    kept, feats, present = [], [], []
    for r in results:
        if r.error is not None:
            ledger.drop(r.sample_id, r.error)
            continue
        kept.append(r.sample_id)
        present.append(r.present and r.feature is not None)
        rows = torch.zeros(width, dim)  # no copies: not train, or absent
        if r.feature is not None:
            rows[: len(r.feature)] = r.feature
        feats.append(rows)
    if role == "audio":  # back to the clips' order
        rank = {sample_id: i for i, sample_id in enumerate(clips["sample_id"])}
        order = sorted(range(len(kept)), key=lambda i: rank[kept[i]])
        kept, feats, present = ([x[i] for i in order] for x in (kept, feats, present))
    stacked = torch.stack(feats) if feats else torch.zeros(0, width, dim)
    split = clips.set_index("sample_id").loc[kept, "split"].to_numpy() if kept else np.array([])
    return ShardFeatures(
        sample_id=np.array(kept, dtype=str),
        split=np.asarray(split, dtype=str),
        feature=stacked[:, 0],
        present=torch.tensor(present, dtype=torch.bool),
        views=stacked[:, 1 : 1 + views] if views else None,
        augmented=stacked[:, width - copies :] if copies else None,
        local_views=stacked[:, 1 + views : 1 + views + local] if local else None,
        windows=stacked[:, 1 + views + local : width - copies] if windows else None,
    )


def text_results(encoder, clips: pd.DataFrame, batch_size: int, device: str,
                 augment: Augment = NO_AUGMENT,
                 windows: Windows = NO_WINDOWS) -> list[Result]:  # fmt: skip
    """:func:`run_text` over the clips' texts and, for train clips with a text, its
    ``augment.count`` word-swapped copies (:func:`swap_words`): one result per clip, its
    feature [1 + windows + copies, D], every temporal window the whole text's feature (the
    transcripts have no word timings); a copy that fails fails its clip."""
    texts = list(clips["text"])
    copies: dict[int, range] = {}
    for i, (sample_id, split, text) in enumerate(
        zip(clips["sample_id"], clips["split"], list(texts), strict=True)
    ):
        if augment.count and split == "train" and isinstance(text, str) and text.strip():
            copies[i] = range(len(texts), len(texts) + augment.count)
            texts += [
                swap_words(text.strip(), copy_rng(augment, sample_id, k, "text"), augment.swaps)
                for k in range(augment.count)
            ]
    encoded = run_text(encoder, texts, batch_size, device)
    results = []
    for i, sample_id in enumerate(clips["sample_id"]):
        own = [encoded[i], *[encoded[i]] * windows.count, *(encoded[j] for j in copies.get(i, ()))]
        error = next((r.error for r in own if r.error is not None), None)
        feature = None if error or own[0].feature is None else torch.cat([r.feature for r in own])
        results.append(Result(sample_id, feature, own[0].present, error))
    return results
