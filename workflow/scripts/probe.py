"""Rule probe: open every sample's media of one shard; unusable files go to the ledger."""

from conclugen.data.probe import probe_shard
from conclugen.logs import logged

with logged(snakemake.log[0]) as log:
    table = probe_shard(
        snakemake.input.manifest,
        int(snakemake.wildcards.shard),
        snakemake.output.table,
        snakemake.output.failures,
        snakemake.params.max_failure_fraction,
    )
    log.info("shard %s: %d usable samples", snakemake.wildcards.shard, len(table))
