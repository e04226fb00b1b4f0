"""Config validation: JSON Schema (draft 2020-12) plus the checks a schema cannot express.

The Snakefile calls :func:`check_config` before any rule is defined: an unknown key, a wrong type,
settings that do not fit together or a weight name that cannot work are refused there, with the
key named. Inputs that are not there yet (:func:`missing_inputs`: the data, local weights, hub
weights not cached while offline) do not stop the planning: ``-n``, ``--lint``, ``--list-rules``
and ``--dag`` only warn about them; a run whose jobs read one is refused before any job
(:func:`needed_missing`, from the Snakefile's ``onstart``). :func:`load_checked` refuses all of it
at once (for code outside Snakemake).

Paths. Relative paths in the config are the working directory's (Snakemake's ``--directory``,
where ``results/`` is written), as every path of the workflow, except ``exclusions``: the list of
known-bad samples ships with the checkout, so a relative one is the checkout's
(:func:`check_config`'s ``checkout``). :func:`overlay_problem` refuses a partial config given
alone with ``--configfile``.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from conclugen.weights import (
    FETCH_COMMAND,
    Weight,
    cache_problem,
    is_local_weights,
    offline,
    weight_problem,
)

# The pretraining methods trained on the augmented video views (conclugen.pretrain.uses_views;
# not imported from there: this module loads without torch), and those trained on the temporal
# windows (conclugen.pretrain.uses_windows).
VIEW_METHODS = ("instancecont", "byol", "dino")
WINDOW_METHODS = ("mpuc", "mpuc_wo_text")


def pretraining_dataset(config: dict[str, Any], method: str) -> str:
    """The dataset ``method`` pretrains on: its entry of ``pretrain.datasets``, else
    ``pretrain.dataset``."""
    pre = config["pretrain"]
    return pre.get("datasets", {}).get(method, pre["dataset"])


class ConfigError(ValueError):
    """The config does not satisfy the schema or names a path that does not exist."""


def _with_defaults(validator_class):
    """A validator that fills in schema ``default`` values while it validates (jsonschema FAQ)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _describe(error) -> str:
    """One line per error that names the offending key, the way a user reads their YAML."""
    where = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        names = ", ".join(f"{where}.{k}" if error.absolute_path else k for k in extra)
        return f"unknown key {names} (allowed here: {', '.join(allowed)})"
    return f"{where}: {error.message}"


def validate(config: dict[str, Any], schema_path: str | os.PathLike) -> dict[str, Any]:
    """Validate ``config`` in place against the schema, filling defaults; raise ConfigError."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = _with_defaults(Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n".join(f"  - {_describe(e)}" for e in errors)
        raise ConfigError(f"invalid config ({len(errors)} problem(s)):\n{lines}")
    return config


def produced_by_workflow(path: str, config: dict[str, Any]) -> bool:
    """Whether ``path`` is written by the workflow itself (the demo's look-alike archives)."""
    look = config.get("lookalike", {})
    if not look.get("enabled"):
        return False
    root = os.path.normpath(look["root"])
    return os.path.normpath(path).startswith(root + os.sep)


def is_glob(path: str) -> bool:
    """Whether a user path is a pattern (split archive parts such as ``vox2_dev_mp4_parta?``)."""
    return any(c in path for c in "*?[")


def user_archives(config: dict[str, Any], dataset: str):
    """``(index, path, matches)`` of each ``path`` archive of a dataset's source the user
    supplies (not the demo's look-alike archives): ``matches`` what the path (``~`` expanded,
    a glob of parts) names now, sorted."""
    for i, archive in enumerate(config["datasets"][dataset]["source"]["archives"]):
        path = archive.get("path")
        if path is not None and not produced_by_workflow(path, config):
            yield i, path, sorted(glob.glob(os.path.expanduser(path)))


def source_files(config: dict[str, Any], dataset: str) -> list[str]:
    """The user's files a dataset's download takes (:func:`user_archives`, every part of a
    glob; not a folder, which is linked as is), those that exist: the download rule's inputs,
    so replacing one reruns it."""
    return [p for _, _, found in user_archives(config, dataset) for p in found if os.path.isfile(p)]


def missing_paths(config: dict[str, Any]) -> list[str]:
    """User-supplied input paths named by ``config`` that do not exist, as ``key: path`` lines."""
    problems = []
    for name, ds in config.get("datasets", {}).items():
        if not ds.get("enabled", True):
            continue
        for i, path, found in user_archives(config, name):
            if not found:
                what = "matches no file" if is_glob(path) else "does not exist"
                problems.append(f"datasets.{name}.source.archives.{i}.path: {path} {what}")
    for role in ("video2d", "video3d", "audio"):
        spec = config.get("features", {}).get(role, {}).get("weights", "")
        if is_local_weights(spec) and not produced_by_workflow(spec, config):
            if not Path(spec).exists():
                problems.append(f"features.{role}.weights: {spec} does not exist")
    exclusions = config.get("exclusions")
    if exclusions and not Path(exclusions).exists():
        problems.append(f"exclusions: {exclusions} does not exist")
    return problems


def inconsistencies(config: dict[str, Any]) -> list[str]:
    """Settings that are valid one by one but do not fit together."""
    problems = []
    pre = config.get("pretrain", {})
    methods = pre.get("methods") or []
    for key, dataset in dict.fromkeys(
        (f"pretrain.datasets.{m}" if m in pre.get("datasets", {}) else "pretrain.dataset",
         pretraining_dataset(config, m)) for m in methods
    ):  # fmt: skip
        if dataset not in enabled_datasets(config):
            problems.append(f"{key}: {dataset} is not an enabled dataset")
    for kind, needing in (("views", VIEW_METHODS), ("windows", WINDOW_METHODS)):
        spec, lacking = config["features"][kind], {}
        for method in (m for m in methods if m in needing):
            dataset = pretraining_dataset(config, method)
            if dataset not in spec["datasets"] or spec["count"] < 2:
                lacking.setdefault(dataset, []).append(method)
        what = "video views" if kind == "views" else "temporal windows"
        for dataset, names in lacking.items():
            problems.append(
                f"pretrain.methods: {', '.join(names)} train on the {what}, which needs "
                f"features.{kind}.count >= 2 and {dataset} in features.{kind}.datasets"
            )
    views = config.get("features", {}).get("views", {})
    augment = config.get("features", {}).get("augment", {})
    ranges = {f"views.{k}": views.get(k) for k in ("crop_scale", "crop_ratio", "blur_sigma")}
    ranges |= {
        f"augment.video.{k}": augment.get("video", {}).get(k) for k in ("crop_scale", "crop_ratio")
    }
    ranges["augment.audio.max_width"] = augment.get("audio", {}).get("max_width")
    for key, value in ranges.items():
        if value and value[0] > value[1]:
            problems.append(f"features.{key}: {value} is not [low, high]")
    if views.get("jitter_strength", [0] * 4)[3] > 0.5:
        problems.append("features.views.jitter_strength: the hue strength is at most 0.5")
    down = config.get("downstream", {})
    evaluated = down.get("methods")
    pretrained = set(pre.get("methods") or [])
    if evaluated is not None and set(evaluated) - pretrained:
        problems.append(
            f"downstream.methods: {sorted(set(evaluated) - pretrained)} are not pretrained "
            "(pretrain.methods)"
        )
    evaluated = set(pretrained if evaluated is None else evaluated)
    for key in ("finetune", "vision"):
        extra = set(down.get(key, [])) - evaluated
        if extra:
            problems.append(f"downstream.{key}: {sorted(extra)} are not evaluated methods")
    unknown = set(down.get("label_efficiency", {}).get("methods", [])) - pretrained - {"supervised"}
    if unknown:
        problems.append(
            f"downstream.label_efficiency.methods: {sorted(unknown)} are not pretrained "
            "(pretrain.methods)"
        )
    problems += _regression_problems(down.get("regression", {}), evaluated | {"supervised"})
    return problems


def _regression_problems(reg: dict[str, Any], evaluated: set[str]) -> list[str]:
    """downstream.regression's methods among the evaluated ones, its table's loss among its
    losses, and every loss with a value term (w_ccc + w_mse > 0)."""
    problems = []
    for key in ("methods", "loss_methods"):
        extra = set(reg.get(key) or []) - evaluated
        if extra:
            problems.append(
                f"downstream.regression.{key}: {sorted(extra)} are not evaluated methods"
            )
    losses = reg.get("losses", {})
    if reg.get("loss") is not None and reg["loss"] not in losses:
        problems.append(f"downstream.regression.loss: {reg['loss']} is not one of its losses")
    for name, weights in losses.items():
        if weights.get("ccc", 0) + weights.get("mse", 0) <= 0:
            problems.append(
                f"downstream.regression.losses.{name}: needs ccc or mse above 0 (the prediction)"
            )
    return problems


def check_config(
    config: dict[str, Any],
    schema_path: str | os.PathLike,
    checkout: str | os.PathLike | None = None,
) -> list[str]:
    """Schema validation (defaults filled in), consistency and the weights' names and kinds
    (:func:`conclugen.weights.spec_problems`): raise ConfigError. Then return the
    :func:`missing_inputs` lines. With ``checkout``, a relative ``exclusions`` path becomes that
    folder's (it ships with the checkout; module docstring)."""
    validate(config, schema_path)
    problems = inconsistencies(config)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"inconsistent config:\n{lines}")
    problems = spec_problems(config)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"config names weights that cannot be loaded:\n{lines}")
    if checkout is not None and config.get("exclusions"):
        config["exclusions"] = os.path.join(checkout, config["exclusions"])
    return missing_inputs(config)


def missing_inputs(config: dict[str, Any]) -> list[str]:
    """``key: problem`` lines for every input the jobs would read that is not there: missing
    paths and, offline, hub weights not in their caches
    (:func:`conclugen.weights.uncached_weights`)."""
    return missing_paths(config) + uncached_weights(config)


def missing_message(problems: list[str], planning: bool = False) -> str:
    """The refusal of a run (or, ``planning``, the warning of a plan) that names ``problems``."""
    lines = "\n".join(f"  - {p}" for p in problems)
    if planning:
        return (
            "config names paths that do not exist (planning goes on; a run whose jobs read "
            f"them is refused before any job):\n{lines}"
        )
    return f"config names paths that do not exist:\n{lines}"


def load_checked(config: dict[str, Any], schema_path: str | os.PathLike) -> dict[str, Any]:
    """:func:`check_config` (relative paths are the working directory's), with a missing input
    an error too; raise ConfigError."""
    problems = check_config(config, schema_path)
    if problems:
        raise ConfigError(missing_message(problems))
    return config


# The rule whose jobs read what a missing_inputs line names (by its key's first two parts, else
# its first), and the wildcard that the key's second part gives: datasets.caer.* -> the download
# of caer only; features.audio.* -> the audio jobs; a video backbone's -> every video job.
READ_BY = {
    "datasets": ("download", "dataset"),
    "features.video2d": ("features_video", None),
    "features.video3d": ("features_video", None),
    "features": ("features", "role"),
    "subtitles": ("subtitles", None),
    "exclusions": ("manifest", None),
}


def needed_missing(problems: list[str], jobs) -> list[str]:
    """The :func:`missing_inputs` lines that the jobs to run read; ``jobs`` are
    ``(rule name, wildcards dict)`` pairs. A key of an unknown kind counts for every run."""
    jobs = list(jobs)
    needed = []
    for problem in problems:
        key = problem.split(":", 1)[0].split(".")
        rule, wildcard = READ_BY.get(".".join(key[:2])) or READ_BY.get(key[0], (None, None))
        if rule is None or any(
            name == rule and (wildcard is None or wildcards.get(wildcard) == key[1])
            for name, wildcards in jobs
        ):
            needed.append(problem)
    return needed


def overlay_problem(
    config: dict[str, Any], base_path: str | os.PathLike, configfiles: list
) -> str | None:
    """Why a config given alone with ``--configfile`` is not a whole config (``None``: it is).

    Snakemake reads the files given instead of config/config.yaml, not on top of it, so a file
    that sets only a few keys (the data's paths) would silently run with the schema's defaults
    instead of the paper's settings; it lacks some of the base config's top-level sections."""
    base = yaml.safe_load(Path(base_path).read_text())
    lacking = [key for key in base if key not in config]
    if not lacking:
        return None
    files = " ".join(_shown(f) for f in configfiles)
    return (
        f"--configfile {files} lacks the sections {', '.join(lacking)} of {_shown(base_path)}. "
        "Snakemake reads the config files given instead of the paper config, not on top of it: "
        f"name the paper config first, `--configfile {_shown(base_path)} {files}` (later files "
        "override earlier ones key by key), or give a whole config such as config/demo.yaml."
    )


def _shown(path: str | os.PathLike) -> str:
    """A path as a user types it here: relative when it is under the working directory."""
    path = Path(path).absolute()
    cwd = Path.cwd()
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)


def enabled_datasets(config: dict[str, Any]) -> list[str]:
    return [name for name, ds in config["datasets"].items() if ds.get("enabled", True)]


def weights_key(role: str) -> str:
    """The key of a backbone's weights in its ``features`` settings: the text encoder names a
    Hugging Face ``model``, the other roles load ``weights`` (a checkpoint)."""
    return "model" if role == "text" else "weights"


def configured_weights(config: dict[str, Any]) -> list[Weight]:
    """Every weight the config's jobs load, less those the workflow writes itself (demo)."""
    out = [
        Weight(
            f"features.{role}.{weights_key(role)}",
            config["features"][role][weights_key(role)],
            "text" if role == "text" else "checkpoint",
        )
        for role in ("video2d", "video3d", "audio", "text")
    ]
    sub = config["subtitles"]
    if set(sub["datasets"]) & set(enabled_datasets(config)):
        out.append(Weight("subtitles.model", sub["model"], sub["backend"]))
    return [w for w in out if not produced_by_workflow(w.spec, config)]


def spec_problems(config: dict[str, Any]) -> list[str]:
    """``key: problem`` lines for the configured weights that cannot work: names, local paths'
    kinds and formats (:func:`conclugen.weights.weight_problem`). Missing local files are
    :func:`missing_paths`'s; an empty cache is :func:`uncached_weights`'."""
    problems = []
    for weight in configured_weights(config):
        problem = weight_problem(weight)
        if problem:
            problems.append(f"{weight.key}: {problem}")
    return problems


def uncached_weights(config: dict[str, Any]) -> list[str]:
    """Offline (:func:`conclugen.weights.offline`): ``key: problem`` lines for the hub weights
    not in their cache, each naming the command that fills it; online, none (the jobs would
    fetch them)."""
    if not offline():
        return []
    problems = []
    for weight in configured_weights(config):
        try:
            problem = cache_problem(weight)
        except ValueError:
            continue  # a bad name: spec_problems reports it
        if problem:
            problems.append(f"{weight.key}: {problem}; fill it with {FETCH_COMMAND}")
    return problems
