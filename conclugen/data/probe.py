"""Probe stage: open every sample's media once per shard and sort out the unusable ones.

Per (dataset, shard) it writes ``results/{dataset}/probe/{shard}.parquet`` (the usable samples
with duration, fps, size and audio facts) and a failure ledger: files that cannot be decoded
(empty, truncated, corrupt, no video) are dropped; a missing or silent audio track, and a few
damaged video frames, are recorded but the sample is kept, because its video (and text) still
serve.
"""

from __future__ import annotations

import os

import pandas as pd

from conclugen.data.manifest import read_manifest
from conclugen.io import write_parquet
from conclugen.ledger import FailureLedger
from conclugen.media import SILENCE_PEAK, MediaError, MediaInfo, audio_peak, probe
from conclugen.progress import progress

PROBE_COLUMNS = (
    "sample_id",
    "duration",
    "fps",
    "width",
    "height",
    "frames",
    "has_audio",
    "audio_peak",
)
#: A segment may end this far past the end of its video (rounding in the label files).
END_TOLERANCE_S = 0.5


def probe_shard(
    manifest: str | os.PathLike,
    shard: int,
    out: str | os.PathLike,
    ledger_out: str | os.PathLike,
    max_failure_fraction: float,
) -> pd.DataFrame:
    """Probe one shard; write the probe table and the ledger; fail above the failure fraction."""
    frame, _ = read_manifest(manifest, shard=shard)
    ledger = FailureLedger("probe")
    infos: dict[str, MediaInfo | MediaError] = {}
    audio_infos: dict[str, MediaInfo | MediaError] = {}
    rows = []
    records = frame.to_dict("records")
    for rec in progress(records, len(records), f"probe shard {shard}"):
        sample_id, video = rec["sample_id"], rec["video"]
        info = _cached(infos, video)
        if isinstance(info, MediaError):
            ledger.drop(sample_id, str(info))
            continue
        end = rec["end"]
        if pd.notna(end) and end > info.duration + END_TOLERANCE_S:
            ledger.drop(
                sample_id, f"segment ends at {end:.2f} s, video lasts {info.duration:.2f} s"
            )
            continue
        if info.damaged:
            ledger.keep(sample_id, f"{info.damaged} of {info.frames} video frames damaged")
        has_audio, peak = info.has_audio, info.audio_peak
        if isinstance(rec.get("audio"), str):  # NaN where the video carries the audio
            audio = _cached(audio_infos, rec["audio"], audio_only=True)
            has_audio, peak = (False, 0.0) if isinstance(audio, MediaError) else audio
        if not has_audio:
            ledger.keep(sample_id, "no audio stream")
        elif peak < SILENCE_PEAK:
            ledger.keep(sample_id, f"silent audio (peak {peak:.1e})")
        rows.append(
            {
                "sample_id": sample_id,
                "duration": info.duration,
                "fps": info.fps,
                "width": info.width,
                "height": info.height,
                "frames": info.frames,
                "has_audio": has_audio,
                "audio_peak": peak,
            }
        )
    ledger.write(ledger_out)
    ledger.check(len(frame), max_failure_fraction)
    table = pd.DataFrame(rows, columns=list(PROBE_COLUMNS))
    write_parquet(table, out)
    return table


def _cached(cache: dict, path: str, audio_only: bool = False):
    """Probe each file once: CMU-MOSEI's segments share their full video."""
    if path not in cache:
        try:
            cache[path] = audio_peak(path) if audio_only else probe(path)
        except MediaError as e:
            cache[path] = e
    return cache[path]
