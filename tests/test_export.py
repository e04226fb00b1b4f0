"""Exported models: a downstream run's classifier as a folder that loads with the package alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from conclugen.config import validate
from conclugen.data.caer import CLASSES as CAER
from conclugen.downstream import evaluate, load_classifier, load_task, run_dir, write_evaluation
from conclugen.export import FORMAT, config_digest, export_model, load
from conclugen.featstore import read_features, write_features
from conclugen.io import write_parquet
from tests.conftest import ROOT, tiny_config
from tests.synthetic import synthetic_features

# The demo backbones' widths: ResNet-18 || 3D ResNet-18, the narrow DAVEnet, MiniLM.
DIMS = {"video": 1024, "audio": 256, "text": 384}
TINY = dict(batch_size=64, max_epochs=4, patience=2, warmup_epochs=0, T_0=2, rep_dim=16)


def pipeline_settings(weights: dict[str, str] | None = None) -> dict:
    """What rule export passes for CAER on the tests' tiny config (schema defaults filled in),
    the backbones' weights replaced by ``weights`` (role -> path)."""
    config = tiny_config()
    validate(config, ROOT / "config" / "schema.yaml")
    for role, path in (weights or {}).items():
        config["features"][role]["weights"] = path
    drop = ("datasets", "preview_clips")
    return {
        "features": config["features"],
        "faces": {k: v for k, v in config["faces"].items() if k not in drop},
        "subtitles": {k: v for k, v in config["subtitles"].items() if k not in drop},
        "cropped": True,
        "has_text": False,
        "dataset": config["datasets"]["caer"],
        "pretrain": None,
        "downstream": {"protocols": ["supervised"], "seeds": 1, "hparams": TINY},
    }


def labelled_store(tmp, n: int = 160, dims: dict[str, int] = DIMS, windows: int = 0):
    """A CAER-like feature store (``windows`` temporal windows per clip) and manifest in
    ``tmp``; returns their paths."""
    fs = synthetic_features(n, dims, num_classes=7, seed=1, windows=windows,
                            missing={"audio": 0.2})  # fmt: skip
    features, manifest = tmp / "features.zarr", tmp / "manifest.parquet"
    write_features(features, fs.sample_id, fs.split, fs.features, fs.present, windows=fs.windows)
    cls = fs.features["video"][:, :7].argmax(1).numpy()  # any deterministic labelling
    frame = pd.DataFrame({"sample_id": fs.sample_id, "split": fs.split,
                          "labels": list(np.eye(7)[cls])})  # fmt: skip
    write_parquet(frame, manifest, metadata={"dataset": "caer", "task": "single_label",
                                             "classes": json.dumps(list(CAER))})  # fmt: skip
    return features, manifest


def trained_cell(tmp, n: int = 160, protocol: str = "supervised", pretrained=None, **store):
    """:func:`labelled_store` at the demo's widths (``store``: its other arguments), one
    ``protocol`` run on it (seed 0) in ``tmp/cell``; returns (features, manifest, run
    directory)."""
    features, manifest = labelled_store(tmp, n, **store)
    task = load_task(features, manifest, "caer")
    run = evaluate(task, protocol, None if pretrained is None else pretrained(features), TINY, 0,
                   "cpu")  # fmt: skip
    out = run_dir(tmp / "cell", protocol, 0)
    write_evaluation(run, out)
    return features, manifest, out


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    torch.set_num_threads(1)
    return trained_cell(tmp_path_factory.mktemp("export"))


def test_a_run_saves_the_classifier_that_gave_its_predictions(cell):
    features, _, out = cell
    model = load_classifier(out / "classifier.safetensors")
    fs = read_features(features, dtype=None)
    with torch.no_grad():
        logits = model({m: x.float() for m, x in fs.features.items()}, fs.present)
    predictions = pd.read_parquet(out / "predictions.parquet")
    scores = predictions[[f"score_{c}" for c in CAER]].to_numpy()
    assert np.allclose(torch.softmax(logits, 1).numpy(), scores, atol=1e-5)


def test_export_writes_weights_config_and_card(cell, tmp_path):
    _, _, out = cell
    settings = pipeline_settings()
    config = export_model(out, tmp_path / "export", settings, "supervised")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "README.md", "config.json", "model.safetensors"
    ]  # fmt: skip
    assert json.loads((tmp_path / "export" / "config.json").read_text()) == config
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["format"] == FORMAT and config["task"] == "single_label"
    assert config["classes"] == list(CAER) and "softmax" in config["labels"]
    assert config["metrics"]["test"]["accuracy"] == metrics["accuracy"]
    assert config["architecture"]["in_dims"] == DIMS
    assert config["features"]["video2d"]["mean"] == [0.485, 0.456, 0.406]  # schema default
    assert config["features"]["crop_size"] == 64 and config["features"]["dtype"] == "float16"
    assert config["faces"]["cropped"] and not config["subtitles"]["dataset_has_text"]
    assert config["config_digest"] == config_digest(settings)
    other = dict(settings, downstream={**settings["downstream"], "seeds": 2})
    assert config_digest(other) != config["config_digest"]
    card = (tmp_path / "export" / "README.md").read_text()
    assert "conclugen predict" in card and f"{metrics['accuracy']:.3f}" in card
    assert "a linear layer over" in card and "landmarks" not in card  # no keypoints read


def test_an_export_copied_alone_predicts_in_a_fresh_process(cell, tmp_path):
    """Copied elsewhere, the folder loads in a new interpreter with only the package (run from
    an empty folder) and reproduces the pipeline's predictions.parquet."""
    features, _, out = cell
    export_model(out, tmp_path / "export", pipeline_settings(), "supervised")
    alone = tmp_path / "elsewhere" / "model"
    shutil.copytree(tmp_path / "export", alone)
    shutil.rmtree(tmp_path / "export")
    fs = read_features(features, dtype=None)
    inputs = tmp_path / "inputs.pt"
    torch.save({"x": fs.features, "present": fs.present}, inputs)
    script = (
        "import sys, torch\n"
        "from conclugen.export import load\n"
        "model = load(sys.argv[1])\n"
        "data = torch.load(sys.argv[2])\n"
        "torch.save(model.probabilities(data['x'], data['present']), sys.argv[3])\n"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    result = tmp_path / "probabilities.pt"
    subprocess.run([sys.executable, "-c", script, str(alone), str(inputs), str(result)],
                   cwd=empty, check=True, timeout=300)  # fmt: skip
    predictions = pd.read_parquet(out / "predictions.parquet")
    scores = predictions[[f"score_{c}" for c in CAER]].to_numpy()
    assert np.allclose(torch.load(result).numpy(), scores, atol=1e-5)


def test_load_refuses_a_folder_that_is_no_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an exported model"):
        load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "something/else"}))
    with pytest.raises(ValueError, match="format"):
        load(tmp_path)
