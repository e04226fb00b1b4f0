"""The real workflow on tiny look-alikes: the whole demo (rule ``all``), every stage from the
look-alike archives and weights to the tables and figures.

One Snakemake run (module fixture) feeds every assertion; the ground truth written by the
generator says which clips are bad and how, so the ledger can be checked sample by sample.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
import zarr

from conclugen.data.manifest import read_manifest
from conclugen.featstore import read_features
from conclugen.io import read_parquet_metadata
from conclugen.ledger import read_ledger
from tests.conftest import ROOT, SNAKEMAKE, run_snakemake, tiny_config

DATASETS = ("voxceleb2", "caer", "meld", "mosei")
EXPRESSION_OF = {  # dataset class name -> the generator's shared expression
    "caer": {"Anger": "anger", "Disgust": "disgust", "Fear": "fear", "Happy": "happy",
             "Neutral": "neutral", "Sad": "sad", "Surprise": "surprise"},
    "meld": {"anger": "anger", "disgust": "disgust", "fear": "fear", "joy": "happy",
             "neutral": "neutral", "sadness": "sad", "surprise": "surprise"},
}  # fmt: skip


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    cfg = workdir / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    proc = run_snakemake(["--configfile", str(cfg), "--cores", "2", "all"], workdir)
    return workdir, cfg, proc


def truth(workdir, dataset) -> pd.DataFrame:
    return pd.read_parquet(workdir / "results" / "lookalike" / dataset / "truth.parquet")


def ledger(workdir, dataset) -> pd.DataFrame:
    rows = read_ledger(workdir / "results" / dataset / "failures.tsv")
    return pd.DataFrame(rows, columns=["sample_id", "stage", "reason", "action"])


@pytest.mark.parametrize("dataset", DATASETS)
def test_manifest_matches_the_ground_truth(demo_run, dataset):
    workdir, _, _ = demo_run
    frame, meta = read_manifest(workdir / "results" / dataset / "manifest.parquet")
    want = truth(workdir, dataset)
    label_bad = set(want.loc[want["bad"] == "bad_label_row", "sample_id"])
    excluded = {"train_dia125_utt3", "dev_dia110_utt7"} if dataset == "meld" else set()
    assert set(frame["sample_id"]) == set(want["sample_id"]) - label_bad - excluded
    merged = frame.merge(want, on="sample_id", suffixes=("", "_truth"))
    assert (merged["split"] == merged["split_truth"]).all()
    assert frame["shard"].between(0, 1).all()
    if meta["task"] == "single_label":
        classes = meta["classes"]
        predicted = [EXPRESSION_OF[dataset][classes[max(range(7), key=lab.__getitem__)]]
                     for lab in merged["labels"]]  # fmt: skip
        assert predicted == list(merged["expression"])
    if dataset == "mosei":
        assert meta["task"] == "multi_label" and len(meta["classes"]) == 6
        assert (merged["start"] - merged["start_truth"]).abs().max() < 1e-6
        assert (merged["end"] - merged["end_truth"]).abs().max() < 1e-6
        assert (merged["text"] == merged["sentence"]).all()
    if dataset == "meld":
        assert not frame["sample_id"].str.contains("final_videos").any()
        assert not frame["text"].str.contains("[\x80-\x9f]").any()  # C1 characters mapped
    if dataset == "voxceleb2":
        assert meta["task"] == "unlabeled" and frame["labels"].isna().all()
        assert frame["audio"].dropna().str.endswith(".m4a").all() and frame["audio"].notna().any()


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_bad_file_lands_in_the_ledger(demo_run, dataset):
    workdir, _, _ = demo_run
    want = truth(workdir, dataset)
    got = ledger(workdir, dataset)
    expected = {  # bad kind -> (stage, action, reason fragment)
        "zero_bytes": ("probe", "dropped", "empty file"),
        "truncated": ("probe", "dropped", ""),
        "no_audio": ("probe", "kept", "no audio stream"),
        "silent_audio": ("probe", "kept", "silent audio"),
        "bad_label_row": ("manifest", "dropped", "unreadable label row"),
    }
    if dataset != "voxceleb2":  # VoxCeleb2 is face-centred: not cropped, so no face check
        expected["no_face"] = ("faces", "dropped", "no face")
    checked = 0
    for row in want.dropna(subset=["bad"]).itertuples():
        if row.bad not in expected:
            continue
        stage, action, fragment = expected[row.bad]
        if dataset == "meld" and row.sample_id in ("train_dia125_utt3", "dev_dia110_utt7"):
            stage, action, fragment = "manifest", "dropped", "exclusion list"
        hits = got[(got["sample_id"] == row.sample_id) & (got["stage"] == stage)]
        if row.bad == "bad_label_row" and dataset == "meld":
            hits = got[(got["stage"] == "manifest") & got["reason"].str.contains(fragment)]
        assert len(hits) >= 1, f"{row.sample_id} ({row.bad}) missing from the ledger"
        assert (hits["action"] == action).all() and hits["reason"].str.contains(fragment).all()
        checked += 1
    assert checked >= 3


def test_probe_keeps_only_usable_samples(demo_run):
    workdir, _, _ = demo_run
    for dataset in DATASETS:
        frame, _ = read_manifest(workdir / "results" / dataset / "manifest.parquet")
        probed = pd.concat(
            pd.read_parquet(workdir / "results" / dataset / "probe" / f"{s}.parquet")
            for s in (0, 1)
        )
        dropped = set(ledger(workdir, dataset).query("stage == 'probe' and action == 'dropped'")
                      ["sample_id"])  # fmt: skip
        assert set(probed["sample_id"]) == set(frame["sample_id"]) - dropped
        assert (probed["fps"].round() == 25).all() and (probed["duration"] > 1).all()


@pytest.mark.parametrize("dataset", DATASETS)
def test_dataset_stats_page_matches_manifest_and_ledger(demo_run, dataset):
    workdir, _, _ = demo_run
    stats = json.loads((workdir / "results" / dataset / "dataset_stats.json").read_text())
    frame, _ = read_manifest(workdir / "results" / dataset / "manifest.parquet")
    assert stats["samples"] == frame["split"].value_counts().to_dict()
    got = ledger(workdir, dataset)
    assert stats["totals"] == {
        a: int((got["action"] == a).sum()) for a in ("dropped", "kept", "extra")
    }
    assert sum(r["count"] for r in stats["ledger"]) == len(got)
    later = set(got.query("stage != 'manifest' and action == 'dropped'")["sample_id"])
    assert sum(stats["usable"].values()) == len(set(frame["sample_id"]) - later)
    page = (workdir / "results" / dataset / "dataset_stats.html").read_text()
    assert f"<h1>{dataset}</h1>" in page


def test_every_rule_log_is_written(demo_run):
    workdir, _, _ = demo_run
    logs = sorted((workdir / "results" / "logs").rglob("*.log"))
    assert {p.parent.name for p in logs} >= {"lookalike", "download", "manifest", "failures"}
    assert all(p.stat().st_size > 0 for p in logs), [p for p in logs if p.stat().st_size == 0]


def test_rerun_does_nothing(demo_run):
    workdir, cfg, _ = demo_run
    proc = run_snakemake(["--configfile", str(cfg), "--cores", "2", "all", "-n"], workdir)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_a_moved_checkout_reruns_nothing_after_the_demo(demo_run, tmp_path):
    from tests.test_relocate import copy_checkout

    workdir, cfg, _ = demo_run
    moved = tmp_path / "moved"
    copy_checkout(moved)
    cmd = [*SNAKEMAKE, "-s", str(moved / "Snakefile"), "-d", str(workdir), "-n", "all",
           "--cores", "2", "--configfile", str(cfg)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


def planned_jobs(demo_run, tmp_path, change) -> tuple[dict[str, int], str]:
    """Job counts per rule of a dry run of ``all`` on the demo's results with the config
    changed by ``change(config)``, and the dry run's log."""
    workdir, cfg, _ = demo_run
    config = yaml.safe_load(cfg.read_text())
    change(config)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    proc = run_snakemake(["--configfile", str(changed), "--cores", "2", "all", "-n"], workdir)
    planned = proc.stdout + proc.stderr
    jobs = {}
    for line in planned.splitlines():
        parts = line.split()
        if (
            len(parts) == 2
            and parts[0].isidentifier()
            and parts[1].isdigit()
            and parts[0] != "total"
        ):
            jobs[parts[0]] = int(parts[1])
    return jobs, planned


# Before the kill-and-rerun tests below, which leave later stages out of date.
def test_changing_one_learning_rate_reruns_only_its_dataset(demo_run, tmp_path):
    def change(config):
        config["downstream"]["tasks"] = {"caer": {"lr": 0.003}}

    jobs, planned = planned_jobs(demo_run, tmp_path, change)
    assert jobs == {"downstream": 3, "export": 1, "label_efficiency": 2,
                    "label_efficiency_summary": 1, "tables": 1, "confusion_figure": 1,
                    "front_page": 1, "all": 1}, planned  # fmt: skip
    assert "output: results/downstream/mosei" not in planned


def test_adding_a_label_fraction_runs_only_its_jobs(demo_run, tmp_path):
    def change(config):
        config["downstream"]["label_efficiency"]["fractions"] = [0.05, 0.1, 1.0]

    jobs, planned = planned_jobs(demo_run, tmp_path, change)
    assert jobs == {"label_efficiency": 2, "label_efficiency_summary": 1, "all": 1}, planned
    assert "output: results/label_efficiency/caer/supervised/0.05" in planned


def test_adding_mpuc_plans_its_jobs_on_cmu_mosei_and_its_read_out(demo_run, tmp_path):
    """The tiny demo leaves MPUC out (CI time; tests/test_pretrain.py trains it): adding it
    plans its own jobs only, pretraining on CMU-MOSEI's store (pretrain.datasets), its cells
    read out by MPUC's fc + ReLU + fc (downstream.method_hparams)."""

    def change(config):
        config["pretrain"]["methods"].append("mpuc")

    jobs, planned = planned_jobs(demo_run, tmp_path, change)
    # pretraining, a cell per dataset, its continuous labels and embedding, then the summaries
    assert jobs == {"pretrain": 1, "downstream": 2, "regression": 1, "embedding_figure": 1,
                    "tables": 1, "regression_tables": 1, "front_page": 1,
                    "all": 1}, planned  # fmt: skip
    job = planned[planned.index("rule pretrain:") :]
    assert "input: results/mosei/features.zarr" in job.split("\n\n")[0]
    for dataset in ("caer", "mosei"):
        assert f"output: results/downstream/{dataset}/mpuc" in planned


def test_cmu_mosei_s_store_holds_two_temporal_windows(demo_run):
    """features.windows (the demo's 1-s windows of CMU-MOSEI): every modality's windows, at the
    clip's start outside the train split, the same seconds in every modality."""
    workdir, _, _ = demo_run
    fs = read_features(workdir / "results" / "mosei" / "features.zarr", windows=True)
    assert fs.attrs["windows"] == 2 and set(fs.windows) == set(fs.features)
    assert all(w.shape == (len(fs), 2, fs.dims[m]) for m, w in fs.windows.items())
    evaluation = torch.from_numpy(fs.split != "train")
    for m, w in fs.windows.items():
        assert torch.equal(w[evaluation, 0], w[evaluation, 1]), m  # both at the start
        assert w[~fs.present[m]].abs().sum() == 0
    # text has no word timings: every window is the whole text
    assert torch.equal(fs.windows["text"][:, 0], fs.features["text"].to(fs.windows["text"].dtype))
    other = read_features(workdir / "results" / "caer" / "features.zarr", windows=True)
    assert other.windows is None and other.attrs["windows"] == 0  # only the listed datasets


def test_label_efficiency_table_and_figure(demo_run):
    workdir, _, _ = demo_run
    results = workdir / "results"
    table = pd.read_csv(results / "tables" / "label_efficiency.csv")
    assert (table["data"] == "synthetic look-alike data").all()
    ids = ["supervised/supervised", "conclugen/linear", "conclugen/finetune"]
    assert table["id"].tolist() == [i for i in ids for _ in (10, 100)]
    assert table["labels"].tolist() == [10, 100] * 3 and (table["n_seeds"] == 2).all()
    assert table["f1"].between(0, 100).all() and table["accuracy"].between(0, 100).all()
    small = table[table["labels"] == 10]
    assert (small["n_train"] < table.loc[table["labels"] == 100, "n_train"].to_numpy()).all()
    # 10 %: the same train clips for every method, one per class here (2 train clips a class)
    whole = pd.read_parquet(
        results / "downstream/caer/supervised/supervised/seed0/predictions.parquet"
    )
    classes = whole.loc[whole["split"] == "train", "target"].nunique()
    for seed in (0, 1):
        runs = [("supervised", "supervised"), ("conclugen", "linear"), ("conclugen", "finetune")]
        records = [
            json.loads((results / f"label_efficiency/caer/{m}/0.1/{p}/seed{seed}/metrics.json")
                       .read_text())
            for m, p in runs
        ]  # fmt: skip
        assert {r["n_train"] for r in records} == {classes}
        assert all(r["loss_weights"] == records[0]["loss_weights"] for r in records)
        assert all(r["hparams"]["train_fraction"] == 0.1 for r in records)
    md = (results / "tables" / "label_efficiency.md").read_text()
    assert md.startswith("**Synthetic look-alike data")
    assert "\\begin{tabular}" in (results / "tables" / "label_efficiency.tex").read_text()
    assert (results / "figures" / "label_efficiency.png").stat().st_size > 0


def test_manifest_metadata_is_json(demo_run):
    workdir, _, _ = demo_run
    path = workdir / "results" / "caer" / "manifest.parquet"
    _, meta = read_manifest(path)
    classes = list(EXPRESSION_OF["caer"])
    assert meta == {"dataset": "caer", "task": "single_label", "classes": classes}
    assert json.loads(read_parquet_metadata(path)["classes"]) == classes  # stored as JSON text


def test_subtitles_transcribe_caer(demo_run):
    workdir, _, _ = demo_run
    subs = pd.concat(
        pd.read_parquet(p) for p in (workdir / "results/caer/subtitles").glob("*.parquet")
    )
    want = truth(workdir, "caer").set_index("sample_id")
    spoken = subs[~subs["no_speech"]]
    assert len(spoken) >= 0.8 * len(subs) and (spoken["language"] == "en").all()
    overlap = []
    for sample_id, text in zip(spoken["sample_id"], spoken["text"], strict=True):
        said = want.loc[sample_id, "sentence"].lower().split()
        overlap.append(len(set(text.lower().split()) & set(said)) / len(said))
    assert np.mean(overlap) > 0.6


def test_killed_faces_job_reruns_to_the_same_output(demo_run):
    workdir, _, _ = demo_run
    config = tiny_config()
    config["faces"]["detect_every"] = 4  # slow enough (tens of seconds) to be killed midway
    cfg = workdir / "kill.yaml"
    cfg.write_text(yaml.safe_dump(config))
    target = workdir / "results/caer/faces/0.parquet"
    args = ["--configfile", str(cfg), "--cores", "2", str(target.relative_to(workdir))]
    run_snakemake(args, workdir)  # uninterrupted
    reference = pd.read_parquet(target)
    target.unlink()
    log = workdir / "results/logs/faces/caer/0.log"
    log.unlink()
    cmd = [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # the job is loading MTCNN or detecting
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists()  # nothing that looks finished
    run_snakemake(["--configfile", str(cfg), "--unlock"], workdir)
    run_snakemake([*args, "--rerun-incomplete"], workdir)
    pd.testing.assert_frame_equal(pd.read_parquet(target), reference)


def usable_clips(workdir, dataset) -> set[str]:
    """Samples that passed the probe and, for cropped datasets, got a face track."""
    stage = "faces" if dataset != "voxceleb2" else "probe"
    return set(
        pd.concat(
            pd.read_parquet(p, columns=["sample_id"])
            for p in (workdir / "results" / dataset / stage).glob("*.parquet")
        )["sample_id"]
    )


@pytest.mark.parametrize("dataset", DATASETS)
def test_features_store_holds_every_usable_clip(demo_run, dataset):
    workdir, _, _ = demo_run
    fs = read_features(workdir / "results" / dataset / "features.zarr", augmented=True)
    assert set(fs.sample_id) == usable_clips(workdir, dataset)
    # The demo's backbones: ResNet-18 (512) || 3D ResNet-18 (512), narrow DAVEnet, MiniLM; the
    # datasets with face tracks also have MPUC's keypoints (MTCNN's landmarks, 80-d).
    dims = {"video": 1024, "audio": 256, "text": 384}
    assert fs.dims == dims | ({} if dataset == "voxceleb2" else {"keypoints": 80})
    if dataset != "voxceleb2":  # faces.no_face: drop, so every clip has a detection
        assert bool(fs.present["keypoints"].all()) and "keypoints" not in fs.augmented
    assert all(torch.isfinite(x).all() for x in fs.features.values())
    want = truth(workdir, dataset).set_index("sample_id").loc[fs.sample_id]
    no_audio = want["bad"].isin(["no_audio", "silent_audio"]).to_numpy()
    assert fs.present["audio"].numpy().tolist() == (~no_audio).tolist()
    assert fs.features["audio"][~fs.present["audio"]].abs().sum() == 0
    # Text: the gold text (MELD, CMU-MOSEI) or Whisper's transcript (VoxCeleb2, CAER).
    if dataset in ("voxceleb2", "caer"):
        texts = pd.concat(
            pd.read_parquet(p)
            for p in (workdir / "results" / dataset / "subtitles").glob("*.parquet")
        ).set_index("sample_id")["text"]
    else:
        texts = read_manifest(workdir / "results" / dataset / "manifest.parquet")[0]
        texts = texts.set_index("sample_id")["text"]
    has_text = texts.loc[fs.sample_id].fillna("").str.strip().str.len().to_numpy() > 0
    assert fs.present["text"].numpy().tolist() == has_text.tolist()
    assert has_text.mean() >= 0.6
    if dataset == "voxceleb2":  # the pretraining set: two augmented views of the 3D features
        assert fs.views is not None and fs.views.shape == (len(fs), 2, 512)
        assert fs.attrs["view_roles"] == ["video3d"] and fs.attrs["view_columns"] == [512, 1024]
        assert not torch.equal(fs.views[:, 0], fs.views[:, 1])
        assert fs.augmented is None and fs.attrs["augmented"] == 0
    else:  # a labelled set: two augmented copies of every train clip and modality
        assert fs.views is None and fs.attrs["augmented"] == 2
        train = torch.from_numpy(fs.split == "train")
        for m, copies in fs.augmented.items():
            assert copies.shape == (len(fs), 2, fs.dims[m])
            assert copies[~train | ~fs.present[m]].abs().sum() == 0
            kept = train & fs.present[m]
            assert kept.any() and (copies[kept].abs().sum(2) > 0).all()
            assert not torch.equal(copies[kept, 0], fs.features[m][kept])
            if m != "text":  # one word swap in a short text can be drawn twice alike
                assert not torch.equal(copies[kept, 0], copies[kept, 1])


def test_killed_features_job_reruns_to_the_same_output(demo_run):
    workdir, _, _ = demo_run
    config = tiny_config()
    config["features"]["crop_size"] = 112  # slow enough (several seconds) to be killed midway
    cfg = workdir / "kill-features.yaml"
    cfg.write_text(yaml.safe_dump(config))
    target = workdir / "results/voxceleb2/features/video3d/0.zarr"
    args = ["--configfile", str(cfg), "--cores", "2", str(target.relative_to(workdir))]
    run_snakemake(args, workdir)  # uninterrupted
    reference = zarr.open_group(target, mode="r")
    reference = {name: reference[name][:] for name in ("sample_id", "feature", "views")}
    log = workdir / "results/logs/features_video/voxceleb2/0.log"
    log.unlink()
    run_snakemake([*args, "--force", "-n"], workdir)  # the forced rerun is possible
    cmd = [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           *args, "--force"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.exists() and "clips" in log.read_text()):
        time.sleep(0.1)  # until the model is loaded and extraction has started
    time.sleep(1.0)
    assert proc.poll() is None, "the job finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists()  # Snakemake removed the old output; no half store took its place
    run_snakemake(["--configfile", str(cfg), "--unlock"], workdir)
    run_snakemake([*args, "--rerun-incomplete"], workdir)
    store = zarr.open_group(target, mode="r")
    assert store.attrs["complete"]
    for name, value in reference.items():
        assert np.array_equal(store[name][:], value), name


@pytest.mark.parametrize("method", ["conclugen", "multicont_wo_audio"])
def test_pretrain_writes_model_history_and_retrieval(demo_run, method):
    from conclugen.model import load_model

    workdir, _, _ = demo_run
    out = workdir / "results" / "pretrain" / method
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 3 and np.isfinite(history["total"]).all()
    terms = {"conclugen": ["mms", "clustering", "reconstruction"], "multicont_wo_audio": ["mms"]}
    assert all(t in history for t in terms[method])
    model = load_model(out / "model.pt")
    assert sorted(model.heads) == (
        ["audio", "text", "video"] if method == "conclugen" else ["text", "video"]
    )
    retrieval = json.loads((out / "retrieval.json").read_text())
    assert "video->text" in retrieval
    log = (workdir / "results" / "logs" / "pretrain" / f"{method}.log").read_text()
    assert "recall@1" in log


def test_downstream_cells_hold_every_protocol_and_seed(demo_run):
    workdir, _, _ = demo_run
    for dataset in ("caer", "mosei"):
        for method, protocols in [("supervised", {"supervised"}),
                                  ("conclugen", {"linear", "finetune", "vision"}),
                                  ("multicont_wo_audio", {"linear"})]:  # fmt: skip
            cell = workdir / "results" / "downstream" / dataset / method
            runs = pd.read_csv(cell / "runs.csv")
            assert set(runs["protocol"]) == protocols and set(runs["seed"]) == {0, 1}
            for p, s in zip(runs["protocol"], runs["seed"], strict=True):
                metrics = json.loads((cell / p / f"seed{s}" / "metrics.json").read_text())
                assert metrics["dataset"] == dataset and 0 <= metrics["accuracy"] <= 1
                assert (cell / p / f"seed{s}" / "confusion.png").stat().st_size > 0
    # multicont_wo_audio's model has no audio head, so its linear probe reads video and text
    metrics = json.loads(
        (
            workdir / "results/downstream/caer/multicont_wo_audio/linear/seed0/metrics.json"
        ).read_text()
    )
    assert metrics["modalities"] == ["video", "text"]


def test_tables_have_every_paper_row(demo_run):
    from conclugen.tables import load_paper_results

    workdir, _, _ = demo_run
    paper = load_paper_results(ROOT / "config" / "paper_results.yaml")
    tables = workdir / "results" / "tables"
    for n in range(1, 6):
        frame = pd.read_csv(tables / f"table{n}.csv")
        assert len(frame) >= len(paper[f"table{n}"]["rows"]), n
        assert (tables / f"table{n}.md").read_text().count("\n") > len(frame)
        assert "\\begin{tabular}" in (tables / f"table{n}.tex").read_text()
    franceschini = pd.read_csv(tables / "franceschini.csv")  # the tiny demo runs no MPUC
    assert len(franceschini) == 7 * len(paper["franceschini"]["rows"])
    assert franceschini["weighted_accuracy_paper"].notna().all()
    assert franceschini["weighted_accuracy"].isna().all()
    table2 = pd.read_csv(tables / "table2.csv")
    # ours is filled where the tiny run evaluated (CAER, MOSEI) and empty for MELD
    assert table2["caer"].notna().all() and table2["meld"].isna().all()
    assert (table2["data"] == "synthetic look-alike data").all()  # the demo says what it is
    assert "synthetic look-alike data" in (tables / "headline.md").read_text().lower()
    log = (workdir / "results" / "logs" / "tables.log").read_text()
    assert "ConCluGen linear eval. accuracy" in log and "| caer |" in log
    retrieval = (tables / "retrieval.md").read_text()
    for method in ("conclugen", "multicont_wo_audio"):
        report = json.loads((workdir / "results/pretrain" / method / "retrieval.json").read_text())
        r = report["video->text"]
        row = f"| {method} | video->text | {r['init']:.2f} | {r['pretrained']:.2f} |"
        assert row in retrieval and row in log
    assert "| multicont_wo_audio | video->audio |" not in retrieval  # no audio head
    for name in ("confusion_caer.png", "embedding_caer_conclugen.png"):
        assert (workdir / "results" / "figures" / name).stat().st_size > 0


def test_the_report_opens_on_the_front_page(demo_run):
    """The front page holds the headline, ours against the paper (every published cell of
    Tables 2, 3 and 5), retrieval, datasets and failures; Snakemake's report lands on it."""
    workdir, config, _ = demo_run
    page = (workdir / "results/report/front_page.html").read_text()
    headline = (workdir / "results/tables/headline.md").read_text()
    caer = next(line for line in headline.splitlines() if line.startswith("| caer |"))
    assert f"<td>{caer.split(' | ')[1]}</td>" in page  # ConCluGen's CAER accuracy
    for item in ("Ours against the paper", "data:image/png;base64,", "Cross-modal retrieval",
                 "<td>voxceleb2</td>", "<h2>Failures</h2>"):  # fmt: skip
        assert item in page, item
    assert "Synthetic look-alike data" in page
    log = (workdir / "results/logs/front_page.log").read_text()
    assert "81 cells against the paper" in log  # Table 2: 9; Tables 3 and 5: 9 rows x 4 metrics
    run_snakemake(["--configfile", str(config), "--report", "report.html"], workdir)
    landing = (workdir / "report.html").read_text()
    assert "conclugen-front" in landing and "Ours against the paper" in landing


def exported(workdir, dataset):
    """The export rule all asks for, and the downstream run it took (finetune, seed 0)."""
    return (
        workdir / "results" / "export" / dataset / "conclugen",
        workdir / "results" / "downstream" / dataset / "conclugen" / "finetune" / "seed0",
    )


@pytest.mark.parametrize("dataset", ["caer", "mosei"])
def test_an_exported_model_alone_reproduces_the_pipeline_predictions(demo_run, dataset, tmp_path):
    """Copied alone elsewhere and loaded in a fresh process (from an empty folder, the package
    only), the export gives the scores of the run's predictions.parquet on the demo features."""
    import shutil
    import sys

    workdir, _, _ = demo_run
    export, run = exported(workdir, dataset)
    config = json.loads((export / "config.json").read_text())
    assert config["protocol"] == "finetune" and config["dataset"] == dataset
    assert config["task"] == ("multi_label" if dataset == "mosei" else "single_label")
    metrics = json.loads((run / "metrics.json").read_text())
    assert config["metrics"]["test"]["f1"] == metrics["f1"]
    alone = tmp_path / "colleague" / "model"
    shutil.copytree(export, alone)
    fs = read_features(workdir / "results" / dataset / "features.zarr", dtype=None)
    torch.save({"x": fs.features, "present": fs.present}, tmp_path / "inputs.pt")
    script = (
        "import sys, torch\n"
        "from conclugen.export import load\n"
        "data = torch.load(sys.argv[2])\n"
        "torch.save(load(sys.argv[1]).probabilities(data['x'], data['present']), sys.argv[3])\n"
    )
    (tmp_path / "empty").mkdir()
    args = [str(alone), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")]
    subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path / "empty", check=True,
                   timeout=300)  # fmt: skip
    predictions = pd.read_parquet(run / "predictions.parquet").set_index("sample_id")
    scores = predictions.loc[fs.sample_id, [f"score_{c}" for c in config["classes"]]]
    assert np.allclose(torch.load(tmp_path / "out.pt").numpy(), scores.to_numpy(), atol=1e-5)


def test_conclugen_predict_scores_a_held_out_clip(demo_run):
    """What `make demo` ends with: a CAER test clip through the exported model."""
    import sys

    workdir, _, _ = demo_run
    export, run = exported(workdir, "caer")
    manifest = read_manifest(workdir / "results" / "caer" / "manifest.parquet")[0]
    predictions = pd.read_parquet(run / "predictions.parquet")
    sample = predictions[predictions["split"] == "test"].iloc[0]
    video = manifest.set_index("sample_id").loc[sample["sample_id"], "video"]
    cmd = [sys.executable, "-m", "conclugen.predict", "predict", "--json", "--model",
           str(export.relative_to(workdir)), video]  # fmt: skip
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)
    assert list(result["probabilities"]) and set(result["probabilities"]) == set(
        EXPRESSION_OF["caer"]
    )
    # The same clip's scores in the pipeline: the same stages, up to the face track's frames
    # (one clip alone) and float rounding; the ranking's top class agrees.
    assert result["predicted"] == sample["predicted_name"]
