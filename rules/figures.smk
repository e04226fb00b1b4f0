rule confusion_figure:
    """Confusion matrices of four methods' linear evaluation, as the paper's Figures 2-3."""
    input:
        cells=lambda wc: expand(
            "results/downstream/{dataset}/{method}",
            dataset=wc.dataset,
            method=CONFUSION_METHODS,
        ),
    output:
        report(
            "results/figures/confusion_{dataset}.png",
            caption="../workflow/report/confusion.rst",
            category="Confusion matrices",
        ),
    log:
        "results/logs/figures/confusion_{dataset}.log",
    benchmark:
        "results/benchmarks/figures/confusion_{dataset}.tsv"
    conda:
        "../envs/models.yaml"
    resources:
        mem_mb=2000,
        runtime=growing_runtime(10),
    params:
        labels=[METHOD_LABELS[m] for m in CONFUSION_METHODS],
    script:
        "../workflow/scripts/figures.py"


rule embedding_figure:
    """A 2-D PCA of one pretrained method's representations of a labelled dataset."""
    input:
        model="results/pretrain/{method}/model.pt",
        features="results/{dataset}/features.zarr",
        manifest="results/{dataset}/manifest.parquet",
    output:
        report(
            "results/figures/embedding_{dataset}_{method}.png",
            caption="../workflow/report/embedding.rst",
            category="Embeddings",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/figures/embedding_{dataset}_{method}.log",
    benchmark:
        "results/benchmarks/figures/embedding_{dataset}_{method}.tsv"
    conda:
        "../envs/models.yaml"
    resources:
        mem_mb=4000,
        runtime=growing_runtime(10),
    script:
        "../workflow/scripts/figures.py"
