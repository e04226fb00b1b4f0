"""Rule regression: every protocol and seed of one (dataset, method, loss combination) on
continuous labels (conclugen.regression)."""

import torch

from conclugen.logs import logged
from conclugen.regression import evaluate_regression_method
from conclugen.torchutil import claim_gpu, resolve_device

with logged(snakemake.log[0]) as log:
    claim_gpu(snakemake.resources.gpu)  # before anything initialises CUDA
    torch.set_num_threads(snakemake.threads)
    s = snakemake.params.settings
    runs = evaluate_regression_method(
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
        loss_weights=s["loss_weights"],
        bins=s["bins"],
    )
    summary = runs.groupby("protocol")[["ccc", "mse", "acc2"]].agg(["mean", "std"])
    log.info("test metrics over %d seeds:\n%s", s["seeds"], summary.to_string())
