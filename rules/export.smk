# Exported models (conclugen.export): one downstream run each, for `conclugen predict`.
# Rule all asks for ConCluGen's on every evaluated dataset (EXPORTS, rules/common.smk); any
# other cell's export is one `snakemake results/export/<dataset>/<method>` away.
rule export:
    """One downstream run's classifier as a folder that travels (model.safetensors,
    config.json, README.md): seed 0 of the protocol export_protocol names."""
    input:
        "results/downstream/{dataset}/{method}",
    output:
        directory("results/export/{dataset}/{method}"),
    log:
        "results/logs/export/{dataset}/{method}.log",
    benchmark:
        "results/benchmarks/export/{dataset}/{method}.tsv"
    conda:
        "../envs/models.yaml"
    resources:
        mem_mb=2000,
        runtime=growing_runtime(10),
    params:
        protocol=lambda w: export_protocol(w.method),
        settings=export_settings,
    script:
        "../workflow/scripts/export.py"
