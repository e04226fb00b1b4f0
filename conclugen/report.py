"""The report's front page (``results/report/front_page.html``): what a person reads first.

One self-contained HTML fragment, embedded as the landing page of the Snakemake report
(``workflow/report/workflow.rst``) and readable on its own: the headline (ConCluGen against a
majority guess), the pretrained methods' cross-modal retrieval, ours against the paper (the
figure of every cell of Tables 2, 3 and 5, as a PNG inside the page), every dataset's samples
and what the stages dropped, and the commonest failure reasons. Tables never wrap a cell: a wide
table scrolls sideways instead. Pure: it takes frames, the stats of
:func:`conclugen.stats.dataset_stats` and the figure's bytes.
"""

from __future__ import annotations

import base64
import html

import pandas as pd

from conclugen.stats import SPLIT_ORDER
from conclugen.tables import SYNTHETIC

#: Failure reasons listed per dataset on the front page; the dataset's page lists all.
TOP_REASONS = 5
STYLE = """
.conclugen-front .scroll { overflow-x: auto; margin-bottom: 1em; }
.conclugen-front table { border-collapse: collapse; font-size: 0.9em; }
.conclugen-front th, .conclugen-front td {
  white-space: nowrap; padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: left;
}
.conclugen-front th { background: #f3f3f3; }
.conclugen-front img { max-width: 100%; height: auto; }
.conclugen-front .demo-data { border: 2px solid #c00; padding: 6px; font-weight: bold; }
"""


def datasets_frame(stats: list[dict]) -> pd.DataFrame:
    """One row per dataset: samples per split in the manifest, those that reach the features
    (usable), and the ledger's totals (dropped, kept with a defect, extras)."""
    rows = []
    for s in stats:
        row = {"dataset": s["dataset"]}
        for split in SPLIT_ORDER:
            row[split] = s["samples"].get(split, 0)
        row["all"] = sum(s["samples"].values())
        row["usable"] = sum(s["usable"].values())
        totals = s["totals"]
        row |= {"dropped": totals["dropped"], "kept with a defect": totals["kept"]}
        row["extras"] = totals["extra"]
        rows.append(row)
    return pd.DataFrame(rows)


def failures_frame(stats: list[dict], top: int = TOP_REASONS) -> pd.DataFrame:
    """Per dataset, its ``top`` commonest ledger lines other than extras (stage, action,
    reason, count, an example sample), and a last line counting the rest when there are more."""
    rows = []
    for s in stats:
        lines = [r for r in s["ledger"] if r["action"] != "extra"]
        lines.sort(key=lambda r: -r["count"])
        for r in lines[:top]:
            rows.append([s["dataset"], r["stage"], r["action"], r["reason"], r["count"],
                         r["example"]])  # fmt: skip
        if len(lines) > top:
            rest = sum(r["count"] for r in lines[top:])
            more = f"{len(lines) - top} more reasons (the dataset's page)"
            rows.append([s["dataset"], "", "", more, rest, ""])
    columns = ["dataset", "stage", "action", "reason", "samples", "example"]
    return pd.DataFrame(rows, columns=columns)


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p>None.</p>"
    return f'<div class="scroll">{frame.to_html(index=False, border=0)}</div>'


def front_page(
    headline: pd.DataFrame,
    comparison_png: bytes,
    retrieval: pd.DataFrame,
    stats: list[dict],
    synthetic: bool = False,
) -> str:
    """The front page as an HTML fragment (a ``div`` with its own style)."""
    image = base64.b64encode(comparison_png).decode("ascii")
    parts = [f"<style>{STYLE}</style>", '<div class="conclugen-front">']
    if synthetic:
        parts.append(f'<p class="demo-data">{html.escape(SYNTHETIC)}</p>')
    parts += [
        "<h2>Headline: ConCluGen's linear evaluation against a majority guess</h2>",
        _table(headline),
        "<h2>Cross-modal retrieval of the pretrained methods (held-out clips)</h2>",
        _table(retrieval),
        "<h2>Ours against the paper</h2>",
        "<p>Every cell of Tables 2, 3 and 5: our mean over seeds (bar), its std (error bar) and "
        "each seed (dots) beside the published number (hatched). The tables themselves are "
        "under <em>Tables</em>.</p>",
        f'<img alt="ours against the paper" src="data:image/png;base64,{image}">',
        "<h2>Datasets</h2>",
        "<p>Samples per split in the manifest; <em>usable</em>: those that reach the features. "
        "Every dropped or kept sample is a row of the dataset's failures.tsv.</p>",
        _table(datasets_frame(stats)),
        "<h2>Failures</h2>",
        f"<p>The {TOP_REASONS} commonest reasons per dataset; the dataset's page under "
        "<em>Datasets</em> lists all.</p>",
        _table(failures_frame(stats)),
        "</div>",
    ]
    return "\n".join(parts) + "\n"
