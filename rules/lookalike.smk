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


rule lookalike_weights:
    """Demo only: random backbones in the real checkpoint formats (no weights can be fetched)."""
    output:
        expand(f"{LOOKALIKE['root']}/weights/{{name}}", name=DEMO_WEIGHTS),
    log:
        "results/logs/lookalike_weights.log",
    benchmark:
        "results/benchmarks/lookalike_weights.tsv"
    conda:
        "../envs/models.yaml"
    resources:
        mem_mb=2000,
        runtime=growing_runtime(10),
    script:
        "../workflow/scripts/lookalike_weights.py"
