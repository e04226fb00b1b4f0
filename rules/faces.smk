rule faces:
    """MTCNN face tracks of one shard (16 fps frames, most probable face, smoothed track)."""
    input:
        manifest="results/{dataset}/manifest.parquet",
        probe="results/{dataset}/probe/{shard}.parquet",
    output:
        faces="results/{dataset}/faces/{shard}.parquet",
        failures="results/{dataset}/failures/faces/{shard}.tsv",
    log:
        "results/logs/faces/{dataset}/{shard}.log",
    benchmark:
        "results/benchmarks/faces/{dataset}/{shard}.tsv"
    conda:
        "../envs/models.yaml"
    threads: config["faces"]["workers"] + 1
    resources:
        mem_mb=8000,
        runtime=growing_runtime(12 * 60),
        gpu=gpus(config["faces"]),
    params:
        faces=job_settings("faces"),
        max_failure_fraction=config["max_failure_fraction"],
    script:
        "../workflow/scripts/faces.py"


rule face_preview:
    """Contact sheet of face crops (detections green, tracks red) for the report."""
    input:
        manifest="results/{dataset}/manifest.parquet",
        faces=lambda w: expand(
            "results/{{dataset}}/faces/{shard}.parquet", shard=shards(w.dataset)
        ),
    output:
        report(
            "results/{dataset}/faces/preview.png",
            caption="../workflow/report/preview.rst",
            category="Face crops",
        ),
    log:
        "results/logs/face_preview/{dataset}.log",
    benchmark:
        "results/benchmarks/face_preview/{dataset}.tsv"
    conda:
        "../envs/models.yaml"
    resources:
        mem_mb=2000,
        runtime=growing_runtime(30),
    params:
        clips=config["faces"]["preview_clips"],
    script:
        "../workflow/scripts/face_preview.py"
