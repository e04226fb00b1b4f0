"""Rules confusion_figure and embedding_figure."""

from pathlib import Path

from conclugen import figures
from conclugen.logs import logged

with logged(snakemake.log[0]) as log:
    d = snakemake.wildcards.dataset
    if snakemake.rule == "confusion_figure":
        panels = {
            label: sorted(Path(cell).glob("linear/seed*/metrics.json"))
            for label, cell in zip(snakemake.params.labels, snakemake.input.cells, strict=True)
        }
        title = f"{d}: linear evaluation, test split, summed over seeds"
        figures.confusion_figure(panels, snakemake.output[0], title)
        log.info("%s: %s", title, {k: len(v) for k, v in panels.items()})
    else:
        figures.embedding_figure(
            snakemake.input.model,
            snakemake.input.features,
            snakemake.input.manifest,
            d,
            snakemake.output[0],
            f"{snakemake.wildcards.method}: representations of {d} (PCA)",
        )
    log.info("wrote %s", snakemake.output[0])
