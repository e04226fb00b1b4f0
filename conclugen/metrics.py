"""Support-weighted classification metrics of the paper's downstream evaluation, and the
continuous-label metrics of SS-VAERR's (:func:`regression_metrics`) (numpy only).

The paper reports "accuracy (Acc.), F1 score (F1), precision and recall, all weighted by the class
occurrences" (Sec. 4.1); the authors computed them with torchmetrics ``Accuracy``, ``F1Score``,
``Precision`` and ``Recall`` (``average='weighted'``, ``task='multiclass'`` for CAER and MELD,
``'multilabel'`` for CMU-MOSEI). These functions reproduce those semantics without importing
torchmetrics or scikit-learn:

- every per-class (per-label) value is weighted by the class's support in the targets, TP + FN;
  a class absent from the targets weighs 0, and if no class has support the average is 0;
- a ratio with a zero denominator is 0, never NaN (``zero_division=0``): a class that is never
  predicted has precision 0, a class absent from the targets has recall 0;
- single-label, the per-class accuracy TP_c / (TP_c + FN_c) is the recall, and weighted by the
  support both are plain accuracy sum_c TP_c / N (the support cancels the denominator), which is
  why Acc. == Recall in every row of the paper's CAER table (Tab. 5).

Multi-label evaluations also get the CMU-MOSEI literature's per-emotion metrics, averaged over
the emotions (:func:`emotion_metrics`; MPUC, Franceschini et al. ICPR 2022, reports them):
the weighted accuracy (TP N / P + TN) / 2N and the weighted F1 of each emotion as a binary task.

Inputs may be numpy arrays, lists or torch tensors (converted on the host).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS = ("accuracy", "f1", "precision", "recall")  # the order of the paper's columns
EMOTION_METRICS = ("weighted_accuracy", "weighted_f1")  # multi-label only (emotion_metrics)
THRESHOLD = 0.5  # multi-label decision threshold on probabilities (torchmetrics default)


def _array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; duck-typed so this module need not import torch
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()  # numpy has no bfloat16
    return np.asarray(x)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den == 0 (zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def _weighted_mean(values: np.ndarray, support: np.ndarray) -> float:
    """sum_c support_c * value_c / sum_c support_c; 0 when no class has support."""
    return float(_safe_divide(np.sum(values * support), np.sum(support)))


# --- single-label (multi-class) -----------------------------------------------------------------


def class_predictions(predictions, num_classes: int | None = None) -> np.ndarray:
    """Predicted class ids [N] from ids [N] or from scores [N, C] (argmax over C, as torchmetrics
    does for logits or probabilities)."""
    p = _array(predictions)
    if p.ndim == 2:
        if num_classes is not None and p.shape[1] != num_classes:
            raise ValueError(f"scores have {p.shape[1]} classes, expected {num_classes}")
        return p.argmax(axis=1)
    if p.ndim != 1:
        raise ValueError(f"predictions must be [N] ids or [N, C] scores, got shape {p.shape}")
    return p.astype(np.int64)


def confusion_matrix(targets, predictions, num_classes: int | None = None) -> np.ndarray:
    """The [C, C] confusion matrix M with M[i, j] = #samples of true class i predicted as j
    (rows = true, columns = predicted). ``C`` defaults to the scores' width, else to
    1 + the largest class id seen in targets or predictions."""
    t = _array(targets).astype(np.int64).ravel()
    scores = _array(predictions)
    if num_classes is None and scores.ndim == 2:
        num_classes = scores.shape[1]
    p = class_predictions(scores, num_classes)
    if t.shape != p.shape:
        raise ValueError(f"{t.shape[0]} targets but {p.shape[0]} predictions")
    if num_classes is None:
        num_classes = int(max(t.max(initial=-1), p.max(initial=-1))) + 1
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"class ids must lie in [0, {num_classes})")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def per_class_metrics(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class values from a [C, C] confusion matrix, each an array [C]:

    support_c = TP_c + FN_c (row sum), precision_c = TP_c / (TP_c + FP_c),
    recall_c = TP_c / (TP_c + FN_c), f1_c = 2 TP_c / (2 TP_c + FP_c + FN_c) (the harmonic mean of
    precision and recall, 0 where both are 0), each 0 where its denominator is 0.
    """
    m = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(m)
    support = m.sum(axis=1)  # TP + FN
    predicted = m.sum(axis=0)  # TP + FP
    return {
        "support": support,
        "precision": _safe_divide(tp, predicted),
        "recall": _safe_divide(tp, support),
        "f1": _safe_divide(2 * tp, support + predicted),
    }


# --- multi-label -------------------------------------------------------------------------------


def label_predictions(predictions, threshold: float = THRESHOLD) -> np.ndarray:
    """Binary predictions [N, L] from {0,1} values or scores, as torchmetrics: float scores outside
    [0, 1] are taken as logits (sigmoid first), then ``score > threshold`` is positive."""
    p = _array(predictions)
    if p.dtype == bool or np.issubdtype(p.dtype, np.integer):
        if p.size and not np.isin(p, (0, 1)).all():
            raise ValueError("integer multi-label predictions must be 0 or 1")
        return p.astype(np.int64)
    p = p.astype(np.float64)
    if p.size and (p.min() < 0 or p.max() > 1):
        p = 1.0 / (1.0 + np.exp(-p))
    return (p > threshold).astype(np.int64)


def multilabel_confusion(targets, predictions, threshold: float = THRESHOLD) -> np.ndarray:
    """Per-label 2x2 confusion matrices [L, 2, 2], each [[TN, FP], [FN, TP]] (rows = true 0/1,
    columns = predicted 0/1; the layout of torchmetrics/sklearn multilabel confusion)."""
    t = _array(targets).astype(np.int64)
    p = label_predictions(predictions, threshold)
    if t.ndim != 2 or t.shape != p.shape:
        raise ValueError(
            f"multi-label targets and predictions must be [N, L]: {t.shape}, {p.shape}"
        )
    if t.size and not np.isin(t, (0, 1)).all():
        raise ValueError("multi-label targets must be 0 or 1")
    tp = (t * p).sum(axis=0)
    fp = ((1 - t) * p).sum(axis=0)
    fn = (t * (1 - p)).sum(axis=0)
    tn = ((1 - t) * (1 - p)).sum(axis=0)
    return np.stack([np.stack([tn, fp], -1), np.stack([fn, tp], -1)], 1)


def per_label_metrics(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-label values from [L, 2, 2] confusion matrices, each an array [L]:

    support_l = TP_l + FN_l (positives), accuracy_l = (TP_l + TN_l) / N,
    precision_l = TP_l / (TP_l + FP_l), recall_l = TP_l / (TP_l + FN_l),
    f1_l = 2 TP_l / (2 TP_l + FP_l + FN_l), each 0 where its denominator is 0.
    """
    m = np.asarray(confusion, dtype=np.int64)
    tn, fp, fn, tp = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
    support = tp + fn
    return {
        "support": support,
        "accuracy": _safe_divide(tp + tn, tp + tn + fp + fn),
        "precision": _safe_divide(tp, tp + fp),
        "recall": _safe_divide(tp, support),
        "f1": _safe_divide(2 * tp, 2 * tp + fp + fn),
    }


def multilabel_metrics(targets, predictions, threshold: float = THRESHOLD) -> dict[str, float]:
    """torchmetrics ``Multilabel{Accuracy,Precision,Recall,F1Score}(average='weighted')``:
    each per-label value of :func:`per_label_metrics` averaged over labels with weight
    support_l = TP_l + FN_l, i.e. sum_l support_l * value_l / sum_l support_l (labels without
    positives weigh 0). Accuracy is therefore sum_l pos_l (TP_l + TN_l) / N / sum_l pos_l, not
    the "weighted accuracy" (TP N / P + TN) / 2N of the MOSEI literature
    (:func:`emotion_metrics`)."""
    pl = per_label_metrics(multilabel_confusion(targets, predictions, threshold))
    return {k: _weighted_mean(pl[k], pl["support"]) for k in METRICS}


def per_label_weighted(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-label values of the CMU-MOSEI literature from [L, 2, 2] confusion matrices, each an
    array [L], with P = TP + FN positives and N = TN + FP negatives in the targets:

    weighted_accuracy_l = (TP N / P + TN) / 2N = (TP / P + TN / N) / 2 (Tong et al., ACL 2017,
    as MPUC's code computes it: the mean of the recalls of both classes, balanced accuracy);
    weighted_f1_l = (P F1_pos + N F1_neg) / (P + N) with F1_pos = 2 TP / (2 TP + FP + FN) and
    F1_neg = 2 TN / (2 TN + FN + FP): the F1 of both classes weighted by their support
    (scikit-learn ``f1_score(average='weighted')`` of the binary label, as MPUC's code).

    A ratio with a zero denominator is 0 (zero_division=0), so an emotion without positives
    (or negatives) has a weighted accuracy of at most 1/2; MPUC's code would divide by zero.
    """
    m = np.asarray(confusion, dtype=np.int64)
    tn, fp, fn, tp = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
    pos, neg = tp + fn, tn + fp
    f1_pos = _safe_divide(2 * tp, 2 * tp + fp + fn)
    f1_neg = _safe_divide(2 * tn, 2 * tn + fn + fp)
    return {
        "weighted_accuracy": (_safe_divide(tp, pos) + _safe_divide(tn, neg)) / 2,
        "weighted_f1": _safe_divide(pos * f1_pos + neg * f1_neg, pos + neg),
    }


def emotion_metrics(targets, predictions, threshold: float = THRESHOLD) -> dict[str, float]:
    """The per-emotion ``weighted_accuracy`` and ``weighted_f1`` of :func:`per_label_weighted`,
    each averaged over the L emotions with equal weight (MPUC's Table II "average")."""
    pl = per_label_weighted(multilabel_confusion(targets, predictions, threshold))
    return {k: float(np.mean(v)) if v.size else 0.0 for k, v in pl.items()}


# --- entry point -------------------------------------------------------------------------------


def classification_metrics(
    targets,
    predictions,
    multilabel: bool,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    threshold: float = THRESHOLD,
) -> dict:
    """All downstream metrics of one evaluation, JSON-serialisable.

    Single-label: ``targets`` [N] class ids, ``predictions`` [N] ids or [N, C] scores.
    Multi-label: ``targets`` [N, L] in {0,1}, ``predictions`` [N, L] in {0,1} or scores
    (thresholded at ``threshold``). Returns ``accuracy, f1, precision, recall`` (support-weighted
    floats in [0, 1], see the module docstring), ``per_class`` (a dict of per-class lists:
    ``support, precision, recall, f1`` and, multi-label, ``accuracy``, ``weighted_accuracy`` and
    ``weighted_f1``; plus ``names`` when given) and ``confusion`` ([C][C] counts, rows = true;
    multi-label [L][2][2] as [[TN, FP], [FN, TP]]). Multi-label also returns
    ``weighted_accuracy`` and ``weighted_f1``, their means over labels (:func:`emotion_metrics`).
    """
    emotions = {}
    if multilabel:
        confusion = multilabel_confusion(targets, predictions, threshold)
        per_class = per_label_metrics(confusion) | per_label_weighted(confusion)
        accuracy = per_class["accuracy"]
        emotions = emotion_metrics(targets, predictions, threshold)
    else:
        confusion = confusion_matrix(targets, predictions, num_classes)
        per_class = per_class_metrics(confusion)
        accuracy = per_class["recall"]  # per-class accuracy TP/(TP+FN) (module docstring)
    summary = {"accuracy": _weighted_mean(accuracy, per_class["support"])}
    summary |= {k: _weighted_mean(per_class[k], per_class["support"]) for k in METRICS[1:]}
    summary |= emotions
    if class_names is not None and len(class_names) != len(confusion):
        raise ValueError(f"{len(class_names)} class names for {len(confusion)} classes")
    per_class_out: dict[str, list] = {k: v.tolist() for k, v in per_class.items()}
    if class_names is not None:
        per_class_out["names"] = list(class_names)
    return {**summary, "per_class": per_class_out, "confusion": confusion.tolist()}


# --- continuous labels -------------------------------------------------------------------------


def concordance(targets, predictions) -> float:
    """Lin's concordance correlation coefficient over the whole set (SS-VAERR Eq. 1, as
    :func:`conclugen.losses.ccc`): 2 cov / (var_y + var_p + (mu_y - mu_p)^2), population
    moments; 0 where the denominator is 0."""
    y, p = _array(targets).astype(np.float64), _array(predictions).astype(np.float64)
    cov = np.mean((y - y.mean()) * (p - p.mean()))
    return float(_safe_divide(2 * cov, y.var() + p.var() + (y.mean() - p.mean()) ** 2))


def pearson(targets, predictions) -> float:
    """Pearson's r; 0 where either side is constant."""
    y, p = _array(targets).astype(np.float64), _array(predictions).astype(np.float64)
    cov = np.mean((y - y.mean()) * (p - p.mean()))
    return float(_safe_divide(cov, np.sqrt(y.var() * p.var())))


def regression_metrics(targets, predictions, names: Sequence[str]) -> dict:
    """Test metrics of continuous targets [N, T] named ``names``, JSON-serialisable:
    ``per_target`` {name: {ccc, mse, pearson}}; where a target is named ``sentiment``, its
    ``ccc``, ``mse`` and ``pearson`` at the top level, with ``acc2`` (negative vs non-negative,
    zeros counted non-negative, as the CMU-MOSEI literature's "Acc-2" over every segment) and
    ``acc7`` (both sides rounded to the integers -3 .. 3 after clipping); ``emotion_ccc``: the
    mean CCC of the other targets."""
    y, p = _array(targets).astype(np.float64), _array(predictions).astype(np.float64)
    if y.shape != p.shape or y.ndim != 2 or y.shape[1] != len(names):
        raise ValueError(f"targets {y.shape}, predictions {p.shape}, {len(names)} names")
    per_target = {
        n: {
            "ccc": concordance(y[:, j], p[:, j]),
            "mse": float(np.mean((y[:, j] - p[:, j]) ** 2)),
            "pearson": pearson(y[:, j], p[:, j]),
        }
        for j, n in enumerate(names)
    }
    out: dict = {"per_target": per_target}
    if "sentiment" in names:
        j = list(names).index("sentiment")
        out.update(per_target["sentiment"])
        out["acc2"] = float(np.mean((y[:, j] >= 0) == (p[:, j] >= 0)))
        seven = [np.rint(np.clip(v, -3, 3)) for v in (y[:, j], p[:, j])]
        out["acc7"] = float(np.mean(seven[0] == seven[1]))
    others = [v["ccc"] for n, v in per_target.items() if n != "sentiment"]
    if others:
        out["emotion_ccc"] = float(np.mean(others))
    return out
