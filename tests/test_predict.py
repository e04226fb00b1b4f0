"""``conclugen predict`` on a look-alike clip, a rotated phone clip and a file that is no video,
with the demo's backbones (random, in their real formats), Whisper tiny.en and MiniLM."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

from conclugen import predict as predict_module
from conclugen.data.caer import CLASSES as CAER
from conclugen.export import export_model, load
from conclugen.faces import FaceTrack, face_tracks, load_mtcnn
from conclugen.keypoints import FEATURE_DIM, keypoint_features
from conclugen.ledger import FailureLedger
from conclugen.lookalike import generate
from conclugen.lookalike.weights import write_demo_weights
from conclugen.media import probe
from conclugen.predict import Predictor, timeline_windows, window_faces
from conclugen.pretrain import method_config, pretrain
from tests.hostile_media import face_clip, ffmpeg
from tests.test_export import DIMS, pipeline_settings, trained_cell


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An exported CAER model over the demo backbones, and the three files to predict."""
    tmp = tmp_path_factory.mktemp("predict")
    weights = write_demo_weights(tmp / "weights")
    _, _, run = trained_cell(tmp)
    export_model(run, tmp / "model", pipeline_settings(weights), "supervised")
    generate(tmp / "look", ["caer"], seed=5, bad_fraction=0.0,
             sizes={"caer": {"train": 1, "validation": 1, "test": 1}}, workers=2)  # fmt: skip
    with zipfile.ZipFile(tmp / "look" / "caer" / "CAER.zip") as z:  # a held-out (test) clip
        name = next(n for n in z.namelist() if n.endswith(".avi") and "/test/" in n)
        z.extract(name, tmp / "clips")
    lookalike = tmp / "clips" / name
    # A phone clip: portrait video stored turned a quarter clockwise, which its display matrix
    # (rotate=90) turns back upright; 48 kHz stereo AAC.
    portrait = face_clip(tmp / "portrait.mp4", size="240x320", fmt="mp4", seconds=9.0,
                         audio="sine=frequency=440:sample_rate=48000",
                         extra=("-ac", "2", "-ar", "48000"))  # fmt: skip
    sideways = tmp / "sideways.mp4"
    ffmpeg("-i", str(portrait), "-vf", "transpose=1", "-c:a", "copy", "-c:v", "libx264",
           "-preset", "ultrafast", str(sideways))  # fmt: skip
    phone = tmp / "phone.mp4"
    ffmpeg("-i", str(sideways), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(phone))
    text = tmp / "notes.mp4"
    text.write_text("This is not a video, just a text file.\n")
    return tmp, lookalike, phone, text


def predict(tmp, *args):
    cmd = [sys.executable, "-m", "conclugen.predict", "predict", "--model", str(tmp / "model"),
           "--device", "cpu", *map(str, args)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=600)


def test_predict_scores_videos_and_reports_a_file_that_is_no_video(setup):
    tmp, lookalike, phone, text = setup
    info = probe(phone)
    assert (info.width, info.height) == (240, 320)  # the rotation is honoured
    proc = predict(tmp, "--json", text, lookalike, phone)
    assert proc.returncode == 1, proc.stderr
    assert f"{text}: not a usable video" in proc.stderr
    results = json.loads(proc.stdout)
    assert [r["video"] for r in results] == [str(text), str(lookalike), str(phone)]
    assert "error" in results[0] and "probabilities" not in results[0]
    for r in results[1:]:
        probs = r["probabilities"]
        assert list(probs) == sorted(probs, key=probs.get, reverse=True)
        assert set(probs) == set(CAER) and abs(sum(probs.values()) - 1) < 1e-4
        assert r["predicted"] == next(iter(probs)) and r["windows"] == 1
    assert "video 3/3" in proc.stderr  # the progress line


def test_predict_prints_probabilities_per_video(setup):
    tmp, lookalike, _, _ = setup
    proc = predict(tmp, lookalike)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(lookalike) and len(lines) == 1 + len(CAER)
    probs = [float(line.split()[-1]) for line in lines[1:]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 0.01


def test_timeline_writes_csv_and_png(setup, tmp_path):
    tmp, _, phone, _ = setup
    proc = predict(tmp, "--timeline", "--json", "--out", tmp_path, phone)
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)
    table = pd.read_csv(result["timeline_csv"])
    assert list(table.columns) == ["start", "end", *CAER]
    assert len(table) == result["windows"] == len(timeline_windows(probe(phone).duration)) == 2
    assert np.allclose(table[list(CAER)].sum(axis=1), 1, atol=1e-4)
    image = matplotlib.image.imread(result["timeline_png"])
    assert image.shape[0] > 300 and image.std() > 0.05


def test_timeline_windows_cover_the_video():
    assert timeline_windows(1.0) == [(0.0, 1.0)]
    spans = timeline_windows(10.0)
    assert len(spans) == 2 and spans[0] == (0.0, 5.0) and spans[-1][1] == 10.0


@pytest.fixture(scope="module")
def keypoints_model(setup):
    """An exported model that reads keypoints: MPUC pretrained for two epochs on a CAER-like
    store with keypoints and two temporal windows, read out linearly."""
    tmp = setup[0] / "keypoints"
    tmp.mkdir()

    def mpuc(features):
        hp = dict(epochs=2, batch_size=64, rep_dim=16, proj_hidden_dim=32)
        return pretrain(features, tmp / "mpuc", method_config("mpuc"), hp, "cpu")

    _, _, run = trained_cell(tmp, protocol="linear", pretrained=mpuc,
                             dims={**DIMS, "keypoints": FEATURE_DIM}, windows=2)  # fmt: skip
    export_model(run, tmp / "model", pipeline_settings(write_demo_weights(tmp / "w")), "mpuc")
    return load(tmp / "model")


def test_a_model_that_reads_keypoints_gets_the_keypoints_of_the_clips_face_track(
    setup, keypoints_model, monkeypatch
):
    tmp, lookalike, phone, _ = setup
    assert keypoints_model.config["modalities"] == ["video", "audio", "text", "keypoints"]
    card = (tmp / "keypoints" / "model" / "README.md").read_text()
    assert "- `keypoints`: the MTCNN face track's five landmarks" in card
    made = []

    def recorded(*args, **kwargs):
        made.append(keypoint_features(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(predict_module, "keypoint_features", recorded)
    monkeypatch.chdir(tmp)
    predictor = Predictor(keypoints_model, "cpu")
    prediction = predictor(lookalike)
    assert prediction.probabilities.shape == (1, len(CAER))
    assert np.isclose(prediction.probabilities.sum(), 1, atol=1e-4)
    (shard,) = made
    assert bool(shard.present.all()) and shard.feature.shape == (1, FEATURE_DIM)
    # The pipeline's keypoints of the same seconds: the faces stage's track of the clip, then
    # the keypoints role (rules faces and features_keypoints).
    info, cfg = probe(lookalike), keypoints_model.config["faces"]
    clips = pd.DataFrame([dict(sample_id="w00000", video=str(lookalike), audio=None,
                               split="test", start=0.0, end=info.duration,
                               duration=info.duration, width=info.width, height=info.height,
                               fps=info.fps)])  # fmt: skip
    options = {k: cfg[k] for k in ("detect_every", "batch_frames", "smooth", "no_face")}
    mtcnn = load_mtcnn("cpu", cfg["min_face_size"])
    tracks = list(face_tracks(mtcnn, clips, FailureLedger("faces"), workers=0, **options))
    faces = pd.concat([t.to_frame() for t in tracks])
    pipeline = keypoint_features(clips, faces, FailureLedger("features/keypoints"))
    assert np.allclose(shard.feature.numpy(), pipeline.feature.numpy())
    # A timeline: each window's keypoints from its own seconds of the video's track.
    timeline = predictor(phone, timeline=True)
    assert len(timeline.windows) == 2 and timeline.probabilities.shape == (2, len(CAER))
    windows = made[-1]
    assert bool(windows.present.all()) and not torch.equal(windows.feature[0], windows.feature[1])


def test_window_faces_are_the_tracks_rows_of_each_window_counted_from_its_start():
    t = 48  # 3 s on the 16 fps grid
    landmarks = np.arange(t * 10, dtype=np.float64).reshape(t, 5, 2)
    face = FaceTrack("video", np.arange(t) / 16, np.ones(t, bool), np.ones(t, bool),
                     np.zeros((t, 4)), np.ones(t), landmarks, np.zeros((t, 4)))  # fmt: skip
    rows = window_faces(face, ["w0", "w1"], [(0.0, 1.5), (1.5, 3.0)])
    assert rows.groupby("sample_id").size().to_dict() == {"w0": 24, "w1": 24}
    second = rows[rows.sample_id == "w1"]
    assert second.frame.tolist() == list(range(24))
    assert np.array_equal(np.stack(second.landmarks), landmarks[24:].reshape(24, 10))
    assert np.allclose(second.time, np.arange(24, 48) / 16)  # the video's times, kept
