"""Self-supervised pretraining on precomputed features: every method of the paper's study,
BYOL and DINO, the negative-free pretext tasks of SS-VAERR (Jegorova et al.), on the video views,
and MPUC (Franceschini et al., ICPR 2022) on temporal windows of every modality.

A method is data, not code: which loss terms it sums, which modalities it sees, its learning
rate and weight decay, and hyperparameters of its own (:data:`METHODS`). One loop trains them
all (:func:`pretrain`): the whole feature set lives on the device, batches are index tensors
from a seeded permutation, AdamW with a linear warm-up then cosine annealing with warm restarts
(or SGD with a step decay, ``optimizer`` / ``schedule``), optional early stopping on the
held-out clips' loss (``patience``), bf16 autocast where the device multiplies bf16 natively
(``precision``: conclugen.torchutil.autocast), a resumable checkpoint every epoch. BYOL and DINO
add a :class:`Pretext`: a trainable predictor or prototype layer, and a target (teacher) network
that only an exponential moving average updates.

Outputs in ``out_dir``: ``last.ckpt`` and ``history.csv`` every epoch; at the end
``retrieval.json`` (cross-modal recall@1 at init and after pretraining), ``loss.png`` and, last,
``model.pt``, so that ``model.pt`` existing means the run finished.

Which dataset a method pretrains on is the workflow's choice (config ``pretrain.dataset``, and
``pretrain.datasets`` per method: MPUC's CMU-MOSEI); every method trains on its train split.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from conclugen import figures
from conclugen import losses as L
from conclugen.featstore import MODALITIES, FeatureSet, open_store, read_features
from conclugen.io import atomic_path
from conclugen.model import ConCluGenModel, save_model
from conclugen.torchutil import autocast, make_scheduler, resolve_device, resolve_precision

log = logging.getLogger("conclugen")

# MPUC (Franceschini et al., ICPR 2022; issue 19): its modality-pairwise contrastive loss on two
# temporal windows of every modality (features.windows), and, as its Table II, without text.
# Its own settings (Sec. III-B to III-D and the authors' code): one projection head per modality,
# fc + ReLU + fc (512 -> 1024 -> 512), on 512-d representations; SGD, lr 1e-3, momentum 0.9,
# weight decay 1e-3, the lr times 0.9 every 5 epochs (CMU-MOSEI), batch 32, at most 2000 epochs
# with a patience of 100 (the paper's; their code's: 50); tau 0.07. Keypoints are its fourth
# modality where the store has them (the face datasets: optional).
MPUC_HPARAMS = dict(
    rep_dim=512,
    proj_dim=512,
    proj_hidden_dim=1024,
    projection="per_modality",
    optimizer="sgd",
    momentum=0.9,
    schedule="step",
    step_epochs=5,
    step_gamma=0.9,
    batch_size=32,
    epochs=2000,
    patience=100,
)
# Learning rates and weight decays: the paper's appendix (Sec. 6, "Pretraining"). The paper
# leaves Multi-Cont's weight decay blank and gives nothing for the two ablations; the authors'
# code released no pretraining recipe, so Multi-Cont takes the weight decay of the authors'
# configs/defaults.yaml (AdamW weight_decay 1e-3; every other method of the paper uses 3.2e-4),
# and the ablations take Multi-Cont's values (they are Multi-Cont with one modality dropped,
# the authors' contrast_only_video_{audio,text}).
ALL = ("video", "audio", "text")
METHODS: dict[str, dict] = {
    "conclugen": dict(
        terms=("mms", "clustering", "reconstruction"), modalities=ALL, lr=9e-5, weight_decay=3.2e-4
    ),
    "conclu": dict(terms=("mms", "clustering"), modalities=ALL, lr=9e-5, weight_decay=3.2e-4),
    "congen": dict(terms=("mms", "reconstruction"), modalities=ALL, lr=3.6e-4, weight_decay=3.2e-4),
    "multicont": dict(terms=("mms",), modalities=ALL, lr=3.6e-4, weight_decay=1e-3),
    "instancecont": dict(terms=("infonce",), modalities=("video",), lr=3.6e-4, weight_decay=3.2e-4),
    "generative": dict(terms=("reconstruction",), modalities=ALL, lr=3.6e-4, weight_decay=3.2e-4),
    "multicont_wo_text": dict(
        terms=("mms",), modalities=("video", "audio"), lr=3.6e-4, weight_decay=1e-3
    ),
    "multicont_wo_audio": dict(
        terms=("mms",), modalities=("video", "text"), lr=3.6e-4, weight_decay=1e-3
    ),
    # BYOL and DINO (issue 20: SS-VAERR's negative-free pretext tasks), video-only on
    # Instance-Cont's views. Their papers' optimisers (BYOL: LARS; DINO: AdamW with lr
    # 5e-4 * B / 256 and weight decay 0.04 -> 0.4) train a backbone from pixels; here, as every
    # method of the study, they share AdamW and the scheduler, at Instance-Cont's values.
    "byol": dict(terms=("byol",), modalities=("video",), lr=3.6e-4, weight_decay=3.2e-4),
    "dino": dict(terms=("dino",), modalities=("video",), lr=3.6e-4, weight_decay=3.2e-4),
    "mpuc": dict(
        terms=("mpuc",),
        modalities=ALL,
        optional=("keypoints",),
        lr=1e-3,
        weight_decay=1e-3,
        hparams=MPUC_HPARAMS,
    ),  # fmt: skip
    "mpuc_wo_text": dict(
        terms=("mpuc",),
        modalities=("video", "audio"),
        optional=("keypoints",),
        lr=1e-3,
        weight_decay=1e-3,
        hparams=MPUC_HPARAMS,
    ),  # fmt: skip
}
TERMS = ("mms", "clustering", "reconstruction", "infonce", "byol", "dino", "mpuc")
VIEW_TERMS = ("infonce", "byol", "dino")  # trained on the augmented video views alone
WINDOW_TERMS = ("mpuc",)  # trained on the temporal windows of every modality alone
TARGET_TERMS = ("byol", "dino")  # with an EMA target network (:class:`Pretext`)
# Collapse check of BYOL and DINO (:func:`representation_std`, :func:`collapse_floor`): a
# collapsed representation has std 0; one spread evenly over the sphere 1 / sqrt(rep_dim).
# Collapsed: below COLLAPSE_FLOOR of the even spread and below COLLAPSE_FRACTION of the
# untrained network's std on the same clips (inputs that hardly spread, such as the demo's
# look-alike video features, start near the first).
COLLAPSE_FLOOR = 0.1
COLLAPSE_FRACTION = 0.5

# Everything else. Paper: batch 4096, representation 4096, 8 clusters, a queue of 4 batches,
# clustering from epoch 12, delta 0.001, tau 0.07. Authors' code: projection 512 with hidden
# width rep_dim // 8, seed 127, queue reset every epoch, the scheduler the paper cites stepped
# per epoch: 5 warm-up epochs from 0.1 lr, then T_0 20, T_mult 2, eta_min 1e-6 (their downstream
# recipe; the pretraining one is unreleased). Neither gives the number of epochs or the decoder
# width: 65 epochs = the warm-up and two whole restart cycles (5 + 20 + 40); rec_dim = rep_dim.
HPARAMS: dict = dict(
    epochs=65,
    batch_size=4096,
    seed=127,
    rep_dim=4096,
    proj_dim=512,
    proj_hidden_dim=None,  # None: rep_dim // 8, the authors' (512 at the paper's sizes)
    rec_dim=4096,
    num_clusters=8,
    queue_batches=4,
    queue_reset_each_epoch=True,  # as the authors' code
    cluster_start_epoch=12,
    kmeans_iters=100,
    margin=L.MARGIN,
    temperature=L.TEMPERATURE,
    final_relu=False,  # True: the authors' extra ReLUs (see ConCluGenModel)
    combine="sum",  # "sum" (paper, Eq. 11-13) or "mean" (authors' LossesMergingLoss)
    weights=dict(
        mms=1.0, clustering=1.0, reconstruction=1.0, infonce=1.0, byol=1.0, dino=1.0, mpuc=1.0
    ),
    projection="shared",  # one head J for every modality (the paper's) or "per_modality" (MPUC)
    infonce_joint_batch=False,  # True: both views as one BatchNorm batch (SimCLR's 2B batch)
    # BYOL and DINO (:class:`Pretext`): the target's EMA momentum goes from ema_momentum to 1 by
    # a cosine over the training steps (BYOL's tau_base and DINO's teacher momentum, 0.996).
    ema_momentum=0.996,
    predictor_hidden_dim=None,  # BYOL's predictor; None: the projection head's hidden width
    dino_out_dim=65536,  # DINO's K prototypes (its code's default)
    dino_student_temp=L.DINO_STUDENT_TEMP,  # 0.1
    dino_teacher_temp=L.DINO_TEACHER_TEMP,  # 0.04, after the warm-up (DINO's code default)
    dino_warmup_teacher_temp=L.DINO_TEACHER_TEMP,  # linear from this over the warm-up epochs
    dino_warmup_teacher_temp_epochs=0,  # DINO's paper: 0.04 -> 0.07 over 30 epochs
    dino_center_momentum=L.DINO_CENTER_MOMENTUM,  # 0.9
    optimizer="adamw",  # or "sgd" (with ``momentum``; MPUC's)
    momentum=0.9,
    schedule="cosine",  # warm-up then warm restarts, or "step": x step_gamma every step_epochs
    warmup_epochs=5,
    T_0=20,
    T_mult=2,
    eta_min=1e-6,
    step_epochs=5,
    step_gamma=0.9,
    patience=None,  # epochs without a lower held-out loss before stopping; None: all epochs
    lr=None,  # None: each method's own value (METHODS); a number overrides all (e.g. the demo)
    weight_decay=None,  # likewise
    train_split="train",
    eval_samples=1000,  # held out of the training split for retrieval (at most a quarter)
    precision="auto",  # bf16 autocast where the device has it natively (torchutil.native_bf16)
)


def method_config(name: str, **overrides) -> dict:
    """The :data:`METHODS` entry ``name`` (with its name) updated by ``overrides``."""
    return {"name": name, **METHODS[name], **overrides}


CHOICES = dict(
    combine=("sum", "mean"),
    projection=("shared", "per_modality"),
    optimizer=("adamw", "sgd"),
    schedule=("cosine", "step"),
)


def resolve_hparams(hparams: dict | None, method: dict | None = None) -> dict:
    """:data:`HPARAMS` updated by the method's own ``hparams`` (:data:`METHODS`), then by
    ``hparams`` (``weights`` merged key by key)."""
    hp = copy.deepcopy(HPARAMS)
    for given in ((method or {}).get("hparams"), hparams):
        given = dict(given or {})
        hp["weights"].update(given.pop("weights", {}) or {})
        unknown = set(given) - set(hp)
        if unknown:
            raise KeyError(f"unknown pretraining hyperparameters {sorted(unknown)}")
        hp.update(given)
    for key, allowed in CHOICES.items():
        if hp[key] not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, not {hp[key]!r}")
    return hp


def build_model(
    method: dict, hp: dict, dims: dict[str, int], input_columns: dict | None = None
) -> ConCluGenModel:
    """The model a method needs: heads for its modalities, a cluster head only for clustering,
    decoders only for reconstruction. ``input_columns``: see :class:`ConCluGenModel`."""
    return ConCluGenModel(
        {m: dims[m] for m in method["modalities"]},
        rep_dim=hp["rep_dim"],
        proj_dim=hp["proj_dim"],
        proj_hidden_dim=hp["proj_hidden_dim"] or hp["rep_dim"] // 8,
        num_clusters=hp["num_clusters"] if "clustering" in method["terms"] else 0,
        rec_dim=hp["rec_dim"] if "reconstruction" in method["terms"] else 0,
        final_relu=hp["final_relu"],
        input_columns=input_columns,
        projection=hp["projection"],
    )


def uses_views(method: dict) -> bool:
    """Whether the method trains on the augmented video views (:data:`VIEW_TERMS`)."""
    return bool(set(method["terms"]) & set(VIEW_TERMS))


def uses_windows(method: dict) -> bool:
    """Whether the method trains on the temporal windows (:data:`WINDOW_TERMS`)."""
    return bool(set(method["terms"]) & set(WINDOW_TERMS))


def store_modalities(features_path, method: dict) -> tuple[str, ...]:
    """The method's modalities on this store: its ``modalities``, then those of its
    ``optional`` ones the store holds, in canonical order (MPUC's keypoints where the dataset
    has face tracks)."""
    stored = set(open_store(features_path).attrs["modalities"])
    wanted = set(method["modalities"]) | (set(method.get("optional", ())) & stored)
    return tuple(m for m in MODALITIES if m in wanted)


class Prototypes(nn.Module):
    """DINO's last layer: a bias-free Linear to K prototypes whose rows are kept at unit norm
    (DINO's weight-normalised layer with its norm frozen at 1, ``norm_last_layer``), applied to
    the L2-normalised projection, so every logit is a cosine."""

    def __init__(self, dim: int, k: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ F.normalize(self.weight, dim=1).T.to(x.dtype)


class Pretext(nn.Module):
    """What BYOL or DINO adds to the online :class:`ConCluGenModel` (representation head F and
    projection head J, which is BYOL's projector and DINO's head up to its bottleneck):

    - ``head``, trained with the model: BYOL's predictor q, Linear -> BN -> ReLU -> Linear as
      wide as the projection (Grill et al. Sec. 3.3), on the un-normalised projection; or DINO's
      :class:`Prototypes` on the L2-normalised projection (Caron et al. Sec. 3.1, Appendix).
    - ``target``: BYOL's target network / DINO's teacher, a copy of the online model (DINO's
      with its prototype layer; BYOL's without the predictor) that gets no gradient, is not in
      the optimiser (:func:`trainable_parameters`), and changes only by :meth:`update_target`,
      an exponential moving average of the online weights. It runs in train mode, as in both
      papers' code, so its BatchNorm normalises by the batch.
    - ``center``: DINO's centre c of the teacher's logits (a buffer, :func:`losses.dino_center`).

    DINO's teacher sees the 2 global views (two distinct views of ``video_views``, drawn as
    :func:`sample_views`), its student those and every local view of the store's
    ``video_local_views`` (small crops; features stage, ``features.local_views``), as DINO's
    multi-crop (:func:`_dino`).
    """

    def __init__(self, model: ConCluGenModel, kind: str, hp: dict):
        super().__init__()
        if kind not in TARGET_TERMS:
            raise ValueError(f"no pretext network for {kind!r}")
        self.kind = kind
        d = model.kwargs["proj_dim"]
        if kind == "byol":
            hidden = hp["predictor_hidden_dim"] or model.kwargs["proj_hidden_dim"]
            self.head = nn.Sequential(
                nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, d)
            )
            target = nn.ModuleDict({"model": model})
        else:
            self.head = Prototypes(d, hp["dino_out_dim"])
            self.register_buffer("center", torch.zeros(1, hp["dino_out_dim"]))
            target = nn.ModuleDict({"model": model, "head": self.head})
        self.target = copy.deepcopy(target).requires_grad_(False)

    def online_parameters(self, model: ConCluGenModel) -> dict[str, nn.Parameter]:
        """The online parameters, named as their copies in ``target``."""
        online = {f"model.{k}": v for k, v in model.named_parameters()}
        return online | {f"head.{k}": v for k, v in self.head.named_parameters()}

    @torch.no_grad()
    def update_target(self, model: ConCluGenModel, momentum: float) -> None:
        """target <- momentum * target + (1 - momentum) * online (BYOL Eq. 4; DINO Sec. 3.1)."""
        online = self.online_parameters(model)
        for name, p in self.target.named_parameters():
            p.lerp_(online[name].detach(), 1 - momentum)


def trainable_parameters(model: ConCluGenModel, pretext: Pretext | None) -> list[nn.Parameter]:
    """What the optimiser trains: the model, and a :class:`Pretext`'s head, never its target."""
    extra = list(pretext.head.parameters()) if pretext is not None else []
    return [*model.parameters(), *extra]


def ema_momentum(step: int, total_steps: int, base: float) -> float:
    """The target's momentum at ``step`` (0-based) of ``total_steps``: a cosine from ``base`` to 1,
    ``1 - (1 - base) (cos(pi k / K) + 1) / 2`` (BYOL Sec. 3.2; DINO's cosine schedule)."""
    return 1 - (1 - base) * (math.cos(math.pi * step / total_steps) + 1) / 2


def teacher_temperature(epoch: int, hp: dict) -> float:
    """DINO's teacher temperature in ``epoch``: linear from ``dino_warmup_teacher_temp`` to
    ``dino_teacher_temp`` over the ``dino_warmup_teacher_temp_epochs`` first epochs (both ends
    included, as DINO's ``np.linspace``), then constant."""
    warm = hp["dino_warmup_teacher_temp_epochs"]
    start, end = hp["dino_warmup_teacher_temp"], hp["dino_teacher_temp"]
    if epoch >= warm:
        return end
    return start if warm == 1 else start + (end - start) * epoch / (warm - 1)


def collapse_floor(rep_dim: int, initial_std: float) -> float:
    """The rep_std below which a representation counts as collapsed: the lower of
    ``COLLAPSE_FLOOR / sqrt(rep_dim)`` (a tenth of an even spread) and ``COLLAPSE_FRACTION`` of
    ``initial_std``, the untrained network's :func:`representation_std` on the same clips."""
    return min(COLLAPSE_FLOOR / math.sqrt(rep_dim), COLLAPSE_FRACTION * initial_std)


@torch.no_grad()
def teacher_entropy(pretext: Pretext, views: torch.Tensor, teacher_temp: float) -> float:
    """DINO's own collapse check (Caron et al. Sec. 5.3): the entropy of the teacher's centred,
    sharpened distribution over the K prototypes on ``views`` [N, Dv] (one batch), averaged
    over the clips, as a fraction of log K: near 1 when it has gone uniform (the collapse that
    centring alone leads to), near 0 when one prototype takes every clip (sharpening alone)."""
    logits = pretext.target["head"](pretext.target["model"]({"video": views})["video"]["proj"])
    p = L.dino_targets([logits], pretext.center, teacher_temp)[0]
    entropy = -(p * p.clamp_min(1e-30).log()).sum(1).mean()
    return entropy.item() / math.log(p.shape[1])


@torch.no_grad()
def representation_std(rep: torch.Tensor) -> torch.Tensor:
    """The collapse check: the std across samples of the L2-normalised representations ``rep``
    [N, D], averaged over the D dimensions. A collapsed representation (every sample the same)
    gives 0, one spread evenly over the sphere about 1 / sqrt(D) (:data:`COLLAPSE_FLOOR`)."""
    return F.normalize(rep.float(), dim=1).std(0).mean()


def view_inputs(train: FeatureSet) -> tuple[dict[str, int], dict[str, list[int]]]:
    """(dims, input_columns) of Instance-Cont's model: its video head reads the views, which
    hold the columns ``view_columns`` of the store's video features (the 3D half by default,
    as the authors' SimCLR saw the 3D features only; config ``features.views.roles``)."""
    width = int(train.views.shape[2])
    columns = list(train.attrs.get("view_columns") or [0, width])
    if columns[1] - columns[0] != width:
        raise ValueError(f"view_columns {columns} do not match the views' width {width}")
    return {**train.dims, "video": width}, {"video": columns}


def active_terms(method: dict, hp: dict, epoch: int) -> list[str]:
    """The method's loss terms that count in ``epoch`` (clustering from ``cluster_start_epoch``)."""
    return [t for t in method["terms"] if t != "clustering" or epoch >= hp["cluster_start_epoch"]]


def combine(terms: dict[str, torch.Tensor], weights: dict[str, float], mode: str) -> torch.Tensor:
    """Total loss: the sum of the weighted terms (paper, Eq. 11-13) or their mean (authors'
    ``LossesMergingLoss(mode='mean')``: before the clustering starts ConCluGen averages 2 terms,
    afterwards 3)."""
    total = sum(weights[t] * v for t, v in terms.items())
    return total / len(terms) if mode == "mean" else total


def sample_views(views: torch.Tensor, idx: torch.Tensor, gen: torch.Generator):
    """Two distinct augmented views per sample, drawn uniformly (authors' SimCLR data)."""
    k = views.shape[1]
    first = torch.randint(k, (len(idx),), generator=gen)
    second = (first + torch.randint(1, k, (len(idx),), generator=gen)) % k
    first, second = first.to(idx.device), second.to(idx.device)
    return views[idx, first].float(), views[idx, second].float()


def sample_windows(windows: dict[str, torch.Tensor], idx: torch.Tensor, gen: torch.Generator):
    """MPUC's two views of each sample of ``idx``: two distinct of its temporal windows, drawn
    uniformly, the same two for every modality (a view is one stretch of the clip in all of
    them): modality -> [2, B, D] float32 from ``windows`` (modality -> [N, W, D])."""
    k = next(iter(windows.values())).shape[1]
    first = torch.randint(k, (len(idx),), generator=gen)
    second = (first + torch.randint(1, k, (len(idx),), generator=gen)) % k
    first, second = first.to(idx.device), second.to(idx.device)
    return {m: torch.stack([w[idx, first], w[idx, second]]).float() for m, w in windows.items()}


def _byol(model: ConCluGenModel, pretext: Pretext, v1, v2) -> torch.Tensor:
    """BYOL's loss: each view through the online F, J and predictor q, and through the target's
    F and J, one BatchNorm batch per view (as BYOL's code)."""

    def project(net: ConCluGenModel, v: torch.Tensor) -> torch.Tensor:
        return net.projection(net.heads["video"](v))

    with torch.no_grad():
        z1, z2 = (project(pretext.target["model"], v) for v in (v1, v2))
    p1, p2 = (pretext.head(project(model, v)) for v in (v1, v2))
    return L.byol_loss(p1, p2, z1, z2)


def _dino(
    model: ConCluGenModel,
    pretext: Pretext,
    globals_: tuple[torch.Tensor, torch.Tensor],
    local: torch.Tensor | None,
    hp: dict,
    teacher_temp: float,
):
    """DINO's multi-crop loss (Eq. 3): the teacher sees the 2 global views, the student the
    globals and the ``local`` views [B, L, Dv] (None: none). The globals pass each network as
    one batch and the locals the student as another, as DINO's ``MultiCropWrapper`` groups
    crops of one size (so each group has its own BatchNorm statistics); then the centre's EMA
    (Eq. 4), over the teacher's outputs only."""
    both = {"video": torch.cat(globals_)}
    with torch.no_grad():
        teacher = pretext.target["model"](both)["video"]["proj"]
        teacher = pretext.target["head"](teacher).float().chunk(2)
    student = list(pretext.head(model(both)["video"]["proj"]).chunk(2))
    if local is not None:
        crops = {"video": local.transpose(0, 1).flatten(0, 1)}  # local view by local view
        student += pretext.head(model(crops)["video"]["proj"]).chunk(local.shape[1])
    loss = L.dino_loss(student, teacher, pretext.center, hp["dino_student_temp"], teacher_temp)
    pretext.center.copy_(L.dino_center(pretext.center, teacher, hp["dino_center_momentum"]))
    return loss


def compute_losses(
    model: ConCluGenModel,
    batch: dict[str, torch.Tensor],
    method: dict,
    hp: dict,
    terms: list[str],
    queue: list[torch.Tensor],
    gen: torch.Generator,
    pretext: Pretext | None = None,
    teacher_temp: float = L.DINO_TEACHER_TEMP,
) -> dict[str, torch.Tensor]:
    """The unweighted loss terms of one batch. ``batch`` maps modality -> [B, D] features, plus
    ``views`` -> ([B, Dv], [B, Dv]) for InfoNCE, BYOL and DINO, for DINO ``local_views`` ->
    [B, L, Dv] when the store has them (:func:`make_batch`), and ``windows`` -> {modality:
    [2, B, D]} for MPUC (each view through the heads on its own). The clustering term pushes the
    detached fused batch onto ``queue`` (FIFO of the last ``queue_batches`` batches). BYOL and
    DINO use ``pretext`` (:class:`Pretext`); DINO updates its centre, with the teacher
    temperature ``teacher_temp``."""
    out = {}
    mods = [m for m in method["modalities"] if m in batch]
    if "byol" in terms:
        out["byol"] = _byol(model, pretext, *batch["views"])
    if "dino" in terms:
        local = batch.get("local_views")
        out["dino"] = _dino(model, pretext, batch["views"], local, hp, teacher_temp)
    if "infonce" in terms:
        v1, v2 = batch["views"]
        if hp["infonce_joint_batch"]:
            p1, p2 = model({"video": torch.cat([v1, v2])})["video"]["proj"].chunk(2)
        else:  # each view through the projection head's BatchNorm on its own, as the authors
            p1, p2 = (model({"video": v})["video"]["proj"] for v in (v1, v2))
        out["infonce"] = L.info_nce_loss(p1, p2, hp["temperature"])
    if "mpuc" in terms:
        windows = batch["windows"]
        views = [model({m: w[v] for m, w in windows.items()}) for v in range(2)]
        projections = [torch.stack([o[m]["proj"] for o in views]) for m in windows]
        out["mpuc"] = L.mpuc_loss(projections, hp["temperature"])
    if not set(terms) & {"mms", "clustering", "reconstruction"}:
        return out
    o = model({m: batch[m] for m in mods})
    if "mms" in terms:
        out["mms"] = L.multimodal_mms_loss([o[m]["proj"] for m in mods], hp["margin"])
    if "reconstruction" in terms:
        out["reconstruction"] = L.reconstruction_loss(
            [o[m]["recon"] for m in mods], [batch[m] for m in mods]
        )
    if "clustering" in terms:
        past = torch.cat(queue) if queue else None
        out["clustering"], fused = L.clustering_loss(
            [o[m]["cluster"] for m in mods],
            queue=past,
            k=hp["num_clusters"],
            margin=hp["margin"],
            generator=gen,
            iters=hp["kmeans_iters"],
        )
        queue.append(fused)
        del queue[: -hp["queue_batches"]]
    return out


@torch.no_grad()
def heldout_loss(
    model: ConCluGenModel,
    heldout: FeatureSet,
    method: dict,
    hp: dict,
    terms: list[str],
    device: torch.device,
    min_batch: int = 2,
) -> float:
    """The early-stopping criterion: the total loss of ``terms`` on the held-out clips, the mean
    over their batches of ``batch_size`` in stored order (a smaller last batch left out), on a
    train-mode copy of the model (its BatchNorm normalises each batch as in training; the model
    itself is left alone), with views and windows drawn from a generator seeded by ``seed`` and
    a fresh k-means queue, so that every epoch is measured on the same draws."""
    probe = copy.deepcopy(model).train()
    gen = torch.Generator().manual_seed(hp["seed"])
    feats = {m: t.to(device) for m, t in heldout.features.items()}
    views = None if heldout.views is None else heldout.views.to(device)
    windows = {m: w.to(device) for m, w in (heldout.windows or {}).items()} or None
    index = torch.arange(len(heldout), device=device).split(hp["batch_size"])
    totals = []
    for idx in (i for i in index if len(i) >= min_batch):
        batch = make_batch(feats, views, idx, method, gen, windows=windows)
        with autocast(device, hp["precision"]):
            values = compute_losses(probe, batch, method, hp, terms, [], gen)
        totals.append(combine(values, hp["weights"], hp["combine"]).float())
    return torch.stack(totals).mean().item()


def make_optimizer(params, method: dict, hp: dict, device: torch.device):
    """The optimiser of ``params``: AdamW (the paper's) or SGD with ``momentum`` (MPUC's),
    at the method's learning rate and weight decay unless ``hp`` overrides them."""
    lr = method["lr"] if hp["lr"] is None else hp["lr"]
    weight_decay = method["weight_decay"] if hp["weight_decay"] is None else hp["weight_decay"]
    if hp["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=hp["momentum"], weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type == "cuda")


def train_step(
    model,
    optimizer,
    batch,
    method,
    hp,
    terms,
    queue,
    gen,
    pretext=None,
    momentum=None,
    teacher_temp=L.DINO_TEACHER_TEMP,
) -> dict[str, torch.Tensor]:
    """One optimiser step, then a :class:`Pretext`'s target EMA with ``momentum``; returns the
    detached unweighted terms and ``total``."""
    with autocast(next(model.parameters()).device, hp["precision"]):
        values = compute_losses(model, batch, method, hp, terms, queue, gen, pretext, teacher_temp)
    total = combine(values, hp["weights"], hp["combine"])
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    if pretext is not None:
        pretext.update_target(model, momentum)
    return {**{t: v.detach() for t, v in values.items()}, "total": total.detach()}


def make_batch(
    feats: dict[str, torch.Tensor], views, idx, method, gen, local_views=None, windows=None
) -> dict:
    """Gather one batch from the resident features (index tensors, no per-sample Python): the
    method's modalities, two views (:func:`sample_views`), for DINO every local view, and for
    MPUC two temporal windows (:func:`sample_windows`)."""
    batch = {m: feats[m][idx].float() for m in method["modalities"] if m in feats}
    if uses_views(method):
        batch["views"] = sample_views(views, idx, gen)
    if local_views is not None and "dino" in method["terms"]:
        batch["local_views"] = local_views[idx].float()
    if uses_windows(method):
        batch["windows"] = sample_windows(windows, idx, gen)
    return batch


@torch.no_grad()
def embed(
    probe: ConCluGenModel, modality: str, x: torch.Tensor, precision: str = "auto"
) -> torch.Tensor:
    """L2-normalised projections of ``x`` by ``probe``, a train-mode copy of the model, so that
    the projection head's BatchNorm normalises by the statistics of ``x`` itself, as in
    training. Its running statistics are no use here: the shared head sees each modality's
    batch in turn, so they blend all modalities, and in eval mode one modality's projections
    then collapse onto a single hub (every query retrieving the same sample)."""
    device = next(probe.parameters()).device
    with autocast(device, precision):
        return probe({modality: x.to(device).float()})[modality]["proj"].float()


def cross_modal_recall_at_1(
    model: ConCluGenModel,
    feats: FeatureSet,
    split: str | None = None,
    pairs=(("video", "text"), ("video", "audio")),
    max_samples: int = 1000,
    precision: str = "auto",
) -> dict[str, dict]:
    """Recall@1 of cross-modal retrieval in the shared projection space: for each query
    (e.g. a video) of the samples of ``split`` that have both modalities (the first
    ``max_samples``), is its own sample's other modality (text, audio) the nearest by cosine?
    Embeddings in ``precision`` (:func:`embed`). Returns ``{"video->text": {"recall_at_1", "n",
    "chance"}, ...}`` for the pairs the model has."""
    in_split = torch.ones(len(feats), dtype=torch.bool)
    if split is not None:
        in_split = torch.from_numpy(feats.split == split)
    probe = copy.deepcopy(model).train()  # for :func:`embed`; the model itself is left alone
    result = {}
    for q, k in pairs:
        if q not in model.heads or k not in model.heads or k not in feats.features:
            continue
        keep = in_split & feats.present[q].cpu() & feats.present[k].cpu()
        idx = keep.nonzero().squeeze(1)[:max_samples]
        if len(idx) < 2:
            continue
        eq = embed(probe, q, feats.features[q][idx.to(feats.features[q].device)], precision)
        ek = embed(probe, k, feats.features[k][idx.to(feats.features[k].device)], precision)
        hits = (eq @ ek.T).argmax(1) == torch.arange(len(idx), device=eq.device)
        result[f"{q}->{k}"] = dict(
            recall_at_1=hits.float().mean().item(), n=len(idx), chance=1.0 / len(idx)
        )
    return result


def data_digest(train: FeatureSet, rows: int = 4096) -> str:
    """A digest of the training data: every sample id, and the feature bytes of up to ``rows``
    evenly spaced samples per modality (and views, local views), so that recomputed features
    (other weights, crops, precision) are told apart from the ones a checkpoint was trained on,
    in milliseconds even for a million samples."""
    h = hashlib.blake2b(digest_size=16)
    h.update("\n".join(train.sample_id.tolist()).encode())
    pick = torch.linspace(0, max(len(train) - 1, 0), min(rows, len(train))).long()
    tensors = [train.features[m] for m in sorted(train.features)]
    tensors += [v for v in (train.views, train.local_views) if v is not None]
    tensors += [train.windows[m] for m in sorted(train.windows or {})]
    for x in tensors:
        h.update(x[pick.to(x.device)].cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _fingerprint(method: dict, hp: dict, train: FeatureSet) -> str:
    """What must match for a checkpoint to be resumed: method, hyperparameters (``epochs``
    aside: a longer run continues a shorter one, whose schedule it shares; not so BYOL's and
    DINO's, whose target momentum runs to 1 over all the steps) and the training data
    (:func:`data_digest`)."""
    if not set(method["terms"]) & set(TARGET_TERMS):
        hp = {k: v for k, v in hp.items() if k != "epochs"}
    data = dict(dims=train.dims, n=len(train), digest=data_digest(train))
    return json.dumps(dict(method=method, hp=hp, data=data), sort_keys=True, default=str)


def _write_history(history: list[dict], out_dir: Path) -> None:
    with atomic_path(out_dir / "history.csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


def _plot_history(history: list[dict], out_dir: Path) -> None:
    frame = pd.DataFrame(history)
    terms = {t: frame[t] for t in TERMS if t in frame and frame[t].notna().any()}
    ylabel = "loss (terms unweighted, total weighted)"
    figures.loss_figure(frame["epoch"], frame["total"], terms, ylabel, out_dir / "loss.png")


def load_training_data(features_path, method: dict, hp: dict) -> tuple[FeatureSet, FeatureSet]:
    """(train, heldout): the ``train_split`` samples that have all the method's modalities, with
    ``eval_samples`` of them (at most a quarter, chosen by the seed) held out for retrieval (and
    early stopping) and never trained on. float16 features stay float16 (half the memory;
    batches become float32). DINO also reads the local views, when the store has them, MPUC
    the temporal windows."""
    mods, terms = method["modalities"], method["terms"]
    feats = read_features(
        features_path,
        mods,
        split=hp["train_split"],
        dtype=None,
        views=uses_views(method),
        local_views="dino" in terms,
        windows=uses_windows(method),
    )
    if uses_views(method) and (feats.views is None or feats.views.shape[1] < 2):
        raise ValueError(f"{terms} need >= 2 augmented video views in {features_path}")
    if uses_windows(method) and (feats.windows is None or feats.attrs["windows"] < 2):
        raise ValueError(f"{terms} need >= 2 temporal windows in {features_path}")
    complete = torch.stack([feats.present[m] for m in mods]).all(0)
    if not complete.all():
        log.info("%d samples lack one of %s and are left out", int((~complete).sum()), list(mods))
        feats = feats.select(complete)
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(hp["seed"]))
    n_eval = min(hp["eval_samples"], len(feats) // 4)
    return feats.select(order[n_eval:].sort().values), feats.select(order[:n_eval].sort().values)


def pretrain(
    features_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    method: dict,
    hparams: dict | None = None,
    device: str | torch.device | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> Path:
    """Pretrain ``method`` (a :data:`METHODS` entry, e.g. from :func:`method_config`) on a
    features store (see :func:`load_training_data`); return the path of ``model.pt``.

    Resumes from ``out_dir/last.ckpt`` when it was written by the same method, hyperparameters
    (``epochs`` aside) and data; the checkpoint holds model, optimiser, scheduler, RNG states,
    k-means queue, epoch and history, so a resumed run ends with the same weights as an
    uninterrupted one. ``on_epoch_end(epoch, row)`` is called after each epoch's checkpoint.
    BYOL and DINO also record, per epoch, the target's momentum at the epoch's last step and
    ``rep_std`` (:func:`representation_std` of the first view of up to 1024 training clips)
    and ``rep_std_floor`` (:func:`collapse_floor`; the log warns below it); DINO also
    ``teacher_entropy`` (:func:`teacher_entropy`) and ``teacher_temp``.

    The method's ``optional`` modalities join where the store has them
    (:func:`store_modalities`; ``model.pt`` records the modalities trained). With ``patience``
    set, every epoch also records ``heldout`` (:func:`heldout_loss`); training stops once
    ``patience`` epochs have passed without a lower one, and ``model.pt`` holds the weights of
    the epoch with the lowest.
    """
    hp = resolve_hparams(hparams, method)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(resolve_device(device or "auto"))
    method = {**method, "modalities": store_modalities(features_path, method)}
    name, mods, terms = method.get("name", "pretrain"), method["modalities"], method["terms"]
    if set(terms) - set(TERMS) or set(mods) - set(MODALITIES):
        raise ValueError(f"unknown loss terms or modalities in {method}")
    targets = [t for t in terms if t in TARGET_TERMS]
    if len(targets) > 1 or (targets and list(mods) != ["video"]):
        raise ValueError(f"BYOL or DINO train alone on the video views, not {method}")
    if targets and hp["patience"] is not None:
        raise ValueError("early stopping (patience) is not defined for BYOL or DINO")

    train, heldout = load_training_data(features_path, method, hp)
    # Resident for the whole run; Instance-Cont, BYOL and DINO train on the views alone, MPUC on
    # the windows alone.
    plain = bool(set(terms) - set(VIEW_TERMS) - set(WINDOW_TERMS))
    x = {m: t.to(device) for m, t in train.features.items()} if plain else {}
    views = train.views.to(device) if train.views is not None else None
    local = train.local_views.to(device) if train.local_views is not None else None
    windows = {m: w.to(device) for m, w in (train.windows or {}).items()} or None
    n = len(train)
    # BatchNorm needs >= 2 rows and k-means >= k points: a smaller last batch is dropped.
    min_batch = max(2, hp["num_clusters"]) if "clustering" in terms else 2
    if n < min_batch:
        raise ValueError(f"{n} training samples are too few (at least {min_batch} needed)")
    if hp["patience"] is not None and len(heldout) < min_batch:
        raise ValueError(f"{len(heldout)} held-out samples are too few for early stopping")
    log.info(
        "pretrain %s: %d samples (%d held out), %s, %s, %s, %s",
        name,
        n,
        len(heldout),
        mods,
        terms,
        device,
        resolve_precision(hp["precision"], device),
    )
    if "dino" in terms:
        count = 0 if local is None else local.shape[1]
        log.info("%s: the student sees 2 global and %d local views, the teacher 2", name, count)

    torch.manual_seed(hp["seed"])
    dims, columns = view_inputs(train) if uses_views(method) else (train.dims, None)
    model = build_model(method, hp, dims, columns).to(device)
    pretext = Pretext(model, targets[0], hp).to(device) if targets else None
    steps_per_epoch = n // hp["batch_size"] + (n % hp["batch_size"] >= min_batch)
    collapse_views = views[:1024, 0].float() if pretext is not None else None
    if pretext is not None:  # before any resume: the untrained network's, as the seed made it
        with torch.no_grad():
            initial_std = representation_std(model.heads["video"](collapse_views)).item()
        floor = collapse_floor(hp["rep_dim"], initial_std)
    optimizer = make_optimizer(trainable_parameters(model, pretext), method, hp, device)
    scheduler = make_scheduler(optimizer, hp)
    gen = torch.Generator().manual_seed(hp["seed"])  # all training randomness draws from it
    retrieval_init = cross_modal_recall_at_1(model, heldout, precision=hp["precision"])

    fingerprint = _fingerprint(method, hp, train)
    ckpt_path = out_dir / "last.ckpt"
    start, history, queue = 0, [], []
    best, stopped = None, False  # best: the epoch, held-out loss and weights of the lowest
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # RNG states: CPU
        if ckpt["fingerprint"] == fingerprint and ckpt["epoch"] > hp["epochs"]:
            log.warning(
                f"{ckpt_path} is after epoch {ckpt['epoch']}, beyond this run's "
                f"{hp['epochs']} epochs; starting afresh"
            )
        elif ckpt["fingerprint"] == fingerprint:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            gen.set_state(ckpt["generator"])
            torch.set_rng_state(ckpt["torch_rng"])
            if device.type == "cuda" and ckpt["cuda_rng"] is not None:
                torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
            start, history = ckpt["epoch"], ckpt["history"]
            queue = [q.to(device) for q in ckpt["queue"]]
            if pretext is not None:
                pretext.load_state_dict(ckpt["pretext"])
            best, stopped = ckpt["best"], ckpt["stopped"]
            log.info("resumed from %s after epoch %d", ckpt_path, start)
        else:
            log.warning("%s was written by another configuration; starting afresh", ckpt_path)

    model.train()
    for epoch in range(start, start if stopped else hp["epochs"]):
        t0 = time.perf_counter()
        on = active_terms(method, hp, epoch)
        if hp["queue_reset_each_epoch"]:
            queue = []
        perm = torch.randperm(n, generator=gen).to(device)
        batches = [b for b in perm.split(hp["batch_size"]) if len(b) >= min_batch]
        sums: dict[str, torch.Tensor] = {}  # on the device: one host sync per epoch
        temp = teacher_temperature(epoch, hp)
        for i, idx in enumerate(batches):
            batch = make_batch(x, views, idx, method, gen, local, windows)
            step = epoch * steps_per_epoch + i
            momentum = ema_momentum(step, hp["epochs"] * steps_per_epoch, hp["ema_momentum"])
            values = train_step(
                model, optimizer, batch, method, hp, on, queue, gen, pretext, momentum, temp
            )
            for t, v in values.items():
                sums[t] = sums.get(t, 0) + v
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()  # per epoch, as the authors' scheduler
        row = {"epoch": epoch, "lr": lr}
        for t in terms:
            row[t] = sums[t].item() / len(batches) if t in sums else math.nan
            row[f"{t}_weighted"] = hp["weights"][t] * row[t]
        row["total"] = sums["total"].item() / len(batches)
        extra = ""
        if pretext is not None:
            row["momentum"] = momentum
            if "dino" in terms:
                row["teacher_temp"] = temp
                row["teacher_entropy"] = teacher_entropy(pretext, collapse_views, temp)
            with torch.no_grad():
                reps = model.heads["video"](collapse_views)
            row["rep_std"] = representation_std(reps).item()
            row["rep_std_floor"] = floor
            extra = f", rep_std {row['rep_std']:.4f} (floor {floor:.4f})"
            if row["rep_std"] < floor:
                log.warning(
                    "%s epoch %d: the representation has collapsed%s", name, epoch + 1, extra
                )
        if hp["patience"] is not None:
            row["heldout"] = heldout_loss(model, heldout, method, hp, on, device, min_batch)
            if best is None or row["heldout"] < best["loss"]:
                weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                best = dict(epoch=epoch, loss=row["heldout"], model=weights)
            stopped = epoch - best["epoch"] >= hp["patience"]
            extra += f", held out {row['heldout']:.4f} (best {best['loss']:.4f})"
        row["seconds"] = time.perf_counter() - t0
        row["samples_per_s"] = sum(len(b) for b in batches) / row["seconds"]
        history.append(row)
        losses = ", ".join(f"{t} {row[t]:.4f}" for t in [*terms, "total"])
        log.info(
            f"{name} epoch {epoch + 1}/{hp['epochs']}: {losses}{extra} ({row['seconds']:.1f} s)"
        )
        state = dict(
            fingerprint=fingerprint,
            epoch=epoch + 1,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            generator=gen.get_state(),
            torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            queue=[q.cpu() for q in queue],
            pretext=pretext.state_dict() if pretext is not None else None,
            history=history,
            best=best,
            stopped=stopped,
        )
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)
        _write_history(history, out_dir)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        if stopped:
            log.info(
                "%s: no lower held-out loss in %d epochs; stopped after epoch %d, keeping epoch %d",
                name, hp["patience"], epoch + 1, best["epoch"] + 1,
            )  # fmt: skip
            break

    if not history:
        raise ValueError(f"no epochs to train (epochs={hp['epochs']})")
    if best is not None:
        model.load_state_dict(best["model"])
    _write_history(history, out_dir)  # also when a finished run is resumed (no epoch left)
    report = {}
    for pair, r in cross_modal_recall_at_1(model, heldout, precision=hp["precision"]).items():
        init = retrieval_init[pair]["recall_at_1"]
        report[pair] = dict(init=init, pretrained=r["recall_at_1"], chance=r["chance"], n=r["n"])
        log.info(
            f"{name} recall@1 {pair} on {r['n']} held-out clips: init {init:.3f} -> "
            f"pretrained {r['recall_at_1']:.3f} (chance {r['chance']:.3f})"
        )
    with atomic_path(out_dir / "retrieval.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    _plot_history(history, out_dir)
    model_path = out_dir / "model.pt"
    with atomic_path(model_path) as tmp:  # last: its existence means the run finished
        save_model(model, tmp, method=method, hparams=hp, history=history)
    return model_path
