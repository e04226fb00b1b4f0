rule downstream:
    """Every protocol and seed of one (dataset, method): supervised baseline, or linear
    evaluation (+ finetune, + vision-only read-out) of a pretrained model; runs.csv last.
    """
    input:
        unpack(downstream_input),
    output:
        directory("results/downstream/{dataset}/{method}"),
    log:
        "results/logs/downstream/{dataset}/{method}.log",
    benchmark:
        "results/benchmarks/downstream/{dataset}/{method}.tsv"
    conda:
        "../envs/models.yaml"
    threads: DOWNSTREAM["threads"]
    resources:
        mem_mb=16000,
        runtime=growing_runtime(4 * 60),
        gpu=gpus(DOWNSTREAM),
    params:
        settings=downstream_settings,
    script:
        "../workflow/scripts/downstream.py"


rule label_efficiency:
    """The label-efficiency protocols of one (dataset, method) on a share of the train labels
    (conclugen.downstream.label_subset), every seed; runs.csv last."""
    input:
        unpack(downstream_input),
    output:
        directory("results/label_efficiency/{dataset}/{method}/{fraction}"),
    log:
        "results/logs/label_efficiency/{dataset}/{method}/{fraction}.log",
    benchmark:
        "results/benchmarks/label_efficiency/{dataset}/{method}/{fraction}.tsv"
    conda:
        "../envs/models.yaml"
    threads: DOWNSTREAM["threads"]
    resources:
        mem_mb=16000,
        runtime=growing_runtime(4 * 60),
        gpu=gpus(DOWNSTREAM),
    params:
        settings=label_efficiency_settings,
    script:
        "../workflow/scripts/downstream.py"


rule regression:
    """Every protocol and seed of one (dataset, method, loss combination) on continuous labels
    (CMU-MOSEI sentiment and intensities, conclugen.regression); runs.csv last."""
    input:
        unpack(downstream_input),
    output:
        directory("results/regression/{dataset}/{method}/{loss}"),
    log:
        "results/logs/regression/{dataset}/{method}/{loss}.log",
    benchmark:
        "results/benchmarks/regression/{dataset}/{method}/{loss}.tsv"
    conda:
        "../envs/models.yaml"
    threads: DOWNSTREAM["threads"]
    resources:
        mem_mb=16000,
        runtime=growing_runtime(4 * 60),
        gpu=gpus(DOWNSTREAM),
    params:
        settings=regression_settings,
    script:
        "../workflow/scripts/downstream.py"
