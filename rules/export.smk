# Exported models (conclugen.export): one downstream run each, for `conclugen predict`.
# Rule all asks for ConCluGen's on every evaluated dataset (EXPORTS); any other cell's export
# is one `snakemake results/export/<dataset>/<method>` away.
EXPORTS = expand(
    "results/export/{dataset}/{method}",
    dataset=EVAL_DATASETS,
    method=[m for m in EVAL_METHODS if m == "conclugen"],
)


def export_protocol(method):
    """The run an export takes: seed 0 of finetune where the method has it (config
    downstream.finetune), else of linear evaluation (the supervised baseline: its own).
    """
    if method == "supervised":
        return "supervised"
    return "finetune" if "finetune" in protocols(method) else "linear"


def export_settings(wildcards):
    """What an export records (features, faces, subtitles as resolved) and digests: those and
    the dataset's, pretraining's and its downstream job's settings."""
    d = wildcards.dataset
    return {
        "features": config["features"],
        "faces": job_settings("faces"),
        "subtitles": job_settings("subtitles"),
        "cropped": d in FACE_DATASETS,
        "has_text": d not in config["subtitles"]["datasets"],
        "dataset": config["datasets"][d],
        "pretrain": PRETRAIN if wildcards.method != "supervised" else None,
        "downstream": downstream_settings(wildcards),
    }


rule export:
    """One downstream run's classifier as a folder that travels (model.safetensors,
    config.json, README.md): seed 0 of the protocol export_protocol names."""
    input:
        "results/downstream/{dataset}/{method}",
    output:
        directory("results/export/{dataset}/{method}"),
    log:
        "results/logs/export/{dataset}/{method}.log",
    benchmark:
        "results/benchmarks/export/{dataset}/{method}.tsv"
    conda:
        "../envs/models.yaml"
    resources:
        mem_mb=2000,
        runtime=growing_runtime(10),
    params:
        protocol=lambda w: export_protocol(w.method),
        settings=export_settings,
    script:
        "../workflow/scripts/export.py"
