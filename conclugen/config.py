"""Config validation: JSON Schema (draft 2020-12) plus the checks a schema cannot express.

The Snakefile calls :func:`load_checked` before any rule is defined, so an unknown key, a wrong
type or a missing input path is refused before a single job runs, with the key named.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators


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
    if error.validator == "required":
        return f"{where}: {error.message}"
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


def is_local_weights(spec: str) -> bool:
    """Whether a weights spec names a local file (not a URL, package folder or registry name)."""
    if "://" in spec or spec.startswith("package:"):
        return False
    return os.sep in spec or spec.endswith((".pth", ".pt", ".bin", ".tar"))


def missing_paths(config: dict[str, Any]) -> list[str]:
    """User-supplied input paths named by ``config`` that do not exist, as ``key: path`` lines."""
    problems = []
    for name, ds in config.get("datasets", {}).items():
        if not ds.get("enabled", True):
            continue
        for i, archive in enumerate(ds["source"]["archives"]):
            path = archive.get("path")
            if path is None or produced_by_workflow(path, config):
                continue
            if not glob.glob(path):
                problems.append(f"datasets.{name}.source.archives.{i}.path: {path} does not exist")
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
    if pre.get("methods"):
        if pre["dataset"] not in enabled_datasets(config):
            problems.append(f"pretrain.dataset: {pre['dataset']} is not an enabled dataset")
        views = config["features"]["views"]
        if "instancecont" in pre["methods"] and (
            pre["dataset"] not in views["datasets"] or views["count"] < 2
        ):
            problems.append(
                "pretrain.methods: instancecont needs features.views.count >= 2 and "
                f"{pre['dataset']} in features.views.datasets"
            )
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
    return problems


def load_checked(config: dict[str, Any], schema_path: str | os.PathLike) -> dict[str, Any]:
    """Schema validation, then consistency, the weights (:func:`conclugen.weights.spec_problems`)
    and existence of every user-supplied path (offline, of hub weights in their caches too:
    :func:`conclugen.weights.uncached_weights`); raise ConfigError."""
    from conclugen.weights import spec_problems, uncached_weights

    validate(config, schema_path)
    problems = inconsistencies(config)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"inconsistent config:\n{lines}")
    problems = spec_problems(config)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"config names weights that cannot be loaded:\n{lines}")
    problems = missing_paths(config) + uncached_weights(config)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"config names paths that do not exist:\n{lines}")
    return config


def enabled_datasets(config: dict[str, Any]) -> list[str]:
    return [name for name, ds in config["datasets"].items() if ds.get("enabled", True)]
