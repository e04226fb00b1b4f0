rule manifest:
    """One row per sample from the dataset's real layout (conclugen.data.<dataset>)."""
    input:
        raw="results/{dataset}/raw",
    output:
        manifest="results/{dataset}/manifest.parquet",
        failures="results/{dataset}/failures/manifest.tsv",
    log:
        "results/logs/manifest/{dataset}.log",
    benchmark:
        "results/benchmarks/manifest/{dataset}.tsv"
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=8000,
        runtime=growing_runtime(120),
    params:
        shards=lambda w: dataset_config(w)["shards"],
        exclusions=dataset_exclusions,
        max_failure_fraction=config["max_failure_fraction"],
    script:
        "../workflow/scripts/manifest.py"


rule probe:
    """Open every sample's media of one shard; unusable files go to the failure ledger."""
    input:
        manifest="results/{dataset}/manifest.parquet",
    output:
        table="results/{dataset}/probe/{shard}.parquet",
        failures="results/{dataset}/failures/probe/{shard}.tsv",
    log:
        "results/logs/probe/{dataset}/{shard}.log",
    benchmark:
        "results/benchmarks/probe/{dataset}/{shard}.tsv"
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=2000,
        runtime=growing_runtime(120),
    params:
        max_failure_fraction=config["max_failure_fraction"],
    script:
        "../workflow/scripts/probe.py"


rule failures:
    """Merge the failure ledgers of every stage and shard of a dataset."""
    input:
        stage_ledgers,
    output:
        "results/{dataset}/failures.tsv",
    log:
        "results/logs/failures/{dataset}.log",
    benchmark:
        "results/benchmarks/failures/{dataset}.tsv"
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=1000,
        runtime=growing_runtime(10),
    script:
        "../workflow/scripts/failures.py"


rule dataset_stats:
    """A dataset on one page: samples per split and class, every stage's drops and defects by
    reason, and the release's extras."""
    input:
        manifest="results/{dataset}/manifest.parquet",
        failures="results/{dataset}/failures.tsv",
    output:
        json="results/{dataset}/dataset_stats.json",
        html=report(
            "results/{dataset}/dataset_stats.html",
            caption="../workflow/report/dataset_stats.rst",
            category="Datasets",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/dataset_stats/{dataset}.log",
    benchmark:
        "results/benchmarks/dataset_stats/{dataset}.tsv"
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=2000,
        runtime=growing_runtime(10),
    script:
        "../workflow/scripts/dataset_stats.py"
