rule pretrain:
    """Self-supervised pretraining of one method on its pretraining dataset's features (the
    train split). last.ckpt (written every epoch) is not an output, so a failed job keeps its
    resume state.
    """
    input:
        features=pretrain_input,
    output:
        model="results/pretrain/{method}/model.pt",
        history="results/pretrain/{method}/history.csv",
        plot=report(
            "results/pretrain/{method}/loss.png",
            caption="../workflow/report/loss.rst",
            category="Pretraining",
            subcategory="{method}",
        ),
        retrieval="results/pretrain/{method}/retrieval.json",
    log:
        "results/logs/pretrain/{method}.log",
    benchmark:
        "results/benchmarks/pretrain/{method}.tsv"
    conda:
        "../envs/models.yaml"
    threads: PRETRAIN["threads"]
    resources:
        mem_mb=64000,
        runtime=growing_runtime(12 * 60),
        gpu=gpus(PRETRAIN),
    params:
        hparams=pretrain_hparams,
        device=PRETRAIN["device"],
    script:
        "../workflow/scripts/pretrain.py"
