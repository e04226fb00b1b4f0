"""Pretraining on tiny look-alike features: every method, exact resume, learning, the store."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
import zarr

from conclugen import config, downstream, featstore
from conclugen import losses as L
from conclugen.featstore import read_features, write_features
from conclugen.model import load_model
from conclugen.pretrain import (
    COLLAPSE_FLOOR,
    METHODS,
    TARGET_TERMS,
    Pretext,
    build_model,
    collapse_floor,
    compute_losses,
    cross_modal_recall_at_1,
    ema_momentum,
    make_batch,
    method_config,
    pretrain,
    representation_std,
    resolve_hparams,
    sample_views,
    sample_windows,
    teacher_temperature,
    train_step,
    trainable_parameters,
    uses_views,
    uses_windows,
)
from tests.synthetic import synthetic_features

ROOT = Path(__file__).parents[1]
DIMS = {"video": 48, "audio": 32, "text": 24}
TINY = dict(
    batch_size=128,
    rep_dim=64,
    proj_dim=16,
    rec_dim=32,
    cluster_start_epoch=1,
    queue_batches=2,
    eval_samples=50,
    lr=3e-3,
    T_0=2,
    dino_out_dim=256,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("feat") / "features.zarr"
    fs = synthetic_features(600, DIMS, seed=0, views=3, missing={"text": 0.1})
    write_features(path, fs.sample_id, fs.split, fs.features, fs.present, views=fs.views)
    return path


WINDOW_DIMS = {**DIMS, "keypoints": 20}


@pytest.fixture(scope="module")
def window_store(tmp_path_factory):
    """A CMU-MOSEI-like store: keypoints, and two temporal windows of every modality."""
    path = tmp_path_factory.mktemp("feat") / "windows.zarr"
    fs = synthetic_features(600, WINDOW_DIMS, seed=0, windows=2, missing={"keypoints": 0.1})
    write_features(path, fs.sample_id, fs.split, fs.features, fs.present, windows=fs.windows)
    return path


def store_of(method: str, request) -> str:
    """The store a method trains on here: the windows store for MPUC, else the views store."""
    return request.getfixturevalue("window_store" if uses_windows(METHODS[method]) else "store")


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


class Killed(Exception):
    pass


@pytest.mark.parametrize("name", ["conclugen", "instancecont", "dino", "mpuc"])
def test_resume_after_a_kill_ends_with_the_same_weights(request, tmp_path, name):
    store = store_of(name, request)
    hp = dict(TINY, epochs=4)
    full = pretrain(store, tmp_path / "full", method_config(name), hp, device="cpu")

    def kill_after_second_epoch(epoch, row):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        pretrain(store, tmp_path / "cut", method_config(name), hp, "cpu", kill_after_second_epoch)
    assert (tmp_path / "cut" / "last.ckpt").exists()
    assert not (tmp_path / "cut" / "model.pt").exists()  # a killed run never looks finished
    assert len(pd.read_csv(tmp_path / "cut" / "history.csv")) == 2

    epochs_run = []
    resumed = pretrain(
        store, tmp_path / "cut", method_config(name), hp, "cpu", lambda e, r: epochs_run.append(e)
    )
    assert epochs_run == [2, 3]  # resumed where it stopped
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0), k
    h_full = pd.read_csv(tmp_path / "full" / "history.csv")
    h_cut = pd.read_csv(tmp_path / "cut" / "history.csv")
    assert np.allclose(h_full["total"], h_cut["total"], atol=1e-6)


def test_a_changed_configuration_does_not_resume(store, tmp_path):
    hp = dict(TINY, epochs=2)
    pretrain(store, tmp_path, method_config("multicont"), hp, device="cpu")
    seen = []
    pretrain(
        store, tmp_path, method_config("multicont", lr=1e-3), hp, "cpu", lambda e, r: seen.append(e)
    )
    assert seen == [0, 1]


def test_more_epochs_continue_a_run_and_fewer_start_afresh(store, tmp_path):
    out, seen = tmp_path / "run", []
    pretrain(store, out, method_config("multicont"), dict(TINY, epochs=2), device="cpu")
    (out / "model.pt").unlink()
    pretrain(store, out, method_config("multicont"), dict(TINY, epochs=4), "cpu",
             lambda e, r: seen.append(e))  # fmt: skip
    assert seen == [2, 3]
    seen.clear()  # the checkpoint is now after epoch 4: a 3-epoch model must not be that one
    pretrain(store, out, method_config("multicont"), dict(TINY, epochs=3), "cpu",
             lambda e, r: seen.append(e))  # fmt: skip
    assert seen == [0, 1, 2] and len(pd.read_csv(out / "history.csv")) == 3


def test_recomputed_features_do_not_resume_a_finished_run(store, tmp_path):
    """Same ids, dims and configuration, other feature values (e.g. new backbone weights): the
    checkpoint is not theirs. A finished run on unchanged data, rerun, rewrites its outputs."""
    hp = dict(TINY, epochs=2)
    out = tmp_path / "run"
    pretrain(store, out, method_config("multicont"), hp, device="cpu")
    (out / "history.csv").unlink()  # as Snakemake removes a rerun job's outputs
    seen = []
    pretrain(store, out, method_config("multicont"), hp, "cpu", lambda e, r: seen.append(e))
    assert seen == [] and len(pd.read_csv(out / "history.csv")) == 2

    fs = read_features(store, split=None, views=True)
    fs.features["video"] = fs.features["video"] * 1.5
    other = tmp_path / "other.zarr"
    write_features(other, fs.sample_id, fs.split, fs.features, fs.present, views=fs.views)
    pretrain(other, out, method_config("multicont"), hp, "cpu", lambda e, r: seen.append(e))
    assert seen == [0, 1]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_trains_and_records_its_terms(request, tmp_path, name):
    method = method_config(name)
    path = pretrain(store_of(name, request), tmp_path, method, dict(TINY, epochs=3), "cpu")
    history = pd.read_csv(tmp_path / "history.csv")
    terms = list(method["terms"])
    expected = {"epoch", "lr", "total", "seconds", "samples_per_s"}
    expected |= set(terms) | {f"{t}_weighted" for t in terms}
    if set(terms) & set(TARGET_TERMS):  # the target's momentum and the collapse check
        expected |= {"momentum", "rep_std", "rep_std_floor"}
        expected |= {"teacher_temp", "teacher_entropy"} if "dino" in terms else set()
    if resolve_hparams(TINY, method)["patience"] is not None:  # MPUC: early stopping
        expected |= {"heldout"}
    assert set(history.columns) == expected
    assert len(history) == 3
    for t in terms:
        # The clustering term is off before cluster_start_epoch (1 here), everything else on.
        assert history[t][1:].map(math.isfinite).all()
        assert math.isnan(history[t][0]) == (t == "clustering")
    assert history["total"].map(math.isfinite).all()
    for name_ in ("model.pt", "last.ckpt", "loss.png", "retrieval.json"):
        assert (tmp_path / name_).stat().st_size > 0
    model = load_model(path)
    # MPUC's optional keypoints join: the windows store has them
    assert set(model.heads) == set(method["modalities"]) | set(method.get("optional", ()))
    assert (model.cluster is not None) == ("clustering" in terms)
    assert set(model.decoders) == (
        set(method["modalities"]) if "reconstruction" in terms else set()
    )


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_total_is_the_sum_or_the_mean_of_weighted_terms(store, tmp_path, mode):
    hp = dict(TINY, epochs=2, combine=mode, weights={"mms": 0.5, "reconstruction": 2.0})
    pretrain(store, tmp_path, method_config("conclugen"), hp, device="cpu")
    h = pd.read_csv(tmp_path / "history.csv")
    assert np.allclose(h["mms_weighted"], 0.5 * h["mms"])
    terms = h[["mms_weighted", "clustering_weighted", "reconstruction_weighted"]]
    expected = terms.sum(axis=1) if mode == "sum" else terms.mean(axis=1)  # NaN skipped
    assert np.allclose(h["total"], expected, rtol=1e-5)


def test_pretrained_conclugen_retrieves_across_modalities(tmp_path):
    fs = synthetic_features(2048, {"video": 96, "audio": 64, "text": 48}, seed=1)
    path = tmp_path / "features.zarr"
    write_features(path, fs.sample_id, fs.split, fs.features, fs.present)
    hp = dict(TINY, epochs=20, batch_size=256, rep_dim=128, proj_dim=32, T_0=20, eval_samples=200)
    hp.update(cluster_start_epoch=2, queue_batches=4)
    model_path = pretrain(path, tmp_path / "out", method_config("conclugen"), hp, device="cpu")
    report = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    # On the test split (never seen in pretraining), against a fresh model.
    test = read_features(path, split="test")
    trained = cross_modal_recall_at_1(load_model(model_path), test, "test")
    torch.manual_seed(0)
    fresh = cross_modal_recall_at_1(load_model(model_path).apply(_reset), test, "test")
    for pair in ("video->text", "video->audio"):
        r = report[pair]
        assert r["pretrained"] > 10 * r["chance"] and r["pretrained"] > r["init"] + 0.1
        assert trained[pair]["recall_at_1"] > 10 * trained[pair]["chance"]
        assert trained[pair]["recall_at_1"] > fresh[pair]["recall_at_1"] + 0.1


def _reset(module):
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()


def test_featstore_round_trip(tmp_path):
    fs = synthetic_features(50, DIMS, seed=2, views=2, missing={"audio": 0.3})
    path = tmp_path / "f.zarr"
    write_features(path, fs.sample_id, fs.split, fs.features, fs.present, views=fs.views)
    back = read_features(path)
    assert list(back.sample_id) == list(fs.sample_id) and list(back.split) == list(fs.split)
    assert back.modalities == ["video", "audio", "text"] and back.dims == DIMS
    for m in DIMS:
        assert back.features[m].dtype == torch.float32
        assert torch.equal(back.features[m], fs.features[m].half().float())  # stored float16
        assert torch.equal(back.present[m], fs.present[m])
    assert not back.present["audio"].all() and back.present["video"].all()
    assert torch.equal(back.views, fs.views.half().float())
    assert back.attrs["views"] == 2
    group = zarr.open_group(path, mode="r")
    assert group["video"].dtype == np.float16
    assert group["video_views"].shape == (50, 2, DIMS["video"])

    test = read_features(path, modalities=["text", "video"], split="test", dtype=None, views=False)
    idx = np.flatnonzero(fs.split == "test")
    assert test.modalities == ["video", "text"] and test.views is None
    assert list(test.sample_id) == list(fs.sample_id[idx])
    assert test.features["text"].dtype == torch.float16
    assert torch.equal(test.features["text"], fs.features["text"][idx].half())
    assert torch.equal(test.present["text"], fs.present["text"][idx])
    no_text = tmp_path / "no_text.zarr"
    write_features(no_text, fs.sample_id, fs.split, {"video": fs.features["video"]})
    assert read_features(no_text).modalities == ["video"]
    assert read_features(no_text).present["video"].all()
    with pytest.raises(KeyError, match="text"):
        read_features(no_text, modalities=["video", "text"])


def test_a_half_written_store_is_never_read_as_finished(tmp_path, monkeypatch):
    fs = synthetic_features(200, DIMS, seed=3)
    path = tmp_path / "f.zarr"
    monkeypatch.setattr(featstore, "CHUNK_BYTES", 1024)  # many chunks

    class DiesMidway:
        shape = fs.features["audio"].shape

        def __getitem__(self, key):
            if key.start > 50:
                raise OSError("disk full")
            return fs.features["audio"][key]

    arrays = dict(fs.features, audio=DiesMidway())
    with pytest.raises(OSError):
        write_features(path, fs.sample_id, fs.split, arrays, fs.present)
    assert not path.exists() and list(tmp_path.iterdir()) == []

    # A store copied or written without its final mark is refused too.
    write_features(path, fs.sample_id, fs.split, fs.features, fs.present)
    assert len(read_features(path)) == 200
    del zarr.open_group(path, mode="a").attrs["complete"]
    with pytest.raises(ValueError, match="not a complete"):
        read_features(path)


def test_synthetic_features_share_structure_across_modalities():
    fs = synthetic_features(400, DIMS, seed=4, views=2)
    # A sample's video is closer (after centring) to its own augmented views than to others'.
    v = fs.features["video"] - fs.features["video"].mean(0)
    w = fs.views[:, 0] - fs.views[:, 0].mean(0)
    sims = torch.nn.functional.normalize(v, dim=1) @ torch.nn.functional.normalize(w, dim=1).T
    assert (sims.argmax(1) == torch.arange(400)).float().mean() > 0.5
    assert sorted(set(fs.split)) == ["test", "train", "val"]
    assert (fs.split == "train").sum() == 320


def test_pretraining_warms_up_from_a_tenth_of_the_learning_rate(store, tmp_path):
    hp = dict(TINY, epochs=7, warmup_epochs=5, T_0=2, lr=3e-3)
    pretrain(store, tmp_path, method_config("multicont"), hp, device="cpu")
    lr = pd.read_csv(tmp_path / "history.csv")["lr"].tolist()
    assert lr[0] == pytest.approx(3e-4) and lr[5] == pytest.approx(3e-3)
    assert lr[0] < lr[1] < lr[2] < lr[3] < lr[4] < lr[5] and lr[6] < lr[5]
    hp["warmup_epochs"] = 0
    pretrain(store, tmp_path / "none", method_config("multicont"), hp, device="cpu")
    assert pd.read_csv(tmp_path / "none" / "history.csv")["lr"][0] == pytest.approx(3e-3)


def test_projection_hidden_width_is_rep_dim_over_eight_unless_set():
    method = method_config("multicont")
    model = build_model(method, resolve_hparams(dict(rep_dim=64, proj_dim=16)), DIMS)
    assert model.projection[0].out_features == 8 and model.projection[3].out_features == 16
    model = build_model(method, resolve_hparams(dict(rep_dim=64, proj_hidden_dim=40)), DIMS)
    assert model.projection[0].out_features == 40 and model.kwargs["proj_hidden_dim"] == 40


def test_two_distinct_views_are_drawn_anew_every_step():
    views = torch.arange(6.0).reshape(1, 6, 1).repeat(4, 1, 1)  # view k holds the value k
    gen = torch.Generator().manual_seed(0)
    idx = torch.arange(4)
    pairs = set()
    for _ in range(60):  # epochs: the pair of sample 0 changes between them
        v1, v2 = sample_views(views, idx, gen)
        assert (v1 != v2).all()
        pairs.add((int(v1[0, 0]), int(v2[0, 0])))
    assert len(pairs) > 20  # of the 30 ordered pairs of 6 views
    two = torch.arange(2.0).reshape(1, 2, 1).repeat(4, 1, 1)
    draws = {tuple(int(v[0, 0]) for v in sample_views(two, idx, gen)) for _ in range(20)}
    assert draws <= {(0, 1), (1, 0)}


@pytest.mark.parametrize("joint", [False, True])
def test_infonce_views_pass_the_projection_batchnorm_apart_or_together(joint):
    torch.manual_seed(0)
    hp = resolve_hparams(dict(TINY, infonce_joint_batch=joint))
    model = build_model(method_config("instancecont"), hp, DIMS).train()
    v1, v2 = torch.randn(32, DIMS["video"]), torch.randn(32, DIMS["video"]) + 1
    got = compute_losses(model, {"views": (v1, v2)}, METHODS["instancecont"], hp, ["infonce"],
                         [], torch.Generator())["infonce"]  # fmt: skip
    if joint:
        p1, p2 = model({"video": torch.cat([v1, v2])})["video"]["proj"].chunk(2)
    else:
        p1, p2 = model({"video": v1})["video"]["proj"], model({"video": v2})["video"]["proj"]
    assert got.item() == pytest.approx(L.info_nce_loss(p1, p2, hp["temperature"]).item())
    other = build_model(method_config("instancecont"), dict(hp, infonce_joint_batch=not joint),
                        DIMS).train()  # fmt: skip
    other.load_state_dict(model.state_dict())
    again = compute_losses(other, {"views": (v1, v2)}, METHODS["instancecont"],
                           dict(hp, infonce_joint_batch=not joint), ["infonce"], [],
                           torch.Generator())["infonce"]  # fmt: skip
    assert again.item() != pytest.approx(got.item())  # the two BatchNorm batchings differ


def test_instancecont_trains_on_the_view_columns_and_downstream_reads_them(tmp_path):
    """Views of the 3D half only (the authors' SimCLR input): the model's video head takes
    that half's width, records its columns, and a downstream classifier feeds it those columns
    of the full video features."""
    fs = synthetic_features(300, DIMS, seed=3, views=3)
    half = DIMS["video"] // 2
    path = tmp_path / "features.zarr"
    write_features(path, fs.sample_id, fs.split, fs.features, fs.present,
                   views=fs.views[:, :, half:], view_columns=(half, DIMS["video"]))  # fmt: skip
    model_path = pretrain(path, tmp_path / "ic", method_config("instancecont"),
                          dict(TINY, epochs=2), device="cpu")  # fmt: skip
    model = load_model(model_path)
    assert model.kwargs["in_dims"] == {"video": half}
    assert model.kwargs["input_columns"] == {"video": [half, DIMS["video"]]}
    hp = downstream.resolve_hparams(dict(rep_dim=64))
    clf = downstream.build_classifier("linear", model_path, DIMS, 7, hp).eval()
    x = {"video": fs.features["video"][:8]}
    present = {"video": torch.ones(8, dtype=torch.bool)}
    expected = model.heads["video"](fs.features["video"][:8, half:])
    assert torch.allclose(clf.represent(x, present), expected)
    with pytest.raises(ValueError, match="columns"):
        downstream.build_classifier("linear", model_path, {"video": half}, 7, hp)


def _pretext_setup(kind, seed=0):
    torch.manual_seed(seed)
    hp = resolve_hparams(TINY)
    model = build_model(method_config(kind), hp, DIMS).train()
    pretext = Pretext(model, kind, hp)
    optimizer = torch.optim.AdamW(trainable_parameters(model, pretext), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    views = (
        torch.randn(32, DIMS["video"], generator=g),
        torch.randn(32, DIMS["video"], generator=g),
    )
    return hp, model, pretext, optimizer, {"views": views}


@pytest.mark.parametrize("kind", ["byol", "dino"])
def test_the_target_is_moved_by_the_ema_alone(kind):
    """The optimiser never holds the target; after a step the online weights have moved and the
    target is exactly m * old target + (1 - m) * new online, having had no gradient."""
    hp, model, pretext, optimizer, batch = _pretext_setup(kind)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    target = dict(pretext.target.named_parameters())
    assert target and not any(id(p) in held for p in target.values())
    assert not any(p.requires_grad for p in target.values())
    online = pretext.online_parameters(model)
    assert set(target) <= set(online) and all(id(p) in held for p in online.values())
    if kind == "byol":  # the predictor is online only; DINO's prototypes have a teacher copy
        assert not any(k.startswith("head.") for k in target)
    else:
        assert any(k.startswith("head.") for k in target)
    old_target = {k: p.detach().clone() for k, p in target.items()}
    old_online = {k: p.detach().clone() for k, p in online.items()}
    m = 0.9
    out = train_step(model, optimizer, batch, METHODS[kind], hp, [kind], [], torch.Generator(),
                     pretext, momentum=m)  # fmt: skip
    assert torch.isfinite(out[kind])
    assert all(p.grad is None for p in target.values())
    moved = [k for k in target if not torch.equal(online[k].detach(), old_online[k])]
    assert len(moved) == len(target)
    for k, p in target.items():
        expected = m * old_target[k] + (1 - m) * online[k].detach()
        assert torch.allclose(p, expected, atol=1e-6), k
        assert not torch.equal(p, old_target[k])


def test_ema_momentum_rises_from_its_base_to_one_by_a_cosine():
    base, total = 0.996, 100
    values = [ema_momentum(k, total, base) for k in range(total + 1)]
    assert values[0] == pytest.approx(base) and values[-1] == pytest.approx(1.0)
    assert values[50] == pytest.approx((1 + base) / 2)  # the cosine's midpoint
    assert values[25] == pytest.approx(1 - (1 - base) * (math.cos(math.pi / 4) + 1) / 2)
    assert values == sorted(set(values))  # rising at every step


def test_dino_teacher_temperature_warms_up_linearly_then_stays():
    hp = resolve_hparams({})
    assert hp["dino_teacher_temp"] < hp["dino_student_temp"]  # the teacher is sharper
    assert [teacher_temperature(e, hp) for e in (0, 10)] == [0.04, 0.04]  # DINO code's default
    hp = resolve_hparams(dict(dino_teacher_temp=0.07, dino_warmup_teacher_temp_epochs=4))
    temps = [teacher_temperature(e, hp) for e in range(7)]
    assert temps == pytest.approx([0.04, 0.05, 0.06, 0.07, 0.07, 0.07, 0.07])


def test_dino_step_updates_the_centre_by_its_ema_with_the_given_teacher_temperature():
    hp, model, pretext, optimizer, batch = _pretext_setup("dino")
    pretext.center.fill_(0.5)
    both = {"video": torch.cat(batch["views"])}
    with torch.no_grad():
        teacher = pretext.target["head"](pretext.target["model"](both)["video"]["proj"])
        student = pretext.head(model(both)["video"]["proj"])
    got = compute_losses(model, batch, METHODS["dino"], hp, ["dino"], [], torch.Generator(),
                         pretext, teacher_temp=0.05)["dino"]  # fmt: skip
    expected = L.dino_loss(student.chunk(2), teacher.chunk(2), torch.full((1, 256), 0.5), 0.1, 0.05)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(pretext.center, 0.9 * 0.5 + 0.1 * teacher.mean(0, keepdim=True))


def test_dino_student_sees_the_local_views_and_the_teacher_does_not():
    hp, model, pretext, optimizer, batch = _pretext_setup("dino")
    g = torch.Generator().manual_seed(1)
    batch["local_views"] = torch.randn(32, 3, DIMS["video"], generator=g)
    sizes = {"student": [], "teacher": []}
    for who, net in (("student", model), ("teacher", pretext.target["model"])):
        net.heads["video"].register_forward_hook(
            lambda _m, args, _out, who=who: sizes[who].append(len(args[0]))
        )
    got = compute_losses(model, batch, METHODS["dino"], hp, ["dino"], [], torch.Generator(),
                         pretext)["dino"]  # fmt: skip
    # The globals as one batch through each network; the 3 local views as one more through the
    # student (DINO's MultiCropWrapper: one forward pass per crop size).
    assert sizes == {"student": [64, 96], "teacher": [64]}
    # The loss pairs each teacher global with every other student view (Eq. 3).
    both = {"video": torch.cat(batch["views"])}
    local = {"video": batch["local_views"].transpose(0, 1).flatten(0, 1)}
    with torch.no_grad():
        teacher = pretext.target["head"](pretext.target["model"](both)["video"]["proj"])
        student = [*pretext.head(model(both)["video"]["proj"]).chunk(2),
                   *pretext.head(model(local)["video"]["proj"]).chunk(3)]  # fmt: skip
    expected = L.dino_loss(student, teacher.chunk(2), torch.zeros(1, 256), 0.1, 0.04)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert student[2].shape == (32, 256) and not torch.allclose(student[2], student[3])


def test_representation_std_tells_a_collapse_from_a_spread():
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(2000, 64, generator=g)
    assert representation_std(spread).item() == pytest.approx(1 / 8, rel=0.05)  # 1 / sqrt(D)
    same = torch.randn(1, 64, generator=g).repeat(100, 1) * torch.rand(100, 1, generator=g)
    assert representation_std(same).item() < 1e-6  # one direction: collapsed, whatever the norm


@pytest.mark.parametrize("name", ["byol", "dino"])
def test_byol_and_dino_learn_without_collapsing(store, tmp_path, name):
    path = pretrain(store, tmp_path, method_config(name), dict(TINY, epochs=4), device="cpu")
    h = pd.read_csv(tmp_path / "history.csv")
    assert (h["rep_std"] > h["rep_std_floor"]).all()
    assert (h["rep_std_floor"] <= COLLAPSE_FLOOR / math.sqrt(TINY["rep_dim"])).all()
    assert h["momentum"].is_monotonic_increasing and (h["momentum"] < 1).all()
    if name == "byol":
        assert h["byol"].iloc[-1] < h["byol"].iloc[0]  # the predictor learns the target
    model = load_model(path)  # the online model alone: downstream reads its video head
    assert set(model.heads) == {"video"} and not any("target" in k for k in model.state_dict())


def test_collapse_floor_is_the_lower_of_a_tenth_of_an_even_spread_and_half_the_initial():
    assert collapse_floor(256, 0.03) == pytest.approx(0.1 / 16)  # spread inputs: 0.1 / sqrt(D)
    assert collapse_floor(256, 0.008) == pytest.approx(0.004)  # narrow ones (the demo's)


def test_dino_at_demo_size_neither_collapses_nor_goes_uniform(tmp_path):
    """DINO with the demo's pretraining settings (config/demo.yaml) on ~100 synthetic clips
    with 2 views and 4 local views: the representation keeps its spread and the teacher's
    distribution stays sharp, using many prototypes. The control, the same run with DINO's
    code default teacher temperature (0.04, the demo's before), goes near uniform: the bound
    on the entropy is one the old settings fail."""
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())["pretrain"]["hparams"]
    fs = synthetic_features(130, {"video": 64}, seed=0, views=2, local_views=4)
    path = tmp_path / "features.zarr"
    write_features(path, fs.sample_id, fs.split, fs.features, views=fs.views,
                   local_views=fs.local_views)  # fmt: skip
    entropy = {}
    for run, temp in (("demo", demo["dino_teacher_temp"]), ("control", 0.04)):
        hp = dict(demo, dino_teacher_temp=temp)
        pretrain(path, tmp_path / run, method_config("dino"), hp, device="cpu")
        h = pd.read_csv(tmp_path / run / "history.csv")
        assert len(h) == demo["epochs"] and (h["rep_std"] > h["rep_std_floor"]).all()
        entropy[run] = h["teacher_entropy"].iloc[-1]
    assert 0.02 < entropy["demo"] < 0.4  # sharp, not one prototype for every clip
    assert entropy["control"] > 0.6  # near uniform: DINO's collapse that centring leads to


def test_the_config_check_knows_which_methods_need_views():
    assert config.VIEW_METHODS == tuple(m for m in METHODS if uses_views(METHODS[m]))


def test_a_bf16_cpu_loss_curve_is_finite_and_follows_fp32():
    """Forced bf16 on the CPU (auto picks it only on AMX): 20 steps of ConCluGen, all three
    terms, from the same initialisation and batches as fp32. The first step's total is within
    0.1 % of fp32's (and not equal: the autocast took effect), every step's within 2 %."""
    fs = synthetic_features(256, DIMS, seed=0)
    method = method_config("conclugen")
    curves = {}
    for precision in ("fp32", "bf16"):
        hp = resolve_hparams(dict(TINY, cluster_start_epoch=0, precision=precision))
        torch.manual_seed(0)
        model = build_model(method, hp, fs.dims)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        gen, queue, curve = torch.Generator().manual_seed(0), [], []
        for step in range(20):
            batch = make_batch(fs.features, None, torch.arange(128) + 128 * (step % 2), method, gen)
            out = train_step(model, optimizer, batch, method, hp, method["terms"], queue, gen)
            curve.append(out["total"].item())
        curves[precision] = np.array(curve)
    fp32, bf16 = curves["fp32"], curves["bf16"]
    assert np.isfinite(bf16).all()
    assert bf16[0] != fp32[0] and abs(bf16[0] / fp32[0] - 1) < 1e-3
    assert np.abs(bf16 / fp32 - 1).max() < 0.02
    assert bf16[-1] < 0.85 * bf16[0]  # it trains


def test_the_config_check_knows_which_methods_need_windows():
    assert config.WINDOW_METHODS == tuple(m for m in METHODS if uses_windows(METHODS[m]))


def test_mpuc_views_are_two_distinct_windows_the_same_in_every_modality():
    n, k = 6, 3
    # window w of sample i in modality m holds 100 m + 10 w + i in every column
    windows = {
        m: (100 * j + 10 * torch.arange(k)[None, :, None] + torch.arange(n)[:, None, None])
        .float()
        .expand(n, k, 4)
        for j, m in enumerate(("video", "audio", "keypoints"))
    }
    idx = torch.tensor([5, 0, 3, 3])
    views = sample_windows(windows, idx, torch.Generator().manual_seed(0))
    assert set(views) == set(windows) and all(v.shape == (2, 4, 4) for v in views.values())
    which = (views["video"][..., 0] % 100) // 10  # [2, B]: the window of each view
    assert (which[0] != which[1]).all()
    assert torch.equal(views["video"][..., 0] % 10, idx.float().expand(2, -1))  # its own sample
    for j, m in enumerate(("audio", "keypoints")):
        assert torch.equal(views[m][..., 0] - 100 * (j + 1), views["video"][..., 0])
    again = sample_windows(windows, idx, torch.Generator().manual_seed(0))
    assert all(torch.equal(views[m], again[m]) for m in views)


def test_mpuc_has_its_own_heads_optimiser_and_step_decay(window_store, store):
    from conclugen.pretrain import make_optimizer, store_modalities
    from conclugen.torchutil import make_scheduler

    method = METHODS["mpuc"]
    assert store_modalities(window_store, method) == ("video", "audio", "text", "keypoints")
    assert store_modalities(window_store, METHODS["mpuc_wo_text"]) == (
        "video", "audio", "keypoints"
    )  # fmt: skip
    assert store_modalities(store, method) == ("video", "audio", "text")  # no keypoints there
    hp = resolve_hparams(None, method)
    model = build_model({**method, "modalities": ALL_WINDOW_MODS}, hp, WINDOW_DIMS)
    assert model.kwargs["rep_dim"] == 512 and set(model.projection) == set(ALL_WINDOW_MODS)
    for head in model.projection.values():  # fc + ReLU + fc, 512 -> 1024 -> 512, no BatchNorm
        assert [type(x).__name__ for x in head] == ["Linear", "ReLU", "Linear"]
        assert (head[0].in_features, head[0].out_features, head[2].out_features) == (
            512, 1024, 512
        )  # fmt: skip
    optimizer = make_optimizer(model.parameters(), method, hp, torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (1e-3, 0.9, 1e-3)
    scheduler, lrs = make_scheduler(optimizer, hp), []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(lrs, [1e-3] * 5 + [9e-4] * 5 + [8.1e-4] * 2)
    assert (hp["batch_size"], hp["epochs"], hp["patience"]) == (32, 2000, 100)
    with pytest.raises(ValueError, match="temporal windows"):
        pretrain(store, "unused", method_config("mpuc"), dict(TINY, epochs=1), "cpu")
    with pytest.raises(ValueError, match="patience"):
        pretrain(store, "unused", method_config("byol"), dict(TINY, patience=3), "cpu")


ALL_WINDOW_MODS = ("video", "audio", "text", "keypoints")


def test_mpuc_loss_falls_and_early_stopping_keeps_the_best_epoch(window_store, tmp_path):
    from conclugen.pretrain import heldout_loss, load_training_data, store_modalities

    hp = dict(TINY, epochs=300, patience=3, lr=0.05, proj_hidden_dim=64)
    seen = []
    path = pretrain(window_store, tmp_path, method_config("mpuc"), hp, "cpu",
                    lambda e, r: seen.append(e))  # fmt: skip
    h = pd.read_csv(tmp_path / "history.csv")
    assert h["mpuc"].iloc[-1] < 0.8 * h["mpuc"].iloc[0]  # it learns
    best = int(h["heldout"].idxmin())
    assert len(h) == best + 1 + 3 < 300  # stopped three epochs after its best held-out loss
    # model.pt holds the best epoch's weights: their held-out loss is the lowest recorded.
    method = method_config("mpuc")
    method["modalities"] = store_modalities(window_store, method)
    full = resolve_hparams(hp, method)
    _, heldout = load_training_data(window_store, method, full)
    loss = heldout_loss(load_model(path), heldout, method, full, ["mpuc"], torch.device("cpu"))
    assert loss == pytest.approx(h["heldout"].min(), rel=1e-5)
    retrieval = json.loads((tmp_path / "retrieval.json").read_text())
    assert retrieval["video->text"]["pretrained"] > 3 * retrieval["video->text"]["chance"]
    # A finished, stopped run is not trained on when it is run again.
    before = _weights(path)
    seen.clear()
    pretrain(window_store, tmp_path, method_config("mpuc"), hp, "cpu", lambda e, r: seen.append(e))
    assert seen == [] and all(torch.equal(before[k], v) for k, v in _weights(path).items())
