"""Rule dataset_stats: the one-page summary of a dataset (conclugen.stats)."""

from conclugen.data.manifest import read_manifest
from conclugen.logs import logged
from conclugen.stats import dataset_stats, read_ledger_frame, write_stats

with logged(snakemake.log[0]) as log:
    manifest, meta = read_manifest(snakemake.input.manifest)
    ledger = read_ledger_frame(snakemake.input.failures)
    stats = dataset_stats(meta["dataset"], manifest, meta["classes"], ledger)
    write_stats(stats, snakemake.output.json, snakemake.output.html)
    log.info("%s: samples %s, usable %s, ledger %s", stats["dataset"], stats["samples"],
             stats["usable"], stats["totals"])  # fmt: skip
