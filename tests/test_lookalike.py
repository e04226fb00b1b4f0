"""The look-alike generator: real layouts and names, a truthful truth file, really bad bad files,
decodable good clips, and determinism from the seed."""

from __future__ import annotations

import ast
import csv
import io
import random
import re
import tarfile
import zipfile
from pathlib import Path

import av
import h5py
import numpy as np
import pandas as pd
import pytest

from conclugen import lookalike
from conclugen.lookalike import generate, plan
from conclugen.lookalike.plan import BAD_KINDS, CLASSES, FIXED_DATE, FIXED_MTIME

SEED = 3
# Tiny, yet enough clips for every bad kind in every dataset (MOSEI needs 7 videos so that the
# four whole-video kinds fit while each fold keeps a good video).
SIZES = {
    "voxceleb2": {"identities": 2, "videos_per_identity": 2, "clips_per_video": 2, "parts": 2},
    "caer": {"train": 1, "validation": 1, "test": 1},
    "meld": {"train": 1, "dev": 1, "test": 1},
    "mosei": {"videos": 7, "segments_per_video": [2, 2]},
}
KINDS = {
    "voxceleb2": set(BAD_KINDS) - {"bad_label_row"},
    "caer": set(BAD_KINDS) - {"bad_label_row"},
    "meld": set(BAD_KINDS),
    "mosei": set(BAD_KINDS),
}
TRUTH_COLUMNS = ["sample_id", "split", "expression", "sentence", "level", "bad", "fps", "width",
                 "height", "start", "end", "face_boxes"]  # fmt: skip
MELD_HEADER = ("Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,"
               "Episode,StartTime,EndTime")  # fmt: skip
MELD_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete",
                "test": "output_repeated_splits_test"}  # fmt: skip
CAER_FOLDERS = ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
YTID = r"[A-Za-z0-9_-]{10}[AEIMQUYcgkosw048]"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lookalike")
    generate(root, seed=SEED, bad_fraction=0.1, sizes=SIZES, workers=2)
    return root


@pytest.fixture(scope="module")
def raw(root, tmp_path_factory) -> Path:
    """Every archive unpacked the way a user would (parts joined, nested tars opened)."""
    raw = tmp_path_factory.mktemp("raw")
    for stem in ("vox2_dev_mp4", "vox2_dev_aac"):
        whole = _joined(root / "voxceleb2", stem)
        zipfile.ZipFile(io.BytesIO(whole)).extractall(raw / "voxceleb2")
    zipfile.ZipFile(root / "caer" / "CAER.zip").extractall(raw / "caer")
    with tarfile.open(root / "meld" / "MELD.Raw.tar.gz") as outer:
        outer.extractall(raw / "meld", filter="data")
    for inner in sorted((raw / "meld" / "MELD.Raw").glob("*.tar.gz")):
        with tarfile.open(inner) as archive:
            archive.extractall(raw / "meld", filter="data")
    zipfile.ZipFile(root / "mosei" / "CMU_MOSEI.zip").extractall(raw / "mosei")
    return raw


def _joined(folder: Path, stem: str) -> bytes:
    parts = sorted(folder.glob(f"{stem}_part*"))
    return b"".join(p.read_bytes() for p in parts)


def truth(root: Path, dataset: str) -> pd.DataFrame:
    return pd.read_parquet(root / dataset / "truth.parquet")


def media_path(raw: Path, dataset: str, sample_id: str) -> Path:
    """The video of a sample, from the id conventions of docs/lookalike-spec.md."""
    if dataset == "voxceleb2":
        ident, ytid, clip = sample_id[:7], sample_id[8:19], sample_id[20:]
        return raw / dataset / "dev" / "mp4" / ident / ytid / f"{clip}.mp4"
    if dataset == "caer":
        split, folder, number = sample_id.split("_")
        return raw / dataset / "CAER" / split / folder / f"{number}.avi"
    if dataset == "meld":
        split, name = sample_id.split("_", 1)
        return raw / dataset / MELD_FOLDERS[split] / f"{name}.mp4"
    vid = sample_id.rsplit("_", 1)[0]
    return raw / dataset / "Raw" / "Videos" / "Full" / "Combined" / f"{vid}.mp4"


def files(names: list[str]) -> list[str]:
    return [n for n in names if not n.endswith("/")]


def check_folders(names: list[str]) -> None:
    """Archives list every parent folder of their files, as the real ones do."""
    folders = {n for n in names if n.endswith("/")}
    for name in files(names):
        parts = name.split("/")[:-1]
        assert {"/".join(parts[: i + 1]) + "/" for i in range(len(parts))} <= folders


# --- layouts ------------------------------------------------------------------------------------


def test_voxceleb2_parts_hold_the_real_layout(root):
    folder = root / "voxceleb2"
    assert sorted(p.name for p in folder.iterdir()) == [
        "truth.parquet", "vox2_dev_aac_partaa", "vox2_dev_aac_partab",
        "vox2_dev_mp4_partaa", "vox2_dev_mp4_partab",
    ]  # fmt: skip
    want = truth(root, "voxceleb2")
    for stem, kind, ext in (("vox2_dev_mp4", "mp4", "mp4"), ("vox2_dev_aac", "aac", "m4a")):
        archive = zipfile.ZipFile(io.BytesIO(_joined(folder, stem)))
        names = archive.namelist()
        check_folders(names)
        assert all(i.date_time == FIXED_DATE for i in archive.infolist())
        pattern = re.compile(rf"dev/{kind}/(id\d{{5}})/({YTID})/(\d{{5}})\.{ext}")
        ids = set()
        for name in files(names):
            match = pattern.fullmatch(name)
            assert match, name
            ids.add("_".join(match.groups()))
        has_audio = want["bad"] != "no_audio"
        assert ids == set(want["sample_id"] if kind == "mp4" else want["sample_id"][has_audio])
    assert (want["split"] == "train").all() and set(want["expression"]) <= set(CLASSES)
    assert want["sample_id"].str.slice(8, 19).str.contains("_").any()  # real ytids hold '_'


def test_caer_zip_holds_the_real_layout(root):
    want = truth(root, "caer")
    archive = zipfile.ZipFile(root / "caer" / "CAER.zip")
    check_folders(archive.namelist())
    pattern = re.compile(rf"CAER/(train|validation|test)/({'|'.join(CAER_FOLDERS)})/(\d{{4}})\.avi")
    ids = set()
    for name in files(archive.namelist()):
        match = pattern.fullmatch(name)
        assert match, name
        ids.add("_".join(match.groups()))
    assert ids == set(want["sample_id"]) and len(ids) == 3 * 7
    split, folder = want["sample_id"].str.split("_").str[0], want["sample_id"].str.split("_").str[1]
    assert (
        split.map({"train": "train", "validation": "val", "test": "test"}) == want["split"]
    ).all()
    assert (folder.str.lower() == want["expression"]).all()


def test_meld_tars_hold_the_real_layout(root, raw):
    with tarfile.open(root / "meld" / "MELD.Raw.tar.gz") as outer:
        assert sorted(outer.getnames()) == [
            "MELD.Raw", "MELD.Raw/dev.tar.gz", "MELD.Raw/dev_sent_emo.csv",
            "MELD.Raw/test.tar.gz", "MELD.Raw/test_sent_emo.csv", "MELD.Raw/train.tar.gz",
        ]  # fmt: skip
        assert all(m.mtime == FIXED_MTIME for m in outer.getmembers())
    clip = re.compile(r"dia\d+_utt\d+\.mp4")
    for split, folder in MELD_FOLDERS.items():
        with tarfile.open(raw / "meld" / "MELD.Raw" / f"{split}.tar.gz") as inner:
            names = [m.name for m in inner.getmembers() if m.isfile()]
        videos = sorted(Path(n).name for n in names if n.startswith(folder + "/"))
        others = sorted(set(names) - {f"{folder}/{v}" for v in videos})
        assert others == (["train_sent_emo.csv"] if split == "train" else [])
        extras = [v for v in videos if not clip.fullmatch(v)]
        if split == "test":
            assert "._dia0_utt0.mp4" in extras and len(extras) == 3
            assert sum(v.startswith("final_videos_test") for v in extras) == 2
        else:
            assert extras == []
    want = truth(root, "meld")
    on_disk = {f"{split}_{p.stem}" for split, folder in MELD_FOLDERS.items()
               for p in (raw / "meld" / folder).glob("dia*_utt*.mp4")}  # fmt: skip
    assert on_disk == set(want["sample_id"])
    known_bad = want.set_index("sample_id").loc[["train_dia125_utt3", "dev_dia110_utt7"], "bad"]
    assert (known_bad == "truncated").all()


def test_meld_csvs(root, raw):
    want = truth(root, "meld").set_index("sample_id")
    paths = {"train": raw / "meld" / "train_sent_emo.csv",
             "dev": raw / "meld" / "MELD.Raw" / "dev_sent_emo.csv",
             "test": raw / "meld" / "MELD.Raw" / "test_sent_emo.csv"}  # fmt: skip
    emotions = {"neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"}
    rows_of = {}
    misencoded = set()
    for split, path in paths.items():
        text = path.read_text(encoding="utf-8")
        assert text.splitlines()[0] == MELD_HEADER
        for row in csv.DictReader(io.StringIO(text)):
            assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3}", row["StartTime"])
            assert row["Sentiment"] in ("positive", "negative", "neutral")
            misencoded.update(c for c in "\x92\u2019" if c in row["Utterance"])
            sample_id = f"{split}_dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}"
            if row["Dialogue_ID"].isdigit():
                assert row["Emotion"] in emotions
                rows_of[sample_id] = row
            else:
                assert row["Emotion"] not in emotions
    assert misencoded  # the real CSVs' broken apostrophes
    label_bad = want.index[want["bad"] == "bad_label_row"]
    assert set(rows_of) == set(want.index) - set(label_bad)
    for sample_id, row in rows_of.items():
        assert (
            row["Utterance"].translate({0x92: "'", 0x2019: "'"}) == want.at[sample_id, "sentence"]
        )
    assert {"train_dia125_utt3", "dev_dia110_utt7"} <= set(rows_of)


def test_mosei_zip_csd_and_folds(root, raw):
    want = truth(root, "mosei").set_index("sample_id")
    names = zipfile.ZipFile(root / "mosei" / "CMU_MOSEI.zip").namelist()
    check_folders(names)
    videos = {Path(n).stem for n in files(names) if n.startswith("Raw/Videos/Full/Combined/")}
    texts = {
        Path(n).stem for n in files(names) if n.startswith("Raw/Transcript/Segmented/Combined/")
    }
    assert len(files(names)) == 2 * len(videos) and videos == texts and len(videos) == 7
    assert all(re.fullmatch(YTID, v) or v.isdigit() for v in videos)
    assert any(v.isdigit() for v in videos) and any(not v.isdigit() for v in videos)

    folds = {}
    for node in ast.parse((root / "mosei" / "cmu_mosei_std_folds.py").read_text()).body:
        folds[node.targets[0].id] = ast.literal_eval(node.value)
    assert sorted(folds) == ["standard_test_fold", "standard_train_fold", "standard_valid_fold"]
    assert all(folds.values()) and sorted(sum(folds.values(), [])) == sorted(videos)

    fold_split = {"standard_train_fold": "train", "standard_valid_fold": "val",
                  "standard_test_fold": "test"}  # fmt: skip
    split_of = {vid: fold_split[name] for name, vids in folds.items() for vid in vids}
    seen = set()
    with h5py.File(root / "mosei" / "CMU_MOSEI_Labels.csd", "r") as csd:
        assert sorted(csd["All Labels"]) == ["data", "metadata"]
        assert "dimension names" in csd["All Labels"]["metadata"]
        for vid, group in csd["All Labels"]["data"].items():
            features, intervals = group["features"][()], group["intervals"][()]
            assert features.shape == (len(intervals), 7) and intervals.shape[1] == 2
            lines = (raw / "mosei" / "Raw" / "Transcript" / "Segmented" / "Combined" /
                     f"{vid}.txt").read_text().splitlines()  # fmt: skip
            for k, (feature, (start, end)) in enumerate(zip(features, intervals, strict=True)):
                row = want.loc[f"{vid}_{k}"]
                seen.add(f"{vid}_{k}")
                assert (row["start"], row["end"], row["split"]) == (start, end, split_of[vid])
                line_vid, line_k, line_start, line_end, text = lines[k].split("___")
                assert (line_vid, int(line_k), text) == (vid, k, row["sentence"])
                assert abs(float(line_start) - start) < 1e-6 and abs(float(line_end) - end) < 1e-6
                assert np.isnan(feature).any() == (row["bad"] == "bad_label_row")
                if row["bad"] != "bad_label_row":
                    assert -3 <= feature[0] <= 3 and ((0 <= feature[1:]) & (feature[1:] <= 3)).all()
                    column = {"happy": 1, "sad": 2, "anger": 3, "surprise": 4, "disgust": 5,
                              "fear": 6}.get(row["expression"])  # fmt: skip
                    assert (feature[1:] > 0).sum() == (column is not None)
                    assert column is None or feature[column] > 0
                    mild, strong = plan.MOSEI_SENTIMENT.get(row["expression"], (-1, -3))
                    share = (feature[0] - mild) / (strong - mild)  # the level's step of the range
                    assert row["level"] - 0.2 <= share * plan.LEVELS <= row["level"] + 1.2
    assert seen == set(want.index)


def test_mosei_sentiment_follows_the_class_and_the_intensity_level():
    """Every modality carries the sentiment: the class picks its range (mild to strong), the
    level its step within that range; values are in thirds, like averaged ratings."""
    rng = random.Random(0)
    for expression in CLASSES:
        mild, strong = plan.MOSEI_SENTIMENT.get(expression, (-1, -3))
        means = []
        for level in range(plan.LEVELS):
            values = [plan._mosei_features(rng, expression, level)[0] for _ in range(50)]
            assert all(abs(v * 3 - round(v * 3)) < 1e-9 for v in values)
            assert all(min(mild, strong) - 0.2 <= v <= max(mild, strong) + 0.2 for v in values)
            means.append(np.mean(values))
        rising = np.diff(means) * np.sign(strong - mild)  # neutral's thirds: some levels tie
        assert (rising >= 0).all() and rising.sum() > 0.5, expression


# --- truth --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", lookalike.DATASETS)
def test_truth_is_complete_and_boxes_are_inside_the_frame(root, dataset):
    want = truth(root, dataset)
    assert list(want.columns) == TRUTH_COLUMNS
    assert want["sample_id"].is_unique and set(want["split"]) <= {"train", "val", "test"}
    assert set(want["expression"]) <= set(CLASSES)
    assert set(want["bad"].dropna()) == KINDS[dataset]  # every kind, at least once
    assert (want["fps"] == 25).all()
    size = (224, 224) if dataset == "voxceleb2" else (320, 240)
    assert (want["width"] == size[0]).all() and (want["height"] == size[1]).all()
    for row in want.itertuples():
        frames = round((row.end - row.start) * 25)
        assert row.end - row.start > 2.0 - 1e-6 and len(row.sentence.split()) >= 3
        if row.bad == "no_face":
            assert len(row.face_boxes) == 0
            continue
        boxes = np.stack(row.face_boxes)
        assert boxes.shape == (frames, 4)
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= row.width).all() and (boxes[:, 3] <= row.height).all()
        widths = boxes[:, 2] - boxes[:, 0]
        low, high = (100, 140) if dataset == "voxceleb2" else (70, 140)
        assert ((low <= widths) & (widths <= high)).all()


def _tone_share(audio: np.ndarray, rate: int, tones: list[float]) -> float:
    """The share of ``audio``'s power within 2 % (at least 20 Hz) of the frequencies ``tones``."""
    power = np.abs(np.fft.rfft(audio * np.hanning(len(audio)))) ** 2
    hz = np.fft.rfftfreq(len(audio), 1 / rate)
    near = np.zeros(len(hz), dtype=bool)
    for tone in tones:
        near |= np.abs(hz - tone) <= max(0.02 * tone, 20)
    return float(power[near].sum() / power.sum())


def test_every_modality_carries_the_class_and_the_intensity_level(root, raw):
    """The sentence holds the level's adverb and the class's adjective of that rank; the audio
    before the sentence is the two chimes (class tone, level tone) alone; the face's tint is
    stronger at a higher level."""
    from conclugen.media import read_audio

    want = truth(root, "voxceleb2").set_index("sample_id")
    good = want[want["bad"].isna()]
    assert set(want["level"]) <= set(range(plan.LEVELS))
    for row in want.itertuples():
        words = f"{plan.ADVERBS[row.level]} {plan.WORDS[row.expression][row.level]}"
        assert words in row.sentence, row.sentence
    for sample_id, row in good.iterrows():
        audio = read_audio(media_path(raw, "voxceleb2", sample_id))
        tones = [plan.TONES[row.expression], plan.LEVEL_TONES[row.level]]
        others = [plan.TONES[c] for c in CLASSES if c != row.expression]
        others += [hz for level, hz in enumerate(plan.LEVEL_TONES) if level != row.level]
        lead = audio[: int(0.9 * plan.SPEECH_LEAD_S * 16000)]  # before the sentence
        assert _tone_share(lead, 16000, tones) > 0.9, sample_id
        assert _tone_share(lead, 16000, others) < 0.02, sample_id
        # The chimes pause for the voice (the level tone: the class tones share its pitch range).
        speech = audio[int(0.3 * 16000) : int(0.6 * 16000)]
        level_tone = [plan.LEVEL_TONES[row.level]]
        assert np.abs(speech).max() > 0.05 and _tone_share(speech, 16000, level_tone) < 0.05
    rng = random.Random(0)
    strengths = [plan._look(rng, "happy", level).tint_strength for level in range(6)]
    assert strengths == sorted(strengths) and strengths[-1] > 4 * strengths[0]


def test_same_seed_same_truth_other_seed_other_truth(root, tmp_path):
    # A subset of the datasets, generated again: each dataset draws from its own stream.
    generate(tmp_path / "same", ["meld", "mosei"], SEED, 0.1, SIZES, workers=2)
    for dataset in ("meld", "mosei"):
        pd.testing.assert_frame_equal(truth(root, dataset), truth(tmp_path / "same", dataset))
    generate(tmp_path / "other", ["meld"], SEED + 1, 0.1, SIZES, workers=2)
    first, other = truth(root, "meld"), truth(tmp_path / "other", "meld")
    assert list(first["sentence"]) != list(other["sentence"])
    assert list(first["expression"]) != list(other["expression"])


def test_sizes_are_checked():
    with pytest.raises(ValueError, match="unknown keys"):
        lookalike.resolve_sizes(["caer"], {"caer": {"val": 2}})
    with pytest.raises(ValueError, match="videos"):
        lookalike.resolve_sizes(["mosei"], {"mosei": {"videos": 2}})
    with pytest.raises(ValueError, match="unknown datasets"):
        lookalike.resolve_sizes(["ravdess"], None)
    assert lookalike.resolve_sizes(["caer"], {"caer": {"train": 2}})["caer"]["test"] == 3


# --- media --------------------------------------------------------------------------------------


def audio_samples(path: Path) -> np.ndarray:
    """The first audio track as mono float samples at its own rate."""
    mono = av.AudioResampler(format="flt", layout="mono")
    with av.open(str(path)) as container:
        frames = [out for f in container.decode(audio=0) for out in mono.resample(f)]
    return np.concatenate([f.to_ndarray().ravel() for f in frames])


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.parametrize("dataset", lookalike.DATASETS)
def test_bad_files_are_really_bad(root, raw, dataset):
    want = truth(root, dataset)
    for row in want.dropna(subset=["bad"]).itertuples():
        path = media_path(raw, dataset, row.sample_id)
        if row.bad == "zero_bytes":
            assert path.stat().st_size == 0
        elif row.bad == "truncated":
            if path.suffix == ".mp4":
                with pytest.raises(av.FFmpegError):
                    av.open(str(path))
            else:  # an avi keeps its header: fewer frames than promised
                with av.open(str(path)) as container:
                    promised = container.streams.video[0].frames
                assert len(frames_of(path)) < 0.6 * promised
        elif row.bad == "no_audio":
            with av.open(str(path)) as container:
                assert not container.streams.audio and container.streams.video
            if dataset == "voxceleb2":
                assert not Path(str(path).replace("/mp4/", "/aac/")).with_suffix(".m4a").exists()
        elif row.bad == "silent_audio":
            assert not audio_samples(path).any()
            if dataset == "voxceleb2":
                m4a = Path(str(path).replace("/mp4/", "/aac/")).with_suffix(".m4a")
                assert not audio_samples(m4a).any()
        elif row.bad == "no_face":  # background only, and the background stands still
            frames = frames_of(path)[round(row.start * 25) : round(row.end * 25)]
            diff = np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean()
            assert diff < 2, diff


@pytest.mark.parametrize("dataset", lookalike.DATASETS)
def test_good_clips_decode_with_picture_and_speech(root, raw, dataset):
    want = truth(root, dataset)
    row = want[want["bad"].isna()].iloc[0]
    path = media_path(raw, dataset, row.sample_id)
    frames = frames_of(path)
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert float(video.average_rate) == 25
        rate = audio.rate
    assert frames[0].shape == (row.height, row.width, 3)
    expected = round(row.end * 25)
    if dataset == "mosei":  # the full video goes on after this segment
        assert len(frames) > expected
    else:
        assert abs(len(frames) - expected) <= 1
    assert rate == (16000 if dataset == "voxceleb2" else 44100)
    speech = audio_samples(path)[int(row.start * rate) : int(row.end * rate)]
    assert np.sqrt(np.mean(np.square(speech))) > 0.01
    moved = np.abs(frames[0].astype(int) - frames[len(frames) // 2].astype(int)).mean()
    assert moved > 2  # the face moves
    if dataset == "voxceleb2":
        m4a = Path(str(path).replace("/mp4/", "/aac/")).with_suffix(".m4a")
        assert np.sqrt(np.mean(np.square(audio_samples(m4a)))) > 0.01
