"""Rules downstream, label_efficiency and regression: every protocol and seed of one
(dataset, method) cell; label_efficiency's on its share of the train labels (hparam
``train_fraction``), regression's on the continuous labels with one loss combination
(conclugen.regression)."""

import torch

from conclugen.downstream import evaluate_method
from conclugen.logs import logged
from conclugen.regression import evaluate_regression_method
from conclugen.torchutil import claim_gpu, resolve_device

with logged(snakemake.log[0]) as log:
    claim_gpu(snakemake.resources.gpu)  # before anything initialises CUDA
    torch.set_num_threads(snakemake.threads)
    s = snakemake.params.settings
    if snakemake.rule == "regression":
        evaluate_cell = evaluate_regression_method
        task_args = dict(loss_weights=s["loss_weights"], bins=s["bins"])
        shown = ["ccc", "mse", "acc2"]
    else:
        evaluate_cell, task_args, shown = evaluate_method, {}, ["accuracy", "f1"]
    runs = evaluate_cell(
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
        **task_args,
    )
    summary = runs.groupby("protocol")[shown].agg(["mean", "std"])
    log.info("test metrics over %d seeds:\n%s", s["seeds"], summary.to_string())
