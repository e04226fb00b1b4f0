"""The adapters on the datasets' real public metadata (the MELD CSVs of the 2018 release, the
CMU-MultimodalSDK's standard folds), with placeholder media files: every real sample arrives."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter

import h5py
import numpy as np
import pytest

from conclugen.data.adapters import ADAPTERS
from conclugen.data.manifest import build_manifest, load_exclusions
from conclugen.data.meld import read_csv
from conclugen.data.mosei import read_folds
from conclugen.ledger import FailureLedger
from tests.conftest import ROOT

REAL = ROOT.parent / "shared" / "real-metadata"
MELD_CSVS = {s: REAL / "meld-2018" / f"{s}_sent_emo.csv" for s in ("train", "dev", "test")}
MOSEI_FOLDS = REAL / "mosei" / "cmu_mosei_std_folds.py"
OFFICIAL_MELD = {"train": 9989, "dev": 1109, "test": 2610}
C1_OR_NBSP = re.compile("[\u0080-\u009f\u00a0]")


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def raw_utterances(split: str) -> dict[str, str]:
    """``sample_id -> 2018 utterance`` read as plain CSV, without any cleaning."""
    with open(MELD_CSVS[split], encoding="utf-8", newline="") as f:
        return {f"{split}_dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}": r["Utterance"]
                for r in csv.DictReader(f)}  # fmt: skip


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]+", text)


@pytest.fixture(scope="module")
def meld_release(tmp_path_factory):
    """MELD.Raw as extracted, with the real 2018 CSVs and an empty video per annotated row."""
    base = tmp_path_factory.mktemp("meld") / "MELD.Raw"
    folders = {"train": "train/train_splits", "dev": "dev_splits_complete",
               "test": "output_repeated_splits_test"}  # fmt: skip
    for split, csv_path in MELD_CSVS.items():
        target = base / ("train" if split == "train" else "") / csv_path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(csv_path, target)
        for sample_id in raw_utterances(split):
            touch(base / folders[split] / (sample_id.split("_", 1)[1] + ".mp4"))
    (base / folders["dev"] / "dia110_utt7.mp4").unlink()  # absent from the real dev archive
    touch(base / folders["train"] / "dia110_utt7.mp4")  # a real video without a row
    touch(base / folders["test"] / "final_videos_testdia0_utt0.mp4")
    touch(base / folders["test"] / "._dia0_utt0.mp4")
    return base.parent


def test_meld_2018_csvs_parse_to_the_official_counts():
    for split, path in MELD_CSVS.items():
        rows = read_csv(path)
        assert len(rows) == OFFICIAL_MELD[split]
        # U+0085 is a line break to str.splitlines(): that parse loses or splits rows.
        assert len(rows) != len(list(csv.DictReader(path.read_text().splitlines())))


def test_meld_manifest_has_every_annotated_utterance(meld_release):
    ledger = FailureLedger("manifest")
    exclusions = load_exclusions(ROOT / "config/exclusions.yaml", "meld")
    frame = build_manifest(ADAPTERS["meld"], meld_release, 4, ledger, exclusions)
    counts = frame["split"].value_counts().to_dict()
    assert counts == {"train": 9989 - 1, "val": 1109 - 1, "test": 2610}
    dropped = {r[0]: r[2] for r in ledger.rows if r[3] == "dropped"}
    assert set(dropped) == {"train_dia125_utt3", "dev_dia110_utt7"}
    assert all("exclusion list" in reason for reason in dropped.values())
    assert "absent from the MELD release's dev archive" in dropped["dev_dia110_utt7"]
    extras = {r[0] for r in ledger.rows if r[3] == "extra"}
    assert extras == {
        "train_dia110_utt7",
        "test_final_videos_testdia0_utt0",
        "test_._dia0_utt0.mp4",
    }
    ledger.check(len(frame) + len(ledger.dropped), 0.0002)  # extras never count as failures


def test_meld_text_keeps_every_word_with_the_maintainers_mapping(meld_release):
    frame = build_manifest(ADAPTERS["meld"], meld_release, 1, FailureLedger("manifest"))
    text = frame.set_index("sample_id")["text"]
    assert not text.str.contains(C1_OR_NBSP).any()
    raw = {k: v for split in MELD_CSVS for k, v in raw_utterances(split).items()}
    assert sum(C1_OR_NBSP.search(raw[i]) is not None for i in text.index) > 3000
    for sample_id, cleaned in text.items():
        # A C1 character between two words separates them: mapping must never glue them.
        assert words(cleaned) == words(C1_OR_NBSP.sub(" ", raw[sample_id])), sample_id
    # Rows as the maintainers' cleaned CSVs (2020) have them.
    assert (
        text["train_dia12_utt8"]
        == "This sounds like a hernia. You have to—you-you go to the doctor!"
    )
    assert text["train_dia14_utt2"] == "But that’s not enough. So… So…here’s a key to my apartment."
    assert text["train_dia24_utt0"] == "I don’t know, you thought ‘See you Saturday’ was funny."
    assert text["train_dia260_utt7"] == "Yeah, well, don’t “Aww Pheebs, that sucks!” me yet."
    assert text["train_dia581_utt0"] == "Or we could just follow your clever jokes – any ideas?"
    assert text["train_dia761_utt2"] == "Oh!  All right.  Now, let's not do this!"


def test_mosei_standard_folds_give_the_official_video_counts():
    split_of = read_folds(MOSEI_FOLDS)
    assert Counter(split_of.values()) == {"train": 2249, "val": 300, "test": 678}


def write_csd(path, entries: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """A labels file as the SDK's writer lays it out: ``<root>/data/<vid>/{features, intervals}``
    and ``<root>/metadata/<key>`` as one-element JSON strings."""
    with h5py.File(path, "w") as handle:
        root = handle.create_group("All Labels")
        data = root.create_group("data")
        for vid, (features, intervals) in entries.items():
            group = data.create_group(vid)
            group.create_dataset("features", data=features)
            group.create_dataset("intervals", data=intervals)
        metadata = root.create_group("metadata")
        for key, value in {"root name": "All Labels", "dimension names": ["sentiment"]}.items():
            metadata.create_dataset(key, (1,), dtype=h5py.special_dtype(vlen=str))
            metadata[key][0] = json.dumps(value)


def mosei_release(raw, vids_of_split, extras=(), unlabelled=()):
    """CMU-MOSEI's layout: real fold ids, two segments per video listed out of time order (one
    starting before 0), transcripts numbering the segments as the official release does."""
    videos = raw / "Raw/Videos/Full/Combined"
    transcripts = raw / "Raw/Transcript/Segmented/Combined"
    transcripts.mkdir(parents=True)
    shutil.copyfile(MOSEI_FOLDS, raw / MOSEI_FOLDS.name)
    entries = {}
    for vid in [v for vids in vids_of_split.values() for v in vids] + list(extras):
        if vid in unlabelled:
            continue
        touch(videos / f"{vid}.mp4")
        # The official segment 0 is an unlabelled sentence; 1 and 2 are labelled.
        (transcripts / f"{vid}.txt").write_text(
            f"{vid}___0___0.0___3.1___hello there\n{vid}___1___2.9___8.0___first sentence\n"
            f"{vid}___2___8.2___12.0___second sentence\n"
        )
        features = np.array([[1.0, 2.0, 0, 0, 0, 0, 0], [-1.0, 0, 1.0, 0, 0, 0, 0]])
        entries[vid] = (features, np.array([[8.0, 12.4], [-0.48, 8.1]]))
    write_csd(raw / "CMU_MOSEI_Labels.csd", entries)


def test_mosei_segments_match_the_official_numbering_and_start_at_zero(tmp_path):
    split_of = read_folds(MOSEI_FOLDS)
    by_split = {
        s: sorted(v for v, sp in split_of.items() if sp == s)[:2] for s in ("train", "val", "test")
    }
    assert "81406" in split_of  # numeric ids are video ids too
    by_split["train"].append("81406")
    mosei_release(tmp_path, by_split)
    ledger = FailureLedger("manifest")
    frame = build_manifest(ADAPTERS["mosei"], tmp_path, 2, ledger).set_index("sample_id")
    assert (frame["start"] >= 0).all()
    row = frame.loc["81406_2"]
    assert (row["start"], row["end"], row["text"]) == (8.0, 12.4, "second sentence")
    assert list(row["labels"]) == [2.0, 0, 0, 0, 0, 0]
    row = frame.loc["81406_1"]
    assert (row["start"], row["end"], row["text"]) == (0.0, 8.1, "first sentence")
    assert list(row["labels"]) == [0, 1.0, 0, 0, 0, 0]
    assert len(frame) == 2 * 7 and {r[3] for r in ledger.rows} == {"extra"}


def test_mosei_extras_are_counted_apart_and_never_fail_the_stage(tmp_path):
    split_of = read_folds(MOSEI_FOLDS)
    by_split = {
        s: sorted(v for v, sp in split_of.items() if sp == s) for s in ("train", "val", "test")
    }
    extras = [f"extra{i:03d}xxxx" for i in range(66)]
    unlabelled = by_split["test"][:2]
    mosei_release(tmp_path, by_split, extras, unlabelled)
    ledger = FailureLedger("manifest")
    frame = build_manifest(ADAPTERS["mosei"], tmp_path, 8, ledger)
    videos = frame.groupby("split")["speaker"].nunique().to_dict()
    assert videos == {"train": 2249, "val": 300, "test": 676}
    assert len(frame) == 2 * (2249 + 300 + 676)
    actions = Counter(r[3] for r in ledger.rows)
    assert actions == {"extra": 2 * 66 + 2}
    assert {r[0] for r in ledger.rows if r[0] in unlabelled} == set(unlabelled)
    ledger.check(len(frame) + len(ledger.dropped), 0.0)


def test_mosei_folds_file_is_read_without_executing_it(tmp_path):
    path = tmp_path / "cmu_mosei_std_folds.py"
    path.write_text(MOSEI_FOLDS.read_text() + "\nraise SystemExit('executed')\n")
    assert len(read_folds(path)) == 2249 + 300 + 678
