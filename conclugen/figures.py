"""The report's figures: confusion matrices as the paper's Figures 2-3, and a 2-D embedding of
each pretrained method's representations (pretraining loss curves are drawn by
:mod:`conclugen.pretrain`, face-crop previews by :mod:`conclugen.faces`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from conclugen.io import atomic_path


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | os.PathLike) -> None:
    """Write ``fig`` atomically as a PNG and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    pyplot().close(fig)


def draw_confusion(ax, m: np.ndarray, x_names, y_names, title, fontsize=None, rotation=45):
    """A confusion matrix on ``ax``: rows true, columns predicted, each cell's count, coloured by
    its share of the row (the recall per class)."""
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=fontsize,
                color="w" if share[i, j] > 0.5 else "k")  # fmt: skip
    ax.set_xticks(range(m.shape[1]), x_names, rotation=rotation)
    ax.set_yticks(range(m.shape[0]), y_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)


def summed_confusion(metrics_paths: list[str | os.PathLike]) -> tuple[np.ndarray, list[str]]:
    """The test confusion matrices of several runs (seeds) summed, and the class names."""
    records = [json.loads(Path(p).read_text()) for p in metrics_paths]
    total = sum(np.asarray(r["confusion"]) for r in records)
    return total, records[0]["per_class"]["names"]


def confusion_figure(panels: dict[str, list], path: str | os.PathLike, title: str) -> None:
    """One confusion matrix per panel (``title -> metrics.json paths``, summed over seeds), rows
    true and columns predicted, coloured by the row's share (the recall per class), in a grid of
    two columns as the paper's Figures 2-3."""
    plt = pyplot()
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (name, paths) in zip(axes.flat, panels.items(), strict=False):
        m, names = summed_confusion(paths)
        if m.ndim == 3:  # multi-label: each label's [[TN, FP], [FN, TP]] side by side
            m = np.concatenate(list(m), 1)
            names = [f"{n}:{v}" for n in names for v in (0, 1)]
        x_names = names if m.shape[0] == m.shape[1] else []
        title_n = f"{name} (n={int(m.sum())})"
        draw_confusion(ax, m, x_names, names[: m.shape[0]], title_n, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


def pca_2d(x: torch.Tensor) -> torch.Tensor:
    """[N, D] -> [N, 2]: the projection on the two leading principal components."""
    x = x.double() - x.double().mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return (x @ v[:2].T).float()


def embedding_figure(
    model_path: str | os.PathLike,
    features_path: str | os.PathLike,
    manifest_path: str | os.PathLike,
    dataset: str,
    path: str | os.PathLike,
    title: str,
) -> None:
    """PCA of a pretrained model's concatenated modality representations (the linear probe's
    input) on every labelled sample of ``dataset``, coloured by class (single-label datasets)."""
    from conclugen.downstream import HPARAMS, TASKS, build_classifier, load_task

    if TASKS[dataset]["multilabel"]:
        raise ValueError(f"{dataset} is multi-label; choose a single-label dataset")
    task = load_task(features_path, manifest_path, dataset)
    feats, target, classes = task.feats, task.target, task.classes
    model = build_classifier("linear", model_path, feats.dims, len(classes), HPARAMS).eval()
    mods = list(model.heads)
    with torch.no_grad():
        x = {m: feats.features[m].float() for m in mods}
        rep = model.represent(x, {m: feats.present[m] for m in mods})
    xy = pca_2d(rep).numpy()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for k, name in enumerate(classes):
        sel = target.numpy() == k
        ax.scatter(xy[sel, 0], xy[sel, 1], s=14, label=name)
    ax.set(xlabel="PC 1", ylabel="PC 2", title=title)
    ax.legend(fontsize=7, markerscale=1.5)
    fig.tight_layout()
    save_png(fig, path)
