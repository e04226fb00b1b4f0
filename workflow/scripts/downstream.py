"""Rules downstream and label_efficiency: every protocol and seed of one (dataset, method)
cell; label_efficiency's on its share of the train labels (hparam ``train_fraction``)."""

import torch

from conclugen.downstream import evaluate_method
from conclugen.logs import logged
from conclugen.torchutil import claim_gpu, resolve_device

with logged(snakemake.log[0]) as log:
    claim_gpu(snakemake.resources.gpu)  # before anything initialises CUDA
    torch.set_num_threads(snakemake.threads)
    s = snakemake.params.settings
    runs = evaluate_method(
        snakemake.input.features,
        snakemake.input.manifest,
        snakemake.wildcards.dataset,
        snakemake.wildcards.method,
        s["protocols"],
        s["seeds"],
        snakemake.output[0],
        pretrained=snakemake.input.get("model"),
        hparams=s["hparams"],
        device=resolve_device(s["device"]),
    )
    summary = runs.groupby("protocol")[["accuracy", "f1"]].agg(["mean", "std"])
    log.info("test metrics over %d seeds:\n%s", s["seeds"], summary.to_string())
