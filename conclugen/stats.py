"""A dataset on one page: samples per split and class, what every stage dropped or kept and why,
and the extras of the release (``results/{dataset}/dataset_stats.{json,html}``).

``samples`` counts the manifest's rows per split, ``usable`` those that no later stage dropped
(the samples that reach the features store). Ledger rows are grouped by stage, action and the
kind of reason: the reason up to its first colon with numbers written as ``N``, so
"video file missing: dia7_utt7.mp4" and "...: dia8_utt1.mp4" are one line, with a count and an
example sample.
"""

from __future__ import annotations

import html
import json
import os
import re

import numpy as np
import pandas as pd

from conclugen.io import atomic_path
from conclugen.ledger import COLUMNS as LEDGER_COLUMNS

SPLIT_ORDER = ("train", "val", "test")
#: A number that stands alone ("12.50 s", "3.1e-05", both sides of "16x16"), not part of a name
#: such as "mp4" or "m4a".
NUMBER = re.compile(r"(?<![A-Za-z])\d+(?:\.\d+)?(?:e[-+]?\d+)?|(?<=\dx)\d+")


def reason_kind(reason: str) -> str:
    return NUMBER.sub("N", reason.split(":", 1)[0]).strip()


def _class_counts(frame: pd.DataFrame, classes: list[str]) -> dict[str, dict[str, int]]:
    """Per split, the samples labelled with each class (multi-label: intensity above 0)."""
    labelled = frame[frame["labels"].notna()]
    if not classes or labelled.empty:
        return {}
    positive = np.stack(labelled["labels"].map(np.asarray)) > 0
    counts = {}
    for split in _splits(labelled):
        per_class = positive[(labelled["split"] == split).to_numpy()].sum(0).tolist()
        counts[split] = dict(zip(classes, per_class, strict=True))
    return counts


def _splits(frame: pd.DataFrame) -> list[str]:
    return [s for s in SPLIT_ORDER if (frame["split"] == s).any()]


def dataset_stats(
    dataset: str, manifest: pd.DataFrame, classes: list[str], ledger: pd.DataFrame
) -> dict:
    """The one-page summary of a dataset from its manifest and its merged failure ledger."""
    later = ledger[(ledger["stage"] != "manifest") & (ledger["action"] == "dropped")]
    usable = manifest[~manifest["sample_id"].isin(later["sample_id"])]
    groups = (
        ledger.assign(kind=ledger["reason"].map(reason_kind))
        .groupby(["stage", "action", "kind"], sort=False)["sample_id"]
        .agg(["size", "first"])
        .reset_index()
        .sort_values(["action", "size"], ascending=[True, False], kind="stable")
    )
    return {
        "dataset": dataset,
        "samples": manifest["split"].value_counts().reindex(_splits(manifest)).to_dict(),
        "usable": usable["split"].value_counts().reindex(_splits(manifest), fill_value=0).to_dict(),
        "classes": _class_counts(manifest, classes),
        "ledger": [
            {
                "stage": g.stage,
                "action": g.action,
                "reason": g.kind,
                "count": int(g.size),
                "example": g.first,
            }  # fmt: skip
            for g in groups.itertuples()
        ],
        "totals": {a: int((ledger["action"] == a).sum()) for a in ("dropped", "kept", "extra")},
    }


def _table(header: list[str], rows: list[list]) -> str:
    cells = lambda tag, row: "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in row)  # noqa: E731
    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><tr>{cells('th', header)}</tr>{body}</table>"


def to_html(stats: dict) -> str:
    splits = list(stats["samples"])
    parts = [
        f"<h1>{html.escape(stats['dataset'])}</h1>",
        "<h2>Samples</h2>",
        _table(
            ["", *splits, "all"],
            [
                ["in the manifest", *stats["samples"].values(), sum(stats["samples"].values())],
                [
                    "usable (reach the features)",
                    *stats["usable"].values(),
                    sum(stats["usable"].values()),
                ],  # fmt: skip
            ],
        ),
    ]
    if stats["classes"]:
        classes = list(next(iter(stats["classes"].values())))
        rows = [[c, *(stats["classes"][s][c] for s in stats["classes"])] for c in classes]
        parts += ["<h2>Samples per class</h2>", _table(["class", *stats["classes"]], rows)]
    totals = stats["totals"]
    parts += [
        f"<h2>Failure ledger</h2><p>{totals['dropped']} dropped, {totals['kept']} kept with a "
        f"defect, {totals['extra']} extras (in the release, not samples; never failures). Every "
        "row is in failures.tsv.</p>",
        _table(
            ["stage", "action", "reason", "count", "example"],
            [
                [r["stage"], r["action"], r["reason"], r["count"], r["example"]]
                for r in stats["ledger"]
            ],  # fmt: skip
        ),
    ]
    style = "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
    return f"<html><head><style>{style}</style></head><body>{''.join(parts)}</body></html>\n"


def read_ledger_frame(path: str | os.PathLike) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)[list(LEDGER_COLUMNS)]


def write_stats(stats: dict, json_out: str | os.PathLike, html_out: str | os.PathLike) -> None:
    with atomic_path(json_out) as tmp:
        tmp.write_text(json.dumps(stats, indent=1) + "\n")
    with atomic_path(html_out) as tmp:
        tmp.write_text(to_html(stats))
