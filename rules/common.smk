# Helpers and input functions shared by the rules (no rule definitions here).
from conclugen.config import enabled_datasets, produced_by_workflow

DATASETS = enabled_datasets(config)
FACE_DATASETS = [d for d in DATASETS if d in config["faces"]["datasets"]]
LOOKALIKE = config["lookalike"]


wildcard_constraints:
    dataset="|".join(DATASETS) or "none",
    shard=r"\d+",


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def shards(dataset):
    """Shard indices of a dataset (config `datasets.<name>.shards`)."""
    return range(config["datasets"][dataset]["shards"])


def lookalike_input(wildcards):
    """The look-alike generator's output when the demo's sources point into it, else nothing."""
    archives = config["datasets"][wildcards.dataset]["source"]["archives"]
    if any(produced_by_workflow(a.get("path", ""), config) for a in archives):
        return f"{LOOKALIKE['root']}/{wildcards.dataset}/truth.parquet"
    return []


def shard_stages(dataset):
    """The per-shard stages that run on a dataset (config `faces.datasets` etc.)."""
    stages = ["probe"]
    stages += ["faces"] if dataset in config["faces"]["datasets"] else []
    stages += ["subtitles"] if dataset in config["subtitles"]["datasets"] else []
    return stages


def stage_ledgers(wildcards):
    """Every per-stage, per-shard failure ledger of a dataset, merged into failures.tsv."""
    d = wildcards.dataset
    return [f"results/{d}/failures/manifest.tsv"] + [
        f"results/{d}/failures/{stage}/{s}.tsv"
        for stage in shard_stages(d)
        for s in shards(d)
    ]
