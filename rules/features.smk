rule features_video:
    """Both video backbones' frozen features of one shard: each clip decoded once at 16 fps,
    video2d fed every 16th frame; one store and one failure ledger per backbone."""
    input:
        unpack(video_features_input),
    output:
        video2d=directory("results/{dataset}/features/video2d/{shard}.zarr"),
        video3d=directory("results/{dataset}/features/video3d/{shard}.zarr"),
        video2d_failures="results/{dataset}/failures/features/video2d/{shard}.tsv",
        video3d_failures="results/{dataset}/failures/features/video3d/{shard}.tsv",
    log:
        "results/logs/features_video/{dataset}/{shard}.log",
    benchmark:
        "results/benchmarks/features_video/{dataset}/{shard}.tsv"
    conda:
        "../envs/models.yaml"
    threads: config["features"]["workers"] + 1
    resources:
        mem_mb=16000,
        runtime=growing_runtime(12 * 60),
        gpu=gpus(config["features"]),
    params:
        features=video_feature_settings,
        max_failure_fraction=config["max_failure_fraction"],
    script:
        "../workflow/scripts/features.py"


rule features:
    """One backbone's frozen features of one shard (decoding workers feed cross-clip batches):
    the roles other than video2d and video3d (rule features_video)."""
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


rule features_keypoints:
    """Keypoint features of one shard from its face tracks' landmarks (no decoding, no backbone)."""
    input:
        manifest="results/{dataset}/manifest.parquet",
        probe="results/{dataset}/probe/{shard}.parquet",
        faces="results/{dataset}/faces/{shard}.parquet",
    output:
        store=directory("results/{dataset}/features/keypoints/{shard}.zarr"),
        failures="results/{dataset}/failures/features/keypoints/{shard}.tsv",
    log:
        "results/logs/features/{dataset}/keypoints/{shard}.log",
    benchmark:
        "results/benchmarks/features/{dataset}/keypoints/{shard}.tsv"
    conda:
        "../envs/models.yaml"
    resources:
        mem_mb=2000,
        runtime=growing_runtime(30),
    params:
        dtype=config["features"]["dtype"],
        max_failure_fraction=config["max_failure_fraction"],
        windows=lambda wildcards: window_settings(wildcards.dataset),
    script:
        "../workflow/scripts/features_keypoints.py"


rule features_merge:
    """All shards and roles of a dataset in one store (video = 2D || 3D)."""
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
