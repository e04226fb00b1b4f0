"""Exported models: one downstream run's classifier as a folder that travels without the workflow.

:func:`export_model` writes ``model.safetensors`` (the classifier of one run,
:func:`conclugen.downstream.save_classifier`: representation heads and linear layer, with the
architecture in the file's metadata), ``config.json`` (:func:`model_config`) and ``README.md``
(a model card). :func:`load` reads such a folder back with nothing but this package; the
:class:`ExportedModel` it returns turns precomputed features into class probabilities, and
``conclugen predict`` (:mod:`conclugen.predict`) computes those features from a video.

``config.json`` holds what a user of the model needs to feed it: the backbones and their
settings (the config's ``features`` section: weights or model names as configured, crop size,
mean and std; the frame and audio sampling of :mod:`conclugen.features`; the storage ``dtype``
the classifier was trained on), the face-crop and Whisper settings, the class names and what a
probability means (single-label: softmax; CMU-MOSEI: one sigmoid per emotion, the probability
that its intensity is > 0), the run's test metrics, and ``config_digest``: the SHA-256 of the
settings the model came from (canonical JSON), to tell two exports of different configs apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from conclugen import __version__, features
from conclugen.downstream import TASKS, Classifier, classifier_spec, load_classifier
from conclugen.featstore import MODALITIES
from conclugen.io import atomic_path

FORMAT = "conclugen-export/1"
METRICS = ("accuracy", "f1", "precision", "recall")
LABELS = {
    False: "softmax over the classes: the probabilities sum to 1; the prediction is the most "
    "probable class",
    True: "one sigmoid per emotion: the probability that the emotion is present (its intensity "
    "> 0); an emotion is predicted present above 0.5",
}
#: How :mod:`conclugen.features` samples a clip (what the backbones were fed).
SAMPLING = dict(
    frame_fps=features.FPS,
    video2d_every=features.FPS,  # every 16th frame of the 16 fps grid: 1 fps
    video3d_window=features.WINDOW,
    sample_rate=features.SAMPLE_RATE,
    n_fft=features.N_FFT,
    hop=features.HOP,
    n_mels=features.N_MELS,
)


def config_digest(settings: dict) -> str:
    """``sha256:<hex>`` of ``settings`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def model_config(model: Classifier, metrics: dict, settings: dict, method: str) -> dict:
    """``config.json`` of an export: the run's record (``metrics``, its ``metrics.json``) and
    the pipeline's ``settings`` (``features``, ``faces``, ``subtitles`` sections as the
    workflow resolved them, ``cropped``: whether the dataset's clips were face-cropped, and
    ``has_text``: whether it had text of its own; the rest only enters the digest)."""
    dataset = metrics["dataset"]
    multilabel = TASKS[dataset]["multilabel"]
    feats = settings["features"]
    return dict(
        format=FORMAT,
        conclugen_version=__version__,
        dataset=dataset,
        method=method,
        protocol=metrics["protocol"],
        seed=metrics["seed"],
        task="multi_label" if multilabel else "single_label",
        classes=list(metrics["per_class"]["names"]),
        labels=LABELS[multilabel],
        architecture=classifier_spec(model),
        modalities=list(model.heads),
        features=dict(
            crop_size=feats["crop_size"],
            dtype=feats["dtype"],
            precision=feats["precision"],
            sampling=SAMPLING,
            **{role: feats[role] for role in features.ROLES},
        ),
        faces=dict(settings["faces"], cropped=settings["cropped"]),
        subtitles=dict(settings["subtitles"], dataset_has_text=settings["has_text"]),
        metrics=dict(
            test={k: metrics[k] for k in METRICS},
            val=metrics["val"],
            n_train=metrics["n_train"],
            n_val=metrics["n_val"],
            n_test=metrics["n_test"],
            best_epoch=metrics["best_epoch"],
        ),
        config_digest=config_digest(settings),
    )


def export_model(run_dir: str | os.PathLike, out_dir: str | os.PathLike, settings: dict,
                 method: str) -> dict:  # fmt: skip
    """Export the run in ``run_dir`` (:func:`conclugen.downstream.run_dir`: its
    ``classifier.safetensors`` and ``metrics.json``) to the folder ``out_dir`` (written
    atomically); returns its config (:func:`model_config`)."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    model = load_classifier(run_dir / "classifier.safetensors")
    config = model_config(model, metrics, settings, method)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        shutil.copyfile(run_dir / "classifier.safetensors", tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "README.md").write_text(model_card(config))
    return config


def model_card(config: dict) -> str:
    """The export's README.md: what the model is, its data and metrics, how to use it, limits."""
    test, feats = config["metrics"]["test"], config["features"]
    backbones = "\n".join(
        f"- `{role}`: `{feats[role]['model' if role == 'text' else 'weights']}`"
        for role in features.ROLES
    )
    crop = "face crops (MTCNN track)" if config["faces"]["cropped"] else "whole frames"
    text = "its own transcripts" if config["subtitles"]["dataset_has_text"] else "Whisper subtitles"
    metrics = " | ".join(f"{test[k]:.3f}" for k in METRICS)
    hidden = config["architecture"].get("hidden", 0)
    readout = f"fc ({hidden} units) + ReLU + fc" if hidden else "a linear layer"
    keypoints = (
        "\n- `keypoints`: the MTCNN face track's five landmarks, encoded over time (no backbone)"
        if "keypoints" in config["modalities"]
        else ""
    )
    return f"""# ConCluGen {config["method"]}: {config["dataset"]} emotion classifier

A downstream classifier of the ConCluGen reproduction (`conclugen` {config["conclugen_version"]}):
the {config["method"]} representation heads, {config["protocol"]} protocol (seed
{config["seed"]}), and {readout} over the concatenated representations of
{", ".join(config["modalities"])}. It reads features of four frozen backbones, not pixels:

{backbones}{keypoints}

Classes ({config["task"]}): {", ".join(config["classes"])}. Probabilities: {config["labels"]}.

## Data

Trained on the train split of {config["dataset"]} ({config["metrics"]["n_train"]} clips;
{crop}, crop size {feats["crop_size"]}; text from {text}), model selection on its validation
split ({config["metrics"]["n_val"]} clips). Config digest: `{config["config_digest"]}`.

## Test metrics ({config["metrics"]["n_test"]} clips; weighted F1, precision and recall)

| accuracy | F1 | precision | recall |
|---|---|---|---|
| {metrics} |

## Use

```
conclugen predict clip.mp4 --model {"<this folder>"}
conclugen predict clip.mp4 --model {"<this folder>"} --timeline --json
```

In Python, on features computed as the pipeline computes them:

```python
from conclugen.export import load
model = load("<this folder>")
probabilities = model.probabilities(features, present)  # modality -> [N, D], [N] bool
```

The backbone weights are read from the same caches and paths as the pipeline's jobs
(`make weights` fills the caches); relative paths are the working directory's.

## Limits

The classifier only knows the features of the backbones above: other backbones, crop sizes or
sampling make its inputs meaningless. Its metrics are those of {config["dataset"]}'s test
split; clips unlike that data (other faces, languages, recording conditions) may score far
worse. Models trained on the demo's synthetic look-alike data predict nothing about real
emotions.
"""


@dataclass
class ExportedModel:
    """A loaded export: the classifier (eval mode) and its ``config.json``."""

    classifier: Classifier
    config: dict

    @property
    def classes(self) -> list[str]:
        return self.config["classes"]

    @property
    def multilabel(self) -> bool:
        return self.config["task"] == "multi_label"

    @torch.no_grad()
    def probabilities(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor]):
        """[N, C] float32 probabilities (softmax, or per-label sigmoid for multi-label) of
        features ``x`` (modality -> [N, D], every modality the classifier reads; its full
        feature width, video = 2D || 3D) and ``present`` (modality -> [N] bool). Features are
        first rounded to the storage dtype the classifier was trained on, as the pipeline's."""
        dtype = getattr(torch, self.config["features"]["dtype"])
        mods = [m for m in MODALITIES if m in self.classifier.heads]
        inputs = {m: x[m].to(dtype).float() for m in mods}
        logits = self.classifier(inputs, {m: present[m].bool() for m in mods}).float()
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, 1)


def load(folder: str | os.PathLike) -> ExportedModel:
    """The model of an export folder (:func:`export_model`)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not an exported model (no config.json)")
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{config_path}: format {config.get('format')!r}, expected {FORMAT!r}")
    return ExportedModel(load_classifier(folder / "model.safetensors"), config)
