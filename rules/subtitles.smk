rule subtitles:
    """Whisper transcripts of one shard, for datasets without their own text (CAER)."""
    input:
        manifest="results/{dataset}/manifest.parquet",
        probe="results/{dataset}/probe/{shard}.parquet",
    output:
        subtitles="results/{dataset}/subtitles/{shard}.parquet",
        failures="results/{dataset}/failures/subtitles/{shard}.tsv",
    log:
        "results/logs/subtitles/{dataset}/{shard}.log",
    benchmark:
        "results/benchmarks/subtitles/{dataset}/{shard}.tsv"
    conda:
        "../envs/models.yaml"
    threads: config["subtitles"]["threads"]
    resources:
        mem_mb=8000,
        runtime=growing_runtime(12 * 60),
        gpu=gpus(config["subtitles"]),
    params:
        subtitles=job_settings("subtitles"),
        max_failure_fraction=config["max_failure_fraction"],
    script:
        "../workflow/scripts/subtitles.py"
