"""Rule front_page: the report's landing page (conclugen.report) and the figure of ours
against the paper (every cell of Tables 2, 3 and 5)."""

import json
from pathlib import Path

from conclugen import figures, report, tables
from conclugen.io import atomic_path
from conclugen.logs import logged

with logged(snakemake.log[0]) as log:
    synthetic = bool(snakemake.params.synthetic)
    runs = tables.collect_runs(snakemake.input.runs)
    comparison = tables.paper_comparison(runs, snakemake.params.paper)
    panels = {}
    for (table, metric), group in comparison.groupby(["table", "metric"], sort=False):
        name = f"{table}: {tables.HEADERS[metric]}"
        panels[name] = list(zip(group["row"], group["paper"], group["seeds"], strict=True))
    title = "Ours against the paper" + (f" ({tables.SYNTHETIC_SHORT})" if synthetic else "")
    figures.paper_comparison_figure(panels, snakemake.output.figure, title)
    headline = tables.headline_frame(runs, tables.chance_levels(snakemake.input.runs))
    reports = {
        Path(r).parent.name: json.loads(Path(r).read_text()) for r in snakemake.input.retrieval
    }
    stats = [json.loads(Path(p).read_text()) for p in snakemake.input.stats]
    page = report.front_page(
        headline,
        Path(snakemake.output.figure).read_bytes(),
        tables.retrieval_frame(reports),
        stats,
        synthetic=synthetic,
    )
    with atomic_path(snakemake.output.html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    log.info("front page: %d cells against the paper, %d datasets", len(comparison), len(stats))
