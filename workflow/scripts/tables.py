"""Rule tables: Tables 1-5 and Franceschini et al.'s Table II (md, csv, tex), one HTML page of
them, the headline figures, the pretrained methods' cross-modal retrieval and the collapse check
of BYOL and DINO. With ``params.synthetic`` (config ``lookalike.enabled``) every output says it
comes from synthetic look-alike data (:data:`conclugen.tables.SYNTHETIC`)."""

import json
from pathlib import Path

import pandas as pd

from conclugen import tables
from conclugen.io import atomic_path
from conclugen.logs import logged

with logged(snakemake.log[0]) as log:
    runs = tables.collect_runs(snakemake.input.runs)
    paper = snakemake.params.paper  # config/paper_results.yaml
    synthetic = bool(snakemake.params.synthetic)
    built = tables.build_tables(runs, paper, synthetic=synthetic)
    out = Path(snakemake.output.html).parent
    for name, frame in built.items():
        tables.write_table(frame, out / name)
    with atomic_path(snakemake.output.html) as tmp:
        tmp.write_text(tables.to_html(built, paper), encoding="utf-8")
    with atomic_path(snakemake.output.runs) as tmp:
        tables.csv_frame(runs, synthetic).to_csv(tmp, index=False)
    chance = tables.chance_levels(snakemake.input.runs)
    summary = tables.headline(runs, chance, synthetic=synthetic)
    with atomic_path(snakemake.output.headline) as tmp:
        tmp.write_text(summary)
    log.info("%d runs, %d tables; ConCluGen against chance:\n%s", len(runs), len(built), summary)
    reports = {
        Path(r).parent.name: json.loads(Path(r).read_text()) for r in snakemake.input.retrieval
    }
    retrieval = tables.retrieval_summary(reports, synthetic=synthetic)
    with atomic_path(snakemake.output.retrieval) as tmp:
        tmp.write_text(retrieval)
    log.info("held-out cross-modal retrieval of the pretrained methods:\n%s", retrieval)
    histories = {Path(h).parent.name: pd.read_csv(h) for h in snakemake.input.histories}
    collapse = tables.collapse_summary(histories, synthetic=synthetic)
    with atomic_path(snakemake.output.collapse) as tmp:
        tmp.write_text(collapse)
    log.info("collapse check of the methods with an EMA target:\n%s", collapse)
