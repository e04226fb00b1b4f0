"""The keypoints modality (MPUC's "K"): MTCNN's five facial landmarks, encoded over time.

MPUC (Franceschini et al., ICPR 2022) adds facial landmarks per frame to video, audio and text.
We take the five points MTCNN already gives the faces stage (left eye, right eye, nose, left and
right mouth corner; ``landmarks`` of ``results/{dataset}/faces/{shard}.parquet``, 10 floats per
frame, NaN where no face was found) instead of their 51 inner points of a 68-point model
(docs/fidelity.md says why). No decoding, no backbone: the feature is a fixed function of the
face tracks, computed per clip (one row per clip in ``features.zarr``, like the other roles):

1. the points of the frames where MTCNN found a face are min-max normalised per clip, one scale
   per axis: x by the smallest and largest x of all five points over the clip's detected frames,
   y likewise (as MPUC's code did with its landmarks), so a clip's points lie in [0, 1] and the
   face keeps its proportions within each axis;
2. frames without a detection (not examined under ``faces.detect_every``, or no face found) get
   their points interpolated linearly over the 16 fps frame index from the nearest detected
   frames, held constant before the first and after the last (as the face track's boxes);
3. the [T, 10] sequence is encoded over time (:func:`encode`): per coordinate the mean, std, min
   and max of the positions over the T frames and of the T - 1 frame-to-frame velocities
   (normalised units per 1/16 s; zero for a one-frame clip), ``FEATURE_DIM`` = 10 x 8 = 80.

Temporal windows (config ``features.windows``, :func:`conclugen.features.window_span`, the
same seconds as the other modalities' windows): step 3 on the window's frames of the clip's
normalised sequence (16 per second; normalised over the whole clip, as MPUC's windows of their
min-max scaled landmarks).

A clip without any detected frame (kept with a centre crop under ``faces.no_face: centre``) has
no keypoints: ``present`` False and zeros, as a clip without audio. A clip whose landmarks cannot
be read (not 10 values per frame) is its ledger entry and left out of the role's shard, which
then marks it absent in ``features.zarr``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from conclugen.featstore import ShardFeatures
from conclugen.features import NO_WINDOWS, WINDOW_UNIT_FRAMES, Windows, window_spans

POINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")  # MTCNN's order
STATISTICS = ("mean", "std", "min", "max")
FEATURE_DIM = 2 * len(STATISTICS) * 2 * len(POINTS)  # positions and velocities


def clip_points(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """One clip's faces-parquet rows as (points [T, 5, 2] in pixels, found [T] bool) in frame
    order; a frame counts as found where MTCNN detected a face and gave five finite points."""
    rows = rows.sort_values("frame")
    raw = [np.asarray(v, dtype=np.float64) for v in rows["landmarks"]]
    if any(v.shape != (2 * len(POINTS),) for v in raw):
        shapes = sorted({v.shape for v in raw})
        raise ValueError(f"landmarks must be {2 * len(POINTS)} values per frame, got {shapes}")
    points = np.stack(raw).reshape(len(raw), len(POINTS), 2) if raw else np.zeros((0, 5, 2))
    found = rows["detected"].to_numpy(bool) & np.isfinite(points).all(axis=(1, 2))
    return points, found


def normalise(points: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Steps 1-2 of the module docstring: [T, 5, 2] pixels -> [T, 5, 2] in [0, 1], min-max per
    axis over the found frames, the other frames interpolated. Needs one found frame."""
    if not found.any():
        raise ValueError("no frame with landmarks to normalise")
    seen = points[found]
    low, high = seen.min(axis=(0, 1)), seen.max(axis=(0, 1))
    span = np.where(high > low, high - low, 1.0)  # a single point on an axis: no scale to take
    scaled = ((points - low) / span).reshape(len(points), -1)
    t = np.arange(len(points))
    filled = [np.interp(t, t[found], scaled[found, j]) for j in range(scaled.shape[1])]
    return np.stack(filled, axis=1).reshape(points.shape)


def encode(sequence: np.ndarray) -> np.ndarray:
    """Step 3: [T, C] positions -> [8 C] float32: mean, std, min, max over time of the positions,
    then the same of the frame-to-frame velocities (zeros where T = 1), coordinate-major within
    each statistic."""
    x = np.asarray(sequence, dtype=np.float64).reshape(len(sequence), -1)
    velocity = np.diff(x, axis=0) if len(x) > 1 else np.zeros((1, x.shape[1]))
    parts = [f(v, axis=0) for v in (x, velocity) for f in (np.mean, np.std, np.min, np.max)]
    return np.concatenate(parts).astype(np.float32)


def clip_feature(rows: pd.DataFrame) -> np.ndarray | None:
    """One clip's keypoint feature [FEATURE_DIM], or None when no frame has a face."""
    features = clip_features(rows)
    return None if features is None else features[0]


def clip_features(rows: pd.DataFrame, spans=()) -> np.ndarray | None:
    """One clip's keypoint features [1 + W, FEATURE_DIM]: the whole clip's, then those of the
    windows ``spans`` ([first, end) seconds, :func:`conclugen.features.window_spans`; one past
    the clip's frames takes the whole clip's); None when no frame has a face."""
    points, found = clip_points(rows)
    if not found.any():
        return None
    sequence = normalise(points, found)
    parts = [sequence[a * WINDOW_UNIT_FRAMES : b * WINDOW_UNIT_FRAMES] for a, b in spans]
    return np.stack([encode(p) for p in [sequence, *(p if len(p) else sequence for p in parts)]])


def keypoint_features(clips: pd.DataFrame, faces: pd.DataFrame, ledger,
                      windows: Windows = NO_WINDOWS) -> ShardFeatures:  # fmt: skip
    """The keypoints role's shard features of ``clips`` (:func:`conclugen.features.shard_clips`,
    in their order) from the shard's face tracks ``faces``, with each clip's temporal
    ``windows``: ``present`` False (zeros) for a clip without any detection; a clip whose
    landmarks cannot be read goes to ``ledger`` and is left out (see the module docstring)."""
    by_clip = dict(tuple(faces.groupby("sample_id", sort=False))) if len(faces) else {}
    kept, feats, present = [], [], []
    for clip in clips.to_dict("records"):
        sample_id, rows = clip["sample_id"], by_clip.get(clip["sample_id"])
        try:
            feature = None if rows is None else clip_features(rows, window_spans(clip, windows))
        except ValueError as e:
            ledger.drop(sample_id, f"keypoints: {e}")
            continue
        kept.append(sample_id)
        present.append(feature is not None)
        empty = np.zeros((1 + windows.count, FEATURE_DIM), np.float32)
        feats.append(empty if feature is None else feature)
    split = clips.set_index("sample_id").loc[kept, "split"].to_numpy() if kept else []
    stacked = torch.from_numpy(np.stack(feats)) if feats else torch.zeros(0, 1, FEATURE_DIM)
    return ShardFeatures(
        sample_id=np.array(kept, dtype=str),
        split=np.asarray(split, dtype=str),
        feature=stacked[:, 0],
        present=torch.tensor(present, dtype=torch.bool),
        views=None,
        windows=stacked[:, 1:] if windows.count else None,
    )
