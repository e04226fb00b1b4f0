"""Downstream evaluation on precomputed features: the paper's protocols (Sec. 4.1, Tab. 1-5).

A protocol is a classifier over the representation heads F_m of :mod:`conclugen.model`:
Dropout(0.5) + Linear on the concatenation of the modalities' representations, in the order
video, audio, text (authors' ``ClassificationHead`` with ``downstream_fusion_mode='concat'``):

- ``supervised``: the same heads, trained from scratch on the labels (the paper's baseline);
- ``linear``: heads loaded from a pretrained ``model.pt`` and frozen, only the Linear trains;
- ``finetune``: the same, heads unfrozen;
- ``vision``: ``linear`` on the video representation alone (the paper's "ConCluGen (vision)").

``readout_hidden`` > 0 puts a hidden layer in the read-out: Dropout + Linear to that width +
ReLU + Linear, MPUC's prediction layer (fc + ReLU + fc on the concatenated 512-d
representations, Franceschini et al. Sec. III-C; config ``downstream.method_hparams`` gives it
to the mpuc cells).

A pretrained model that lacks a modality (Instance-Cont, the Multi-Cont ablations) uses only its
own. Tasks (:data:`TASKS`): CAER and MELD single-label over 7 classes (cross-entropy), CMU-MOSEI
multi-label over 6 emotions (label = intensity > 0, BCE with logits and ``pos_weight``).

Training (:func:`evaluate`), as :mod:`conclugen.pretrain`: the whole feature set on the device,
index batches from a seeded permutation, AdamW with the dataset's learning rate and weight decay
(paper appendix, Sec. 6), cosine annealing with warm restarts stepped per epoch, bf16 autocast
where the device multiplies bf16 natively (``precision``: conclugen.torchutil.autocast).
Choices where the paper is silent, with reasons:

- Class weights (``class_weights``): ``"balanced"`` (default) weighs class c by N / (C n_c) on the
  train split, for CAER and MELD alike; CMU-MOSEI gets pos_weight_l = #neg_l / #pos_l, as the
  authors' hard-coded values. The authors' CAER and MELD weights differ (docs/fidelity.md).
  ``"none"``: unweighted losses.
- Warm-up: ``warmup_epochs=5`` linear epochs from 0.1 lr, then the restarts, as the authors'
  ``SequentialLR`` (the paper does not mention it; the authors' code decides where the paper is
  silent). 0 switches it off.
- Early stopping and model selection both on the validation loss (the authors' EarlyStopping
  monitor, patience 15; they selected on validation accuracy, docs/fidelity.md); the best state
  is kept in memory and gives the test metrics. One smooth criterion for both works the same for
  the multi-label task, where accuracy is a thresholded, noisy quantity.
- Augmentation (``augment``, default on): where ``features.zarr`` holds augmented copies of the
  train split (``{m}_augmented``, config ``features.augment``: K copies per clip and modality,
  as the authors' ``*_precomp_augmented`` data), every training step draws one copy per sample
  and modality, independently per modality (:func:`draw_copies`); validation, early stopping,
  model selection and test use the plain features only. A store without copies trains on the
  plain features; ``metrics.json`` records ``augmented_copies`` either way.
- Missing modalities: kept, with the absent modality's representation set to zero (the presence
  mask multiplies F_m(x), since F_m(0) is not 0). Dropping them would give every method a
  different test set (Instance-Cont sees no audio or text), so the tables would not compare.
- ``max_epochs=300`` (20 + 40 + 80 + 160: four whole restart cycles); the authors left it unset
  (Lightning's 1000) and relied on early stopping.
- Label efficiency (``train_fraction``, default 1: every train label): a run trains on the
  :func:`label_subset` of the train split that its seed draws; validation and test stay whole.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from conclugen import figures
from conclugen.data.manifest import read_manifest
from conclugen.featstore import MODALITIES, PAPER_MODALITIES, FeatureSet, read_features
from conclugen.io import atomic_path, write_parquet
from conclugen.metrics import EMOTION_METRICS, classification_metrics
from conclugen.model import load_model, representation_head
from conclugen.torchutil import autocast, make_scheduler, resolve_device, resolve_precision

log = logging.getLogger("conclugen")

PROTOCOLS = ("supervised", "linear", "finetune", "vision")
SPLITS = ("train", "val", "test")

# Paper appendix (Sec. 6, "Downstream"): one lr and weight decay per dataset for every method.
TASKS: dict[str, dict] = {
    "caer": dict(multilabel=False, lr=0.0061, weight_decay=0.08216),
    "meld": dict(multilabel=False, lr=0.00967, weight_decay=0.00004),
    "mosei": dict(multilabel=True, lr=0.00996, weight_decay=0.00007),
}

# Paper: batch 4096, representation 4096. Authors' testing.yaml: Dropout 0.5, T_0 20, T_mult 2,
# eta_min 1e-6, 5 warm-up epochs from 0.1 lr, early stopping patience 15.
HPARAMS: dict = dict(
    lr=None,  # None: the dataset's value (TASKS)
    weight_decay=None,  # likewise
    batch_size=4096,
    max_epochs=300,
    patience=15,
    T_0=20,
    T_mult=2,
    eta_min=1e-6,
    warmup_epochs=5,
    dropout=0.5,
    class_weights="balanced",  # or "none" (see the module docstring)
    augment=True,  # train on the store's augmented copies where it has them (features.augment)
    rep_dim=4096,  # supervised only; pretrained heads keep their own
    readout_hidden=0,  # 0: Dropout + Linear (the paper's); > 0: a hidden ReLU layer (MPUC's)
    train_fraction=1.0,  # share of the train labels (label_subset); validation and test whole
    precision="auto",  # bf16 autocast where the device has it natively (torchutil.native_bf16)
)


def resolve_hparams(hparams: dict | None) -> dict:
    """:data:`HPARAMS` updated by ``hparams`` (unknown keys are an error)."""
    hp = dict(HPARAMS)
    unknown = set(hparams or {}) - set(hp)
    if unknown:
        raise KeyError(f"unknown downstream hyperparameters {sorted(unknown)}")
    hp.update(hparams or {})
    if hp["class_weights"] not in ("balanced", "none"):
        raise ValueError(f"class_weights must be 'balanced' or 'none', not {hp['class_weights']!r}")
    if not 0 < hp["train_fraction"] <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], not {hp['train_fraction']}")
    return hp


@dataclass
class Task:
    """One dataset's labelled samples (:func:`load_task`): ``target`` holds class ids [N]
    (single-label) or {0,1} [N, L] (multi-label), in the rows of ``feats``."""

    dataset: str
    feats: FeatureSet
    target: torch.Tensor
    classes: list[str]


@dataclass
class Evaluation:
    """One downstream run. ``metrics``: :func:`classification_metrics` of the test split plus the
    run's record (best_epoch, val, n_train/n_val/n_test, ...); ``predictions``: one row per
    sample of every split; ``history``: one row per epoch; ``model``: the best-epoch classifier."""

    metrics: dict
    predictions: pd.DataFrame
    history: pd.DataFrame
    model: nn.Module


class Classifier(nn.Module):
    """Representation heads (one per modality, in ``heads``' order) -> concatenation ->
    Dropout -> Linear (Kaiming-normal init, as the authors' ``ClassificationHead``); with
    ``hidden`` > 0, Dropout -> Linear(M rep_dim, hidden) -> ReLU -> Linear (MPUC's prediction
    layer; ``self.hidden``, PyTorch's default init), ``self.fc`` being the last Linear."""

    def __init__(
        self,
        heads: dict[str, nn.Module],
        rep_dim: int,
        num_outputs: int,
        dropout: float,
        input_columns: dict[str, list[int]] | None = None,
        hidden: int = 0,
    ):
        super().__init__()
        self.heads = nn.ModuleDict(heads)
        self.input_columns = dict(input_columns or {})  # modality -> [a, b] the head reads
        self.dropout = nn.Dropout(dropout)
        width = len(heads) * rep_dim
        self.hidden = nn.Sequential(nn.Linear(width, hidden), nn.ReLU()) if hidden else None
        self.fc = nn.Linear(hidden or width, num_outputs)
        nn.init.kaiming_normal_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def represent(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor]):
        """[B, M * rep_dim]: each F_m(x_m), zero where the sample lacks modality m."""
        reps = []
        for m, head in self.heads.items():
            a, b = self.input_columns.get(m, (0, x[m].shape[-1]))
            h = head(x[m][..., a:b])
            reps.append(h * present[m].unsqueeze(1).to(h.dtype))
        return torch.cat(reps, 1)

    def classify(self, rep: torch.Tensor) -> torch.Tensor:
        x = self.dropout(rep)
        return self.fc(x if self.hidden is None else self.hidden(x))

    def forward(self, x, present):
        return self.classify(self.represent(x, present))


def save_classifier(model: Classifier, path: str | os.PathLike) -> None:
    """``path`` (safetensors, atomic): the classifier's weights, with what rebuilds it
    (:func:`classifier_spec`) as the file's ``classifier`` metadata (:func:`load_classifier`)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"classifier": json.dumps(classifier_spec(model))})


def classifier_spec(model: Classifier) -> dict:
    """The architecture of a :class:`Classifier`: per modality the head's input width (its
    first Linear) and feature columns, the representation width, outputs, dropout and the
    read-out's hidden width (0: none)."""
    in_dims = {
        m: next(x for x in head.modules() if isinstance(x, nn.Linear)).in_features
        for m, head in model.heads.items()
    }
    first = model.fc if model.hidden is None else model.hidden[0]
    return dict(
        in_dims=in_dims,
        input_columns={m: list(c) for m, c in model.input_columns.items()},
        rep_dim=first.in_features // len(model.heads),
        num_outputs=model.fc.out_features,
        dropout=model.dropout.p,
        hidden=0 if model.hidden is None else model.fc.in_features,
    )


def load_classifier(path: str | os.PathLike) -> Classifier:
    """The :class:`Classifier` of a file written by :func:`save_classifier`, in eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        spec = json.loads(f.metadata()["classifier"])
    heads = {m: representation_head(m, d, spec["rep_dim"]) for m, d in spec["in_dims"].items()}
    model = Classifier(
        heads, spec["rep_dim"], spec["num_outputs"], spec["dropout"], spec["input_columns"],
        spec.get("hidden", 0),
    )  # fmt: skip
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def build_classifier(
    protocol: str, pretrained, dims: dict[str, int], num_outputs: int, hp: dict
) -> Classifier:
    """The protocol's classifier over the modalities it uses (those of the pretrained model, or
    for ``supervised`` the paper's video, audio and text the features have, keypoints not: the
    baseline of ConCluGen's tables; video only for ``vision``), in canonical order."""
    if protocol == "supervised":
        if pretrained is not None:
            raise ValueError("the supervised protocol trains from scratch; pass pretrained=None")
        heads = {m: representation_head(m, dims[m], hp["rep_dim"])
                 for m in PAPER_MODALITIES if m in dims}  # fmt: skip
        return Classifier(heads, hp["rep_dim"], num_outputs, hp["dropout"],
                          hidden=hp["readout_hidden"])  # fmt: skip
    if pretrained is None:
        raise ValueError(f"the {protocol} protocol needs a pretrained model.pt")
    source = load_model(pretrained)
    mods = [m for m in MODALITIES if m in source.heads and m in dims]
    if protocol == "vision":
        mods = [m for m in mods if m == "video"]
    if not mods:
        raise ValueError(f"{pretrained} has no head for the modalities {sorted(dims)} needs")
    columns = {m: c for m, c in source.kwargs.get("input_columns", {}).items() if m in mods}
    for m in mods:
        a, b = columns.get(m, (0, dims[m]))
        if source.kwargs["in_dims"][m] != b - a or b > dims[m]:
            raise ValueError(
                f"{m}: model input {source.kwargs['in_dims'][m]} (columns {a}:{b}), "
                f"features {dims[m]}"
            )
    heads = {m: source.heads[m] for m in mods}
    return Classifier(heads, source.kwargs["rep_dim"], num_outputs, hp["dropout"], columns,
                      hp["readout_hidden"])  # fmt: skip


def load_task(features_path, manifest_path, dataset: str) -> Task:
    """The feature-store samples of ``dataset`` with a label in the manifest, joined by
    ``sample_id``. Targets: class ids (single-label) or {0,1} per label (MOSEI, intensity > 0).
    The feature store's ``split`` column gives train/val/test."""
    if dataset not in TASKS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(TASKS)}")
    frame, meta = read_manifest(manifest_path)
    multilabel = TASKS[dataset]["multilabel"]
    task = meta.get("task")
    if task is not None and task != ("multi_label" if multilabel else "single_label"):
        raise ValueError(f"{manifest_path} is a {task} manifest, {dataset} expects otherwise")
    classes = list(meta["classes"])
    feats = read_features(features_path, dtype=None, views=False, augmented=True)
    labels = frame.set_index("sample_id")["labels"].reindex(feats.sample_id)
    keep = np.array(labels.notna(), dtype=bool)
    if not keep.all():
        log.info("%d of %d feature rows have no label; left out", int((~keep).sum()), len(keep))
        feats, labels = feats.select(keep), labels[keep]
    y = np.stack(labels.to_numpy()).astype(np.float32)
    if y.shape[1] != len(classes):
        raise ValueError(f"labels have {y.shape[1]} entries for {len(classes)} classes")
    target = (y > 0).astype(np.float32) if multilabel else y.argmax(1)
    for s in SPLITS:
        if not (feats.split == s).any():
            raise ValueError(f"{features_path} has no {s} samples with a label")
    return Task(dataset, feats, torch.from_numpy(target), classes)


def draw_copies(
    augmented: dict[str, torch.Tensor], idx: torch.Tensor, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """One augmented copy per sample of ``idx`` and per modality, drawn uniformly and
    independently for each modality (the authors' ``num_augmented_samples_to_load: 1``):
    modality -> [B, D] float32 from ``augmented`` (modality -> [N, K, D])."""
    out = {}
    for m, copies in augmented.items():
        k = torch.randint(copies.shape[1], (len(idx),), generator=gen).to(copies.device)
        out[m] = copies[idx, k].float()
    return out


def label_subset(sample_ids, target, fraction: float, seed: int) -> np.ndarray:
    """Which of these train samples (bool [N]) a run on ``fraction`` of the train labels keeps.

    Stratified: each stratum keeps round(fraction * its size) samples, the first ones in a
    seeded order, and every class keeps at least its first sample (single-label: the class's
    first; multi-label: the first positive of each label with any). Strata: single-label, the
    class; multi-label (``target`` {0,1} [N, L]), the set of positive labels (its exact
    combination of emotions, the empty set included). The seeded order ranks a hash of the seed
    and the sample id, so the subset is a function of the ids, labels, seed and fraction only:
    the same for every method and any row order, nested across fractions (a smaller fraction's
    subset lies inside a larger one's), and the whole split at 1.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], not {fraction}")
    ids = np.asarray(sample_ids).astype(str)
    target = np.asarray(target).astype(np.int64)
    rank = [hashlib.blake2b(f"{seed}/{i}".encode(), digest_size=8).hexdigest() for i in ids]
    order = np.lexsort((ids, np.asarray(rank)))  # the seeded order (ties: by id)
    multilabel = target.ndim == 2
    stratum = target @ (1 << np.arange(target.shape[1])) if multilabel else target
    keep = np.zeros(len(ids), dtype=bool)
    for s in np.unique(stratum):
        members = order[stratum[order] == s]
        keep[members[: int(fraction * len(members) + 0.5)]] = True
    classes = target.T.astype(bool) if multilabel else [target == c for c in np.unique(target)]
    for positive in classes:
        if positive.any():
            keep[order[positive[order]][0]] = True
    return keep


def loss_weights(target: torch.Tensor, multilabel: bool, num_outputs: int) -> torch.Tensor:
    """Train-split weights: pos_weight_l = #neg_l / #pos_l (multi-label; 1 for a label without
    positives) or the 'balanced' class weights N / (C n_c) (0 for a class absent from train)."""
    n = len(target)
    if multilabel:
        pos = target.sum(0)
        return torch.where(pos > 0, (n - pos) / pos.clamp(min=1), torch.ones_like(pos))
    counts = torch.bincount(target, minlength=num_outputs).float()
    return torch.where(counts > 0, n / (num_outputs * counts.clamp(min=1)), 0.0)


@dataclass
class Fit:
    """A trained read-out (:func:`train_readout`): ``outputs`` [N, K] of every sample from the
    best-validation state (float32, on the device), one ``history`` row per epoch, the ``best``
    epoch's row and the augmented ``copies`` per train clip it drew from (0: none)."""

    outputs: torch.Tensor
    history: pd.DataFrame
    best: dict
    copies: int


def train_readout(
    model: Classifier,
    protocol: str,
    feats: FeatureSet,
    index: dict[str, torch.Tensor],
    criterion,
    val_fields,
    hp: dict,
    lr: float,
    weight_decay: float,
    device: torch.device,
    precision: str,
    seed: int,
    name: str,
) -> Fit:
    """The protocols' training loop, the classification and the continuous-label tasks' alike:
    the features resident on the device, index batches from a permutation seeded by ``seed``,
    one augmented copy per sample and modality where the store has them (``hp["augment"]``),
    AdamW and :func:`~conclugen.torchutil.make_scheduler` stepped per epoch, early stopping and
    model selection on ``criterion(outputs, idx)`` of the validation split. ``index`` holds
    each split's rows; ``val_fields(outputs, idx)`` adds the task's validation figures to the
    epoch's history row. Training and validation run under ``precision``'s autocast; the
    returned outputs come from the best state in fp32, in eval mode."""
    mods = list(model.heads)
    frozen = protocol in ("linear", "vision")
    x = {m: feats.features[m].to(device) for m in mods}  # resident for the whole run
    present = {m: feats.present[m].to(device) for m in mods}
    # Augmented copies of the train split (zeros elsewhere, never read there).
    copies = {}
    if hp["augment"] and feats.augmented:
        copies = {m: feats.augmented[m].to(device) for m in mods if m in feats.augmented}
    n_copies = int(next(iter(copies.values())).shape[1]) if copies else 0
    gen = torch.Generator().manual_seed(seed)

    def batch(idx: torch.Tensor):  # gather from the resident features, float16 -> float32
        return {m: x[m][idx].float() for m in mods}, {m: present[m][idx] for m in mods}

    if frozen:  # the heads never change: compute every representation once
        model.heads.requires_grad_(False)
        with torch.no_grad(), autocast(device, precision):
            everyone = torch.arange(len(feats), device=device).split(hp["batch_size"])
            reps = torch.cat([model.represent(*batch(i)) for i in everyone]).float()

    def forward(idx: torch.Tensor, train: bool) -> torch.Tensor:
        inputs, mask = batch(idx)
        if train and copies:  # one augmented copy per modality, where there are any
            inputs = {**inputs, **draw_copies(copies, idx, gen)}
        with autocast(device, precision):
            if frozen and not (train and copies):
                out = model.classify(reps[idx])
            elif frozen:
                with torch.no_grad():
                    rep = model.represent(inputs, mask)
                out = model.classify(rep)
            else:
                out = model(inputs, mask)
        return out.float()

    @torch.no_grad()
    def infer(idx: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        model.eval()
        out = torch.cat([forward(i, False) for i in idx.split(hp["batch_size"])])
        model.train(was_training)
        return out

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=lr, weight_decay=weight_decay, fused=device.type == "cuda"
    )
    scheduler = make_scheduler(optimizer, hp)
    n_train = len(index["train"])
    log.info(
        "%s seed %d: %s, %d/%d/%d samples, lr %s, wd %s, %s, %s",
        name, seed, mods, n_train, len(index["val"]), len(index["test"]), lr, weight_decay,
        device, f"{n_copies} augmented copies per train clip" if copies else "no augmentation",
    )  # fmt: skip
    history, best, best_state = [], None, None
    model.train()
    for epoch in range(hp["max_epochs"]):
        t0 = time.perf_counter()
        perm = index["train"][torch.randperm(n_train, generator=gen).to(device)]
        total = torch.zeros((), device=device)  # one host sync per epoch
        batches = perm.split(hp["batch_size"])
        for idx in batches:
            loss = criterion(forward(idx, True), idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        row = dict(epoch=epoch, lr=optimizer.param_groups[0]["lr"])
        scheduler.step()  # per epoch, as the authors' scheduler
        val = index["val"]
        val_out = infer(val)
        row["train_loss"] = total.item() / len(batches)
        row["val_loss"] = criterion(val_out, val).item()
        row.update(val_fields(val_out, val))
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        log.debug("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
        if best is None or row["val_loss"] < best["val_loss"]:
            best, best_state = row, copy.deepcopy(model.state_dict())
        elif epoch - best["epoch"] >= hp["patience"]:
            break

    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():  # reported in fp32 whatever trained, as an exported model predicts
        everyone = torch.arange(len(feats), device=device).split(hp["batch_size"])
        outputs = torch.cat([model(*batch(i)).float() for i in everyone])
    return Fit(outputs, pd.DataFrame(history), best, n_copies)


def evaluate(
    task: Task,
    protocol: str,
    pretrained: str | os.PathLike | None = None,
    hparams: dict | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Evaluation:
    """Train ``protocol`` on the train split of ``task`` (:func:`load_task`), stop early on the
    validation loss, and evaluate the best-validation-epoch state on the test split.

    ``seed`` drives the initialisation, dropout, batch order and, with ``train_fraction`` below
    1, the train subset (:func:`label_subset`); the same seed on the same device gives the
    same result. See the module docstring for the choices made.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    hp = resolve_hparams(hparams)
    dataset, feats, classes = task.dataset, task.feats, task.classes
    multilabel = TASKS[dataset]["multilabel"]
    lr = TASKS[dataset]["lr"] if hp["lr"] is None else hp["lr"]
    wd = TASKS[dataset]["weight_decay"]
    weight_decay = wd if hp["weight_decay"] is None else hp["weight_decay"]
    device = torch.device(resolve_device(device or "auto"))
    precision = resolve_precision(hp["precision"], device)

    num_outputs = len(classes)
    torch.manual_seed(seed)  # init and dropout; the batch order draws from its own generator
    model = build_classifier(protocol, pretrained, feats.dims, num_outputs, hp).to(device)
    target = task.target.to(device)
    index = {s: np.flatnonzero(feats.split == s) for s in SPLITS}
    if hp["train_fraction"] < 1:
        train = index["train"]
        keep = label_subset(feats.sample_id[train], task.target[train], hp["train_fraction"], seed)
        index["train"] = train[keep]
    index = {s: torch.from_numpy(i).to(device) for s, i in index.items()}
    weights = loss_weights(target[index["train"]], multilabel, num_outputs)
    if hp["class_weights"] == "none":
        weights = torch.ones_like(weights)
    if multilabel:
        loss = nn.BCEWithLogitsLoss(pos_weight=weights)
    else:
        loss = nn.CrossEntropyLoss(weight=weights)

    def val_accuracy(out, idx):
        return {"val_accuracy": _metrics(target[idx], out, multilabel, classes)["accuracy"]}

    fit = train_readout(
        model, protocol, feats, index, lambda out, idx: loss(out, target[idx]), val_accuracy,
        hp, lr, weight_decay, device, precision, seed, f"downstream {dataset}/{protocol}",
    )  # fmt: skip
    best, scores = fit.best, fit.outputs
    test = index["test"]
    metrics = _metrics(target[test], scores[test], multilabel, classes)
    val = _metrics(target[index["val"]], scores[index["val"]], multilabel, classes)
    metrics.update(
        dataset=dataset,
        protocol=protocol,
        seed=seed,
        pretrained=None if pretrained is None else str(pretrained),
        modalities=list(model.heads),
        best_epoch=best["epoch"],
        epochs=len(fit.history),
        val={k: val[k] for k in ("accuracy", "f1", "precision", "recall")},
        val_loss=best["val_loss"],
        n_train=len(index["train"]),
        n_val=len(index["val"]),
        n_test=len(test),
        loss_weights=weights.tolist(),
        augmented_copies=fit.copies,
        hparams=dict(hp, lr=lr, weight_decay=weight_decay),
    )
    log.info(
        "downstream %s/%s seed %d: best epoch %d of %d, test accuracy %.4f, f1 %.4f",
        dataset, protocol, seed, best["epoch"], len(fit.history), metrics["accuracy"],
        metrics["f1"],
    )  # fmt: skip
    predictions = _predictions(feats, target, scores, multilabel, classes)
    return Evaluation(metrics, predictions, fit.history, model.cpu())


def _metrics(target, logits, multilabel, classes) -> dict:
    scores = torch.sigmoid(logits) if multilabel else logits
    return classification_metrics(target, scores, multilabel, len(classes), classes)


def _predictions(feats: FeatureSet, target, scores, multilabel, classes) -> pd.DataFrame:
    """sample_id, split, then target + predicted class + softmax scores (single-label), or per
    label target, sigmoid score and predicted 0/1 (multi-label)."""
    frame = pd.DataFrame({"sample_id": feats.sample_id, "split": feats.split})
    target = target.cpu().numpy()
    if multilabel:
        prob = torch.sigmoid(scores).cpu().numpy()
        for j, c in enumerate(classes):
            frame[f"target_{c}"] = target[:, j].astype(np.int64)
            frame[f"score_{c}"] = prob[:, j]
            frame[f"predicted_{c}"] = (prob[:, j] > 0.5).astype(np.int64)
        return frame
    prob = torch.softmax(scores, 1).cpu().numpy()
    frame["target"] = target.astype(np.int64)
    frame["predicted"] = prob.argmax(1)
    frame["target_name"] = np.asarray(classes)[frame["target"]]
    frame["predicted_name"] = np.asarray(classes)[frame["predicted"]]
    for j, c in enumerate(classes):
        frame[f"score_{c}"] = prob[:, j]
    return frame


def write_evaluation(evaluation: Evaluation, out_dir: str | os.PathLike) -> None:
    """``metrics.json`` (with the per-epoch history), ``predictions.parquet``, the best-epoch
    ``classifier.safetensors`` (:func:`save_classifier`) and, for a classification run,
    ``confusion.png`` of the test split, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = dict(evaluation.metrics, history=evaluation.history.to_dict("records"))
    write_parquet(evaluation.predictions, out_dir / "predictions.parquet")
    save_classifier(evaluation.model, out_dir / "classifier.safetensors")
    if "confusion" in evaluation.metrics:
        _plot_confusion(evaluation.metrics, out_dir / "confusion.png")
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2))


def _plot_confusion(metrics: dict, path: Path) -> None:
    title = f"{metrics['dataset']} {metrics['protocol']} (test, seed {metrics['seed']})"
    confusion = np.asarray(metrics["confusion"])
    figures.run_confusion_figure(confusion, metrics["per_class"]["names"], title, path)


def run_dir(cell_dir: str | os.PathLike, protocol: str, seed: int) -> Path:
    """``cell_dir/{protocol}/seed{seed}``: where one run of a (dataset, method) cell keeps its
    files (:func:`write_evaluation`)."""
    return Path(cell_dir) / protocol / f"seed{seed}"


def summed_confusion(cell_dir: str | os.PathLike, protocol: str) -> tuple[np.ndarray, list[str]]:
    """The test confusion matrices of a cell's ``protocol`` runs (every seed ``runs.csv``
    lists) summed, and the class names."""
    runs = pd.read_csv(Path(cell_dir) / "runs.csv")
    seeds = runs.loc[runs["protocol"] == protocol, "seed"]
    paths = [run_dir(cell_dir, protocol, s) / "metrics.json" for s in seeds]
    records = [json.loads(p.read_text()) for p in paths]
    total = sum(np.asarray(r["confusion"]) for r in records)
    return total, records[0]["per_class"]["names"]


def representations(
    model_path, features_path, manifest_path, dataset: str
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(rep [N, D], class ids [N], class names): a pretrained model's concatenated modality
    representations (the linear probe's input) of every labelled sample of a single-label
    ``dataset``."""
    if TASKS[dataset]["multilabel"]:
        raise ValueError(f"{dataset} is multi-label; choose a single-label dataset")
    task = load_task(features_path, manifest_path, dataset)
    feats = task.feats
    model = build_classifier("linear", model_path, feats.dims, len(task.classes), HPARAMS).eval()
    mods = list(model.heads)
    with torch.no_grad():
        x = {m: feats.features[m].float() for m in mods}
        rep = model.represent(x, {m: feats.present[m] for m in mods})
    return rep, task.target, task.classes


def evaluate_cell(
    out_dir: str | os.PathLike,
    dataset: str,
    method: str,
    protocols: list[str],
    seeds: int,
    evaluate_run,
    metrics: tuple[str, ...],
    per_class: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Every protocol and seed of one (dataset, method) cell: ``evaluate_run(protocol, seed)``'s
    :class:`Evaluation` written to its :func:`run_dir` (:func:`write_evaluation`), then
    ``out_dir/runs.csv``, last: one row per run with dataset, method, protocol, seed, the test
    ``metrics``, the ``per_class`` metrics of every class as ``{metric}_{class}``, best_epoch
    and epochs."""
    rows = []
    for protocol in protocols:
        for seed in range(seeds):
            run = evaluate_run(protocol, seed)
            write_evaluation(run, run_dir(out_dir, protocol, seed))
            m = run.metrics
            rows.append(
                dict(dataset=dataset, method=method, protocol=protocol, seed=seed)
                | {k: m[k] for k in metrics}
                | {
                    f"{k}_{c}": v
                    for k in per_class  # (regression runs have no per_class: none asked)
                    for c, v in zip(m["per_class"]["names"], m["per_class"][k], strict=True)
                }
                | dict(best_epoch=m["best_epoch"], epochs=m["epochs"])
            )
    runs = pd.DataFrame(rows)
    with atomic_path(Path(out_dir) / "runs.csv") as tmp:
        runs.to_csv(tmp, index=False)
    return runs


def evaluate_method(
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
) -> pd.DataFrame:
    """:func:`evaluate_cell` of :func:`evaluate` runs; runs.csv holds the four test metrics
    (accuracy, f1, precision, recall) and, multi-label (CMU-MOSEI), the literature's
    weighted_accuracy and weighted_f1 (:func:`conclugen.metrics.emotion_metrics`), their mean
    over the emotions and each emotion's (``weighted_accuracy_happy``, ...)."""
    task = load_task(features_path, manifest_path, dataset)  # once: every run reads the same
    metrics = ("accuracy", "f1", "precision", "recall")
    multilabel = TASKS[dataset]["multilabel"]
    return evaluate_cell(
        out_dir, dataset, method, protocols, seeds,
        lambda protocol, seed: evaluate(task, protocol, pretrained, hparams, seed, device),
        metrics + EMOTION_METRICS if multilabel else metrics,
        EMOTION_METRICS if multilabel else (),
    )  # fmt: skip
