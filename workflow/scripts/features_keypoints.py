"""Rule features_keypoints: the keypoint feature of one shard's usable clips from its face tracks.

A clip whose landmarks cannot be read is its ledger entry; the job fails only when more than
``max_failure_fraction`` of the shard's clips did.
"""

import pandas as pd

from conclugen.data.manifest import read_manifest
from conclugen.featstore import KEYPOINTS_ROLE, write_shard
from conclugen.features import Windows, shard_clips
from conclugen.keypoints import FEATURE_DIM, POINTS, STATISTICS, keypoint_features
from conclugen.ledger import FailureLedger
from conclugen.logs import logged

with logged(snakemake.log[0]) as log:
    inputs = snakemake.input
    manifest, _ = read_manifest(inputs.manifest, shard=int(snakemake.wildcards.shard))
    faces = pd.read_parquet(inputs.faces)
    clips = shard_clips(manifest, pd.read_parquet(inputs.probe), faces)
    ledger = FailureLedger(f"features/{KEYPOINTS_ROLE}")
    windows = Windows.from_settings(snakemake.params.windows)
    shard = keypoint_features(clips, faces, ledger, windows)
    ledger.write(snakemake.output.failures)
    ledger.check(len(clips), snakemake.params.max_failure_fraction)
    statistics = [f"{s} of {x}" for x in ("positions", "velocities") for s in STATISTICS]
    attrs = {"role": KEYPOINTS_ROLE, "points": list(POINTS), "statistics": statistics,
             "window_settings": snakemake.params.windows}  # fmt: skip
    write_shard(snakemake.output.store, shard, snakemake.params.dtype, attrs)
    log.info(
        "%d clips, %d with keypoints (%d-d), %d dropped (%s); %d temporal windows",
        len(shard.sample_id), int(shard.present.sum()), FEATURE_DIM, len(ledger.dropped),
        snakemake.output.failures, windows.count,
    )  # fmt: skip
