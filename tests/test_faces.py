"""Real MTCNN on look-alike clips whose true face position is known."""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest

from conclugen.data.adapters import ADAPTERS
from conclugen.data.lookalike import generate
from conclugen.data.manifest import build_manifest
from conclugen.faces import centre_box, face_tracks, load_mtcnn, stabilise
from conclugen.ledger import FailureLedger
from conclugen.media import MediaError, probe


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


def test_mtcnn_finds_the_face_where_it_is(caer):
    clips, truth = caer
    ledger = FailureLedger("faces")
    tracks = list(face_tracks(load_mtcnn(), clips, ledger, detect_every=2, batch_frames=48))
    hits, looked = 0, 0
    for track in tracks:
        if truth.loc[track.sample_id, "bad"] == "no_face":
            continue
        boxes = np.array(list(truth.loc[track.sample_id, "face_boxes"]))
        shown = np.minimum(np.floor(track.times * 25 + 1e-6).astype(int), len(boxes) - 1)
        examined = track.examined
        good = iou(np.nan_to_num(track.boxes[examined]), boxes[shown[examined]]) >= 0.5
        hits += good.sum()
        looked += examined.sum()
        # the smoothed track follows the face on every frame, examined or not
        assert np.median(iou(track.track, boxes[shown])) >= 0.6
    assert looked > 300
    assert hits / looked >= 0.95, f"face found with IoU >= 0.5 on {hits}/{looked} frames"


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
