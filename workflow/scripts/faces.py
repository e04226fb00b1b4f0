"""Rule faces: MTCNN face tracks of one shard's usable clips."""

import pandas as pd

from conclugen.data.manifest import read_manifest
from conclugen.faces import faces_shard
from conclugen.ledger import FailureLedger
from conclugen.logs import logged
from conclugen.torchutil import claim_gpu, resolve_device

with logged(snakemake.log[0]) as log:
    claim_gpu(snakemake.resources.gpu)  # before anything initialises CUDA
    cfg = snakemake.params.faces
    manifest, _ = read_manifest(snakemake.input.manifest, shard=int(snakemake.wildcards.shard))
    probe = pd.read_parquet(snakemake.input.probe)
    ledger = FailureLedger("faces")
    table = faces_shard(
        manifest,
        probe,
        snakemake.output.faces,
        ledger,
        device=resolve_device(cfg["device"]),
        min_face_size=cfg["min_face_size"],
        detect_every=cfg["detect_every"],
        batch_frames=cfg["batch_frames"],
        workers=snakemake.threads - 1,
        smooth=cfg["smooth"],
        no_face=cfg["no_face"],
    )
    ledger.write(snakemake.output.failures)
    ledger.check(len(probe), snakemake.params.max_failure_fraction)
    log.info(
        "%d clips, %d frames: a face on %d of the %d frames MTCNN examined",
        table["sample_id"].nunique(),
        len(table),
        table["detected"].sum(),
        table["examined"].sum(),
    )
