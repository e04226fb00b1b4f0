"""Rule download: fetch or take the user's archives, verify them, extract atomically."""

from conclugen.download import prepare_source
from conclugen.logs import logged

with logged(snakemake.log[0]):
    prepare_source(snakemake.params.source, snakemake.output[0], snakemake.params.work_dir)
