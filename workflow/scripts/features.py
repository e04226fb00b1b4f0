"""Rule features: one backbone's frozen features of one shard's usable clips.

A clip that fails (undecodable, or its input makes the backbone or tokenizer raise) is its
ledger entry and is left out of this role's store; the job fails only when more than
``max_failure_fraction`` of the shard's clips did, or on an error that is not a clip's (out of
memory, missing weights: :func:`conclugen.ledger.is_fatal`), which propagates.
"""

import pandas as pd
import torch

from conclugen import backbones
from conclugen.config import weights_key
from conclugen.data.manifest import read_manifest
from conclugen.featstore import write_shard
from conclugen.features import (
    Augment,
    ViewRecipe,
    extract_shard,
    face_boxes,
    shard_clips,
)
from conclugen.ledger import FailureLedger
from conclugen.logs import logged
from conclugen.torchutil import claim_gpu, resolve_device, resolve_precision

LOADERS = {
    "video2d": backbones.load_resnet2d,
    "video3d": backbones.load_resnet3d,
    "audio": backbones.load_davenet,
    "text": backbones.load_text_encoder,
}

with logged(snakemake.log[0]) as log:
    claim_gpu(snakemake.resources.gpu)  # before anything initialises CUDA
    cfg = snakemake.params.features
    role = snakemake.wildcards.role
    spec = cfg[weights_key(role)]
    inputs = snakemake.input
    manifest, _ = read_manifest(inputs.manifest, shard=int(snakemake.wildcards.shard))
    faces = pd.read_parquet(inputs.faces) if "faces" in inputs.keys() else None
    subtitles = pd.read_parquet(inputs.subtitles) if "subtitles" in inputs.keys() else None
    clips = shard_clips(manifest, pd.read_parquet(inputs.probe), faces, subtitles)

    workers = snakemake.threads - 1
    # The model may use every core: decoding workers sleep while their queue is full.
    torch.set_num_threads(snakemake.threads)
    device = resolve_device(cfg["device"])
    precision = "fp32" if role == "text" else resolve_precision(cfg["precision"], device)
    model = LOADERS[role](spec)
    log.info(
        "%s: %s on %s (%s), %d-d, %d clips",
        role, spec, device, precision, model.feature_dim, len(clips),
    )  # fmt: skip
    ledger = FailureLedger(f"features/{role}")
    shard = extract_shard(
        role,
        clips,
        model,
        ledger,
        device=device,
        batch_size=cfg["batch_size"],
        workers=workers,
        boxes=face_boxes(faces),
        crop_size=cfg["crop_size"],
        mean=cfg.get("mean"),
        std=cfg.get("std"),
        views=cfg["views"],
        view_seed=cfg["view_seed"],
        precision=precision,
        recipe=ViewRecipe.from_settings(cfg["view_recipe"]),
        augment=Augment.from_settings(cfg["augment"]),
    )
    ledger.write(snakemake.output.failures)
    ledger.check(len(clips), snakemake.params.max_failure_fraction)
    views = 0 if shard.views is None else shard.views.shape[1]
    attrs = {"role": role, "weights": spec, "views": views, "crop_size": cfg["crop_size"],
             "precision": precision}  # fmt: skip
    write_shard(snakemake.output.store, shard, cfg["dtype"], attrs)
    log.info(
        "%d clips, %d with this modality, %d dropped (%s); %d views, %d augmented copies",
        len(shard.sample_id), int(shard.present.sum()), len(ledger.dropped),
        snakemake.output.failures, views, cfg["augment"]["count"],
    )  # fmt: skip
