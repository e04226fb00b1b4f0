"""Rule failures: merge every stage's and shard's ledger into results/{dataset}/failures.tsv."""

from conclugen.ledger import merge_ledgers
from conclugen.logs import logged

with logged(snakemake.log[0]) as log:
    n = merge_ledgers(snakemake.input, snakemake.output[0])
    log.info("%d ledger rows -> %s", n, snakemake.output[0])
