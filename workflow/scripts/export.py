"""Rule export: seed 0 of one downstream cell's protocol as an exported model folder."""

from conclugen.downstream import run_dir
from conclugen.export import export_model
from conclugen.logs import logged

with logged(snakemake.log[0]) as log:
    run = run_dir(snakemake.input[0], snakemake.params.protocol, 0)
    config = export_model(run, snakemake.output[0], snakemake.params.settings,
                          snakemake.wildcards.method)  # fmt: skip
    log.info(
        "%s -> %s: %s, test accuracy %.4f, %s",
        run, snakemake.output[0], config["protocol"], config["metrics"]["test"]["accuracy"],
        config["config_digest"],
    )  # fmt: skip
