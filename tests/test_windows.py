"""Temporal windows (MPUC's views): where each window of a clip lies, and that every modality's
window feature is that stretch's own: video and audio equal the stretch extracted alone, text
the whole clip's, keypoints the encoding of the stretch's frames; and the store keeps them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conclugen import featstore
from conclugen.featstore import ShardFeatures, merge_shards, read_features, write_shard
from conclugen.features import (
    AudioClips,
    AudioRunner,
    Augment,
    LocalViews,
    Windows,
    clip_units,
    extract_shard,
    extract_video_shards,
    window_span,
    window_spans,
)
from conclugen.keypoints import encode as encode_points
from conclugen.keypoints import keypoint_features, normalise
from conclugen.ledger import FailureLedger
from tests.test_features import FakeEncoder, StepMap, clips_table, encode, video_keywords
from tests.test_keypoints import FACE, face_rows

TWO = Windows(count=2, seconds=4, seed=5)


def test_windows_are_whole_seconds_drawn_per_sample_and_window():
    units = clip_units(2.3, 16.3)  # 14 s: 224 frames of the 16 fps grid
    assert units == 14
    spans = {f"s{i}": window_spans({"sample_id": f"s{i}", "split": "train", "start": 2.3,
                                    "end": 16.3}, TWO) for i in range(50)}  # fmt: skip
    for first, end in (span for pair in spans.values() for span in pair):
        assert end - first == 4 and 0 <= first <= units - 4
    # Independent draws: the two windows of most clips differ, and they vary across clips.
    assert sum(a != b for a, b in spans.values()) > 40
    assert len({pair[0] for pair in spans.values()}) == 11  # every start 0 .. 10 is drawn
    # A function of (seed, sample id, window): the same again, another seed another.
    assert window_span("s0", 1, units, TWO, True) == spans["s0"][1]
    other = Windows(count=2, seconds=4, seed=6)
    assert [window_spans({"sample_id": s, "split": "train", "start": 2.3, "end": 16.3}, other)
            for s in spans] != list(spans.values())  # fmt: skip
    # Outside the train split both windows start at the clip's start; a short clip clamps.
    assert window_spans({"sample_id": "s0", "split": "val", "start": 0, "end": 14}, TWO) == [
        (0, 4), (0, 4)
    ]  # fmt: skip
    assert clip_units(0, 2.5) == 3  # 40 frames: the last second is part of one
    assert window_spans({"sample_id": "s0", "split": "train", "start": 0, "end": 2.5}, TWO) == [
        (0, 3), (0, 3)
    ]  # fmt: skip
    assert window_spans({"sample_id": "s0", "split": "val"}, Windows()) == []  # none by default


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """14 s of a moving gradient with noise at 16 fps (keyframes every 20 frames), full frame."""
    rng = np.random.default_rng(1)
    n, h, w = 224, 48, 64
    x = np.arange(w)[None, None, :] + 7 * np.arange(n)[:, None, None] + 0 * np.arange(h)[:, None]
    frames = np.stack([x % 256, (x // 3 + np.arange(h)[:, None]) % 256, x * 0 + 60], -1)
    frames = (frames + rng.integers(0, 40, frames.shape)).clip(0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("windows") / "long.mp4"
    encode(path, frames, gop=20)
    clips = clips_table({"long": path, "eval": path}, ["long", "eval"], {"long": 0, "eval": 0})
    clips = clips.assign(start=0.3, end=13.8, width=w, height=h, split=["train", "test"])
    return clips


@pytest.mark.parametrize("role", ["video2d", "video3d"])
def test_a_video_window_is_the_features_of_its_seconds_alone(long_clip, tiny_backbones, role):
    model = tiny_backbones[role == "video3d"]
    kw = {"crop_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "workers": 0, "batch_size": 7}
    ledger = FailureLedger("features")
    shard = extract_shard(role, long_clip, model, ledger, chunk_frames=48, windows=TWO, **kw)
    assert not ledger.rows and shard.windows.shape == (2, 2, model.feature_dim)
    for i, clip in enumerate(long_clip.to_dict("records")):
        spans = window_spans(clip, TWO)
        # The window's seconds as a clip of their own, ending where the clip ends.
        stretches = pd.DataFrame([{**clip, "sample_id": f"{clip['sample_id']}{w}",
                                   "start": clip["start"] + a,
                                   "end": min(clip["start"] + b, clip["end"])}
                                  for w, (a, b) in enumerate(spans)])  # fmt: skip
        alone = extract_shard(role, stretches, model, ledger, **kw)
        assert torch.allclose(shard.windows[i], alone.feature, rtol=1e-5, atol=1e-6)
    train, evaluation = (window_spans(c, TWO) for c in long_clip.to_dict("records"))
    assert train[0] != train[1] and evaluation == [(0, 4), (0, 4)]
    assert torch.equal(shard.windows[1, 0], shard.windows[1, 1])
    # Windows add rows, they change none: the plain clip's features stay as they were.
    plain = extract_shard(role, long_clip, model, ledger, chunk_frames=48, **kw)
    assert torch.equal(plain.feature, shard.feature) and plain.windows is None


def test_windows_sit_between_the_views_and_the_copies(long_clip, tiny_backbones):
    """Rows per clip: the plain crop, views, DINO's local views, windows, copies."""
    models = {"video2d": tiny_backbones[0], "video3d": tiny_backbones[1]}
    augment = Augment(count=2, seed=3)
    with_windows = video_keywords(models, {"video3d": 2}, augment=augment)
    without = video_keywords(models, {"video3d": 2}, augment=augment)
    for kw in (*with_windows.values(), *without.values()):
        kw["local_views"] = LocalViews(count=1)
    for kw in with_windows.values():
        kw["windows"] = TWO
    ledgers = {r: FailureLedger(r) for r in models}
    got = extract_video_shards(long_clip, with_windows, ledgers, workers=0, chunk_frames=32)
    want = extract_video_shards(long_clip, without, ledgers, workers=0, chunk_frames=32)
    for role in models:
        for name in ("feature", "views", "local_views", "augmented"):
            a, b = getattr(got[role], name), getattr(want[role], name)
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), (role, name)
        alone = extract_shard(role, long_clip, ledger=FailureLedger(role), workers=0,
                              chunk_frames=32, **with_windows[role])  # fmt: skip
        assert torch.allclose(got[role].windows, alone.windows, rtol=1e-5, atol=1e-6)
    assert got["video3d"].augmented[1].abs().sum() == 0  # the test clip: no copies


def test_an_audio_window_is_its_seconds_of_the_spectrogram(monkeypatch):
    audio = np.random.default_rng(4).standard_normal(16000 * 9).astype(np.float32)
    monkeypatch.setattr("conclugen.features.read_audio", lambda *a: audio)
    clips = pd.DataFrame({"sample_id": ["a", "b"], "split": ["train", "val"],
                          "video": ["a.mp4", "b.mp4"], "audio": [None, None],
                          "start": [0.0, 0.0], "end": [9.0, 9.0], "has_audio": [True, True],
                          "audio_peak": [0.5, 0.5]})  # fmt: skip
    data = AudioClips(clips, Augment(count=1, seed=2), TWO)
    for i, clip in enumerate(clips.to_dict("records")):
        item = data[i]
        spec = item.inputs[0] if item.inputs.dim() == 3 else item.inputs
        spans = window_spans(clip, TWO)
        assert len(item.window_specs) == 2
        for (a, b), window in zip(spans, item.window_specs, strict=True):
            assert torch.equal(window, spec[:, a * 100 : b * 100])  # 100 frames a second
    shard = extract_shard("audio", clips, StepMap(), FailureLedger("audio"), workers=0,
                          augment=Augment(count=1, seed=2), windows=TWO)  # fmt: skip
    runner = AudioRunner(StepMap(), "cpu")
    for i in range(2):
        want = torch.stack([runner([w])[0] for w in data[i].window_specs])
        assert torch.allclose(shard.windows[i], want, atol=1e-6)
    plain = extract_shard("audio", clips, StepMap(), FailureLedger("audio"), workers=0,
                          augment=Augment(count=1, seed=2))  # fmt: skip
    assert torch.equal(plain.feature, shard.feature)
    assert torch.equal(plain.augmented, shard.augmented)  # copies after the windows


def test_a_text_window_is_the_whole_text(long_clip):
    clips = long_clip.assign(text=["so it goes", "and on"])
    ledger = FailureLedger("text")
    shard = extract_shard("text", clips, FakeEncoder(), ledger, windows=TWO,
                          augment=Augment(count=1, seed=0))  # fmt: skip
    assert torch.equal(shard.windows, shard.feature[:, None].expand(-1, 2, -1))
    assert shard.augmented.shape == (2, 1, 2)


def test_a_keypoint_window_encodes_its_seconds_of_the_clip(long_clip):
    rng = np.random.default_rng(0)
    t = 216  # 13.5 s at 16 fps
    points = FACE + rng.normal(0, 2, (t, 5, 2)).cumsum(0)
    detected = rng.random(t) > 0.3
    faces = pd.concat([face_rows(s, points, detected) for s in ("long", "eval")])
    shard = keypoint_features(long_clip, faces, FailureLedger("keypoints"), TWO)
    sequence = normalise(points, detected)  # over the whole clip
    for i, clip in enumerate(long_clip.to_dict("records")):
        np.testing.assert_allclose(shard.feature[i], encode_points(sequence), rtol=1e-5)
        for w, (a, b) in enumerate(window_spans(clip, TWO)):
            want = encode_points(sequence[16 * a : 16 * b])
            np.testing.assert_allclose(shard.windows[i, w], want, rtol=1e-5, atol=1e-6)
    plain = keypoint_features(long_clip, faces, FailureLedger("keypoints"))
    assert plain.windows is None and torch.equal(plain.feature, shard.feature)


def shard(ids, dim, value, windows=0) -> ShardFeatures:
    n = len(ids)
    rows = torch.full((n, dim), float(value))
    spans = None if not windows else rows[:, None] + torch.arange(1, windows + 1)[:, None] / 10
    return ShardFeatures(np.array(ids), np.array(["train"] * n), rows,
                         torch.ones(n, dtype=torch.bool), None, windows=spans)  # fmt: skip


def test_the_store_keeps_every_modality_s_windows(tmp_path):
    dims = {"video2d": 4, "video3d": 2, "audio": 3, "text": 5, "keypoints": 6}
    ids = {r: ["a", "b", "c"] for r in dims} | {"audio": ["a", "c"]}  # b has no audio
    paths = {}
    for role, dim in dims.items():
        path = tmp_path / f"{role}.zarr"
        value = list(dims).index(role) + 1
        write_shard(path, shard(ids[role], dim, value, windows=2), "float32", {"role": role})
        paths[role] = [path]
    merge_shards(paths, tmp_path / "features.zarr", dtype="float32")
    feats = read_features(tmp_path / "features.zarr", windows=True)
    assert feats.attrs["windows"] == 2 and set(feats.windows) == set(featstore.MODALITIES)
    video = feats.windows["video"]
    assert video.shape == (3, 2, 6)
    torch.testing.assert_close(video[0, 1], torch.tensor([1.2] * 4 + [2.2] * 2))
    torch.testing.assert_close(feats.windows["audio"][1], torch.zeros(2, 3))  # absent: zeros
    torch.testing.assert_close(feats.windows["keypoints"][2, 0], torch.full((6,), 5.1))
    assert read_features(tmp_path / "features.zarr").windows is None  # only when asked
    picked = feats.select([2])
    assert torch.equal(picked.windows["text"], feats.windows["text"][2:])
    # A role without windows: the store gets none (and says so in the log).
    write_shard(tmp_path / "plain.zarr", shard(ids["text"], 5, 4), "float32", {"role": "text"})
    merge_shards({**paths, "text": [tmp_path / "plain.zarr"]}, tmp_path / "none.zarr")
    assert read_features(tmp_path / "none.zarr", windows=True).windows is None
