"""Downstream protocols on tiny feature stores whose labels are a known function of the features."""

import json

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

from conclugen.data.caer import CLASSES as CAER
from conclugen.data.mosei import CLASSES as MOSEI
from conclugen.downstream import (
    draw_copies,
    evaluate,
    label_subset,
    load_task,
    loss_weights,
    run_dir,
    summed_confusion,
    write_evaluation,
)
from conclugen.featstore import read_features, write_features
from conclugen.io import write_parquet
from conclugen.metrics import classification_metrics
from conclugen.model import ConCluGenModel, load_model, save_model
from tests.synthetic import synthetic_features

DIMS = {"video": 16, "audio": 8, "text": 12}
TINY = dict(batch_size=128, max_epochs=25, patience=8, lr=1e-2, warmup_epochs=0, T_0=10, rep_dim=32)


def run(data, protocol, model, hp=TINY, seed=0):
    """:func:`evaluate` on a CAER-like set ``data`` = (features, manifest, ...) on the CPU."""
    return evaluate(load_task(*data[:2], "caer"), protocol, model, hp, seed=seed, device="cpu")


def _split(n, rng):
    return rng.choice(["train", "val", "test"], size=n, p=[0.7, 0.15, 0.15])


def _manifest(path, sample_id, split, labels, task, classes):
    frame = pd.DataFrame({"sample_id": sample_id, "split": split, "labels": list(labels)})
    meta = {"dataset": "x", "task": task, "classes": json.dumps(list(classes))}
    write_parquet(frame, path, metadata=meta)


def planted(tmp, name, n=1200, signal=("video", "audio", "text"), shuffle=False, seed=0, **kw):
    """Class c ~ U{7}; modality m is N(0, 1) plus 2 mu_m[c] when m carries the ``signal``.
    ``shuffle`` permutes the labels: no signal at all. Returns (features, manifest, classes)."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 7, n)
    feats = {}
    for m, d in DIMS.items():
        x = rng.standard_normal((n, d)).astype(np.float32)
        if m in signal:
            x += 2.0 * rng.standard_normal((7, d)).astype(np.float32)[cls]
        feats[m] = x
    ids = np.array([f"s{i:05d}" for i in range(n)])
    split = _split(n, rng)
    write_features(tmp / f"{name}.zarr", ids, split, feats, kw.get("present"))
    labels = np.eye(7)[rng.permutation(cls) if shuffle else cls]
    _manifest(tmp / f"{name}.parquet", ids, split, labels, "single_label", CAER)
    return tmp / f"{name}.zarr", tmp / f"{name}.parquet", cls


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: threads only add synchronisation (and stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("down")


@pytest.fixture(scope="module")
def pretrained(tmp):
    """A (random) pretrained model in the real model.pt format, and one without audio."""
    torch.manual_seed(0)
    save_model(
        ConCluGenModel(DIMS, rep_dim=32, proj_dim=8, num_clusters=0, rec_dim=0), tmp / "m.pt"
    )
    wo_audio = {m: d for m, d in DIMS.items() if m != "audio"}
    save_model(ConCluGenModel(wo_audio, 32, 8, num_clusters=0, rec_dim=0), tmp / "wo_audio.pt")
    return tmp / "m.pt", tmp / "wo_audio.pt"


@pytest.fixture(scope="module")
def signal(tmp):
    return planted(tmp, "signal")


@pytest.fixture(scope="module")
def linear(signal, pretrained):
    return run(signal, "linear", pretrained[0])


def test_linear_learns_a_planted_signal_and_not_noise(tmp, linear, pretrained):
    assert linear.metrics["accuracy"] > 0.9
    assert linear.metrics["modalities"] == ["video", "audio", "text"]
    assert linear.model.fc.in_features == 3 * 32
    noise = planted(tmp, "noise", shuffle=True)
    ev = run(noise, "linear", pretrained[0])
    assert ev.metrics["accuracy"] < 0.3  # chance is 1/7
    feats = read_features(noise[0])  # every labelled test sample is evaluated
    assert ev.metrics["n_test"] == int((feats.split == "test").sum())


def test_linear_freezes_the_heads_and_finetune_changes_them(signal, linear, pretrained):
    source = load_model(pretrained[0]).heads.state_dict()
    for k, v in linear.model.heads.state_dict().items():
        assert torch.equal(v, source[k]), k
    ft = run(signal, "finetune", pretrained[0])
    changed = [k for k, v in ft.model.heads.state_dict().items() if not torch.equal(v, source[k])]
    assert len(changed) == len(source)
    assert ft.metrics["accuracy"] > 0.9


def test_supervised_trains_from_scratch(signal, pretrained):
    ev = run(signal, "supervised", None)
    assert ev.metrics["accuracy"] > 0.9
    assert list(ev.model.heads) == ["video", "audio", "text"]
    with pytest.raises(ValueError, match="from scratch"):
        run(signal, "supervised", pretrained[0])
    with pytest.raises(ValueError, match="needs a pretrained"):
        run(signal, "linear", None)


def test_vision_uses_only_the_video_head(tmp, pretrained):
    text_only = planted(tmp, "text_only", signal=("text",))
    vision = run(text_only, "vision", pretrained[0])
    assert vision.metrics["modalities"] == ["video"] and list(vision.model.heads) == ["video"]
    assert vision.model.fc.in_features == 32
    assert vision.metrics["accuracy"] < 0.3  # the signal is in the text, which it never sees
    linear = run(text_only, "linear", pretrained[0])
    assert linear.metrics["accuracy"] > 0.9


def test_a_model_without_audio_uses_its_own_modalities(signal, pretrained):
    ev = run(signal, "linear", pretrained[1])
    assert ev.metrics["modalities"] == ["video", "text"]
    assert ev.model.fc.in_features == 2 * 32


def test_absent_modalities_are_kept_with_a_zero_representation(tmp, pretrained):
    n = 1200
    present = {"text": np.random.default_rng(1).random(n) > 0.3}
    path, manifest, _ = planted(tmp, "missing", n=n, present=present)
    ev = run((path, manifest), "linear", pretrained[0])
    assert ev.metrics["n_train"] + ev.metrics["n_val"] + ev.metrics["n_test"] == n
    feats = read_features(path)
    rep = ev.model.represent(feats.features, feats.present).detach()
    text = rep[:, 64:]
    assert (text[~feats.present["text"]] == 0).all()
    assert (text[feats.present["text"]].abs().sum(1) > 0).all()
    assert ev.metrics["accuracy"] > 0.9


def test_unlabelled_samples_are_left_out(tmp, signal, pretrained):
    path, manifest, _ = signal
    frame = pd.read_parquet(manifest)
    frame.loc[:99, "labels"] = None  # unlabelled
    frame = frame.drop(index=range(100, 150))  # not in the manifest at all
    meta = {"dataset": "x", "task": "single_label", "classes": json.dumps(list(CAER))}
    write_parquet(frame, tmp / "partial.parquet", metadata=meta)
    hp = dict(TINY, max_epochs=2)
    ev = run((path, tmp / "partial.parquet"), "linear", pretrained[0], hp)
    assert len(ev.predictions) == 1200 - 150
    assert not set(ev.predictions["sample_id"]) & set(frame["sample_id"][:100])


def test_early_stopping_reports_the_best_validation_epoch(tmp, pretrained):
    noise = planted(tmp, "noise_es", shuffle=True, seed=3)
    hp = dict(TINY, max_epochs=200, patience=4, lr=3e-2)
    ev = run(noise, "supervised", None, hp)
    h, best = ev.history, ev.metrics["best_epoch"]
    assert len(h) < 200 and len(h) == best + 1 + 4 == ev.metrics["epochs"]
    assert best == int(h["val_loss"].idxmin())
    assert ev.metrics["val_loss"] == h["val_loss"].min() < h["val_loss"].iloc[-1]
    # the predictions (and the test metrics) come from the best state, not the last one
    p = ev.predictions
    val, test = p[p.split == "val"], p[p.split == "test"]
    assert (val.target == val.predicted).mean() == pytest.approx(h["val_accuracy"][best])
    assert ev.metrics["val"]["accuracy"] == pytest.approx(h["val_accuracy"][best])
    again = classification_metrics(test.target, test.predicted, False, 7)
    assert again["accuracy"] == ev.metrics["accuracy"] and again["f1"] == ev.metrics["f1"]


def test_seed_decides_the_result(signal, linear, pretrained):
    same = run(signal, "linear", pretrained[0])
    other = run(signal, "linear", pretrained[0], seed=1)
    assert same.metrics == linear.metrics
    pd.testing.assert_frame_equal(same.predictions, linear.predictions)
    assert other.metrics["val_loss"] != linear.metrics["val_loss"]
    assert not other.history["train_loss"].equals(linear.history["train_loss"])


def test_class_weights_by_hand():
    target = torch.tensor([0] * 6 + [1] * 3 + [3] * 1)  # 10 samples, 4 classes, class 2 absent
    w = loss_weights(target, multilabel=False, num_outputs=4)
    assert w.tolist() == pytest.approx([10 / (4 * 6), 10 / (4 * 3), 0.0, 10 / (4 * 1)])
    labels = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.float32)
    pos_weight = loss_weights(labels, multilabel=True, num_outputs=3)
    assert pos_weight.tolist() == [2 / 2, 3 / 1, 1.0]  # #neg / #pos; no positives: 1


def test_warmup_starts_at_a_tenth_of_the_learning_rate(signal, pretrained):
    hp = dict(TINY, max_epochs=7, patience=100, warmup_epochs=5, lr=0.01)
    ev = run(signal, "linear", pretrained[0], hp)
    lr = ev.history["lr"].tolist()
    assert lr[0] == pytest.approx(0.001) and lr[5] == pytest.approx(0.01)
    assert lr[0] < lr[1] < lr[2] < lr[5] and lr[6] < lr[5]


@pytest.fixture(scope="module")
def mosei(tmp, pretrained):
    """Six emotions, label l positive (intensity 0.33..3) iff video feature l > t_l."""
    n = 1200
    fs = synthetic_features(n, DIMS, seed=2, splits=(("train", 0.7), ("val", 0.15), ("test", 0.15)))
    write_features(tmp / "mosei.zarr", fs.sample_id, fs.split, fs.features, fs.present)
    feats = read_features(tmp / "mosei.zarr")
    v = feats.features["video"][:, :6].numpy()
    thresholds = np.quantile(v, [0.5, 0.7, 0.8, 0.85, 0.9, 0.95], axis=0).diagonal()
    rng = np.random.default_rng(0)
    intensity = (v > thresholds) * rng.choice([0.33, 1.0, 2.0, 3.0], size=v.shape)
    _manifest(tmp / "mosei.parquet", feats.sample_id, feats.split, intensity, "multi_label", MOSEI)
    train = intensity[feats.split == "train"] > 0
    hand = (len(train) - train.sum(0)) / train.sum(0)
    hp = dict(TINY, max_epochs=60)
    task = load_task(tmp / "mosei.zarr", tmp / "mosei.parquet", "mosei")
    ev = evaluate(task, "linear", pretrained[0], hp, 0, "cpu")
    return ev, hand, intensity > 0


def test_mosei_is_multilabel_with_pos_weight(mosei):
    ev, hand, positive = mosei
    assert ev.metrics["loss_weights"] == pytest.approx(hand.tolist())
    assert hand[0] == pytest.approx(1.0, abs=0.2) and hand[-1] > 10  # 50 % and 5 % positives
    p = ev.predictions
    assert (p[[f"target_{c}" for c in MOSEI]].to_numpy() == positive).all()
    assert len(ev.metrics["confusion"]) == 6 and np.shape(ev.metrics["confusion"])[1:] == (2, 2)
    test = p[p.split == "test"]
    again = classification_metrics(
        test[[f"target_{c}" for c in MOSEI]], test[[f"score_{c}" for c in MOSEI]], True
    )
    assert again["f1"] == pytest.approx(ev.metrics["f1"]) and ev.metrics["f1"] > 0.5


@pytest.mark.parametrize("which", ["caer", "mosei"])
def test_write_evaluation_round_trips(tmp, linear, mosei, which):
    ev = linear if which == "caer" else mosei[0]
    out = tmp / f"out_{which}"
    write_evaluation(ev, out)
    assert sorted(f.name for f in out.iterdir()) == [
        "classifier.safetensors",
        "confusion.png",
        "metrics.json",
        "predictions.parquet",
    ]
    record = json.loads((out / "metrics.json").read_text())
    assert record["accuracy"] == ev.metrics["accuracy"]
    assert record["confusion"] == ev.metrics["confusion"]
    assert len(record["history"]) == len(ev.history)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "predictions.parquet"), ev.predictions)
    image = matplotlib.image.imread(out / "confusion.png")
    assert image.ndim == 3 and image.shape[0] > 100


def test_each_modality_draws_its_own_augmented_copy_per_sample():
    copies = {m: torch.arange(5.0).reshape(1, 5, 1).repeat(6, 1, 3) for m in ("video", "text")}
    gen = torch.Generator().manual_seed(0)
    idx = torch.tensor([0, 2, 5])
    seen, differ = set(), 0
    for _ in range(40):
        drawn = draw_copies(copies, idx, gen)
        assert drawn["video"].shape == (3, 3)
        seen.update(drawn["video"][:, 0].int().tolist())
        differ += int((drawn["video"][:, 0] != drawn["text"][:, 0]).any())
    assert seen == set(range(5))  # every copy is drawn
    assert differ > 20  # independently per modality


def augmented_store(tmp, name, offset):
    """The ``signal`` set plus K = 3 augmented copies of the train rows: plain + ``offset``."""
    path, manifest, _ = planted(tmp, f"{name}_plain")
    fs = read_features(path)
    train = torch.from_numpy(fs.split == "train")[:, None, None]
    copies = {m: (x[:, None] + offset).repeat(1, 3, 1) * train for m, x in fs.features.items()}
    write_features(tmp / f"{name}.zarr", fs.sample_id, fs.split, fs.features, fs.present,
                   augmented=copies)  # fmt: skip
    return tmp / f"{name}.zarr", manifest


def test_training_draws_augmented_copies_and_evaluation_never_does(tmp, pretrained):
    data = augmented_store(tmp, "aug", offset=5.0)
    for protocol in ("linear", "finetune"):
        on = run(data, protocol, pretrained[0])
        off = run(data, protocol, pretrained[0], dict(TINY, augment=False))
        assert on.metrics["augmented_copies"] == 3 and off.metrics["augmented_copies"] == 0
        # Trained on the shifted copies, the model differs from one trained on the plain rows.
        assert not torch.allclose(on.model.fc.weight, off.model.fc.weight)
        assert on.history["train_loss"][0] != pytest.approx(off.history["train_loss"][0])
        # Every split is predicted from the plain features (test copies are zeros).
        feats = read_features(data[0])
        model = on.model.eval()
        x = {m: feats.features[m] for m in model.heads}
        present = {m: feats.present[m] for m in model.heads}
        with torch.no_grad():
            probs = torch.softmax(model(x, present), 1).numpy()
        scores = on.predictions[[c for c in on.predictions if c.startswith("score_")]].to_numpy()
        assert np.allclose(scores, probs, atol=1e-5)


FRACTIONS = (0.01, 0.1, 0.5, 1.0)


def test_label_subsets_are_stratified_nested_and_drawn_per_seed():
    counts = [300, 120, 40, 9, 1, 60, 500]  # imbalanced; class 4 has a single clip
    target = np.repeat(np.arange(7), counts)
    ids = np.array([f"clip{i:04d}" for i in range(len(target))])
    subsets = {f: label_subset(ids, target, f, seed=0) for f in FRACTIONS}
    for f, keep in subsets.items():  # round(f * n_c) of class c, at least one
        assert np.bincount(target[keep], minlength=7).tolist() == [
            max(1, int(f * n + 0.5)) for n in counts
        ]
    for small, large in zip(FRACTIONS, FRACTIONS[1:], strict=False):
        assert not (subsets[small] & ~subsets[large]).any()  # nested
    assert subsets[1.0].all()
    # A function of ids, labels, seed and fraction only: row order does not matter ...
    perm = np.random.default_rng(0).permutation(len(ids))
    again = label_subset(ids[perm], target[perm], 0.1, seed=0)
    assert set(ids[perm][again]) == set(ids[subsets[0.1]])
    # ... and the seed does
    other = label_subset(ids, target, 0.1, seed=1)
    assert other.sum() == subsets[0.1].sum() and (other != subsets[0.1]).any()
    with pytest.raises(ValueError, match="fraction"):
        label_subset(ids, target, 0.0, seed=0)


def test_multilabel_subsets_stratify_on_the_label_set_and_keep_every_label():
    rng = np.random.default_rng(3)
    target = (rng.random((2000, 6)) < [0.5, 0.3, 0.2, 0.1, 0.05, 0.003]).astype(np.float32)
    ids = np.array([f"seg{i:05d}" for i in range(len(target))])
    key = target.astype(int) @ (1 << np.arange(6))
    previous = np.zeros(len(ids), dtype=bool)
    for f in FRACTIONS:
        keep = label_subset(ids, target, f, seed=5)
        assert not (previous & ~keep).any()  # nested
        previous = keep
        assert (target[keep].sum(0) > 0).all()  # every emotion keeps a positive clip
        extra = 0
        for k in np.unique(key):
            n, kept = (key == k).sum(), (keep & (key == k)).sum()
            assert kept >= int(f * n + 0.5)
            extra += kept - int(f * n + 0.5)
        assert extra <= 6  # beyond the strata's shares: one first positive per label at most


def test_a_label_fraction_trains_on_its_subset_and_evaluates_on_everything(signal, pretrained):
    task = load_task(*signal[:2], "caer")
    train = np.flatnonzero(task.feats.split == "train")
    for seed in (0, 1):
        keep = label_subset(task.feats.sample_id[train], task.target[train], 0.1, seed)
        for protocol, model in (("supervised", None), ("linear", pretrained[0])):
            ev = evaluate(task, protocol, model, dict(TINY, train_fraction=0.1), seed, "cpu")
            assert ev.metrics["n_train"] == keep.sum() < len(train) // 5
            assert ev.metrics["hparams"]["train_fraction"] == 0.1
            whole = (task.feats.split == "val").sum(), (task.feats.split == "test").sum()
            assert (ev.metrics["n_val"], ev.metrics["n_test"]) == whole
            counts = np.bincount(task.target[train][keep], minlength=7)
            weights = loss_weights(torch.from_numpy(np.repeat(np.arange(7), counts)), False, 7)
            assert ev.metrics["loss_weights"] == pytest.approx(weights.tolist())
    with pytest.raises(ValueError, match="train_fraction"):
        evaluate(task, "supervised", None, dict(TINY, train_fraction=1.5), 0, "cpu")


def test_summed_confusion_sums_the_protocols_seeds_runs_csv_lists(tmp_path):
    cells = [("linear", 0, [[1, 0], [2, 3]]), ("linear", 1, [[4, 1], [0, 5]]),
             ("finetune", 0, [[9, 9], [9, 9]])]  # fmt: skip
    for protocol, seed, m in cells:
        run_dir(tmp_path, protocol, seed).mkdir(parents=True)
        record = dict(confusion=m, per_class=dict(names=["a", "b"]))
        (run_dir(tmp_path, protocol, seed) / "metrics.json").write_text(json.dumps(record))
    runs = pd.DataFrame([dict(protocol=p, seed=s) for p, s, _ in cells])
    runs.to_csv(tmp_path / "runs.csv", index=False)
    assert run_dir(tmp_path, "linear", 1) == tmp_path / "linear" / "seed1"
    total, names = summed_confusion(tmp_path, "linear")
    assert total.tolist() == [[5, 1], [2, 8]] and names == ["a", "b"]


def test_a_bf16_cpu_run_is_finite_and_close_to_fp32(signal, pretrained):
    """Forced bf16 on the CPU (auto picks it only on AMX): linear evaluation learns the planted
    signal as in fp32, with validation losses within 5 % of fp32's at every epoch."""
    fp32, bf16 = (
        run(signal, "linear", pretrained[0], dict(TINY, precision=p)) for p in ("fp32", "bf16")
    )
    assert bf16.metrics["accuracy"] > 0.9
    assert abs(bf16.metrics["accuracy"] - fp32.metrics["accuracy"]) < 0.03
    epochs = min(len(bf16.history), len(fp32.history))
    loss = [r.history["val_loss"].to_numpy() for r in (fp32, bf16)]
    assert np.isfinite(loss[1]).all() and not np.array_equal(loss[0], loss[1])
    assert np.abs(loss[1][:epochs] / loss[0][:epochs] - 1).max() < 0.05


def test_a_hidden_readout_is_mpucs_fc_relu_fc_and_round_trips(tmp, signal, pretrained):
    from conclugen.downstream import classifier_spec, load_classifier, save_classifier

    hp = dict(TINY, readout_hidden=24, dropout=0.0)
    ev = run(signal, "linear", pretrained[0], hp)
    model = ev.model
    assert [type(x).__name__ for x in model.hidden] == ["Linear", "ReLU"]
    assert (model.hidden[0].in_features, model.hidden[0].out_features) == (3 * 32, 24)
    assert (model.fc.in_features, model.fc.out_features) == (24, 7)
    assert ev.metrics["accuracy"] > 0.9 and ev.metrics["hparams"]["readout_hidden"] == 24
    # the heads stay the pretrained ones (linear evaluation): only the read-out trained
    source = load_model(pretrained[0])
    for m in DIMS:
        for a, b in zip(model.heads[m].parameters(), source.heads[m].parameters(), strict=True):
            assert torch.equal(a, b)
    save_classifier(model, tmp / "hidden.safetensors")
    back = load_classifier(tmp / "hidden.safetensors")
    assert classifier_spec(back)["hidden"] == 24 and classifier_spec(back) == classifier_spec(model)
    feats = read_features(signal[0])
    x = {m: feats.features[m][:16] for m in DIMS}
    present = {m: feats.present[m][:16] for m in DIMS}
    with torch.no_grad():
        assert torch.allclose(back(x, present), model.eval()(x, present))
    plain = run(signal, "linear", pretrained[0])  # the paper's read-out: Dropout + Linear
    assert plain.model.hidden is None and classifier_spec(plain.model)["hidden"] == 0


def test_mosei_runs_hold_the_literatures_weighted_metrics(tmp, mosei, signal, pretrained):
    from conclugen.downstream import evaluate_method

    _, _, positive = mosei
    out = tmp / "mosei_cell"
    hp = dict(TINY, max_epochs=10)
    runs = evaluate_method(tmp / "mosei.zarr", tmp / "mosei.parquet", "mosei", "m", ["linear"],
                           1, out, pretrained[0], hp, "cpu")  # fmt: skip
    assert {"weighted_accuracy", "weighted_f1"} <= set(runs.columns)
    assert pd.read_csv(out / "runs.csv").columns.tolist() == runs.columns.tolist()
    p = pd.read_parquet(run_dir(out, "linear", 0) / "predictions.parquet")
    test = p[p.split == "test"]
    t = test[[f"target_{c}" for c in MOSEI]].to_numpy()
    y = test[[f"predicted_{c}" for c in MOSEI]].to_numpy()
    tp, tn = ((t == 1) & (y == 1)).sum(0), ((t == 0) & (y == 0)).sum(0)
    pos, neg = t.sum(0), (1 - t).sum(0)
    per_emotion = (tp / pos + tn / neg) / 2  # (TP N / P + TN) / 2N
    by_hand = np.mean(per_emotion)  # averaged over the emotions
    assert runs["weighted_accuracy"].iloc[0] == pytest.approx(by_hand)
    assert 0 < runs["weighted_f1"].iloc[0] <= 1
    # each emotion's too (Franceschini et al.'s Table II columns)
    for c, value in zip(MOSEI, per_emotion, strict=True):
        assert runs[f"weighted_accuracy_{c}"].iloc[0] == pytest.approx(value), c
    f1s = runs[[f"weighted_f1_{c}" for c in MOSEI]].iloc[0]
    assert f1s.mean() == pytest.approx(runs["weighted_f1"].iloc[0])
    single = evaluate_method(*signal[:2], "caer", "m", ["linear"], 1, tmp / "caer_cell",
                             pretrained[0], hp, "cpu")  # fmt: skip
    assert not any(c.startswith("weighted_") for c in single.columns)  # single-label: undefined
