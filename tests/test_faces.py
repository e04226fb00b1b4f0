"""Real MTCNN on look-alike clips whose true face position is known, and on hostile clips."""

from __future__ import annotations

import subprocess
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from conclugen import faces
from conclugen.data.adapters import ADAPTERS
from conclugen.data.manifest import build_manifest
from conclugen.faces import centre_box, face_tracks, faces_shard, load_mtcnn, stabilise
from conclugen.keypoints import keypoint_features
from conclugen.ledger import FailureLedger
from conclugen.lookalike import generate
from conclugen.media import MediaError, probe, read_frames


@pytest.fixture(scope="module")
def caer(tmp_path_factory):
    """A small CAER look-alike, extracted, with manifest rows merged with probe facts."""
    root = tmp_path_factory.mktemp("faces")
    sizes = {"caer": {"train": 1, "validation": 1, "test": 1}}
    generate(root / "look", ["caer"], seed=3, bad_fraction=0.2, sizes=sizes)
    with zipfile.ZipFile(root / "look" / "caer" / "CAER.zip") as z:
        z.extractall(root / "raw")
    manifest = build_manifest(ADAPTERS["caer"], root / "raw", 1, FailureLedger("manifest"))
    rows = []
    for rec in manifest.to_dict("records"):
        try:
            info = probe(rec["video"])
        except MediaError:
            continue
        rows.append({**rec, "duration": info.duration, "width": info.width, "height": info.height})
    truth = pd.read_parquet(root / "look" / "caer" / "truth.parquet").set_index("sample_id")
    return pd.DataFrame(rows), truth


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(a[:, :2], b[:, :2]), np.minimum(a[:, 2:], b[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.fixture(scope="module")
def caer_tracks(caer):
    """Real MTCNN's tracks of the look-alike clips (every other frame examined)."""
    clips, _ = caer
    ledger = FailureLedger("faces")
    return list(face_tracks(load_mtcnn(), clips, ledger, detect_every=2, batch_frames=48))


def shown_boxes(track, truth) -> np.ndarray:
    """The true face box [T, 4] on screen at each of the track's sampled times (25 fps)."""
    boxes = np.array(list(truth.loc[track.sample_id, "face_boxes"]))
    return boxes[np.minimum(np.floor(track.times * 25 + 1e-6).astype(int), len(boxes) - 1)]


def test_mtcnn_finds_the_face_where_it_is(caer, caer_tracks):
    _, truth = caer
    hits, looked = 0, 0
    for track in caer_tracks:
        if truth.loc[track.sample_id, "bad"] == "no_face":
            continue
        boxes = shown_boxes(track, truth)
        examined = track.examined
        good = iou(np.nan_to_num(track.boxes[examined]), boxes[examined]) >= 0.5
        hits += good.sum()
        looked += examined.sum()
        # the smoothed track follows the face on every frame, examined or not
        assert np.median(iou(track.track, boxes)) >= 0.6
    assert looked > 300
    assert hits / looked >= 0.95, f"face found with IoU >= 0.5 on {hits}/{looked} frames"


def test_landmarks_follow_the_moving_face(caer, caer_tracks):
    _, truth = caer
    inside, detected, travel = 0, 0, []
    for track in caer_tracks:
        if truth.loc[track.sample_id, "bad"] == "no_face":
            continue
        found = track.detected
        box = shown_boxes(track, truth)[found]
        points = track.landmarks[found]  # [F, 5, 2]: eyes, nose, mouth corners
        lo, hi = box[:, None, :2], box[:, None, 2:]
        eyes_mouth = points[:, [0, 1, 3, 4]]
        inside += ((eyes_mouth >= lo) & (eyes_mouth <= hi)).all((1, 2)).sum()
        detected += found.sum()
        # Each point keeps its place in the true box while the face moves and zooms.
        assert ((points - lo) / (hi - lo)).std(0).max() < 0.06, track.sample_id
        travel.append(np.ptp((box[:, :2] + box[:, 2:]) / 2, axis=0).max())
    assert detected > 300
    assert inside / detected >= 0.95, f"eyes and mouth in the face box on {inside}/{detected}"
    assert np.median(travel) > 30  # px: the faces do move
    # The keypoints role reads these tracks as the faces stage stores them.
    faces = pd.concat([t.to_frame() for t in caer_tracks], ignore_index=True)
    ids = [t.sample_id for t in caer_tracks]
    clips = pd.DataFrame({"sample_id": ids, "split": "train"})
    shard = keypoint_features(clips, faces, FailureLedger("features/keypoints"))
    assert shard.sample_id.tolist() == ids and bool(shard.present.all())
    assert torch.isfinite(shard.feature).all() and (shard.feature[:, 40:].abs().sum(1) > 0).all()


def test_clip_without_face_goes_to_the_ledger(caer):
    clips, truth = caer
    no_face = [s for s in clips["sample_id"] if truth.loc[s, "bad"] == "no_face"]
    assert no_face, "the look-alike should hold a clip without a face"
    subset = clips[clips["sample_id"].isin(no_face)]
    ledger = FailureLedger("faces")
    assert list(face_tracks(load_mtcnn(), subset, ledger, detect_every=4)) == []
    assert {r[0] for r in ledger.rows} == set(no_face)
    assert all(r[3] == "dropped" and "no face" in r[2] for r in ledger.rows)
    kept = FailureLedger("faces")
    tracks = list(face_tracks(load_mtcnn(), subset, kept, detect_every=4, no_face="centre"))
    assert {t.sample_id for t in tracks} == set(no_face)
    np.testing.assert_allclose(tracks[0].track[0], centre_box(320, 240))
    assert all(r[3] == "kept" for r in kept.rows)


def test_two_runs_give_identical_tracks(caer):
    clips, _ = caer
    few = clips.head(3)
    a = [t.to_frame() for t in face_tracks(load_mtcnn(), few, FailureLedger("f"), detect_every=4)]
    b = [t.to_frame() for t in face_tracks(load_mtcnn(), few, FailureLedger("f"), workers=0,
                                           detect_every=4, batch_frames=7)]  # fmt: skip
    for x, y in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(x, y)


def test_stabilise_fills_gaps_and_keeps_still_boxes():
    boxes = np.array([[10, 10, 50, 50], [np.nan] * 4, [14, 10, 54, 50], [np.nan] * 4], float)
    track = stabilise(boxes, smooth=1)
    np.testing.assert_allclose(track[1], [12, 10, 52, 50])  # interpolated
    np.testing.assert_allclose(track[3], [14, 10, 54, 50])  # held after the last detection
    still = np.tile([5.0, 6.0, 45.0, 66.0], (9, 1))
    np.testing.assert_allclose(stabilise(still, smooth=5), still)
    with pytest.raises(ValueError):
        stabilise(np.full((3, 4), np.nan), smooth=3)


def clip_row(sample_id: str, video) -> dict:
    """A manifest row merged with its probe facts, as the faces stage sees a clip."""
    info = probe(video)
    return {"sample_id": sample_id, "video": str(video), "start": 0.0, "end": np.nan,
            "duration": info.duration, "width": info.width, "height": info.height}  # fmt: skip


def encode(out, *args: str) -> str:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args, "-c:v", "libx264", "-pix_fmt",
                    "yuv420p", str(out)], check=True)  # fmt: skip
    return str(out)


def test_frames_smaller_than_the_detector_sees_have_their_own_reason(caer, tmp_path):
    clips, truth = caer
    good = clips[truth.loc[clips["sample_id"], "bad"].isna().to_numpy()].head(1)
    tiny = [
        clip_row(f"tiny_{w}x{h}", encode(tmp_path / f"{w}x{h}.mp4", "-f", "lavfi", "-i",
                                         f"testsrc=size={w}x{h}:rate=25:duration=1"))
        for w, h in [(16, 16), (1280, 16)]
    ]  # fmt: skip
    shard = pd.concat([pd.DataFrame(tiny[:1]), good, pd.DataFrame(tiny[1:])], ignore_index=True)
    manifest = shard[["sample_id", "video", "start", "end"]]
    probed = shard[["sample_id", "duration", "width", "height"]]
    ledger = FailureLedger("faces")
    table = faces_shard(manifest, probed, tmp_path / "faces.parquet", ledger, detect_every=4)
    # the shard finishes and the normal clip keeps the detections it gets on its own
    alone = next(face_tracks(load_mtcnn(), good, FailureLedger("f"), detect_every=4)).to_frame()
    pd.testing.assert_frame_equal(table, alone)
    assert alone["detected"].any()
    assert sorted(ledger.rows) == [
        ("tiny_1280x16", "faces", "frames 1280x16 too small for face detection: shorter side "
         "under min_face_size 20 px", "dropped"),
        ("tiny_16x16", "faces", "frames 16x16 too small for face detection: shorter side "
         "under min_face_size 20 px", "dropped"),
    ]  # fmt: skip
    # no_face="centre" keeps them like a clip without a face: a centre crop, never examined
    kept = FailureLedger("faces")
    tracks = {t.sample_id: t for t in face_tracks(load_mtcnn(), shard, kept, detect_every=4,
                                                  no_face="centre")}  # fmt: skip
    np.testing.assert_allclose(tracks["tiny_1280x16"].track[0], centre_box(1280, 16))
    assert not tracks["tiny_16x16"].examined.any()
    assert {(r[0], r[3]) for r in kept.rows} == {("tiny_16x16", "kept"), ("tiny_1280x16", "kept")}
    assert all(r[2].endswith("px: centre crop") for r in kept.rows)


def test_the_boundary_is_where_mtcnn_starts_to_fail():
    mtcnn = load_mtcnn(min_face_size=20)
    faces.detect(mtcnn, np.zeros((1, 20, 1280, 3), np.uint8))  # the smallest it can look at
    with pytest.raises(ValueError, match="non-empty list"):
        faces.detect(mtcnn, np.zeros((1, 19, 1280, 3), np.uint8))
    assert faces.too_small(mtcnn, 20, 1280) is None
    assert faces.too_small(mtcnn, 19, 1280) is not None
    # 47 * (12 / 47) rounds below 12: the library cannot look at a 47 px side with
    # min_face_size 47, and too_small follows it there too
    odd = load_mtcnn(min_face_size=47)
    with pytest.raises(ValueError, match="non-empty list"):
        faces.detect(odd, np.zeros((1, 47, 47, 3), np.uint8))
    faces.detect(odd, np.zeros((1, 48, 48, 3), np.uint8))
    assert faces.too_small(odd, 47, 47) is not None and faces.too_small(odd, 48, 48) is None


def test_a_clip_that_makes_a_library_fail_costs_only_that_clip(caer, tmp_path, monkeypatch):
    clips, truth = caer
    good = clips[truth.loc[clips["sample_id"], "bad"].isna().to_numpy()].head(4)
    tiny = clip_row("tiny", encode(tmp_path / "tiny.mp4", "-f", "lavfi", "-i",
                                   "testsrc=size=16x16:rate=25:duration=1"))  # fmt: skip
    shard = pd.concat([good, pd.DataFrame([tiny])], ignore_index=True)
    clean = {
        t.sample_id: t.to_frame()
        for t in face_tracks(
            load_mtcnn(), good, FailureLedger("f"), detect_every=8, batch_frames=1000, workers=0
        )
    }
    poison_detect, poison_decode = good["sample_id"].iloc[1], good["sample_id"].iloc[2]
    poison = read_frames(good["video"].iloc[1], np.zeros(1))[0][0]
    mtcnn = load_mtcnn()
    real_detect, calls = mtcnn.detect, []

    def detect(frames, **kw):  # a library error raised by one clip's frames, inside a batch
        calls.append(frames.shape)
        if frames.shape[1:] == poison.shape and any((f == poison).all() for f in frames):
            raise RuntimeError("simulated detector failure")
        return real_detect(frames, **kw)

    def decode(path, times):  # a decoder library's own error (not a MediaError)
        if path == good["video"].iloc[2]:
            raise ValueError("simulated decoder failure")
        return read_frames(path, times)

    monkeypatch.setattr(mtcnn, "detect", detect)
    monkeypatch.setattr(faces, "read_frames", decode)
    monkeypatch.setattr(faces, "too_small", lambda *_: None)  # let MTCNN meet the 16x16 frames
    ledger = FailureLedger("faces")
    tracks = list(face_tracks(mtcnn, shard, ledger, detect_every=8, batch_frames=1000, workers=0))
    # the three decoded clips shared one batch, then each went alone
    batched = [shape[0] for shape in calls if shape[1:] == poison.shape]
    assert len(batched) == 4 and batched[0] == sum(batched[1:])
    assert {t.sample_id for t in tracks} == set(clean) - {poison_detect, poison_decode}
    for t in tracks:
        pd.testing.assert_frame_equal(t.to_frame(), clean[t.sample_id])
    reasons = {r[0]: r[2] for r in ledger.rows if r[3] == "dropped"}
    assert reasons == {
        poison_detect: "face detection failed: RuntimeError: simulated detector failure",
        poison_decode: "video not decodable: ValueError: simulated decoder failure",
        "tiny": "face detection failed: ValueError: torch.cat(): expected a non-empty list of "
        "Tensors",
    }


@pytest.mark.parametrize("where", ["detect", "decode"])
@pytest.mark.parametrize("error", [torch.OutOfMemoryError, MemoryError])
def test_running_out_of_memory_is_no_clips_fault(caer, monkeypatch, where, error):
    clips, _ = caer
    mtcnn = load_mtcnn()

    def fail(*args, **kw):
        raise error("out of memory (simulated)")

    monkeypatch.setattr(*(mtcnn, "detect") if where == "detect" else (faces, "read_frames"), fail)
    ledger = FailureLedger("faces")
    with pytest.raises(error, match="simulated"):
        list(face_tracks(mtcnn, clips.head(2), ledger, detect_every=8, workers=0))
    assert ledger.rows == []


def test_a_long_clip_goes_in_windows_with_the_same_tracks(caer, tmp_path, monkeypatch):
    clips, truth = caer
    good = clips[truth.loc[clips["sample_id"], "bad"].isna().to_numpy()].iloc[0]
    # three times the clip, a keyframe every 16 frames: later windows seek into the middle
    video = encode(tmp_path / "long.mp4", "-stream_loop", "2", "-i", good["video"], "-g", "16")
    long = pd.DataFrame([clip_row("long", video)])
    whole = next(face_tracks(load_mtcnn(), long, FailureLedger("f"), detect_every=4,
                             batch_frames=10_000, workers=0)).to_frame()  # fmt: skip
    decoded = []

    def decode(path, times):
        decoded.append(len(times))
        return read_frames(path, times)

    monkeypatch.setattr(faces, "read_frames", decode)
    windowed = next(face_tracks(load_mtcnn(), long, FailureLedger("f"), detect_every=4,
                                batch_frames=5, workers=0)).to_frame()  # fmt: skip
    # never more than a window decoded at once; the later windows seek into the clip (> 1 s)
    assert max(decoded) == 5 and len(decoded) >= 4 and sum(decoded) == whole["examined"].sum()
    assert whole.loc[whole["examined"], "detected"].mean() > 0.9
    pd.testing.assert_frame_equal(windowed, whole)


def test_a_clip_whose_frame_size_changes_midway_is_dropped(caer, monkeypatch):
    clips, _ = caer
    clip = clips.head(1)

    def decode(path, times):  # the stream switches from 64x48 to 48x64 frames after 1 s
        frames = np.zeros((len(times), 48, 64, 3), np.uint8)
        return (frames if times[0] < 1 else frames.transpose(0, 2, 1, 3)), np.ones(len(times), bool)

    monkeypatch.setattr(faces, "read_frames", decode)
    ledger = FailureLedger("faces")
    assert list(face_tracks(load_mtcnn(), clip, ledger, batch_frames=8, workers=0)) == []
    reason = "frame size changes mid-clip: (48, 64, 3) then (64, 48, 3)"
    assert ledger.rows == [(clip["sample_id"].iloc[0], "faces", reason, "dropped")]
