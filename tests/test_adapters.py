"""Adapters on hand-made layouts: the edge cases of the real releases, without any media."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from conclugen.data.adapters import ADAPTERS
from conclugen.data.manifest import build_manifest, load_exclusions
from conclugen.ledger import FailureLedger
from tests.conftest import ROOT

MELD_HEADER = (
    "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,"
    "StartTime,EndTime\n"
)


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def meld_tree(raw):
    base = raw / "MELD.Raw"
    rows = {
        "train": [
            '1,"It\x92s fine",Joey,joy,positive,0,0,1,1,"00:00:01,000","00:00:02,000"',
            "2,You\u2019re late,Ross,JOY,positive,0,1,1,1,0,0",
            "3,broken,Ross,???,neutral,n/a,x,1,1,0,0",
            "4,Hi,Monica,anger,negative,125,3,1,1,0,0",
            "5,no video,Monica,fear,negative,7,7,1,1,0,0",
        ],
        "dev": [
            "1,Okay,Rachel,neutral,neutral,110,7,1,1,0,0",
            "2,Sure,Rachel,sadness,negative,1,0,1,1,0,0",
        ],
        "test": ["1,Wow,Chandler,surprise,positive,3,2,1,1,0,0"],
    }  # fmt: skip
    folders = {"train": "train/train_splits", "dev": "dev_splits_complete",
               "test": "output_repeated_splits_test"}  # fmt: skip
    for split, lines in rows.items():
        csv_dir = base / "train" if split == "train" else base
        csv_dir.mkdir(parents=True, exist_ok=True)
        (csv_dir / f"{split}_sent_emo.csv").write_text(MELD_HEADER + "\n".join(lines) + "\n")
    for name in ("dia0_utt0", "dia0_utt1", "dia125_utt3"):
        touch(base / folders["train"] / f"{name}.mp4")
    for name in ("dia110_utt7", "dia1_utt0"):
        touch(base / folders["dev"] / f"{name}.mp4")
    for name in ("dia3_utt2", "final_videos_testdia99_utt0", "._dia3_utt2"):
        touch(base / folders["test"] / f"{name}.mp4")


def test_meld_rows_exclusions_and_text(tmp_path):
    meld_tree(tmp_path)
    ledger = FailureLedger("manifest")
    frame = build_manifest(
        ADAPTERS["meld"],
        tmp_path,
        4,
        ledger,
        load_exclusions(ROOT / "config/exclusions.yaml", "meld"),
    )
    assert list(frame["sample_id"]) == [
        "dev_dia1_utt0",
        "test_dia3_utt2",
        "train_dia0_utt0",
        "train_dia0_utt1",
    ]
    assert list(frame["split"]) == ["val", "test", "train", "train"]
    assert frame.set_index("sample_id").loc["train_dia0_utt0", "text"] == "It\u2019s fine"
    assert frame.set_index("sample_id").loc["train_dia0_utt1", "text"] == "You\u2019re late"
    assert frame.set_index("sample_id").loc["train_dia0_utt1", "labels"][3] == 1.0  # joy
    reasons = {r[0]: r[2] for r in ledger.rows}
    assert "unreadable label row" in reasons["train_row3"]
    assert "exclusion list" in reasons["train_dia125_utt3"]
    assert "exclusion list" in reasons["dev_dia110_utt7"]
    assert "video file missing" in reasons["train_dia7_utt7"]
    extras = {r[0]: r[2] for r in ledger.rows if r[3] == "extra"}
    assert set(extras) == {"test_final_videos_testdia99_utt0", "test_._dia3_utt2.mp4"}


def test_a_duplicate_id_keeps_one_row_and_a_bad_row_removes_no_valid_one(tmp_path):
    meld_tree(tmp_path)
    csv_path = tmp_path / "MELD.Raw" / "dev_sent_emo.csv"
    csv_path.write_text(
        MELD_HEADER + "1,First,Rachel,sadness,negative,1,0,1,1,0,0\n"
        "2,Second,Ross,joy,positive,1,0,1,1,0,0\n"
        "3,Third,Ross,no-such-emotion,positive,1,0,1,1,0,0\n"
    )
    ledger = FailureLedger("manifest")
    frame = build_manifest(ADAPTERS["meld"], tmp_path, 2, ledger).set_index("sample_id")
    assert frame.loc["dev_dia1_utt0", "text"] == "First"
    assert frame.index.is_unique and len(frame[frame["split"] == "val"]) == 1
    reasons = [(r[2], r[3]) for r in ledger.rows if r[0] == "dev_dia1_utt0"]
    assert ("duplicate sample id: 1 later row(s) ignored, the first kept", "kept") in reasons
    assert any("unknown emotion" in reason for reason, _ in reasons)


def test_caer_folders_are_labels(tmp_path):
    for split in ("train", "validation", "test"):
        touch(tmp_path / "CAER" / split / "Happy" / "0001.avi")
    touch(tmp_path / "CAER" / "train" / "Angry" / "0002.avi")
    touch(tmp_path / "CAER" / "train" / "Happy" / "._0001.avi")
    ledger = FailureLedger("manifest")
    frame = build_manifest(ADAPTERS["caer"], tmp_path, 2, ledger)
    assert list(frame["sample_id"]) == [
        "test_Happy_0001",
        "train_Happy_0001",
        "validation_Happy_0001",
    ]
    assert sorted(frame["split"]) == ["test", "train", "val"]
    assert frame["labels"].map(lambda v: list(v).index(1.0)).tolist() == [3, 3, 3]
    assert frame["sentiment"].isna().all()  # only CMU-MOSEI has a continuous sentiment
    assert ledger.rows[0][0] == "train_Angry_0002" and "unknown class" in ledger.rows[0][2]
    assert ledger.rows[1][0] == "train_Happy_._0001" and ledger.rows[1][3] == "extra"


def test_voxceleb2_pairs_audio(tmp_path):
    touch(tmp_path / "dev/mp4/id00012/21Uxsk56VDQ/00001.mp4")
    touch(tmp_path / "dev/mp4/id00012/21Uxsk56VDQ/00002.mp4")
    touch(tmp_path / "dev/aac/id00012/21Uxsk56VDQ/00001.m4a")
    touch(tmp_path / "dev/aac/id00012/21Uxsk56VDQ/00003.m4a")
    touch(tmp_path / "dev/mp4/id00012/21Uxsk56VDQ/._00001.mp4")
    ledger = FailureLedger("manifest")
    frame = build_manifest(ADAPTERS["voxceleb2"], tmp_path, 2, ledger)
    assert list(frame["sample_id"]) == ["id00012_21Uxsk56VDQ_00001", "id00012_21Uxsk56VDQ_00002"]
    assert frame["audio"].isna().tolist() == [False, True]
    assert (frame["speaker"] == "id00012").all() and (frame["split"] == "train").all()
    recorded = {(r[0], r[3]) for r in ledger.rows}
    assert recorded == {
        ("id00012_21Uxsk56VDQ_00002", "kept"),  # no .m4a: the mp4's own track
        ("id00012_21Uxsk56VDQ_00003", "extra"),  # an .m4a without its mp4
        ("id00012_21Uxsk56VDQ_._00001.mp4", "extra"),
    }


def test_mosei_segments_folds_and_transcripts(tmp_path):
    videos = tmp_path / "Raw/Videos/Full/Combined"
    transcripts = tmp_path / "Raw/Transcript/Segmented/Combined"
    for vid in ("abcdefghijk", "81406", "zzzzzzzzzzz"):
        touch(videos / f"{vid}.mp4")
    transcripts.mkdir(parents=True)
    (transcripts / "abcdefghijk.txt").write_text(
        "abcdefghijk___0___0.5___2.0___I am so glad\nabcdefghijk___1___3.0___4.5___that is awful\n"
    )
    with h5py.File(tmp_path / "CMU_MOSEI_Labels.csd", "w") as f:
        data = f.create_group("All Labels").create_group("data")
        feats = np.array([[1.0, 2.0, 0, 0, 0, 0, 0], [-1.0, 0, 1.5, 0, 0, 0.5, 0]])
        g = data.create_group("abcdefghijk")
        g["features"], g["intervals"] = feats, np.array([[0.5, 2.0], [3.0, 4.5]])
        g = data.create_group("81406")
        g["features"] = np.array([[0, np.nan, 0, 0, 0, 0, 0]])
        g["intervals"] = np.array([[0.0, 1.0]])
        g = data.create_group("notinfolds1")
        g["features"], g["intervals"] = feats[:1], np.array([[0.0, 1.0]])
    (tmp_path / "cmu_mosei_std_folds.py").write_text(
        "standard_train_fold=['abcdefghijk', '81406']\nstandard_valid_fold=['x']\n"
        "standard_test_fold=['zzzzzzzzzzz']\n"
    )
    ledger = FailureLedger("manifest")
    frame = build_manifest(ADAPTERS["mosei"], tmp_path, 2, ledger)
    assert list(frame["sample_id"]) == ["abcdefghijk_0", "abcdefghijk_1"]
    assert frame["text"].tolist() == ["I am so glad", "that is awful"]
    assert frame["start"].tolist() == [0.5, 3.0] and frame["end"].tolist() == [2.0, 4.5]
    assert [list(v) for v in frame["labels"]] == [[2, 0, 0, 0, 0, 0], [0, 1.5, 0, 0, 0.5, 0]]
    assert frame["sentiment"].tolist() == [1.0, -1.0]  # the first label column, kept apart
    reasons = {r[0]: r[2] for r in ledger.rows}
    assert "unreadable label row" in reasons["81406_0"]
    assert "no standard fold" in reasons["notinfolds1_0"]
    assert "without labels" in reasons["zzzzzzzzzzz"]  # a test-fold video absent from the labels
    assert {r[0] for r in ledger.rows if r[3] == "extra"} == {"notinfolds1_0", "x", "zzzzzzzzzzz"}


def test_missing_layout_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="CAER"):
        build_manifest(ADAPTERS["caer"], tmp_path, 1, FailureLedger("manifest"))
