"""Support-weighted metrics: hand-computed cases, properties, and scikit-learn as a reference."""

import json

import numpy as np
import pytest

from conclugen import metrics

# Single-label, C = 4. Class 2 is in the targets but never predicted; class 3 is predicted once
# but absent from the targets.
TARGETS = [0, 0, 0, 1, 1, 2, 2, 2]
PREDS = [0, 0, 1, 1, 3, 0, 1, 1]
# Confusion (rows true, cols predicted):
#   t0: 0,0,1 -> [2, 1, 0, 0]
#   t1: 1,3   -> [0, 1, 0, 1]
#   t2: 0,1,1 -> [1, 2, 0, 0]
#   t3: -     -> [0, 0, 0, 0]
CONFUSION = [[2, 1, 0, 0], [0, 1, 0, 1], [1, 2, 0, 0], [0, 0, 0, 0]]
# TP = [2, 1, 0, 0]; support (row sums) = [3, 2, 3, 0]; predicted (col sums) = [3, 4, 0, 1]
# precision = [2/3, 1/4, 0 (never predicted), 0/1]
# recall    = [2/3, 1/2, 0/3, 0 (no support)]
# F1 = 2TP/(support+predicted) = [4/6, 2/6, 0/3, 0/1]
# weighted precision = (3*2/3 + 2*1/4 + 3*0 + 0*0) / 8 = 2.5/8 = 0.3125
# weighted recall    = (3*2/3 + 2*1/2) / 8 = 3/8 = accuracy (3 of 8 correct)
# weighted F1        = (3*2/3 + 2*1/3) / 8 = (8/3)/8 = 1/3


def test_single_label_hand_computed():
    out = metrics.classification_metrics(TARGETS, PREDS, multilabel=False, num_classes=4)
    assert out["confusion"] == CONFUSION
    assert out["accuracy"] == pytest.approx(3 / 8)
    assert out["recall"] == pytest.approx(3 / 8)
    assert out["precision"] == pytest.approx(0.3125)
    assert out["f1"] == pytest.approx(1 / 3)
    pc = out["per_class"]
    assert pc["support"] == [3, 2, 3, 0]
    assert pc["precision"] == pytest.approx([2 / 3, 1 / 4, 0, 0])
    assert pc["recall"] == pytest.approx([2 / 3, 1 / 2, 0, 0])
    assert pc["f1"] == pytest.approx([2 / 3, 1 / 3, 0, 0])
    assert not any(np.isnan(v) for k in ("precision", "recall", "f1") for v in pc[k])


def test_single_label_scores_are_argmaxed_and_set_the_class_count():
    # A class absent from both targets and predictions (id 4) still gets a row and column.
    scores = np.full((8, 5), 0.1)
    scores[np.arange(8), PREDS] = 0.9
    out = metrics.classification_metrics(TARGETS, scores, multilabel=False)
    assert np.asarray(out["confusion"]).shape == (5, 5)
    assert np.asarray(out["confusion"])[:4, :4].tolist() == CONFUSION
    assert out["precision"] == pytest.approx(0.3125)
    assert out["per_class"]["support"][4] == 0


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    out = metrics.classification_metrics(
        torch.tensor(TARGETS), torch.tensor(PREDS), multilabel=False, num_classes=4
    )
    assert out["f1"] == pytest.approx(1 / 3)
    scores = torch.nn.functional.one_hot(torch.tensor(PREDS), 4).to(torch.bfloat16)
    out = metrics.classification_metrics(TARGETS, scores, multilabel=False)
    assert out["precision"] == pytest.approx(0.3125)


# Multi-label, N = 5, L = 3. Label 1 is never predicted; label 2 has no positive target.
ML_TARGETS = [[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]]
ML_PROBS = [[0.9, 0.2, 0.7], [0.4, 0.1, 0.0], [0.6, 0.3, 0.2], [0.8, 0.0, 0.1], [0.7, 0.0, 0.0]]
# Thresholded (> 0.5): [[1,0,1], [0,0,0], [1,0,0], [1,0,0], [1,0,0]]
# label 0: t=[1,1,0,1,0] p=[1,0,1,1,1]: TP 2, FN 1, FP 2, TN 0
#          acc (2+0)/5 = 0.4, prec 2/4, rec 2/3, F1 4/(4+2+1) = 4/7, support 3
# label 1: t=[0,1,1,0,0] p=0:           TP 0, FN 2, FP 0, TN 3
#          acc 3/5 = 0.6, prec 0 (never predicted), rec 0, F1 0, support 2
# label 2: t=0 p=[1,0,0,0,0]:           TP 0, FN 0, FP 1, TN 4 -> support 0, weight 0
# weighted (weights 3, 2, 0; sum 5):
#   accuracy  = (3*0.4 + 2*0.6) / 5 = 0.48
#   precision = (3*0.5) / 5 = 0.3
#   recall    = (3*2/3) / 5 = 0.4
#   F1        = (3*4/7) / 5 = 12/35
ML_CONFUSION = [[[0, 2], [1, 2]], [[3, 0], [2, 0]], [[4, 1], [0, 0]]]


def test_multilabel_hand_computed():
    out = metrics.classification_metrics(ML_TARGETS, ML_PROBS, multilabel=True)
    assert out["confusion"] == ML_CONFUSION
    assert out["accuracy"] == pytest.approx(0.48)
    assert out["precision"] == pytest.approx(0.3)
    assert out["recall"] == pytest.approx(0.4)
    assert out["f1"] == pytest.approx(12 / 35)
    pc = out["per_class"]
    assert pc["support"] == [3, 2, 0]
    assert pc["accuracy"] == pytest.approx([0.4, 0.6, 0.8])
    assert pc["precision"] == pytest.approx([0.5, 0, 0])
    assert pc["recall"] == pytest.approx([2 / 3, 0, 0])
    # Binary predictions and logits (outside [0, 1], sigmoid first) give the same result.
    binary = (np.asarray(ML_PROBS) > 0.5).astype(int)
    assert metrics.multilabel_metrics(ML_TARGETS, binary) == pytest.approx(
        {k: out[k] for k in metrics.METRICS}
    )
    logits = np.log(np.clip(ML_PROBS, 1e-6, None)) - np.log1p(-np.clip(ML_PROBS, None, 1 - 1e-6))
    assert metrics.multilabel_metrics(ML_TARGETS, logits)["f1"] == pytest.approx(12 / 35)


# The MOSEI literature's per-emotion metrics on the same case (P positives, N negatives):
# label 0: P 3, N 2: w-acc (TP N / P + TN) / 2N = (2*2/3 + 0) / 4 = 1/3;
#          F1_pos 4/7, F1_neg 2TN / (2TN + FN + FP) = 0/3 -> weighted F1 (3*4/7 + 2*0) / 5 = 12/35
# label 1: P 2, N 3: w-acc (0 + 3) / 6 = 1/2; F1_pos 0, F1_neg 6/8 -> (2*0 + 3*3/4) / 5 = 9/20
# label 2: P 0, N 5: w-acc (0 (no positives) + 4) / 10 = 2/5; F1_neg 8/9 -> (5*8/9) / 5 = 8/9
# averaged over the three labels: w-acc (1/3 + 1/2 + 2/5) / 3 = 37/90,
#                                 weighted F1 (12/35 + 9/20 + 8/9) / 3
ML_WACC = [1 / 3, 1 / 2, 2 / 5]
ML_WF1 = [12 / 35, 9 / 20, 8 / 9]


def test_emotion_metrics_hand_computed():
    out = metrics.emotion_metrics(ML_TARGETS, ML_PROBS)
    assert out["weighted_accuracy"] == pytest.approx(37 / 90)
    assert out["weighted_f1"] == pytest.approx(sum(ML_WF1) / 3)
    full = metrics.classification_metrics(ML_TARGETS, ML_PROBS, multilabel=True)
    assert {k: full[k] for k in out} == pytest.approx(out)
    assert full["per_class"]["weighted_accuracy"] == pytest.approx(ML_WACC)
    assert full["per_class"]["weighted_f1"] == pytest.approx(ML_WF1)
    assert "weighted_accuracy" not in metrics.classification_metrics(TARGETS, PREDS, False)
    # Balanced accuracy, not accuracy: always predicting "absent" scores 1/2 on a rare emotion.
    rare = np.array([[1], [0], [0], [0], [0], [0], [0], [0]])
    assert metrics.emotion_metrics(rare, np.zeros_like(rare))["weighted_accuracy"] == 0.5
    assert metrics.emotion_metrics(rare, rare) == {"weighted_accuracy": 1.0, "weighted_f1": 1.0}


def test_emotion_metrics_match_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(3)
    y = (rng.random((400, 6)) < [0.5, 0.3, 0.2, 0.1, 0.05, 0.02]).astype(int)
    probs = np.clip(rng.random((400, 6)) * 0.7 + 0.3 * y, 0, 1)
    yhat = (probs > 0.5).astype(int)
    assert y.min(0).max() == 0 and y.max(0).min() == 1  # both classes in every label
    out = metrics.emotion_metrics(y, probs)
    wacc = [balanced_accuracy_score(y[:, j], yhat[:, j]) for j in range(6)]
    wf1 = [f1_score(y[:, j], yhat[:, j], average="weighted") for j in range(6)]
    assert out["weighted_accuracy"] == pytest.approx(np.mean(wacc))
    assert out["weighted_f1"] == pytest.approx(np.mean(wf1))


def test_no_support_gives_zero_not_nan():
    out = metrics.classification_metrics([[0, 0], [0, 0]], [[1, 0], [0, 0]], multilabel=True)
    assert [out[k] for k in metrics.METRICS] == [0.0, 0.0, 0.0, 0.0]


def test_perfect_predictions_score_one():
    t = np.array([0, 1, 2, 2, 1, 0, 2])
    single = metrics.classification_metrics(t, t, multilabel=False)
    ml = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    multi = metrics.classification_metrics(ml, ml, multilabel=True)
    for out in (single, multi):
        assert [out[k] for k in metrics.METRICS] == pytest.approx([1.0] * 4)


def test_weighted_recall_is_accuracy_for_single_label():
    rng = np.random.default_rng(1)
    for _ in range(5):
        t = rng.integers(0, 6, 50)
        p = rng.integers(0, 6, 50)
        out = metrics.classification_metrics(t, p, multilabel=False, num_classes=6)
        assert out["recall"] == pytest.approx(np.mean(t == p))
        assert out["accuracy"] == pytest.approx(np.mean(t == p))


def test_result_is_json_serialisable():
    out = metrics.classification_metrics(TARGETS, PREDS, multilabel=False, class_names=list("abcd"))
    assert json.loads(json.dumps(out))["per_class"]["names"] == ["a", "b", "c", "d"]
    out = metrics.classification_metrics(ML_TARGETS, ML_PROBS, multilabel=True)
    assert json.loads(json.dumps(out)) == out


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        metrics.classification_metrics([0, 1], [0], multilabel=False)
    with pytest.raises(ValueError):
        metrics.classification_metrics([0, 5], [0, 1], multilabel=False, num_classes=3)
    with pytest.raises(ValueError):
        metrics.classification_metrics([[0, 2]], [[0, 1]], multilabel=True)


def test_matches_scikit_learn_on_random_cases():
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
    )

    rng = np.random.default_rng(0)
    # Single-label: 6 classes, class 5 never a target, scores argmaxed.
    t = rng.choice(5, 300, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    scores = rng.random((300, 6)) + 0.8 * np.eye(6)[t]
    p = scores.argmax(1)
    out = metrics.classification_metrics(t, scores, multilabel=False)
    prec, rec, f1, _ = precision_recall_fscore_support(
        t, p, labels=range(6), average="weighted", zero_division=0
    )
    assert (out["precision"], out["recall"], out["f1"]) == pytest.approx((prec, rec, f1))
    assert out["accuracy"] == pytest.approx(accuracy_score(t, p))
    assert out["confusion"] == confusion_matrix(t, p, labels=range(6)).tolist()

    # Multi-label: 6 labels with unequal prevalence, probabilities thresholded at 0.5.
    y = (rng.random((300, 6)) < [0.5, 0.3, 0.2, 0.1, 0.05, 0.0]).astype(int)
    probs = np.clip(rng.random((300, 6)) * 0.7 + 0.3 * y, 0, 1)
    yhat = (probs > 0.5).astype(int)
    out = metrics.classification_metrics(y, probs, multilabel=True)
    prec, rec, f1, _ = precision_recall_fscore_support(y, yhat, average="weighted", zero_division=0)
    assert (out["precision"], out["recall"], out["f1"]) == pytest.approx((prec, rec, f1))
    per_label_acc = [accuracy_score(y[:, j], yhat[:, j]) for j in range(6)]
    assert out["accuracy"] == pytest.approx(np.average(per_label_acc, weights=y.sum(0)))
    assert out["confusion"] == multilabel_confusion_matrix(y, yhat).tolist()
