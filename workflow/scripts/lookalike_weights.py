"""Rule lookalike_weights (demo only): random backbones in their real checkpoint formats."""

import os

from conclugen.logs import logged
from conclugen.lookalike.weights import write_demo_weights

with logged(snakemake.log[0]) as log:
    for role, path in write_demo_weights(os.path.dirname(snakemake.output[0])).items():
        log.info("%s: %s", role, path)
