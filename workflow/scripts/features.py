"""Rules features and features_video: frozen features of one shard's usable clips, one store per
backbone; features_video runs both video backbones on one decode of each clip
(:func:`conclugen.features.extract_video_shards`), features one other role.

A clip that fails (undecodable, or its input makes the backbone or tokenizer raise) is its
role's ledger entry and is left out of that role's store; the job fails only when more than
``max_failure_fraction`` of the shard's clips did in a role, or on an error that is not a clip's
(out of memory, missing weights: :func:`conclugen.ledger.is_fatal`), which propagates.
"""

import pandas as pd
import torch

from conclugen import backbones
from conclugen.config import weights_key
from conclugen.data.manifest import read_manifest
from conclugen.featstore import write_shard
from conclugen.features import (
    Augment,
    LocalViews,
    ViewRecipe,
    Windows,
    extract_shard,
    extract_video_shards,
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
    output = snakemake.output
    if snakemake.rule == "features_video":
        settings = snakemake.params.features  # role -> that backbone's settings
        paths = {r: (getattr(output, r), getattr(output, f"{r}_failures")) for r in settings}
    else:
        settings = {snakemake.wildcards.role: snakemake.params.features}
        paths = {snakemake.wildcards.role: (output.store, output.failures)}
    inputs = snakemake.input
    manifest, _ = read_manifest(inputs.manifest, shard=int(snakemake.wildcards.shard))
    faces = pd.read_parquet(inputs.faces) if "faces" in inputs.keys() else None
    subtitles = pd.read_parquet(inputs.subtitles) if "subtitles" in inputs.keys() else None
    clips = shard_clips(manifest, pd.read_parquet(inputs.probe), faces, subtitles)
    boxes = face_boxes(faces)

    workers = snakemake.threads - 1
    # The models may use every core: decoding workers sleep while their queue is full.
    torch.set_num_threads(snakemake.threads)
    keywords, ledgers, attrs = {}, {}, {}
    for role, cfg in settings.items():
        spec = cfg[weights_key(role)]
        device = resolve_device(cfg["device"])
        precision = "fp32" if role == "text" else resolve_precision(cfg["precision"], device)
        model = LOADERS[role](spec)
        log.info(
            "%s: %s on %s (%s), %d-d, %d clips",
            role, spec, device, precision, model.feature_dim, len(clips),
        )  # fmt: skip
        keywords[role] = dict(
            model=model, device=device, batch_size=cfg["batch_size"], boxes=boxes,
            crop_size=cfg["crop_size"], mean=cfg.get("mean"), std=cfg.get("std"),
            views=cfg["views"], view_seed=cfg["view_seed"], precision=precision,
            recipe=ViewRecipe.from_settings(cfg["view_recipe"]),
            augment=Augment.from_settings(cfg["augment"]),
            local_views=LocalViews.from_settings(cfg["local_views"]),
            windows=Windows.from_settings(cfg.get("windows")),
        )  # fmt: skip
        ledgers[role] = FailureLedger(f"features/{role}")
        attrs[role] = {"role": role, "weights": spec, "views": 0, "crop_size": cfg["crop_size"],
                       "precision": precision, "window_settings": cfg.get("windows")}  # fmt: skip
    if snakemake.rule == "features_video":
        shards = extract_video_shards(clips, keywords, ledgers, workers=workers)
    else:
        shards = {r: extract_shard(r, clips, ledger=ledgers[r], workers=workers, **kw)
                  for r, kw in keywords.items()}  # fmt: skip
    for role, (_, failures) in paths.items():
        ledgers[role].write(failures)
    for role in paths:
        ledgers[role].check(len(clips), snakemake.params.max_failure_fraction)
    for role, (store, failures) in paths.items():
        shard = shards[role]
        views = 0 if shard.views is None else shard.views.shape[1]
        local = 0 if shard.local_views is None else shard.local_views.shape[1]
        counts = {"views": views, "local_views": local}
        write_shard(store, shard, settings[role]["dtype"], attrs[role] | counts)
        log.info(
            "%s: %d clips, %d with this modality, %d dropped (%s); %d views, %d local views, "
            "%d augmented copies, %d temporal windows",
            role, len(shard.sample_id), int(shard.present.sum()), len(ledgers[role].dropped),
            failures, views, local, settings[role]["augment"]["count"],
            0 if shard.windows is None else shard.windows.shape[1],
        )  # fmt: skip
