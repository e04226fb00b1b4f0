"""Rule features_merge: every backbone's shard stores of a dataset into features.zarr."""

from conclugen.featstore import ROLES, merge_shards
from conclugen.logs import logged

with logged(snakemake.log[0]) as log:
    shards = {role: list(snakemake.input[role]) for role in ROLES}
    n = merge_shards(shards, snakemake.output[0], snakemake.params.dtype)
    log.info("%d samples merged into %s", n, snakemake.output[0])
