"""The one-page dataset summary: counts from the manifest, ledger rows grouped by reason."""

from __future__ import annotations

import json

from conclugen.data.adapters import ADAPTERS
from conclugen.data.manifest import build_manifest, load_exclusions
from conclugen.ledger import FailureLedger, merge_ledgers
from conclugen.stats import dataset_stats, read_ledger_frame, reason_kind, write_stats
from tests.conftest import ROOT
from tests.test_adapters import meld_tree


def test_reason_kinds_group_the_details_away():
    assert reason_kind("video file missing: dia7_utt7.mp4") == "video file missing"
    assert reason_kind("segment ends at 12.50 s, video lasts 10.00 s") == (
        "segment ends at N s, video lasts N s"
    )
    assert reason_kind("silent audio (peak 3.1e-05)") == "silent audio (peak N)"
    assert reason_kind("frames 1280x16 too small for face detection: shorter side") == (
        "frames NxN too small for face detection"
    )
    assert reason_kind("no .m4a in the audio release: the mp4's own track") == (
        "no .m4a in the audio release"
    )


def test_dataset_stats_counts_samples_usable_and_ledger(tmp_path):
    meld_tree(tmp_path)
    manifest_ledger = FailureLedger("manifest")
    exclusions = load_exclusions(ROOT / "config/exclusions.yaml", "meld")
    frame = build_manifest(ADAPTERS["meld"], tmp_path, 2, manifest_ledger, exclusions)
    probe = FailureLedger("probe")
    probe.drop("train_dia0_utt1", "empty file (0 bytes)")
    probe.keep("test_dia3_utt2", "silent audio (peak 0.0e+00)")
    ledger_path = tmp_path / "failures.tsv"
    manifest_ledger.write(tmp_path / "m.tsv")
    probe.write(tmp_path / "p.tsv")
    merge_ledgers([tmp_path / "m.tsv", tmp_path / "p.tsv"], ledger_path)
    stats = dataset_stats(
        "meld", frame, list(ADAPTERS["meld"].classes), read_ledger_frame(ledger_path)
    )
    assert stats["samples"] == {"train": 2, "val": 1, "test": 1}
    assert stats["usable"] == {"train": 1, "val": 1, "test": 1}
    assert stats["classes"]["train"]["joy"] == 2 and stats["classes"]["val"]["sadness"] == 1
    assert stats["totals"] == {"dropped": 5, "kept": 1, "extra": 2}
    rows = {(r["stage"], r["action"], r["reason"]): r["count"] for r in stats["ledger"]}
    assert rows[("manifest", "dropped", "excluded by the exclusion list")] == 2
    assert rows[("manifest", "extra", "macOS AppleDouble metadata file, not a video")] == 1
    assert rows[("probe", "dropped", "empty file (N bytes)")] == 1
    write_stats(stats, tmp_path / "s.json", tmp_path / "s.html")
    assert json.loads((tmp_path / "s.json").read_text()) == stats
    page = (tmp_path / "s.html").read_text()
    assert "usable (reach the features)" in page and "excluded by the exclusion list" in page
