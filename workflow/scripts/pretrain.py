"""Rule pretrain: one self-supervised method on the pretraining dataset's features.

The log gets every epoch's losses and the held-out cross-modal recall@1 at initialisation and
after pretraining (also in retrieval.json)."""

from pathlib import Path

import torch

from conclugen.logs import logged
from conclugen.pretrain import method_config, pretrain
from conclugen.torchutil import claim_gpu, resolve_device

with logged(snakemake.log[0]):
    claim_gpu(snakemake.resources.gpu)  # before anything initialises CUDA
    torch.set_num_threads(snakemake.threads)
    pretrain(
        snakemake.input.features,
        Path(snakemake.output.model).parent,
        method_config(snakemake.wildcards.method),
        snakemake.params.hparams,
        resolve_device(snakemake.params.device),
    )
