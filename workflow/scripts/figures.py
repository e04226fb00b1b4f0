"""Rules confusion_figure and embedding_figure."""

from conclugen import downstream, figures
from conclugen.logs import logged

with logged(snakemake.log[0]) as log:
    d = snakemake.wildcards.dataset
    if snakemake.rule == "confusion_figure":
        panels = {
            label: downstream.summed_confusion(cell, "linear")
            for label, cell in zip(snakemake.params.labels, snakemake.input.cells, strict=True)
        }
        title = f"{d}: linear evaluation, test split, summed over seeds"
        figures.confusion_figure(panels, snakemake.output[0], title)
        log.info("%s: %s", title, {k: int(m.sum()) for k, (m, _) in panels.items()})
    else:
        rep, target, classes = downstream.representations(
            snakemake.input.model, snakemake.input.features, snakemake.input.manifest, d
        )
        title = f"{snakemake.wildcards.method}: representations of {d} (PCA)"
        figures.embedding_figure(rep, target, classes, snakemake.output[0], title)
    log.info("wrote %s", snakemake.output[0])
