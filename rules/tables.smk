rule tables:
    """The paper's Tables 1-5 and Franceschini et al.'s Table II (MPUC) from every downstream
    cell, our numbers beside the published ones, the pretrained methods' cross-modal retrieval
    and BYOL's and DINO's collapse check."""
    input:
        runs=downstream_runs(),
        retrieval=expand(
            "results/pretrain/{method}/retrieval.json", method=PRETRAIN["methods"]
        ),
        histories=expand(
            "results/pretrain/{method}/history.csv", method=PRETRAIN["methods"]
        ),
    output:
        expand("results/tables/table{n}.{ext}", n=range(1, 6), ext=["md", "csv", "tex"]),
        expand("results/tables/franceschini.{ext}", ext=["md", "csv", "tex"]),
        html=report(
            "results/tables/tables.html",
            caption="../workflow/report/tables.rst",
            category="Tables",
        ),
        runs="results/tables/runs.csv",
        headline="results/tables/headline.md",
        retrieval="results/tables/retrieval.md",
        collapse="results/tables/collapse.md",
    log:
        "results/logs/tables.log",
    benchmark:
        "results/benchmarks/tables.tsv"
    conda:
        "../envs/models.yaml"
    resources:
        mem_mb=2000,
        runtime=growing_runtime(10),
    params:
        paper=PAPER_RESULTS,
        # demo: every table says "synthetic look-alike data"; toggling it rewrites them
        synthetic=LOOKALIKE["enabled"],
    script:
        "../workflow/scripts/tables.py"


rule label_efficiency_summary:
    """Label efficiency: weighted F1 and accuracy against the share of train labels, as a
    table and a figure."""
    input:
        cells=list(label_efficiency_cells()),
    output:
        expand("results/tables/label_efficiency.{ext}", ext=["md", "csv", "tex"]),
        html=report(
            "results/tables/label_efficiency.html",
            caption="../workflow/report/label_efficiency.rst",
            category="Label efficiency",
        ),
        figure=report(
            "results/figures/label_efficiency.png",
            caption="../workflow/report/label_efficiency.rst",
            category="Label efficiency",
        ),
    log:
        "results/logs/label_efficiency_summary.log",
    benchmark:
        "results/benchmarks/label_efficiency_summary.tsv"
    conda:
        "../envs/models.yaml"
    resources:
        mem_mb=2000,
        runtime=growing_runtime(10),
    params:
        fractions=label_efficiency_cells(),
        # demo: the table and figure say "synthetic look-alike data"; toggling it rewrites them
        synthetic=LOOKALIKE["enabled"],
    script:
        "../workflow/scripts/label_efficiency.py"


rule front_page:
    """The report's landing page: the headline and retrieval tables, ours against the paper,
    the datasets and their failures."""
    input:
        runs=downstream_runs(),
        retrieval=expand(
            "results/pretrain/{method}/retrieval.json", method=PRETRAIN["methods"]
        ),
        stats=expand("results/{dataset}/dataset_stats.json", dataset=DATASETS),
    output:
        html=report(
            "results/report/front_page.html",
            caption="../workflow/report/front_page.rst",
            category="Overview",
        ),
        figure=report(
            "results/figures/paper_comparison.png",
            caption="../workflow/report/paper_comparison.rst",
            category="Tables",
        ),
    log:
        "results/logs/front_page.log",
    benchmark:
        "results/benchmarks/front_page.tsv"
    conda:
        "../envs/models.yaml"
    resources:
        mem_mb=2000,
        runtime=growing_runtime(10),
    params:
        paper=PAPER_RESULTS,
        # demo: the page and the figure say "synthetic look-alike data"
        synthetic=LOOKALIKE["enabled"],
    script:
        "../workflow/scripts/front_page.py"


rule regression_tables:
    """Continuous labels: the pretext-task table (every method, one loss) and the loss table
    (every loss combination on the loss table's methods)."""
    input:
        cells=regression_cells(),
    output:
        expand(
            "results/tables/{name}.{ext}",
            name=["pretext_task", "loss"],
            ext=["md", "csv", "tex"],
        ),
        pretext=report(
            "results/tables/pretext_task.html",
            caption="../workflow/report/regression.rst",
            category="Continuous labels",
        ),
        loss=report(
            "results/tables/loss.html",
            caption="../workflow/report/regression.rst",
            category="Continuous labels",
        ),
    log:
        "results/logs/regression_tables.log",
    benchmark:
        "results/benchmarks/regression_tables.tsv"
    conda:
        "../envs/models.yaml"
    resources:
        mem_mb=2000,
        runtime=growing_runtime(10),
    params:
        loss=REGRESSION["loss"],
        losses={name: regression_weights(name) for name in REGRESSION["losses"]},
        loss_methods=REGRESSION["loss_methods"],
        # demo: the tables say "synthetic look-alike data"; toggling it rewrites them
        synthetic=LOOKALIKE["enabled"],
    script:
        "../workflow/scripts/regression_tables.py"
