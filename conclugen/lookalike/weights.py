"""Random checkpoints in the exact on-disk formats of the real public files.

Nothing on this machine can download the real weights, so the tests and the embedded demo write
seeded random models that look like them byte-for-byte in structure: the same container, key names,
prefixes, serialization and head sizes; only the widths may be narrower. The loaders in
:mod:`conclugen.backbones` read them through the same code path as the real files.

- :func:`write_torchvision_resnet`: a torchvision release file (raw state dict, ``fc`` 1000);
- :func:`write_hara_resnet3d`: a 3D ResNet as pretorched-x (raw, ``fc`` 400), Hara 2017
  (``{'epoch','arch','state_dict','optimizer'}``, ``module.`` keys, no ``num_batches_tracked``,
  legacy pickle) or Hara 2020 (``{'epoch','arch','state_dict','optimizer','scheduler'}``, fc 700);
- :func:`write_resdavenet`: ResDAVEnet-VQ's ``best_audio_model.pth`` (raw, optionally ``module.``);
- :func:`write_hf_text`: a Hugging Face hub folder of an SST-2 DistilBERT or an emotion
  DistilRoBERTa with tiny dimensions and the original slow-tokenizer files;
- :func:`write_demo_weights`: the embedded demo's three backbones.

Optimizer states carry the hyperparameters but no momentum buffers (as after zero steps), which
keeps the files at model size. Convolutions are initialised as the originals' constructors do
(torchvision's and Hara's ResNets: Kaiming normal, fan_out, ReLU gain; used for ResDAVEnet too),
under a local seed; the global random state is left untouched. PyTorch's default conv init
shrinks activations layer by layer (a random ResNet-18's features came out ~0.04 in magnitude,
ResDAVEnet's ~0.004, near constant across clips), whereas trained backbones give well-scaled
features; with the originals' init they are ~0.5-1.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from conclugen.backbones import ResDavenet, ResNet2D, ResNet3D

# depth -> (bottleneck, blocks per stage), torchvision's and Hara's tables
RESNET_DEPTHS = {
    10: (False, [1, 1, 1, 1]),
    18: (False, [2, 2, 2, 2]),
    34: (False, [3, 4, 6, 3]),
    50: (True, [3, 4, 6, 3]),
    101: (True, [3, 4, 23, 3]),
    152: (True, [3, 8, 36, 3]),
    200: (True, [3, 24, 36, 3]),
}
HARA_CLASSES = {"pretorched": 400, "hara2017": 400, "hara2020": 700}


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed PyTorch's CPU generator inside the block, restoring the global state after it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _init_like_the_originals(model: nn.Module) -> nn.Module:
    """Kaiming-normal (fan_out, ReLU) convolutions, as torchvision's and Hara's ResNets."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def _save(obj: object, path: str | Path, legacy: bool = False) -> Path:
    """``torch.save`` to a temporary name, then rename: a killed job leaves no finished-looking
    file. ``legacy``: the pre-1.6 (non-zip) serialization of 2017-era files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp, _use_new_zipfile_serialization=not legacy)
    os.replace(tmp, path)
    return path


def _depth(depth: int) -> tuple[bool, list[int]]:
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"ResNet depth {depth}: one of {sorted(RESNET_DEPTHS)}")
    return RESNET_DEPTHS[depth]


def _with_head(model: nn.Module, classes: int) -> nn.Module:
    """Register ``fc`` last, so its keys come last as in the real files."""
    model.fc = nn.Linear(model.feature_dim, classes)
    return model


def write_torchvision_resnet(
    path: str | Path, depth: int = 18, widths=(64, 128, 256, 512), seed: int = 0
) -> Path:
    """A torchvision ResNet release file: raw ``torch.save(model.state_dict())`` (zip), all keys
    including ``num_batches_tracked``, ``fc`` [1000, D]; ResNet-152 has 932 keys."""
    bottleneck, depths = _depth(depth)
    with _seeded(seed):
        model = ResNet2D(bottleneck, depths, list(widths), widths[0])
        model = _with_head(_init_like_the_originals(model), 1000)
    return _save(model.state_dict(), path)


def _data_parallel_state(model: nn.Module) -> dict:
    """What ``nn.DataParallel(model).state_dict()`` saves (``module.`` keys), built without
    DataParallel, which would move the model to a GPU when one is visible."""
    wrapper = nn.Module()
    wrapper.module = model
    return wrapper.state_dict()


def _sgd(model: nn.Module) -> torch.optim.SGD:
    # Hara's training options: lr 0.1, momentum 0.9, dampening 0.9, weight decay 1e-3
    return torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, dampening=0.9, weight_decay=1e-3
    )


def write_hara_resnet3d(
    path: str | Path,
    depth: int = 101,
    widths=(64, 128, 256, 512),
    packaging: str = "pretorched",
    shortcut: str = "B",
    n_classes: int | None = None,
    seed: int = 0,
) -> Path:
    """A 3D ResNet (Hara et al.) checkpoint in one of the three public packagings.

    - ``pretorched``: raw state dict as pretorched-x serves it, ``fc`` 400, 626 keys for R3D-101;
    - ``hara2017``: ``{'epoch', 'arch': 'resnet-<depth>', 'state_dict', 'optimizer'}``, keys
      ``module.``-prefixed (DataParallel), no ``num_batches_tracked``, the state dict a plain dict
      without ``_metadata``, legacy serialization; ``fc`` 400, 522 keys for R3D-101;
    - ``hara2020``: ``{'epoch', 'arch', 'state_dict', 'optimizer', 'scheduler'}`` (MultiStepLR,
      whose milestones are a ``collections.Counter``), unprefixed, ``fc`` 700.

    ``n_classes`` overrides the packaging's head size.
    """
    if packaging not in HARA_CLASSES:
        raise ValueError(f"packaging {packaging!r}: one of {sorted(HARA_CLASSES)}")
    bottleneck, depths = _depth(depth)
    classes = n_classes or HARA_CLASSES[packaging]
    with _seeded(seed):
        model = ResNet3D(bottleneck, depths, list(widths), widths[0], 7, shortcut)
        model = _with_head(_init_like_the_originals(model), classes)
    arch = f"resnet-{depth}"
    if packaging == "pretorched":
        return _save(model.state_dict(), path)
    if packaging == "hara2017":
        wrapped = _data_parallel_state(model)
        state = {k: v for k, v in wrapped.items() if not k.endswith(".num_batches_tracked")}
        checkpoint = {"epoch": 200, "arch": arch, "state_dict": state}
        checkpoint["optimizer"] = _sgd(model).state_dict()
        return _save(checkpoint, path, legacy=True)
    optimizer = _sgd(model)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[50, 100, 150])
    checkpoint = {
        "epoch": 200,
        "arch": arch,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    return _save(checkpoint, path)


def write_resdavenet(
    path: str | Path,
    widths=(128, 256, 256, 512, 1024),
    depths=(2, 2, 2, 2),
    feat_dim: int = 40,
    convsize: int = 9,
    prefixed: bool = False,
    seed: int = 0,
) -> Path:
    """ResDAVEnet-VQ's ``best_audio_model.pth``: a raw state dict (131 keys at real size);
    ``prefixed``: ``module.`` keys as its DataParallel training code writes them."""
    with _seeded(seed):
        model = _init_like_the_originals(ResDavenet(feat_dim, list(widths), list(depths), convsize))
    state = _data_parallel_state(model) if prefixed else model.state_dict()
    return _save(state, path)


# --------------------------------------------------------------------------------------------
# Hugging Face text models: hub folders of the original uploads, tiny dimensions

WORDS = (
    "the a an and or but not no is are was were be been am i you he she it we they me my your "
    "this that what who how why when where there here to of in on at for with from by about so "
    "very really just too all some one two good bad great happy sad angry afraid scared fear joy "
    "love hate like surprise surprised disgust disgusting calm neutral fine okay well think know "
    "feel feeling today day night time people man woman world life movie film story thing "
    "can do did have has had will would could should go going get got make made say said see"
).split()
PUNCTUATION = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + [str(d) for d in range(10)]
SST2_LABELS = ["NEGATIVE", "POSITIVE"]
EMOTION_LABELS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE (RoBERTa)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _distilbert_files(directory: Path) -> dict:
    """WordPiece ``vocab.txt`` with BERT's special-token ids ([PAD] 0, [UNK] 100, [CLS] 101,
    [SEP] 102, [MASK] 103) and the original 2-key ``tokenizer_config.json``; the config."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += PUNCTUATION + letters + [f"##{c}" for c in letters] + list(WORDS)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    _write_json(
        directory / "tokenizer_config.json", {"model_max_length": 512, "do_lower_case": True}
    )
    return {
        "activation": "gelu",
        "architectures": ["DistilBertForSequenceClassification"],
        "attention_dropout": 0.1,
        "dim": 32,
        "dropout": 0.1,
        "finetuning_task": "sst-2",
        "hidden_dim": 64,
        "id2label": dict(enumerate(SST2_LABELS)),
        "initializer_range": 0.02,
        "label2id": {name: i for i, name in enumerate(SST2_LABELS)},
        "max_position_embeddings": 64,
        "model_type": "distilbert",
        "n_heads": 2,
        "n_layers": 2,
        "output_past": True,
        "pad_token_id": 0,
        "qa_dropout": 0.1,
        "seq_classif_dropout": 0.2,
        "sinusoidal_pos_embds": False,
        "tie_weights_": True,
        "vocab_size": len(vocab),
    }


def _roberta_files(directory: Path) -> dict:
    """Byte-level BPE ``vocab.json`` + ``merges.txt`` (<s> 0, <pad> 1, </s> 2, <unk> 3, the 256
    byte symbols, merges spelling :data:`WORDS`, <mask> last), the original
    ``special_tokens_map.json`` and ``tokenizer_config.json``; the config."""
    vocab = ["<s>", "<pad>", "</s>", "<unk>", *_bytes_to_unicode().values()]
    merges: dict[str, None] = {}  # ordered set: rank = position
    # Words after a space ("Ġ") first, so their merge chains win and spell whole words.
    for spelled in ["\u0120" + w for w in WORDS] + list(WORDS):
        for i in range(2, len(spelled) + 1):
            merges.setdefault(f"{spelled[: i - 1]} {spelled[i - 1]}")
            if spelled[:i] not in vocab:
                vocab.append(spelled[:i])
    vocab.append("<mask>")
    _write_json(directory / "vocab.json", {token: i for i, token in enumerate(vocab)})
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": "<mask>",
    }
    _write_json(directory / "special_tokens_map.json", special)
    _write_json(
        directory / "tokenizer_config.json",
        {
            **special,
            "add_prefix_space": False,
            "errors": "replace",
            "model_max_length": 512,
            "special_tokens_map_file": None,
            "name_or_path": "distilroberta-base",
        },
    )
    return {
        "_name_or_path": "distilroberta-base",
        "architectures": ["RobertaForSequenceClassification"],
        "attention_probs_dropout_prob": 0.1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "gradient_checkpointing": False,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 32,
        "id2label": dict(enumerate(EMOTION_LABELS)),
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "label2id": {name: i for i, name in enumerate(EMOTION_LABELS)},
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 66,
        "model_type": "roberta",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "pad_token_id": 1,
        "position_embedding_type": "absolute",
        "problem_type": "single_label_classification",
        "transformers_version": "4.6.1",
        "type_vocab_size": 1,
        "use_cache": True,
        "vocab_size": len(vocab),
    }


def write_hf_text(directory: str | Path, kind: str = "distilbert", seed: int = 0) -> Path:
    """A hub-style folder like ``distilbert-base-uncased-finetuned-sst-2-english``
    (``kind="distilbert"``) or ``j-hartmann/emotion-english-distilroberta-base``
    (``kind="roberta"``): ``config.json`` with the real model type, architecture, labels and
    special-token ids but 32-wide, 2-layer dimensions; ``pytorch_model.bin`` (the
    ``*ForSequenceClassification`` state dict); the original slow-tokenizer files, from which
    ``AutoTokenizer`` builds its fast tokenizer offline."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    writers = {"distilbert": _distilbert_files, "roberta": _roberta_files}
    if kind not in writers:
        raise ValueError(f"text model kind {kind!r}: one of {sorted(writers)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_json(directory / "config.json", writers[kind](directory))
    config = AutoConfig.from_pretrained(directory)
    with _seeded(seed):
        model = AutoModelForSequenceClassification.from_config(config)
    _save(OrderedDict(model.state_dict()), directory / "pytorch_model.bin")
    return directory


def write_demo_weights(out_dir: str | Path) -> dict[str, str]:
    """The embedded demo's random backbones, ``{role: path}``: torchvision ResNet-18
    (``video2d``), Hara's 2020 3D ResNet-18 (``video3d``; BasicBlock [2,2,2,2], shortcut B,
    700 classes) and a narrow ResDAVEnet (``audio``; widths 32..256, ``module.`` keys as its
    training code writes them). The demo's text model is the real MiniLM from PyPI."""
    out = Path(out_dir)
    return {
        "video2d": str(write_torchvision_resnet(out / "resnet18.pth", depth=18)),
        "video3d": str(
            write_hara_resnet3d(out / "r3d18_K_200ep.pth", depth=18, packaging="hara2020")
        ),
        "audio": str(
            write_resdavenet(out / "davenet.pth", widths=(32, 64, 64, 128, 256), prefixed=True)
        ),
    }
