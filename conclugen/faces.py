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

Long clips: a clip is decoded in windows of at most ``batch_frames`` frames (each window seeks
to its own start), so memory is bounded by the window, not by the clip; the boxes are the same as
from one decoding of the whole clip.

Hostile clips: a clip whose decoding or detection raises (a library error included) becomes its
own ledger entry; a failed MTCNN batch is rerun clip by clip, so only the culprit loses its
detections. Errors that are no clip's fault (:func:`conclugen.ledger.is_fatal`: out of memory,
a device error, a file that is not the clip's) fail the job, as do missing weights. Frames whose
shorter side is under ``min_face_size`` never reach MTCNN (:func:`too_small`): its image pyramid
would be empty.

A clip without a face in any frame, or whose frames are too small for MTCNN, goes to the failure
ledger with its reason; the ``no_face`` policy either drops it (the authors' choice) or keeps it
with a centred square crop. Either way MTCNN found no face: the policy is about what to do then.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from conclugen import figures
from conclugen.data.manifest import resolved_ends
from conclugen.io import write_parquet
from conclugen.ledger import is_fatal
from conclugen.media import FPS, MediaError, read_frames, sample_times
from conclugen.progress import progress

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


def too_small(mtcnn, height: int, width: int) -> str | None:
    """Why MTCNN cannot look at frames of this size, or None when it can.

    facenet-pytorch's image pyramid starts at scale ``12 / min_face_size`` and keeps the scales
    at which the shorter side is still >= 12 px (PNet's input), so a frame whose shorter side is
    under ``min_face_size`` leaves the pyramid empty and ``mtcnn.detect`` fails (``torch.cat():
    expected a non-empty list``). The test is the library's own, float arithmetic included: for
    a few sizes (47, 94, ...) a side of exactly ``min_face_size`` rounds below 12 and fails too.
    """
    if min(height, width) * (12.0 / mtcnn.min_face_size) >= 12:
        return None
    return (
        f"frames {width}x{height} too small for face detection: "
        f"shorter side under min_face_size {mtcnn.min_face_size} px"
    )


@dataclass
class Window:
    """Every ``detect_every``-th sampled frame of one stretch of a clip, decoded for MTCNN."""

    clip: int  # the clip's position in the shard
    sample_id: str
    times: np.ndarray  # [T] all sampled times of the clip (16 fps)
    index: np.ndarray  # [F] which sampled frames of this stretch were decoded
    frames: np.ndarray | None  # [F, H, W, 3] uint8, None when decoding failed
    last: bool  # the clip's last window
    error: str | None = None


class ClipWindows(torch.utils.data.Dataset):
    """One item per window of at most ``window_frames`` frames, clip after clip, so decoding
    memory is bounded by the window, not by the clip; runs in DataLoader workers so decoding
    overlaps detection."""

    def __init__(self, clips: pd.DataFrame, detect_every: int, window_frames: int):
        self.windows = []  # (clip position, clip record, times, index, last)
        clips = clips.assign(end=resolved_ends(clips))
        for i, clip in enumerate(clips.to_dict("records")):
            times = sample_times(clip["start"], clip["end"], FPS)
            index = np.arange(0, len(times), detect_every)
            starts = range(0, len(index), window_frames)
            for start in starts:
                last = start == starts[-1]
                self.windows.append((i, clip, times, index[start : start + window_frames], last))

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> Window:
        position, clip, times, index, last = self.windows[i]
        window = Window(position, clip["sample_id"], times, index[:0], None, last)
        try:
            frames, found = read_frames(clip["video"], times[index])
        except MediaError as e:
            window.error = str(e)
        except Exception as e:  # a decoder library's error on this file is the clip's
            if is_fatal(e):
                raise
            window.error = f"video not decodable: {type(e).__name__}: {e}"
        else:
            window.index, window.frames = index[found], frames[found]
        return window


@dataclass
class ClipFaces:
    """MTCNN's most probable face on the examined sampled frames of one clip."""

    sample_id: str
    times: np.ndarray  # [T] all sampled times (16 fps)
    windows: list = field(default_factory=list)  # per examined window: index [F], boxes, probs,
    # landmarks as :func:`detect` returns them
    shape: tuple | None = None  # decoded frame size (H, W, 3)
    error: str | None = None  # decoding or detection failed: the clip is unusable
    too_small: str | None = None  # frames too small for MTCNN to examine (:func:`too_small`)

    def detections(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(index [F], boxes [F, 4], probs [F], landmarks [F, 5, 2])`` over all windows."""
        empty = (np.zeros(0, int), np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
        return tuple(np.concatenate(part) for part in zip(empty, *self.windows, strict=True))


def detect_clips(
    mtcnn, clips: pd.DataFrame, detect_every: int, batch_frames: int, workers: int
) -> Iterator[ClipFaces]:
    """A :class:`ClipFaces` per clip, in order; MTCNN sees several clips at once.

    Clips are decoded in windows of at most ``batch_frames`` frames; windows are gathered until
    they hold ``batch_frames`` frames, then each frame size in the group goes through MTCNN as
    one batch (:func:`_detect_batch` isolates a clip that makes it fail). Peak memory is a few
    windows' frames whatever the clips' length.
    """
    loader = torch.utils.data.DataLoader(
        ClipWindows(clips, detect_every, batch_frames), batch_size=None, num_workers=workers,
        prefetch_factor=2 if workers else None,
    )  # fmt: skip
    faces: dict[int, ClipFaces] = {}  # clips with windows still to come
    pending: list[Window] = []
    for window in loader:
        pending.append(window)
        if sum(len(w.index) for w in pending) >= batch_frames:
            yield from _detect_group(mtcnn, pending, faces)
            pending = []
    yield from _detect_group(mtcnn, pending, faces)


def _detect_group(mtcnn, windows: list[Window], faces: dict[int, ClipFaces]):
    """Detect on a group of windows, add the results to their clips, yield finished clips."""
    todo = []
    for w in windows:
        clip = faces.setdefault(w.clip, ClipFaces(w.sample_id, w.times))
        clip.error = clip.error or w.error
        if clip.error is not None or not len(w.index):
            continue
        clip.shape = clip.shape or w.frames.shape[1:]
        if w.frames.shape[1:] != clip.shape:  # the boxes would mix two coordinate systems
            clip.error = f"frame size changes mid-clip: {clip.shape} then {w.frames.shape[1:]}"
            continue
        clip.too_small = too_small(mtcnn, *clip.shape[:2])
        if clip.too_small is None:
            todo.append(w)
    for shape in {w.frames.shape[1:] for w in todo}:
        same = [w for w in todo if w.frames.shape[1:] == shape]
        for w, result in zip(same, _detect_batch(mtcnn, same), strict=True):
            clip = faces[w.clip]
            if isinstance(result, str):
                clip.error = clip.error or result
            else:
                clip.windows.append((w.index, *result))
    for w in windows:
        if w.last:
            yield faces.pop(w.clip)


def _detect_batch(mtcnn, windows: list[Window]) -> list[tuple | str]:
    """Per window ``(boxes, probs, landmarks)`` from one MTCNN call on all their frames, or the
    error message for a window that makes MTCNN fail: after a failure each window is run alone,
    so the clip that caused it loses its detections and the others keep theirs."""
    try:
        found = detect(mtcnn, np.concatenate([w.frames for w in windows]))
    except Exception as e:
        if is_fatal(e):
            raise
        if len(windows) == 1:
            return [f"face detection failed: {type(e).__name__}: {e}"]
        return [result for w in windows for result in _detect_batch(mtcnn, [w])]
    cuts = np.cumsum([len(w.frames) for w in windows])[:-1]
    return list(zip(*(np.split(x, cuts) for x in found), strict=True))


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

    Clips that cannot be decoded, change frame size midway or make MTCNN fail are recorded in
    ``ledger`` and skipped. A clip without any face, or whose frames are too small for MTCNN
    (:func:`too_small`; MTCNN finds no face there either), is dropped under ``no_face="drop"``
    and kept with :func:`centre_box` under ``no_face="centre"``, each with its reason in
    ``ledger``.
    """
    size = clips.set_index("sample_id")[["width", "height"]]
    results = detect_clips(mtcnn, clips, detect_every, batch_frames, workers)
    for clip in progress(results, len(clips), "faces"):
        if clip.error is not None:
            ledger.drop(clip.sample_id, clip.error)
            continue
        index, boxes, probs, points = clip.detections()
        t = len(clip.times)
        full_boxes, full_probs = np.full((t, 4), np.nan), np.full(t, np.nan)
        full_points = np.full((t, 5, 2), np.nan)
        full_boxes[index], full_probs[index], full_points[index] = boxes, probs, points
        examined = np.zeros(t, dtype=bool)
        examined[index] = True
        detected = ~np.isnan(full_probs)
        reason = clip.too_small or "no face in any sampled frame"
        if detected.any():
            track = stabilise(full_boxes, smooth)
        elif no_face == "drop":
            ledger.drop(clip.sample_id, reason)
            continue
        else:
            ledger.keep(clip.sample_id, f"{reason}: centre crop")
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
    """A PNG grid (:func:`conclugen.figures.contact_sheet`): one row per clip, ``per_clip``
    frames across it, the detection drawn in green and the smoothed track (what the features
    crop) in red; people check crops by eye."""
    chosen = sorted(faces["sample_id"].unique())[:n_clips]
    video = clips.set_index("sample_id")["video"]

    def rows():  # one clip's frames decoded at a time
        for sample_id in chosen:
            track = faces[faces["sample_id"] == sample_id].sort_values("frame")
            picks = track.iloc[np.linspace(0, len(track) - 1, per_clip).astype(int)]
            frames, _ = read_frames(video[sample_id], picks["time"].to_numpy())
            boxes = [
                ((r.x1, r.y1, r.x2, r.y2) if r.detected else None, (r.tx1, r.ty1, r.tx2, r.ty2))
                for r in picks.itertuples()
            ]
            yield sample_id, [(f, *b) for f, b in zip(frames, boxes, strict=True)]

    figures.contact_sheet(rows(), len(chosen), per_clip, out, thumb)
