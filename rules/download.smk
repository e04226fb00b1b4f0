rule download:
    """Fetch (public archives) or take (licence-gated data) a dataset, verify, extract."""
    input:
        download_input,
    output:
        directory("results/{dataset}/raw"),
    log:
        "results/logs/download/{dataset}.log",
    benchmark:
        "results/benchmarks/download/{dataset}.tsv"
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=2000,
        runtime=growing_runtime(24 * 60),
    params:
        source=lambda w: dataset_config(w)["source"],
        work_dir="results/{dataset}/download",
    script:
        "../workflow/scripts/download.py"
