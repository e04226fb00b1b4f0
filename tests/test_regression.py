"""Continuous-label downstream (CMU-MOSEI sentiment and intensities) on synthetic features whose
targets are a known function of the features."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conclugen import losses
from conclugen.data.mosei import CLASSES as MOSEI
from conclugen.featstore import write_features
from conclugen.io import write_parquet
from conclugen.metrics import concordance, pearson, regression_metrics
from conclugen.model import ConCluGenModel, save_model
from conclugen.regression import (
    RUN_METRICS,
    TARGETS,
    evaluate_regression,
    evaluate_regression_method,
    fit_coding,
    load_regression_task,
    split_outputs,
)
from tests.synthetic import synthetic_features

DIMS = {"video": 16, "audio": 8, "text": 12}
TINY = dict(batch_size=128, max_epochs=40, patience=8, lr=1e-2, warmup_epochs=0, T_0=10, rep_dim=32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mosei_like(tmp, name, n=600, shuffle=False, unlabelled=0):
    """tests.synthetic features; the sentiment a saturating linear read-out of the video
    features (in thirds, -3 .. 3), each intensity a clipped read-out of the audio or text ones
    (0 .. 3); ``shuffle`` permutes the targets (no signal); the first ``unlabelled`` rows have
    no sentiment. Returns (features, manifest, values [N, 7])."""
    feats = synthetic_features(n, DIMS, num_classes=7, seed=1)
    rng = np.random.default_rng(0)
    x = {m: feats.features[m].numpy() for m in DIMS}
    video = (x["video"] - x["video"].mean(0)) / x["video"].std(0)
    sentiment = np.round(3 * np.tanh(video @ rng.standard_normal(16) / 4) * 3) / 3
    emotions = [
        np.clip(x[m] @ rng.standard_normal(DIMS[m]) / 3 + 1, 0, 3) for m in ["audio", "text"] * 3
    ]
    values = np.column_stack([sentiment, *emotions])
    if shuffle:
        values = values[rng.permutation(n)]
    write_features(tmp / f"{name}.zarr", feats.sample_id, feats.split, x)
    column = values[:, 0].copy()
    column[:unlabelled] = np.nan
    frame = pd.DataFrame(
        {
            "sample_id": feats.sample_id,
            "split": feats.split,
            "labels": list(values[:, 1:]),
            "sentiment": column,
        }
    )
    meta = {"dataset": "mosei", "task": "multi_label", "classes": json.dumps(list(MOSEI))}
    write_parquet(frame, tmp / f"{name}.parquet", metadata=meta)
    return tmp / f"{name}.zarr", tmp / f"{name}.parquet", values


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("regression")


@pytest.fixture(scope="module")
def pretrained(tmp):
    torch.manual_seed(0)
    save_model(ConCluGenModel(DIMS, 32, 8, num_clusters=0, rec_dim=0), tmp / "m.pt")
    return tmp / "m.pt"


@pytest.fixture(scope="module")
def signal(tmp):
    return mosei_like(tmp, "signal")


@pytest.fixture(scope="module")
def linear(signal, pretrained):
    task = load_regression_task(*signal[:2])
    return task, evaluate_regression(task, "linear", pretrained, TINY, device="cpu")


def test_linear_regression_recovers_a_planted_sentiment_and_not_noise(tmp, linear, pretrained):
    task, ev = linear
    m = ev.metrics
    assert task.targets == list(TARGETS) == ["sentiment", *MOSEI]
    # A linear read-out of random heads (the supervised baseline reaches ~0.97 on this set).
    assert m["ccc"] > 0.6 and m["pearson"] >= m["ccc"] - 1e-9  # CCC <= |r| always
    assert m["acc2"] > 0.7 and m["acc7"] > 0.17  # chance: ~0.5 and below 1/7
    assert m["emotion_ccc"] > 0.5
    assert m["loss_weights"] == losses.COMPOSITE_WEIGHTS and m["bins"] == 20
    noise = mosei_like(tmp, "noise", shuffle=True)
    task = load_regression_task(*noise[:2])
    assert evaluate_regression(task, "linear", pretrained, TINY, device="cpu").metrics["ccc"] < 0.3


def test_predictions_are_in_label_units_and_metrics_are_on_the_whole_test_set(signal, linear):
    task, ev = linear
    frame = ev.predictions
    test = frame[frame["split"] == "test"]
    assert len(test) == ev.metrics["n_test"] == int((task.feats.split == "test").sum())
    assert np.allclose(test["target_sentiment"], signal[2][frame["split"] == "test", 0])
    # De-normalised: in label units (the intensities' mean is ~1, not the normalised 0).
    train = frame[frame["split"] == "train"]
    assert train["target_happy"].mean() > 0.5
    assert train["predicted_happy"].mean() == pytest.approx(train["target_happy"].mean(), abs=0.1)
    want = concordance(test["target_sentiment"], test["predicted_sentiment"])
    assert ev.metrics["ccc"] == pytest.approx(want)
    # The normalisation and the bins come from the train split alone.
    train = task.values[torch.from_numpy(task.feats.split == "train")]
    assert ev.metrics["coding"]["mean"] == pytest.approx(train.mean(0).tolist(), abs=1e-5)


def test_fit_coding_uses_the_train_values():
    values = torch.tensor([[-3.0, 0.0], [0.0, 0.0], [3.0, 3.0], [0.0, 1.0]])
    coding = fit_coding(values, bins=4)
    assert coding.mean.tolist() == [0.0, 1.0]
    std = values.std(0, unbiased=False)
    assert coding.std.tolist() == pytest.approx(std.tolist())
    z = coding.normalise(values)
    assert coding.edges[:, 0].tolist() == pytest.approx(z.min(0).values.tolist())
    assert coding.edges[:, -1].tolist() == pytest.approx(z.max(0).values.tolist())
    assert coding.edges.shape == (2, 5) and coding.centroids.shape == (2, 4)
    assert set(coding.centroids[0].tolist()) == set(z[:, 0].unique().tolist())  # 3 values, k=4
    assert torch.allclose(coding.denormalise(z), values)
    constant = fit_coding(torch.ones(3, 1), bins=2)  # std 1, not 0: no division by zero
    assert constant.std.tolist() == [1.0]


def test_split_outputs_layout():
    out = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 15)  # T 3, L 2: 3 (1 + 4)
    value, bins, classes = split_outputs(out, 3, 2)
    assert value.tolist() == [[0, 1, 2], [15, 16, 17]]
    assert bins[0].tolist() == [[3, 4], [7, 8], [11, 12]]
    assert classes[0].tolist() == [[5, 6], [9, 10], [13, 14]]


def test_ncce_composite_trains_and_bad_weights_are_refused(signal, pretrained):
    task = load_regression_task(*signal[:2])
    ncce = {"ccc": 0.5, "mse": 0.25, "ce": 0.0, "ncce": 0.25}
    ev = evaluate_regression(task, "linear", pretrained, TINY, device="cpu", loss_weights=ncce)
    assert ev.metrics["ccc"] > 0.7 and ev.metrics["loss_weights"] == ncce
    with pytest.raises(ValueError, match="ccc \\+ mse > 0"):
        evaluate_regression(
            task, "linear", pretrained, TINY, loss_weights={**ncce, "ccc": 0, "mse": 0}
        )
    with pytest.raises(ValueError, match="classification"):
        evaluate_regression(task, "linear", pretrained, {**TINY, "train_fraction": 0.5})


def test_supervised_regression_and_the_cell_writes_runs(tmp, signal):
    out = tmp / "cell"
    runs = evaluate_regression_method(
        *signal[:2], "mosei", "supervised", ["supervised"], 2, out, hparams=TINY, device="cpu"
    )
    assert list(runs.columns) == [
        "dataset", "method", "protocol", "seed", *RUN_METRICS, "best_epoch", "epochs"
    ]  # fmt: skip
    assert (runs["ccc"] > 0.8).all() and runs["seed"].tolist() == [0, 1]
    assert pd.read_csv(out / "runs.csv").shape == runs.shape
    record = json.loads((out / "supervised" / "seed1" / "metrics.json").read_text())
    assert record["history"] and record["per_target"]["happy"]["mse"] >= 0


def test_rows_without_a_sentiment_are_left_out_and_other_tasks_refused(tmp):
    features, manifest, _ = mosei_like(tmp, "partial", n=200, unlabelled=20)
    task = load_regression_task(features, manifest)
    assert len(task.feats) == 180 and not torch.isnan(task.values).any()
    with pytest.raises(ValueError, match="no continuous labels"):
        load_regression_task(features, manifest, "caer")


def test_regression_metrics_match_hand_computation():
    y = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 2.0], [-1.0, 0.5]])
    p = np.array([[2.0, 0.0], [2.0, 1.0], [5.0, 2.0], [0.4, 0.5]])
    m = regression_metrics(y, p, ["sentiment", "happy"])
    assert m["per_target"]["happy"] == {"ccc": pytest.approx(1.0), "mse": 0.0, "pearson": 1.0}
    assert m["mse"] == pytest.approx((1 + 0 + 4 + 1.96) / 4)
    assert m["ccc"] == pytest.approx(
        losses.ccc(torch.tensor(p[:, 0]), torch.tensor(y[:, 0])).item()
    )
    assert m["pearson"] == pytest.approx(np.corrcoef(y[:, 0], p[:, 0])[0, 1])
    assert m["acc2"] == 0.75  # -1 vs 0.4: the sign differs
    assert m["acc7"] == 0.5  # rounded: 1/2, 2/2, 3/3 (5 clipped), -1/0
    assert m["emotion_ccc"] == pytest.approx(1.0)
    assert concordance([1.0, 1.0], [1.0, 1.0]) == 0.0 and pearson([1, 2], [3, 3]) == 0.0
