rule features:
    """One backbone's frozen features of one shard (decoding workers feed cross-clip batches)."""
    input:
        unpack(features_input),
    output:
        store=directory("results/{dataset}/features/{role}/{shard}.zarr"),
        failures="results/{dataset}/failures/features/{role}/{shard}.tsv",
    log:
        "results/logs/features/{dataset}/{role}/{shard}.log",
    benchmark:
        "results/benchmarks/features/{dataset}/{role}/{shard}.tsv"
    conda:
        "../envs/models.yaml"
    threads: config["features"]["workers"] + 1
    resources:
        mem_mb=16000,
        runtime=growing_runtime(12 * 60),
        gpu=gpus(config["features"]),
    params:
        features=feature_settings,
        max_failure_fraction=config["max_failure_fraction"],
    script:
        "../workflow/scripts/features.py"


rule features_merge:
    """All shards and backbones of a dataset in one store (video = 2D || 3D)."""
    input:
        unpack(feature_shards),
    output:
        directory("results/{dataset}/features.zarr"),
    log:
        "results/logs/features_merge/{dataset}.log",
    benchmark:
        "results/benchmarks/features_merge/{dataset}.tsv"
    conda:
        "../envs/models.yaml"
    resources:
        mem_mb=8000,
        runtime=growing_runtime(2 * 60),
    params:
        dtype=config["features"]["dtype"],
    script:
        "../workflow/scripts/features_merge.py"
