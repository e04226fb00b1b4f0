"""Self-supervised pretraining on precomputed features: every method of the paper's study.

A method is data, not code: which loss terms it sums, which modalities it sees, and its learning
rate and weight decay (:data:`METHODS`). One loop trains them all (:func:`pretrain`): the whole
feature set lives on the device, batches are index tensors from a seeded permutation, AdamW with
a linear warm-up then cosine annealing with warm restarts, bf16 autocast on CUDA, a resumable
checkpoint every epoch.

Outputs in ``out_dir``: ``last.ckpt`` and ``history.csv`` every epoch; at the end
``retrieval.json`` (cross-modal recall@1 at init and after pretraining), ``loss.png`` and, last,
``model.pt``, so that ``model.pt`` existing means the run finished.
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

from conclugen import figures
from conclugen import losses as L
from conclugen.featstore import MODALITIES, FeatureSet, read_features
from conclugen.io import atomic_path
from conclugen.model import ConCluGenModel, save_model
from conclugen.torchutil import make_scheduler, resolve_device

log = logging.getLogger("conclugen")

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
}
TERMS = ("mms", "clustering", "reconstruction", "infonce")

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
    weights=dict(mms=1.0, clustering=1.0, reconstruction=1.0, infonce=1.0),
    infonce_joint_batch=False,  # True: both views as one BatchNorm batch (SimCLR's 2B batch)
    warmup_epochs=5,
    T_0=20,
    T_mult=2,
    eta_min=1e-6,
    lr=None,  # None: each method's own value (METHODS); a number overrides all (e.g. the demo)
    weight_decay=None,  # likewise
    train_split="train",
    eval_samples=1000,  # held out of the training split for retrieval (at most a quarter)
)


def method_config(name: str, **overrides) -> dict:
    """The :data:`METHODS` entry ``name`` (with its name) updated by ``overrides``."""
    return {"name": name, **METHODS[name], **overrides}


def resolve_hparams(hparams: dict | None) -> dict:
    """:data:`HPARAMS` updated by ``hparams`` (``weights`` merged key by key)."""
    hp = copy.deepcopy(HPARAMS)
    hparams = dict(hparams or {})
    hp["weights"].update(hparams.pop("weights", {}) or {})
    unknown = set(hparams) - set(hp)
    if unknown:
        raise KeyError(f"unknown pretraining hyperparameters {sorted(unknown)}")
    hp.update(hparams)
    if hp["combine"] not in ("sum", "mean"):
        raise ValueError(f"combine must be 'sum' or 'mean', not {hp['combine']!r}")
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
    )


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


def compute_losses(
    model: ConCluGenModel,
    batch: dict[str, torch.Tensor],
    method: dict,
    hp: dict,
    terms: list[str],
    queue: list[torch.Tensor],
    gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The unweighted loss terms of one batch. ``batch`` maps modality -> [B, D] features, plus
    ``views`` -> ([B, Dv], [B, Dv]) for InfoNCE. The clustering term pushes the detached fused
    batch onto ``queue`` (FIFO of the last ``queue_batches`` batches)."""
    out = {}
    mods = [m for m in method["modalities"] if m in batch]
    if "infonce" in terms:
        v1, v2 = batch["views"]
        if hp["infonce_joint_batch"]:
            p1, p2 = model({"video": torch.cat([v1, v2])})["video"]["proj"].chunk(2)
        else:  # each view through the projection head's BatchNorm on its own, as the authors
            p1, p2 = (model({"video": v})["video"]["proj"] for v in (v1, v2))
        out["infonce"] = L.info_nce_loss(p1, p2, hp["temperature"])
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


def train_step(model, optimizer, batch, method, hp, terms, queue, gen) -> dict[str, torch.Tensor]:
    """One optimiser step; returns the detached unweighted terms and ``total``."""
    device_type = next(model.parameters()).device.type
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device_type == "cuda"):
        values = compute_losses(model, batch, method, hp, terms, queue, gen)
    total = combine(values, hp["weights"], hp["combine"])
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return {**{t: v.detach() for t, v in values.items()}, "total": total.detach()}


def make_batch(feats: dict[str, torch.Tensor], views, idx, method, gen) -> dict:
    """Gather one batch from the resident features (index tensors, no per-sample Python)."""
    batch = {m: feats[m][idx].float() for m in method["modalities"] if m in feats}
    if "infonce" in method["terms"]:
        batch["views"] = sample_views(views, idx, gen)
    return batch


@torch.no_grad()
def embed(probe: ConCluGenModel, modality: str, x: torch.Tensor) -> torch.Tensor:
    """L2-normalised projections of ``x`` by ``probe``, a train-mode copy of the model, so that
    the projection head's BatchNorm normalises by the statistics of ``x`` itself, as in
    training. Its running statistics are no use here: the shared head sees each modality's
    batch in turn, so they blend all modalities, and in eval mode one modality's projections
    then collapse onto a single hub (every query retrieving the same sample)."""
    device = next(probe.parameters()).device
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return probe({modality: x.to(device).float()})[modality]["proj"].float()


def cross_modal_recall_at_1(
    model: ConCluGenModel,
    feats: FeatureSet,
    split: str | None = None,
    pairs=(("video", "text"), ("video", "audio")),
    max_samples: int = 1000,
) -> dict[str, dict]:
    """Recall@1 of cross-modal retrieval in the shared projection space: for each query
    (e.g. a video) of the samples of ``split`` that have both modalities (the first
    ``max_samples``), is its own sample's other modality (text, audio) the nearest by cosine?
    Returns ``{"video->text": {"recall_at_1", "n", "chance"}, ...}`` for the pairs the model has."""
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
        eq = embed(probe, q, feats.features[q][idx.to(feats.features[q].device)])
        ek = embed(probe, k, feats.features[k][idx.to(feats.features[k].device)])
        hits = (eq @ ek.T).argmax(1) == torch.arange(len(idx), device=eq.device)
        result[f"{q}->{k}"] = dict(
            recall_at_1=hits.float().mean().item(), n=len(idx), chance=1.0 / len(idx)
        )
    return result


def data_digest(train: FeatureSet, rows: int = 4096) -> str:
    """A digest of the training data: every sample id, and the feature bytes of up to ``rows``
    evenly spaced samples per modality (and views), so that recomputed features (other weights,
    crops, precision) are told apart from the ones a checkpoint was trained on, in milliseconds
    even for a million samples."""
    h = hashlib.blake2b(digest_size=16)
    h.update("\n".join(train.sample_id.tolist()).encode())
    pick = torch.linspace(0, max(len(train) - 1, 0), min(rows, len(train))).long()
    tensors = [train.features[m] for m in sorted(train.features)]
    tensors += [train.views] if train.views is not None else []
    for x in tensors:
        h.update(x[pick.to(x.device)].cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _fingerprint(method: dict, hp: dict, train: FeatureSet) -> str:
    """What must match for a checkpoint to be resumed: method, hyperparameters (``epochs``
    aside: a longer run continues a shorter one, whose schedule it shares) and the training
    data (:func:`data_digest`)."""
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
    ``eval_samples`` of them (at most a quarter, chosen by the seed) held out for retrieval and
    never trained on. float16 features stay float16 (half the memory; batches become float32)."""
    mods, terms = method["modalities"], method["terms"]
    feats = read_features(
        features_path, mods, split=hp["train_split"], dtype=None, views="infonce" in terms
    )
    if "infonce" in terms and (feats.views is None or feats.views.shape[1] < 2):
        raise ValueError(f"Instance-Cont needs >= 2 augmented video views in {features_path}")
    complete = torch.stack([feats.present[m] for m in mods]).all(0)
    if not complete.all():
        log.info(f"{int((~complete).sum())} samples lack one of {list(mods)} and are left out")
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
    """
    hp = resolve_hparams(hparams)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(resolve_device(device or "auto"))
    name, mods, terms = method.get("name", "pretrain"), method["modalities"], method["terms"]
    if set(terms) - set(TERMS) or set(mods) - set(MODALITIES):
        raise ValueError(f"unknown loss terms or modalities in {method}")

    train, heldout = load_training_data(features_path, method, hp)
    # Resident for the whole run; Instance-Cont trains on the views alone.
    plain = bool(set(terms) - {"infonce"})
    x = {m: t.to(device) for m, t in train.features.items()} if plain else {}
    views = train.views.to(device) if train.views is not None else None
    n = len(train)
    # BatchNorm needs >= 2 rows and k-means >= k points: a smaller last batch is dropped.
    min_batch = max(2, hp["num_clusters"]) if "clustering" in terms else 2
    if n < min_batch:
        raise ValueError(f"{n} training samples are too few (at least {min_batch} needed)")
    log.info(f"pretrain {name}: {n} samples ({len(heldout)} held out), {mods}, {terms}, {device}")

    torch.manual_seed(hp["seed"])
    dims, columns = view_inputs(train) if "infonce" in terms else (train.dims, None)
    model = build_model(method, hp, dims, columns).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=method["lr"] if hp["lr"] is None else hp["lr"],
        weight_decay=method["weight_decay"] if hp["weight_decay"] is None else hp["weight_decay"],
        fused=device.type == "cuda",
    )
    scheduler = make_scheduler(optimizer, hp)
    gen = torch.Generator().manual_seed(hp["seed"])  # all training randomness draws from it
    retrieval_init = cross_modal_recall_at_1(model, heldout)

    fingerprint = _fingerprint(method, hp, train)
    ckpt_path = out_dir / "last.ckpt"
    start, history, queue = 0, [], []
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
            log.info(f"resumed from {ckpt_path} after epoch {start}")
        else:
            log.warning(f"{ckpt_path} was written by another configuration; starting afresh")

    model.train()
    for epoch in range(start, hp["epochs"]):
        t0 = time.perf_counter()
        on = active_terms(method, hp, epoch)
        if hp["queue_reset_each_epoch"]:
            queue = []
        perm = torch.randperm(n, generator=gen).to(device)
        batches = [b for b in perm.split(hp["batch_size"]) if len(b) >= min_batch]
        sums: dict[str, torch.Tensor] = {}  # on the device: one host sync per epoch
        for idx in batches:
            batch = make_batch(x, views, idx, method, gen)
            for t, v in train_step(model, optimizer, batch, method, hp, on, queue, gen).items():
                sums[t] = sums.get(t, 0) + v
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()  # per epoch, as the authors' scheduler
        row = {"epoch": epoch, "lr": lr}
        for t in terms:
            row[t] = sums[t].item() / len(batches) if t in sums else math.nan
            row[f"{t}_weighted"] = hp["weights"][t] * row[t]
        row["total"] = sums["total"].item() / len(batches)
        row["seconds"] = time.perf_counter() - t0
        row["samples_per_s"] = sum(len(b) for b in batches) / row["seconds"]
        history.append(row)
        losses = ", ".join(f"{t} {row[t]:.4f}" for t in [*terms, "total"])
        log.info(f"{name} epoch {epoch + 1}/{hp['epochs']}: {losses} ({row['seconds']:.1f} s)")
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
            history=history,
        )
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)
        _write_history(history, out_dir)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    if not history:
        raise ValueError(f"no epochs to train (epochs={hp['epochs']})")
    _write_history(history, out_dir)  # also when a finished run is resumed (no epoch left)
    report = {}
    for pair, r in cross_modal_recall_at_1(model, heldout).items():
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
