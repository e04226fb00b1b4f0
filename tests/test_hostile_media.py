"""Hostile real-world files dropped into a CAER release, run through the real workflow (probe,
faces, subtitles, features): every job finishes, and every file is either in the features store
or in the failure ledger with a reason."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from conclugen.featstore import read_features
from conclugen.ledger import read_ledger
from tests.conftest import run_snakemake, tiny_config
from tests.hostile_media import write_hostile_caer

#: Files that hold no usable video: they must be dropped, with these reasons.
UNUSABLE = {
    "truncated": "truncated",
    "zero_bytes": "empty file",
    "text_file": "unreadable container",
    "audio_only": "no video stream",
}


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hostile")
    hostile = write_hostile_caer(workdir / "caer_release")
    config = tiny_config()
    config["max_failure_fraction"] = 0.9
    config["faces"]["no_face"] = "centre"
    config["datasets"]["caer"].update(
        shards=1,
        source={
            "archives": [{"path": str(workdir / "caer_release")}],
            "require": ["CAER/train/*/*.avi"],
        },  # fmt: skip
    )
    cfg = workdir / "hostile.yaml"
    cfg.write_text(yaml.safe_dump(config, allow_unicode=True))
    targets = ["results/caer/features.zarr", "results/caer/dataset_stats.json",
               "results/caer/faces/preview.png"]  # fmt: skip
    proc = run_snakemake(
        ["--configfile", str(cfg), "--cores", "2", *targets], workdir, timeout=1500
    )
    return workdir, hostile, proc


def test_every_hostile_file_is_processed_or_recorded(hostile_run):
    workdir, hostile, _ = hostile_run
    ledger = pd.DataFrame(read_ledger(workdir / "results/caer/failures.tsv"),
                          columns=["sample_id", "stage", "reason", "action"])  # fmt: skip
    store = read_features(workdir / "results/caer/features.zarr")
    stored = set(store.sample_id)
    dropped = ledger[ledger["action"] == "dropped"]
    for sample_id, kind in hostile.items():
        reasons = dropped.loc[dropped["sample_id"] == sample_id, "reason"]
        if kind in UNUSABLE:
            assert sample_id not in stored, kind
            assert len(reasons) == 1 and UNUSABLE[kind] in reasons.iloc[0], (kind, list(reasons))
        else:
            assert (sample_id in stored) != (len(reasons) == 1), (kind, list(reasons))
            assert all(r.strip() for r in reasons)
    assert all(not r.startswith("Traceback") for r in ledger["reason"])
    # Bytes flipped inside one frame: the decoder conceals it; the clip is kept and recorded.
    flipped = next(s for s, k in hostile.items() if k == "bit_flipped")
    kept = ledger[(ledger["sample_id"] == flipped) & (ledger["action"] == "kept")]
    assert kept["reason"].str.contains("video frames damaged").any()


def test_usable_hostile_clips_reach_the_features(hostile_run):
    workdir, hostile, _ = hostile_run
    store = read_features(workdir / "results/caer/features.zarr")
    stored = set(store.sample_id)
    for kind in ("rotated", "six_channel_48k", "one_frame", "unicode name", "video_only",
                 "ten_minute_silence"):  # fmt: skip
        sample_id = next(s for s, k in hostile.items() if k == kind)
        assert sample_id in stored, kind
    present = dict(zip(store.sample_id, store.present["audio"].tolist(), strict=True))
    assert not present[next(s for s, k in hostile.items() if k == "video_only")]
    assert present[next(s for s, k in hostile.items() if k == "six_channel_48k")]


def test_silence_gets_no_transcript(hostile_run):
    workdir, hostile, _ = hostile_run
    subtitles = pd.read_parquet(workdir / "results/caer/subtitles/0.parquet").set_index("sample_id")
    silent = next(s for s, k in hostile.items() if k == "ten_minute_silence")
    assert subtitles.loc[silent, "text"] == "" and bool(subtitles.loc[silent, "no_speech"])


def test_rotated_clip_is_probed_upright(hostile_run):
    workdir, hostile, _ = hostile_run
    probe = pd.read_parquet(workdir / "results/caer/probe/0.parquet").set_index("sample_id")
    rotated = next(s for s, k in hostile.items() if k == "rotated")
    assert (probe.loc[rotated, "width"], probe.loc[rotated, "height"]) == (240, 320)
