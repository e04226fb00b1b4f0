"""Rule features_merge: every role's shard stores of a dataset into features.zarr."""

from conclugen.featstore import merge_shards
from conclugen.logs import logged

with logged(snakemake.log[0]) as log:
    shards = {role: list(paths) for role, paths in snakemake.input.items()}
    n = merge_shards(shards, snakemake.output[0], snakemake.params.dtype)
    log.info("%d samples merged into %s (roles %s)", n, snakemake.output[0], sorted(shards))
