rule lookalike:
    """Demo only: a synthetic look-alike of one dataset in its real on-disk form."""
    output:
        f"{LOOKALIKE['root']}/{{dataset}}/truth.parquet",
    log:
        "results/logs/lookalike/{dataset}.log",
    benchmark:
        "results/benchmarks/lookalike/{dataset}.tsv"
    conda:
        "../envs/data.yaml"
    threads: LOOKALIKE["workers"]
    resources:
        mem_mb=4000,
        runtime=growing_runtime(60),
    params:
        lookalike=LOOKALIKE,
        generator=LOOKALIKE_GENERATOR,
    script:
        "../workflow/scripts/lookalike.py"


rule download:
    """Fetch (public archives) or take (licence-gated data) a dataset, verify, extract."""
    input:
        lookalike_input,
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
