"""Every figure of the pipeline, drawn from arrays: one run's confusion matrix, the paper's
Figures 2-3 (confusion matrices summed over seeds), a 2-D embedding of a method's
representations, the label-efficiency curves, ours against the paper, the pretraining loss
curves and the face-track contact sheet. The stages read their files and compute what is
drawn; this module imports none of them."""

from __future__ import annotations

import os
from collections.abc import Iterable

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


def run_confusion_figure(
    confusion: np.ndarray, names: list[str], title: str, path: str | os.PathLike
) -> None:
    """One run's confusion matrix, class names on the axes; multi-label (``[L, 2, 2]``): one
    2x2 per label side by side."""
    plt = pyplot()
    if confusion.ndim == 3:
        fig, axes = plt.subplots(1, len(names), figsize=(2.2 * len(names), 2.6), squeeze=False)
        panels = [
            (ax, m, ["0", "1"], name) for ax, m, name in zip(axes[0], confusion, names, strict=True)
        ]
    else:
        size = 1.5 + 0.6 * len(names)
        fig, ax = plt.subplots(figsize=(size, size))
        panels = [(ax, confusion, names, None)]
    for ax, m, ticks, name in panels:
        draw_confusion(ax, m, ticks, ticks, name, rotation=45 if name is None else 0)
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


def confusion_figure(
    panels: dict[str, tuple[np.ndarray, list[str]]], path: str | os.PathLike, title: str
) -> None:
    """One confusion matrix per panel (``title -> (matrix, class names)``), rows true and columns
    predicted, coloured by the row's share (the recall per class), in a grid of two columns as
    the paper's Figures 2-3."""
    plt = pyplot()
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (name, (m, names)) in zip(axes.flat, panels.items(), strict=False):
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
    rep: torch.Tensor, target: torch.Tensor, classes: list[str], path: str | os.PathLike, title: str
) -> None:
    """PCA of representations ``rep`` [N, D], each point coloured by its class id ``target``."""
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


def label_efficiency_figure(
    panels: dict[str, dict[str, tuple]], path: str | os.PathLike, title: str, ylabel: str
) -> None:
    """One panel per dataset (``title -> {series: (labels %, mean, std)}``), side by side: each
    series' mean against the share of train labels on a log x-axis (ticks at the shares, in
    percent), its std over seeds as error bars (none where it is NaN: a single seed)."""
    plt = pyplot()
    width = max(6, 5 * len(panels))
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.5), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels.items(), strict=True):
        for label, (x, mean, std) in series.items():
            yerr = np.nan_to_num(np.asarray(std, dtype=float))
            ax.errorbar(x, mean, yerr=yerr, marker="o", capsize=3, label=label)
        ticks = sorted({float(v) for x, _, _ in series.values() for v in x})
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g} %" for t in ticks])
        ax.minorticks_off()
        ax.set(xlabel="train labels", ylabel=ylabel, title=name)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)


def paper_comparison_figure(
    panels: dict[str, list[tuple[str, float, tuple]]], path: str | os.PathLike, title: str
) -> None:
    """Ours against the paper, one panel per title (``title -> [(cell, published, seeds)]``),
    two panels a row: per cell our mean over seeds as a bar with the sample std as its error bar
    and each seed as a dot, and the published number as a hatched bar beside it (none where NaN)."""
    plt = pyplot()
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(14, 3.6 * rows), squeeze=False)
    for ax, (name, cells) in zip(axes.flat, panels.items(), strict=False):  # a spare axis
        x = np.arange(len(cells))
        for i, (_, published, seeds) in enumerate(cells):
            if seeds:
                std = np.std(seeds, ddof=1) if len(seeds) > 1 else 0.0
                ax.bar(i - 0.2, np.mean(seeds), 0.4, yerr=std, capsize=3, color="tab:blue")
                ax.plot(np.full(len(seeds), i - 0.2), seeds, "k.", markersize=4)
            if not np.isnan(published):
                ax.bar(i + 0.2, published, 0.4, color="0.8", hatch="//", edgecolor="0.4")
        ax.set_xticks(x, [cell for cell, _, _ in cells], rotation=30, ha="right", fontsize=8)
        ax.set(title=name, ylabel="%", xlim=(-0.7, len(cells) - 0.3))
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color="tab:blue"),
        plt.Rectangle((0, 0), 1, 1, facecolor="0.8", hatch="//", edgecolor="0.4"),
    ]
    fig.legend(handles, ["ours (mean ± std, dots: seeds)", "paper"], loc="upper right")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    save_png(fig, path)


def loss_figure(
    epochs, total, terms: dict[str, np.ndarray], ylabel: str, path: str | os.PathLike
) -> None:
    """Loss curves over ``epochs`` on a log scale: ``total`` bold, each of ``terms`` thin."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, total, label="total", lw=2)
    for name, values in terms.items():
        ax.plot(epochs, values, label=name, lw=1)
    ax.set(xlabel="epoch", ylabel=ylabel, yscale="log")
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


Box = tuple[float, float, float, float]


def contact_sheet(
    rows: Iterable[tuple[str, list[tuple[np.ndarray, Box | None, Box]]]],
    n_rows: int,
    per_row: int,
    path: str | os.PathLike,
    thumb: int = 160,
) -> None:
    """A PNG grid of ``n_rows`` rows of ``per_row`` thumbnails: each row a ``(label, frames)``,
    each frame ``(image, detection, track)`` with the detection box (if any) drawn in green and
    the track box in red. ``rows`` may be a generator: one row's frames are held at a time."""
    from PIL import Image, ImageDraw

    sheet = Image.new("RGB", (per_row * thumb, max(1, n_rows) * thumb), "white")
    for row, (label, frames) in enumerate(rows):
        for col, (frame, detection, track) in enumerate(frames):
            image = Image.fromarray(frame)
            draw = ImageDraw.Draw(image)
            if detection is not None:
                draw.rectangle(list(detection), outline=(0, 255, 0), width=2)
            draw.rectangle(list(track), outline=(255, 0, 0), width=2)
            image.thumbnail((thumb, thumb))
            sheet.paste(image, (col * thumb, row * thumb))
        ImageDraw.Draw(sheet).text((2, row * thumb + 2), label, fill=(255, 255, 0))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
