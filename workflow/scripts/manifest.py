"""Rule manifest: the dataset's adapter reads its real layout into manifest.parquet."""

from conclugen.data.adapters import ADAPTERS
from conclugen.data.manifest import build_manifest, write_manifest
from conclugen.ledger import FailureLedger
from conclugen.logs import logged

with logged(snakemake.log[0]) as log:
    dataset = snakemake.wildcards.dataset
    adapter = ADAPTERS[dataset]
    ledger = FailureLedger("manifest")
    frame = build_manifest(
        adapter,
        snakemake.input.raw,
        num_shards=snakemake.params.shards,
        ledger=ledger,
        exclusions=snakemake.params.exclusions,
    )
    ledger.write(snakemake.output.failures)
    ledger.check(len(frame) + len(ledger.dropped), snakemake.params.max_failure_fraction)
    write_manifest(frame, snakemake.output.manifest, adapter)
    extras = sum(row[3] == "extra" for row in ledger.rows)
    log.info(
        "%s: %d samples (%s), %d dropped, %d extras (not samples)",
        dataset,
        len(frame),
        frame["split"].value_counts().to_dict(),
        len(ledger.dropped),
        extras,
    )
