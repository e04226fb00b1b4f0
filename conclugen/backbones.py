"""The four frozen feature backbones and their checkpoint loaders.

Interface. Each loader takes only a weights spec (:mod:`conclugen.weights`: a path, URL,
torchvision weights name, Hugging Face name or ``package:`` folder) and returns an ``nn.Module``
in eval mode with ``requires_grad_(False)`` and an int ``feature_dim``:

========================  ===============================  =====================================
loader                    input -> output                  the paper's backbone (feature, dim)
========================  ===============================  =====================================
:func:`load_resnet2d`     [B,3,H,W] -> [B,D]               torchvision ResNet-152, ImageNet
                                                           (``IMAGENET1K_V2``): avgpool, 2048
:func:`load_resnet3d`     [B,3,T,H,W] -> [B,D]             Hara et al. 3D ResNet-101, Kinetics:
                                                           avgpool, 2048 (one vector per window)
:func:`load_davenet`      [B,F,T] -> [B,D,H',T']           ResDAVEnet (RDVQ_00000): the layer4
                                                           map, D=1024, averaged by the caller
:func:`load_text_encoder` list[str] -> [B,D] (``encode``)  mean of the last hidden state over
                                                           tokens (768 for DistilBERT/RoBERTa)
========================  ===============================  =====================================

Inputs are already normalised; the vision models accept channels_last(_3d) tensors. The text
model is a config choice: the paper names DistilBERT fine-tuned on SST-2
(``distilbert-base-uncased-finetuned-sst-2-english``), the authors' code used
``j-hartmann/emotion-english-distilroberta-base``.

Architecture hyperparameters are inferred from the state dict's keys and shapes, never
hard-coded: block type (a ``conv3`` in ``layer1.0`` means Bottleneck), blocks per stage (the
largest block index), widths (``conv1`` output channels), the 3D stem's temporal kernel, the
shortcut type (``downsample`` keys or none), ResDAVEnet's ``feat_dim`` and conv width. The same
code therefore loads the real files and the tiny random look-alikes of the tests
(:mod:`conclugen.lookalike.weights`). Loading is strict: a missing ``*.num_batches_tracked`` is
accepted (2017-era files have none), classifier heads (``fc.*``, ``last_linear.*``) are optional
and dropped (their class count is kept in ``pretrained_classes``: 1000 ImageNet, 400/700 Kinetics),
and any other missing or unexpected key or shape mismatch raises ``ValueError`` naming the spec.

Frozen means frozen: ``train()`` keeps these modules in eval mode, so BatchNorm running statistics
never move, whatever the caller's training loop does.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conclugen.weights import load_checkpoint, load_text_model

HEADS = ("fc.", "last_linear.")


class Frozen(nn.Module):
    """A feature extractor whose weights and BatchNorm statistics never change."""

    feature_dim: int

    def train(self, mode: bool = True) -> Frozen:
        return super().train(False)


def _freeze(model: Frozen) -> Frozen:
    model.eval()
    model.requires_grad_(False)
    return model


def _need(state: dict[str, Tensor], key: str, spec: str) -> Tensor:
    if key not in state:
        raise ValueError(f"weights {spec!r}: key {key!r} missing, not the expected architecture")
    return state[key]


def _stage_depths(state: dict[str, Tensor], spec: str) -> list[int]:
    """Blocks per stage ``layer1``, ``layer2``, ...: one more than the largest block index."""
    depth: dict[int, int] = {}
    for key in state:
        if m := re.match(r"layer(\d+)\.(\d+)\.", key):
            stage, block = int(m[1]), int(m[2])
            depth[stage] = max(depth.get(stage, 0), block + 1)
    if sorted(depth) != list(range(1, len(depth) + 1)) or not depth:
        raise ValueError(f"weights {spec!r}: stages {sorted(depth)}, expected layer1..layerN")
    return [depth[s] for s in sorted(depth)]


def _load_strict(model: nn.Module, state: dict[str, Tensor], spec: str) -> int | None:
    """Copy ``state`` into ``model`` strictly (module docstring); return the head's class count."""
    head = {k: v for k, v in state.items() if k.startswith(HEADS)}
    body = {k: v for k, v in state.items() if not k.startswith(HEADS)}
    expected = model.state_dict()
    missing = [k for k in expected if k not in body and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in body if k not in expected]
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in body.items()
        if k in expected and v.shape != expected[k].shape
    ]
    classes = None
    if head:
        weight = head.get("fc.weight", head.get("last_linear.weight"))
        feature_dim = getattr(model, "feature_dim", None)
        if weight is None or weight.ndim != 2 or weight.shape[1] != feature_dim:
            shapes = {k: tuple(v.shape) for k, v in head.items()}
            wrong.append(f"classifier head {shapes} does not fit feature_dim {feature_dim}")
        else:
            classes = int(weight.shape[0])
    problems = [
        f"{what} {items[:8]}{' ...' if len(items) > 8 else ''}"
        for what, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", wrong),
        )
        if items
    ]
    if problems:
        raise ValueError(
            f"weights {spec!r} do not fit {type(model).__name__}: " + "; ".join(problems)
        )
    model.load_state_dict(body, strict=False)  # only num_batches_tracked may be absent
    return classes


# --------------------------------------------------------------------------------------------
# 2D and 3D ResNets (torchvision; Hara et al. 3D-ResNets-PyTorch): the same tree, 2 or 3 dims


def _conv(dims: int, cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Module:
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    return conv(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


def _bn(dims: int, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm3d(channels)


class ZeroPadShortcut(nn.Module):
    """Hara's parameter-free shortcut "A": subsample by ``stride``, zero-pad the channels."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.channels, self.stride = channels, stride

    def forward(self, x: Tensor) -> Tensor:
        # Hara's avg_pool3d(kernel_size=1, stride) is exactly this slice (and runs in bf16).
        s = self.stride
        out = x[:, :, ::s, ::s, ::s]
        return F.pad(out, (0, 0, 0, 0, 0, 0, 0, self.channels - out.shape[1]))


class BasicBlock(nn.Module):
    """conv3 -> BN -> ReLU -> conv3 -> BN, + shortcut, ReLU (stride on the first conv)."""

    expansion = 1

    def __init__(self, dims: int, cin: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = _conv(dims, cin, planes, 3, stride)
        self.bn1 = _bn(dims, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(dims, planes, planes, 3)
        self.bn2 = _bn(dims, planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """conv1 -> conv3 (stride here, "ResNet v1.5") -> conv1 x4, each with BN, + shortcut."""

    expansion = 4

    def __init__(self, dims: int, cin: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = _conv(dims, cin, planes, 1)
        self.bn1 = _bn(dims, planes)
        self.conv2 = _conv(dims, planes, planes, 3, stride)
        self.bn2 = _bn(dims, planes)
        self.conv3 = _conv(dims, planes, planes * 4, 1)
        self.bn3 = _bn(dims, planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(Frozen):
    """Stem (``conv1``, ``bn1``, ReLU, max-pool), ``layer1..4``, global average pool.

    Key names equal torchvision's ``ResNet`` (2D) and Hara's ``ResNet`` (3D) without ``fc``.
    ``stem``: conv1 kernel/stride/padding; ``shortcut``: "B" (1x1 conv + BN in ``downsample``
    wherever the shape changes) or "A" (:class:`ZeroPadShortcut`, 3D only).
    """

    def __init__(
        self,
        dims: int,
        bottleneck: bool,
        depths: list[int],
        widths: list[int],
        stem: nn.Module,
        shortcut: str = "B",
    ):
        super().__init__()
        block = Bottleneck if bottleneck else BasicBlock
        self.conv1 = stem
        cin = stem.out_channels
        self.bn1 = _bn(dims, cin)
        self.relu = nn.ReLU(inplace=True)
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        self.maxpool = pool(kernel_size=3, stride=2, padding=1)
        for i, (depth, planes) in enumerate(zip(depths, widths, strict=True)):
            stride = 1 if i == 0 else 2
            cout = planes * block.expansion
            downsample = None
            if stride != 1 or cin != cout:
                if shortcut == "A":
                    downsample = ZeroPadShortcut(cout, stride)
                else:
                    downsample = nn.Sequential(_conv(dims, cin, cout, 1, stride), _bn(dims, cout))
            blocks = [block(dims, cin, planes, stride, downsample)]
            blocks += [block(dims, cout, planes, 1, None) for _ in range(depth - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.feature_dim = cin
        self.pretrained_classes: int | None = None

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class ResNet2D(ResNet):
    """torchvision's ResNet without ``fc``: ``[B,C,H,W] -> [B, feature_dim]`` (avgpool output)."""

    def __init__(self, bottleneck: bool, depths: list[int], widths: list[int], stem_width: int):
        stem = nn.Conv2d(3, stem_width, 7, stride=2, padding=3, bias=False)
        super().__init__(2, bottleneck, depths, widths, stem)


class ResNet3D(ResNet):
    """Hara et al.'s 3D ResNet without ``fc``: ``[B,C,T,H,W] -> [B, feature_dim]``.

    Stem Conv3d k=(t,7,7), stride (1,2,2), padding (t//2,3,3); the max-pool strides 2 in time
    too; layer2..4 stride 2 in T, H, W; AdaptiveAvgPool3d(1). Overall stride T/16, so any
    window of 1..16 frames gives one vector.
    """

    def __init__(
        self,
        bottleneck: bool,
        depths: list[int],
        widths: list[int],
        stem_width: int,
        stem_t: int,
        shortcut: str,
        in_channels: int = 3,
    ):
        stem = nn.Conv3d(
            in_channels,
            stem_width,
            (stem_t, 7, 7),
            stride=(1, 2, 2),
            padding=(stem_t // 2, 3, 3),
            bias=False,
        )
        super().__init__(3, bottleneck, depths, widths, stem, shortcut)


def _resnet_shape(state: dict[str, Tensor], dims: int, spec: str) -> dict:
    """Block type, depths, widths and stem width of a 2D/3D ResNet state dict."""
    conv1 = _need(state, "conv1.weight", spec)
    if conv1.ndim != dims + 2:
        raise ValueError(
            f"weights {spec!r}: conv1.weight has shape {tuple(conv1.shape)}, "
            f"not a {dims}D ResNet (expected a {dims + 2}-d kernel)"
        )
    depths = _stage_depths(state, spec)
    if len(depths) != 4:
        raise ValueError(f"weights {spec!r}: {len(depths)} stages, a ResNet has layer1..layer4")
    widths = [int(_need(state, f"layer{i}.0.conv1.weight", spec).shape[0]) for i in range(1, 5)]
    return {
        "bottleneck": "layer1.0.conv3.weight" in state,
        "depths": depths,
        "widths": widths,
        "stem_width": int(conv1.shape[0]),
    }


def load_resnet2d(spec: str) -> ResNet2D:
    """A frozen torchvision-format 2D ResNet (ResNet-152 ImageNet: feature_dim 2048)."""
    state = load_checkpoint(spec)
    model = ResNet2D(**_resnet_shape(state, 2, spec))
    model.pretrained_classes = _load_strict(model, state, spec)
    return _freeze(model)


def load_resnet3d(spec: str) -> ResNet3D:
    """A frozen Hara-format 3D ResNet (R3D-101 Kinetics: feature_dim 2048).

    Reads all three public packagings: pretorched-x's raw state dict, Hara's 2017
    ``{'state_dict'}`` with ``module.`` keys and no ``num_batches_tracked`` (legacy
    serialization), Hara's 2020 ``{'state_dict'}`` with a 700-class head.
    """
    state = load_checkpoint(spec)
    conv1 = _need(state, "conv1.weight", spec)
    shortcut = "B" if any(".downsample." in k for k in state) else "A"
    shape = _resnet_shape(state, 3, spec)
    model = ResNet3D(**shape, stem_t=conv1.shape[2], shortcut=shortcut, in_channels=conv1.shape[1])
    model.pretrained_classes = _load_strict(model, state, spec)
    return _freeze(model)


# --------------------------------------------------------------------------------------------
# ResDAVEnet (wnhsu/ResDAVEnet-VQ, models/AudioModels.py), as conclugen uses it


def davenet_output_steps(t: int | Tensor, stages: int = 4) -> int | Tensor:
    """Output time steps of :class:`ResDavenet` for ``t`` input frames.

    Every stage halves time with ceiling (stride-2 convs with padding K//2, odd K), and
    ceil(ceil(t/2)/2) = ceil(t/4): ``ceil(t / 2**stages)``, i.e. ceil(t/16) for the real model.
    """
    return -(-t // 2**stages)


class SpeechBasicBlock(nn.Module):
    """conv (1xK, stride 2 in both axes) -> BN -> ReLU -> conv 1xK -> BN, + shortcut, ReLU."""

    def __init__(self, cin: int, planes: int, width: int, stride: int):
        super().__init__()
        pad = (0, width // 2)
        self.conv1 = nn.Conv2d(cin, planes, (1, width), stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, (1, width), padding=pad, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResDavenet(Frozen):
    """ResDAVEnet: ``conv1`` (1 -> w0, kernel (feat_dim, 1)) collapses ``feat_dim`` frequency rows,
    then stride-2 stages of :class:`SpeechBasicBlock`.

    ``forward``: ``[B,F,T]`` or ``[B,1,F,T]`` -> ``[B, feature_dim, H', T']``, the last map before
    any pooling (not squeezed). The stride 2 is an int in the original code, so it halves the
    "frequency" rows too: F=40 gives H'=1; conclugen's F=128 gives 89 rows after conv1 and H'=6.
    T' = :func:`davenet_output_steps`. ``batchnorm1`` is registered but unused, as in the
    original (its 5 entries are in the file).
    """

    def __init__(self, feat_dim: int, widths: list[int], depths: list[int], convsize: int):
        super().__init__()
        if convsize % 2 == 0:
            raise ValueError(f"ResDavenet conv width {convsize} must be odd (even widths crash)")
        self.batchnorm1 = nn.BatchNorm2d(1)
        self.conv1 = nn.Conv2d(1, widths[0], (feat_dim, 1), bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        cin = widths[0]
        for i, (depth, planes) in enumerate(zip(depths, widths[1:], strict=True)):
            blocks = [
                SpeechBasicBlock(cin if j == 0 else planes, planes, convsize, 2 if j == 0 else 1)
                for j in range(depth)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cin = planes
        self.stages = len(depths)
        self.feature_dim = cin

    def output_steps(self, t: int | Tensor) -> int | Tensor:
        """T' for ``t`` input frames (:func:`davenet_output_steps` with this model's stages)."""
        return davenet_output_steps(t, self.stages)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return x


def load_davenet(spec: str) -> ResDavenet:
    """A frozen ResDAVEnet (RDVQ_00000: feature_dim 1024), ``module.``-prefixed keys or not."""
    state = load_checkpoint(spec)
    conv1 = _need(state, "conv1.weight", spec)
    if conv1.ndim != 4 or conv1.shape[1] != 1:
        raise ValueError(f"weights {spec!r}: conv1.weight {tuple(conv1.shape)} is not ResDAVEnet's")
    depths = _stage_depths(state, spec)
    widths = [int(conv1.shape[0])]
    widths += [
        int(_need(state, f"layer{i}.0.conv1.weight", spec).shape[0])
        for i in range(1, len(depths) + 1)
    ]
    convsize = int(_need(state, "layer1.0.conv1.weight", spec).shape[-1])
    model = ResDavenet(int(conv1.shape[2]), widths, depths, convsize)
    _load_strict(model, state, spec)
    return _freeze(model)


# --------------------------------------------------------------------------------------------
# Text: a Hugging Face encoder, mean of the last hidden state over tokens


class TextEncoder(Frozen):
    """A Hugging Face encoder (``AutoModel``) with its tokenizer; :meth:`encode` gives features.

    ``max_length``: the longest input the position table holds: the tokenizer's
    ``model_max_length`` capped by ``max_position_embeddings``, minus RoBERTa's offset (its
    positions start at ``pad_token_id + 1``, so 514 rows hold 512 tokens).
    """

    def __init__(self, tokenizer, model: nn.Module):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model
        config = model.config
        self.feature_dim = int(config.hidden_size)
        limit = int(getattr(config, "max_position_embeddings", tokenizer.model_max_length))
        positions = getattr(getattr(model, "embeddings", None), "position_embeddings", None)
        if isinstance(positions, nn.Embedding) and positions.padding_idx is not None:
            limit -= positions.padding_idx + 1
        self.max_length = min(limit, int(tokenizer.model_max_length))

    @torch.no_grad()
    def encode(self, texts: list[str], device: str | torch.device) -> Tensor:
        """``[len(texts), feature_dim]`` float32 on ``device`` (the model is moved there).

        Mean of ``last_hidden_state`` over the non-padding tokens, special tokens included (as
        the authors' code). Texts longer than :attr:`max_length` tokens are truncated: the
        authors did not truncate, but positions beyond the table crash the model.
        """
        self.to(device)
        if not texts:
            return torch.zeros(0, self.feature_dim, device=device)
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(device)
        hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)


def load_text_encoder(spec: str) -> TextEncoder:
    """A frozen text encoder from a Hugging Face name, a local folder or ``package:`` folder
    (offline, a name missing from the cache raises :class:`conclugen.weights.MissingWeights`)."""
    return _freeze(TextEncoder(*load_text_model(spec)))


# --------------------------------------------------------------------------------------------
# Inference form of a frozen backbone


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into the convolution before it, in place.

    Applies to the ResNets' and ResDAVEnet's ``convN``/``bnN`` pairs and to ``downsample``
    ``Sequential(conv, bn)`` shortcuts: the conv takes the BN's scale and shift (a bias), the BN
    becomes ``Identity``. Outputs are unchanged up to float rounding, and each BN pass over the
    activations disappears (the stem's BN alone was ~10 % of a 3D ResNet-18's time on a CPU).
    ``state_dict`` keys change, so fold only a model that is loaded and stays frozen.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    convs = (nn.Conv2d, nn.Conv3d)
    norms = nn.modules.batchnorm._BatchNorm
    for module in model.modules():
        for i in "123":
            conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
            if isinstance(conv, convs) and isinstance(bn, norms):
                setattr(module, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                setattr(module, f"bn{i}", nn.Identity())
        if isinstance(module, nn.Sequential) and len(module) == 2:
            conv, bn = module
            if isinstance(conv, convs) and isinstance(bn, norms):
                module[0], module[1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    return model


def for_inference(
    model: nn.Module,
    device: str | torch.device,
    precision: str = "fp32",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> nn.Module:
    """A copy of a frozen ResNet/ResDAVEnet as the feature runners run it.

    BatchNorm folded (:func:`fold_batchnorm`), on ``device`` in ``memory_format``. With
    ``precision="bf16"`` the weights are cast to bf16, except, on a CPU, the stem ``conv1``:
    oneDNN's bf16 kernels are about 2x *slower* than fp32 for its 1-3 input channels, so it stays
    fp32 and a forward hook hands its output on as bf16. Callers feed inputs in the copy's
    ``input_dtype`` and get the output in bf16 or fp32.
    """
    import copy

    if precision not in ("bf16", "fp32"):
        raise ValueError(f"unknown precision {precision!r}; expected bf16 or fp32")
    device = torch.device(device)
    model = fold_batchnorm(copy.deepcopy(model)).to(device, memory_format=memory_format)
    model.input_dtype = torch.float32
    if precision == "bf16":
        model.bfloat16()
        model.input_dtype = torch.bfloat16
        if device.type == "cpu" and isinstance(getattr(model, "conv1", None), nn.Module):
            model.conv1.float()
            model.conv1.register_forward_hook(lambda _m, _i, out: out.bfloat16())
            model.input_dtype = torch.float32
    return model
