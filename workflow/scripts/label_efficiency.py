"""Rule label_efficiency_summary: the label-efficiency table (md, csv, tex, and an HTML page for
the report) and figure (weighted F1 against the share of train labels) from every cell's runs.
``params.fractions`` maps each cell to its share of the train labels; with ``params.synthetic``
(config ``lookalike.enabled``) both say they come from synthetic look-alike data."""

import json
from pathlib import Path

import pandas as pd

from conclugen import figures, tables
from conclugen.downstream import run_dir
from conclugen.io import atomic_path
from conclugen.logs import logged

with logged(snakemake.log[0]) as log:
    frames = []
    for cell, fraction in snakemake.params.fractions.items():
        runs = pd.read_csv(Path(cell) / "runs.csv")
        # A reused downstream cell also holds protocols label efficiency does not run (vision).
        runs = runs[runs["protocol"].isin(list(tables.LABEL_EFFICIENCY_PROTOCOLS))].copy()
        runs["fraction"] = fraction
        runs["n_train"] = [
            json.loads((run_dir(cell, p, s) / "metrics.json").read_text())["n_train"]
            for p, s in zip(runs["protocol"], runs["seed"], strict=True)
        ]
        frames.append(runs)
    runs = pd.concat(frames, ignore_index=True)
    synthetic = bool(snakemake.params.synthetic)
    table = tables.label_efficiency_table(runs, synthetic)
    stem = Path(snakemake.output.html).with_suffix("")
    tables.write_table(table, stem)
    with atomic_path(snakemake.output.html) as tmp:
        tmp.write_text(tables.table_page(table, "Label efficiency"), encoding="utf-8")
    panels = {
        tables.HEADERS[d]: {
            name: (rows["labels"], rows["f1"], rows["f1_std"])
            for name, rows in group.groupby("method", sort=False)
        }
        for d, group in table.groupby("dataset", sort=False)
    }
    title = "Label efficiency" + (f" ({tables.SYNTHETIC_SHORT})" if synthetic else "")
    title += "\ntest split, mean ± std over seeds"
    figures.label_efficiency_figure(panels, snakemake.output.figure, title, "weighted F1 (%)")
    log.info("%d runs, label efficiency:\n%s", len(runs), tables.to_markdown(table))
