"""Face tracks with MTCNN: detection batched across frames and clips, one box per sampled frame.

Frames are sampled at 16 fps (what the 3D backbone sees; the 1 fps frames of the 2D backbone are
every 16th of them). MTCNN runs on every ``detect_every``-th sampled frame, batched across clips
of the same frame size, and keeps the most probable face per frame, as the paper's authors did
(``select_largest=False``).

Keeping the crop stable over time: the authors cropped one union box per run of overlapping
detections. We keep a per-frame box instead and smooth it: missed or skipped frames get the box
interpolated linearly between the nearest detections (held constant before the first and after
the last), then the box centre and size are averaged over a centred window of ``smooth`` frames.
That follows the head as it moves without the jitter of raw detections.

A clip without a face in any frame goes to the failure ledger; the ``no_face`` policy either
drops it (the authors' choice) or keeps it with a centred square crop.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from conclugen.io import write_parquet
from conclugen.media import MediaError, read_frames, sample_times
from conclugen.progress import progress

FPS = 16
BOX = ("x1", "y1", "x2", "y2")
TRACK = ("tx1", "ty1", "tx2", "ty2")
FACE_COLUMNS = (
    "sample_id", "frame", "time", "examined", "detected", "prob", *BOX, "landmarks", *TRACK,
)  # fmt: skip


@dataclass
class FaceTrack:
    """The face of one clip at its sampled frames: raw detections and the smoothed track."""

    sample_id: str
    times: np.ndarray  # [T] seconds
    examined: np.ndarray  # [T] bool: the frame went through MTCNN (every detect_every-th)
    detected: np.ndarray  # [T] bool: a face was found on this frame
    boxes: np.ndarray  # [T, 4] x1, y1, x2, y2 of the most probable face (NaN where none)
    probs: np.ndarray  # [T] (NaN where none)
    landmarks: np.ndarray  # [T, 5, 2] eyes, nose, mouth corners (NaN where none)
    track: np.ndarray  # [T, 4] the box the features crop

    def to_frame(self) -> pd.DataFrame:
        t = len(self.times)
        return pd.DataFrame(
            {
                "sample_id": [self.sample_id] * t,
                "frame": np.arange(t, dtype=np.int32),
                "time": self.times,
                "examined": self.examined,
                "detected": self.detected,
                "prob": self.probs.astype(np.float32),
                **dict(zip(BOX, self.boxes.T.astype(np.float32), strict=True)),
                "landmarks": list(self.landmarks.reshape(t, 10).astype(np.float32)),
                **dict(zip(TRACK, self.track.T.astype(np.float32), strict=True)),
            }
        )  # fmt: skip


def load_mtcnn(device: str | torch.device = "cpu", min_face_size: int = 20) -> torch.nn.Module:
    """facenet-pytorch's MTCNN with the weights its wheel ships; the authors' settings."""
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, select_largest=False, min_face_size=min_face_size, device=device)


def detect(mtcnn, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Most probable face of each frame of a batch ``[B, H, W, 3]`` uint8 RGB.

    Returns boxes ``[B, 4]``, probabilities ``[B]`` and landmarks ``[B, 5, 2]``, NaN where no face.
    """
    n = len(frames)
    boxes = np.full((n, 4), np.nan)
    probs = np.full(n, np.nan)
    points = np.full((n, 5, 2), np.nan)
    if n == 0:
        return boxes, probs, points
    batch_boxes, batch_probs, batch_points = mtcnn.detect(frames, landmarks=True)
    for i, (b, p, pts) in enumerate(zip(batch_boxes, batch_probs, batch_points, strict=True)):
        if b is not None and len(b):
            boxes[i], probs[i], points[i] = b[0], p[0], pts[0]  # sorted by probability
    return boxes, probs, points


def stabilise(boxes: np.ndarray, smooth: int) -> np.ndarray:
    """Fill frames without a box by interpolation and smooth centre and size (module docstring)."""
    known = ~np.isnan(boxes[:, 0])
    if not known.any():
        raise ValueError("no detection to build a track from")
    idx = np.arange(len(boxes))
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = boxes[:, 2:] - boxes[:, :2]
    params = np.concatenate([centre, size], axis=1)
    filled = np.stack([np.interp(idx, idx[known], params[known, j]) for j in range(4)], axis=1)
    if smooth > 1:
        pad = smooth // 2
        padded = np.pad(filled, ((pad, smooth - 1 - pad), (0, 0)), mode="edge")
        kernel = np.ones(smooth) / smooth
        filled = np.stack([np.convolve(padded[:, j], kernel, mode="valid") for j in range(4)], 1)
    c, s = filled[:, :2], filled[:, 2:]
    return np.concatenate([c - s / 2, c + s / 2], axis=1)


def centre_box(width: int, height: int, fraction: float = 0.8) -> np.ndarray:
    """A centred square covering ``fraction`` of the shorter side: the no-face fallback crop."""
    side = fraction * min(width, height)
    cx, cy = width / 2, height / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


@dataclass
class DecodedClip:
    """The frames of one clip that MTCNN looks at (every ``detect_every``-th sampled frame)."""

    sample_id: str
    times: np.ndarray  # [T] all sampled times (16 fps)
    index: np.ndarray  # [F] which sampled frames were decoded for detection
    frames: np.ndarray | None  # [F, H, W, 3] uint8, None when decoding failed
    error: str | None = None


class ClipFrames(torch.utils.data.Dataset):
    """Decodes one clip per item; runs in DataLoader workers so decoding overlaps detection."""

    def __init__(self, clips: pd.DataFrame, detect_every: int):
        self.clips = clips.to_dict("records")
        self.detect_every = detect_every

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> DecodedClip:
        clip = self.clips[i]
        end = clip["end"] if pd.notna(clip["end"]) else clip["start"] + clip["duration"]
        times = sample_times(clip["start"], end, FPS)
        index = np.arange(0, len(times), self.detect_every)
        try:
            frames, found = read_frames(clip["video"], times[index])
        except MediaError as e:
            return DecodedClip(clip["sample_id"], times, index[:0], None, str(e))
        return DecodedClip(clip["sample_id"], times, index[found], frames[found])


def detect_clips(
    mtcnn, clips: pd.DataFrame, detect_every: int, batch_frames: int, workers: int
) -> Iterator[tuple[DecodedClip, np.ndarray, np.ndarray, np.ndarray]]:
    """``(clip, boxes, probs, landmarks)`` per clip, in order; MTCNN sees several clips at once.

    Decoded clips are gathered until they hold ``batch_frames`` frames, then each frame size in
    the group goes through MTCNN as one batch.
    """
    loader = torch.utils.data.DataLoader(
        ClipFrames(clips, detect_every), batch_size=None, num_workers=workers,
        prefetch_factor=4 if workers else None,
    )  # fmt: skip
    pending: list[DecodedClip] = []
    for clip in loader:
        pending.append(clip)
        if sum(len(c.index) for c in pending) >= batch_frames:
            yield from _detect_group(mtcnn, pending)
            pending = []
    yield from _detect_group(mtcnn, pending)


def _detect_group(mtcnn, clips: list[DecodedClip]):
    results = {}
    decoded = [c for c in clips if c.frames is not None and len(c.frames)]
    for shape in {c.frames.shape[1:] for c in decoded}:
        same = [c for c in decoded if c.frames.shape[1:] == shape]
        boxes, probs, points = detect(mtcnn, np.concatenate([c.frames for c in same]))
        bounds = np.cumsum([0] + [len(c.frames) for c in same])
        for c, a, b in zip(same, bounds[:-1], bounds[1:], strict=True):
            results[id(c)] = (boxes[a:b], probs[a:b], points[a:b])
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
    for c in clips:
        yield (c, *results.get(id(c), empty))


def face_tracks(
    mtcnn,
    clips: pd.DataFrame,
    ledger,
    detect_every: int = 1,
    batch_frames: int = 64,
    workers: int = 1,
    smooth: int = 5,
    no_face: str = "drop",
) -> Iterator[FaceTrack]:
    """A :class:`FaceTrack` per clip (columns of the manifest plus the probe's size/duration).

    Undecodable clips and, under ``no_face="drop"``, clips without any face are recorded in
    ``ledger`` and skipped; ``no_face="centre"`` keeps the latter with :func:`centre_box`.
    """
    size = clips.set_index("sample_id")[["width", "height"]]
    results = detect_clips(mtcnn, clips, detect_every, batch_frames, workers)
    for clip, boxes, probs, points in progress(results, len(clips), "faces"):
        if clip.error is not None:
            ledger.drop(clip.sample_id, clip.error)
            continue
        t = len(clip.times)
        full_boxes, full_probs = np.full((t, 4), np.nan), np.full(t, np.nan)
        full_points = np.full((t, 5, 2), np.nan)
        full_boxes[clip.index], full_probs[clip.index], full_points[clip.index] = (
            boxes,
            probs,
            points,
        )
        examined = np.zeros(t, dtype=bool)
        examined[clip.index] = True
        detected = ~np.isnan(full_probs)
        if detected.any():
            track = stabilise(full_boxes, smooth)
        elif no_face == "drop":
            ledger.drop(clip.sample_id, "no face in any sampled frame")
            continue
        else:
            ledger.keep(clip.sample_id, "no face in any sampled frame: centre crop")
            width, height = size.loc[clip.sample_id]
            track = np.tile(centre_box(width, height), (t, 1))
        yield FaceTrack(
            clip.sample_id,
            clip.times,
            examined,
            detected,
            full_boxes,
            full_probs,
            full_points,
            track,
        )


def faces_shard(
    manifest: pd.DataFrame,
    probe: pd.DataFrame,
    out: str | os.PathLike,
    ledger,
    device: str = "cpu",
    min_face_size: int = 20,
    **options,
) -> pd.DataFrame:
    """Face tracks of the usable samples of one shard, written to ``out`` (parquet, atomic)."""
    clips = manifest.merge(probe, on="sample_id")
    mtcnn = load_mtcnn(device, min_face_size)
    tracks = [track.to_frame() for track in face_tracks(mtcnn, clips, ledger, **options)]
    table = pd.concat(tracks, ignore_index=True) if tracks else pd.DataFrame(columns=FACE_COLUMNS)
    write_parquet(table, out)
    return table


def contact_sheet(clips: pd.DataFrame, faces: pd.DataFrame, out, n_clips: int = 12,
                  per_clip: int = 4, thumb: int = 160) -> None:  # fmt: skip
    """A PNG grid: one row per clip, ``per_clip`` frames across it, the detection drawn in
    green and the smoothed track (what the features crop) in red; people check crops by eye."""
    from PIL import Image, ImageDraw

    from conclugen.io import atomic_path

    chosen = sorted(faces["sample_id"].unique())[:n_clips]
    video = clips.set_index("sample_id")["video"]
    sheet = Image.new("RGB", (per_clip * thumb, max(1, len(chosen)) * thumb), "white")
    for row, sample_id in enumerate(chosen):
        track = faces[faces["sample_id"] == sample_id].sort_values("frame")
        picks = track.iloc[np.linspace(0, len(track) - 1, per_clip).astype(int)]
        frames, _ = read_frames(video[sample_id], picks["time"].to_numpy())
        for col, (frame, rec) in enumerate(zip(frames, picks.itertuples(), strict=True)):
            image = Image.fromarray(frame)
            draw = ImageDraw.Draw(image)
            if rec.detected:
                draw.rectangle([rec.x1, rec.y1, rec.x2, rec.y2], outline=(0, 255, 0), width=2)
            draw.rectangle([rec.tx1, rec.ty1, rec.tx2, rec.ty2], outline=(255, 0, 0), width=2)
            image.thumbnail((thumb, thumb))
            sheet.paste(image, (col * thumb, row * thumb))
        ImageDraw.Draw(sheet).text((2, row * thumb + 2), sample_id, fill=(255, 255, 0))
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
