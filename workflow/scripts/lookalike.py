"""Rule lookalike (demo only): write one dataset's synthetic look-alike in its real form."""

from conclugen.logs import logged
from conclugen.lookalike import generate

with logged(snakemake.log[0]):
    cfg = snakemake.params.lookalike
    generate(
        root=cfg["root"],
        datasets=[snakemake.wildcards.dataset],
        seed=cfg["seed"],
        bad_fraction=cfg["bad_fraction"],
        sizes=cfg["sizes"],
        clip_seconds=tuple(cfg["clip_seconds"]),
        workers=snakemake.threads,
    )
