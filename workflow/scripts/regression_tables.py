"""Rule regression_tables: the pretext-task and loss tables of the continuous labels (md, csv,
tex, and an HTML page each for the report) from every regression cell's runs; a cell's loss
combination is its directory's name. With ``params.synthetic`` (config ``lookalike.enabled``)
they say they come from synthetic look-alike data."""

from pathlib import Path

import pandas as pd

from conclugen import tables
from conclugen.io import atomic_path
from conclugen.logs import logged

with logged(snakemake.log[0]) as log:
    frames = [
        pd.read_csv(Path(c) / "runs.csv").assign(loss=Path(c).name) for c in snakemake.input.cells
    ]
    runs = pd.concat(frames, ignore_index=True)
    synthetic = bool(snakemake.params.synthetic)
    losses, loss = snakemake.params.losses, snakemake.params.loss
    built = {
        "pretext": ("Pretext task", tables.pretext_table(runs, loss, losses[loss], synthetic)),
        "loss": (
            "Downstream loss",
            tables.loss_table(runs, losses, snakemake.params.loss_methods, synthetic),
        ),
    }
    for key, (title, table) in built.items():
        html = Path(snakemake.output[key])
        tables.write_table(table, html.with_suffix(""))
        with atomic_path(html) as tmp:
            tmp.write_text(tables.table_page(table, title), encoding="utf-8")
        log.info("%s:\n%s", title, tables.to_markdown(table))
