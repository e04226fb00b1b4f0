"""Rule subtitles: Whisper transcripts of one shard (datasets without their own text)."""

import pandas as pd

from conclugen.data.manifest import read_manifest
from conclugen.io import write_parquet
from conclugen.ledger import FailureLedger
from conclugen.logs import logged
from conclugen.subtitles import configured_transcriber, subtitles_shard
from conclugen.torchutil import claim_gpu, resolve_device

with logged(snakemake.log[0]) as log:
    claim_gpu(snakemake.resources.gpu)  # before anything initialises CUDA
    cfg = snakemake.params.subtitles
    manifest, _ = read_manifest(snakemake.input.manifest, shard=int(snakemake.wildcards.shard))
    clips = manifest.merge(pd.read_parquet(snakemake.input.probe), on="sample_id")
    transcriber = configured_transcriber(cfg, resolve_device(cfg["device"]), snakemake.threads)
    ledger = FailureLedger("subtitles")
    table = subtitles_shard(clips, transcriber, ledger, cfg["batch_size"], cfg["vad"], cfg["pack"])
    ledger.write(snakemake.output.failures)
    ledger.check(len(clips), snakemake.params.max_failure_fraction)
    write_parquet(table, snakemake.output.subtitles)
    log.info(
        "%d clips transcribed, %d without speech, %d repetitive transcripts left out",
        len(table), int(table["no_speech"].sum()), int(table["repetitive"].sum()),
    )  # fmt: skip
