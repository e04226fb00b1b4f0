"""Continuous-label downstream evaluation: CMU-MOSEI's sentiment and emotion intensities as
regression targets, with SS-VAERR's composite losses (Jegorova et al., Eq. 1-6).

The targets (:data:`TARGETS`) are the manifest's ``sentiment`` (-3 .. 3) and the six emotion
intensities of ``labels`` (0 .. 3), each normalised by the train split's mean and std. The model is
:mod:`conclugen.downstream`'s :class:`~conclugen.downstream.Classifier` on the same representations
and protocols (``linear``: frozen pretrained heads; ``finetune``; ``vision``; ``supervised``), its
Linear read-out widened to T (1 + 2 L) outputs for T targets and L bins: per target one value (the
prediction, trained by 1 - CCC and MSE), L logits over uniform bins (CE, Eq. 3) and L logits over
k-means classes (nCCE, Eq. 4-5). The L = 20 uniform bins span the train split's normalised range
(values outside go to the end bins); the k = 20 centroids are :func:`~conclugen.losses.kmeans_1d`
of the train split's normalised values, a target's class its nearest centroid. The loss is
:func:`~conclugen.losses.composite_loss` (Eq. 6), each term averaged over the targets, weights
``loss_weights`` (default :data:`~conclugen.losses.COMPOSITE_WEIGHTS`, SS-VAERR's best: w_ccc 0.5,
w_ce 0.25, w_mse 0.25, w_nCCE 0); w_ccc + w_mse must be positive, since the value output is the
prediction. The loss's CCC is the batch's in training (batches of thousands at full size) and the
whole validation split's for early stopping.

Training is the classification protocols' (:func:`conclugen.downstream.evaluate`): the features
resident on the device, AdamW with MOSEI's lr and weight decay, cosine warm restarts per epoch,
augmented copies where the store has them, early stopping and model selection on the validation
loss, bf16 autocast as ``precision`` says (conclugen.torchutil.autocast); label efficiency
(``train_fraction``) is the classification tasks' only. Reported on the test split, on the
de-normalised predictions (:func:`conclugen.metrics.regression_metrics`): CCC on the whole test
set, MSE and Pearson r per target, and the sentiment's binary (negative vs non-negative) and
7-class accuracy. SS-VAERR's "frozen" protocol froze only the first layer of an end-to-end
network; ours (``linear``) freezes the whole representation heads on precomputed features.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from conclugen import losses
from conclugen.data.manifest import read_manifest
from conclugen.data.mosei import CLASSES as EMOTIONS
from conclugen.downstream import (
    PROTOCOLS,
    SPLITS,
    TASKS,
    Evaluation,
    build_classifier,
    evaluate_cell,
    resolve_hparams,
    train_readout,
)
from conclugen.featstore import FeatureSet, read_features
from conclugen.metrics import regression_metrics
from conclugen.torchutil import resolve_device, resolve_precision

log = logging.getLogger("conclugen")

TARGETS = ("sentiment", *EMOTIONS)
DATASETS = ("mosei",)
# Runs.csv's test metrics: the sentiment's CCC, MSE, Pearson r, binary and 7-class accuracy, and
# the CCC averaged over the six emotion intensities.
RUN_METRICS = ("ccc", "mse", "pearson", "acc2", "acc7", "emotion_ccc")


@dataclass
class RegressionTask:
    """One dataset's samples with continuous targets: ``values`` [N, T] in the label units, in
    the rows of ``feats``, columns ``targets``."""

    dataset: str
    feats: FeatureSet
    values: torch.Tensor
    targets: list[str]


@dataclass(frozen=True)
class TargetCoding:
    """What the train split fixes (:func:`fit_coding`): the normalisation ``mean``, ``std`` [T],
    the uniform bin ``edges`` [T, L + 1] and the k-means ``centroids`` [T, L], the last two on
    the normalised scale."""

    mean: torch.Tensor
    std: torch.Tensor
    edges: torch.Tensor
    centroids: torch.Tensor

    def normalise(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / self.std

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


def fit_coding(train_values: torch.Tensor, bins: int = losses.CONTINUOUS_BINS) -> TargetCoding:
    """The :class:`TargetCoding` of the train split's ``train_values`` [N, T]: mean and std
    (population; 1 where a target is constant), then per target the ``bins`` uniform bins over
    its normalised range and the ``bins`` k-means centroids of its normalised values."""
    v = train_values.float()
    mean, std = v.mean(0), v.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    z = (v - mean) / std
    edges = torch.stack([losses.uniform_edges(c.min(), c.max(), bins) for c in z.T])
    centroids = torch.stack([losses.kmeans_1d(c, bins) for c in z.T])
    return TargetCoding(mean, std, edges, centroids)


def load_regression_task(features_path, manifest_path, dataset: str = "mosei") -> RegressionTask:
    """The feature-store samples of ``dataset`` with a sentiment and emotion intensities in the
    manifest (columns ``sentiment`` and ``labels``), joined by ``sample_id``."""
    if dataset not in DATASETS:
        raise ValueError(f"no continuous labels for {dataset!r}; expected one of {DATASETS}")
    frame, meta = read_manifest(manifest_path)
    if list(meta["classes"]) != list(EMOTIONS) or "sentiment" not in frame:
        raise ValueError(f"{manifest_path} is not a CMU-MOSEI manifest with a sentiment column")
    feats = read_features(features_path, dtype=None, views=False, augmented=True)
    frame = frame.set_index("sample_id").reindex(feats.sample_id)
    keep = np.array(frame["sentiment"].notna() & frame["labels"].notna(), dtype=bool)
    if not keep.all():
        n = int((~keep).sum())
        log.info("%d of %d feature rows have no continuous label; left out", n, len(keep))
        feats, frame = feats.select(keep), frame[keep]
    values = np.column_stack([frame["sentiment"].to_numpy(), np.stack(frame["labels"].to_numpy())])
    for s in SPLITS:
        if not (feats.split == s).any():
            raise ValueError(f"{features_path} has no {s} samples with a continuous label")
    return RegressionTask(
        dataset, feats, torch.from_numpy(values.astype(np.float32)), list(TARGETS)
    )


def split_outputs(out: torch.Tensor, targets: int, bins: int):
    """The read-out [B, T (1 + 2 L)] as (values [B, T], bin logits [B, T, L], class logits
    [B, T, L])."""
    value, rest = out[:, :targets], out[:, targets:].reshape(len(out), targets, 2, bins)
    return value, rest[:, :, 0], rest[:, :, 1]


def evaluate_regression(
    task: RegressionTask,
    protocol: str,
    pretrained: str | os.PathLike | None = None,
    hparams: dict | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    loss_weights: dict[str, float] | None = None,
    bins: int = losses.CONTINUOUS_BINS,
) -> Evaluation:
    """Train ``protocol``'s regression read-out on the train split of ``task`` with the
    composite loss of ``loss_weights``, stop early on the validation loss and evaluate the
    best-validation-epoch state on the test split (the module docstring says how)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    weights = dict(losses.COMPOSITE_WEIGHTS if loss_weights is None else loss_weights)
    if set(weights) != set(losses.COMPOSITE_WEIGHTS) or weights["ccc"] + weights["mse"] <= 0:
        raise ValueError(f"loss weights need ccc, mse, ce, ncce with ccc + mse > 0: {weights}")
    hp = resolve_hparams(hparams)
    if hp["train_fraction"] < 1:
        raise ValueError("label efficiency (train_fraction < 1) is the classification tasks'")
    feats, n_targets = task.feats, len(task.targets)
    lr = TASKS[task.dataset]["lr"] if hp["lr"] is None else hp["lr"]
    wd = TASKS[task.dataset]["weight_decay"]
    weight_decay = wd if hp["weight_decay"] is None else hp["weight_decay"]
    device = torch.device(resolve_device(device or "auto"))
    precision = resolve_precision(hp["precision"], device)

    torch.manual_seed(seed)
    width = n_targets * (1 + 2 * bins)
    model = build_classifier(protocol, pretrained, feats.dims, width, hp).to(device)
    index = {s: torch.from_numpy(np.flatnonzero(feats.split == s)).to(device) for s in SPLITS}
    coding = fit_coding(task.values[index["train"].cpu()], bins)
    z = coding.normalise(task.values).to(device)
    bin_of = losses.bin_index(z.cpu(), coding.edges).to(device)
    class_of = losses.nearest_centroid(z.cpu(), coding.centroids).to(device)
    centroids = coding.centroids.to(device)

    def criterion(out, idx):
        value, bin_logits, class_logits = split_outputs(out, n_targets, bins)
        return losses.composite_loss(
            weights, value, z[idx], bin_logits, bin_of[idx], class_logits, class_of[idx], centroids
        )

    def val_ccc(out, idx):
        return {"val_ccc": losses.ccc(out[:, 0], z[idx, 0]).item()}

    log.info("regression %s/%s seed %d: loss weights %s", task.dataset, protocol, seed, weights)
    fit = train_readout(
        model, protocol, feats, index, criterion, val_ccc, hp, lr, weight_decay, device,
        precision, seed, f"regression {task.dataset}/{protocol}",
    )  # fmt: skip
    best, out = fit.best, fit.outputs
    pred = coding.denormalise(split_outputs(out, n_targets, bins)[0].cpu())
    test, val = index["test"].cpu(), index["val"].cpu()
    metrics = regression_metrics(task.values[test].numpy(), pred[test].numpy(), task.targets)
    val_metrics = regression_metrics(task.values[val].numpy(), pred[val].numpy(), task.targets)
    metrics.update(
        dataset=task.dataset,
        protocol=protocol,
        seed=seed,
        pretrained=None if pretrained is None else str(pretrained),
        modalities=list(model.heads),
        loss_weights=weights,
        bins=bins,
        best_epoch=best["epoch"],
        epochs=len(fit.history),
        val={k: val_metrics[k] for k in RUN_METRICS},
        val_loss=best["val_loss"],
        n_train=len(index["train"]),
        n_val=len(val),
        n_test=len(test),
        coding={k: getattr(coding, k).tolist() for k in ("mean", "std", "edges", "centroids")},
        augmented_copies=fit.copies,
        hparams=dict(hp, lr=lr, weight_decay=weight_decay),
    )
    log.info(
        "regression %s/%s seed %d: best epoch %d of %d, test sentiment CCC %.4f, MSE %.4f, "
        "acc2 %.4f, acc7 %.4f",
        task.dataset, protocol, seed, best["epoch"], len(fit.history), metrics["ccc"],
        metrics["mse"], metrics["acc2"], metrics["acc7"],
    )  # fmt: skip
    frame = pd.DataFrame({"sample_id": feats.sample_id, "split": feats.split})
    for j, name in enumerate(task.targets):
        frame[f"target_{name}"] = task.values[:, j].numpy()
        frame[f"predicted_{name}"] = pred[:, j].numpy()
    return Evaluation(metrics, frame, fit.history, model.cpu())


def evaluate_regression_method(
    features_path: str | os.PathLike,
    manifest_path: str | os.PathLike,
    dataset: str,
    method: str,
    protocols: list[str],
    seeds: int,
    out_dir: str | os.PathLike,
    pretrained: str | os.PathLike | None = None,
    hparams: dict | None = None,
    device: str | torch.device | None = None,
    loss_weights: dict[str, float] | None = None,
    bins: int = losses.CONTINUOUS_BINS,
) -> pd.DataFrame:
    """:func:`~conclugen.downstream.evaluate_cell` of :func:`evaluate_regression` runs with
    the loss combination ``loss_weights``; runs.csv holds :data:`RUN_METRICS`."""
    task = load_regression_task(features_path, manifest_path, dataset)

    def evaluate_run(protocol, seed):
        return evaluate_regression(
            task, protocol, pretrained, hparams, seed, device, loss_weights, bins
        )

    return evaluate_cell(out_dir, dataset, method, protocols, seeds, evaluate_run, RUN_METRICS)
