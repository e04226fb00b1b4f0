rule pretrain:
    """Self-supervised pretraining of one method on the pretraining dataset's features.
    last.ckpt (written every epoch) is not an output, so a failed job keeps its resume state.
    """
    input:
        features=f"results/{PRETRAIN['dataset']}/features.zarr",
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
        hparams=PRETRAIN["hparams"],
        device=PRETRAIN["device"],
    script:
        "../workflow/scripts/pretrain.py"
