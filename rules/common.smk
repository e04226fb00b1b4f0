# Helpers and input functions shared by the rules (no rule definitions here).
import hashlib

from conclugen.config import (
    enabled_datasets,
    pretraining_dataset,
    produced_by_workflow,
    source_files,
    weights_key,
)
from conclugen.data.manifest import load_exclusions
from conclugen.tables import METHOD_LABELS, load_paper_results

DATASETS = enabled_datasets(config)
FACE_DATASETS = [d for d in DATASETS if d in config["faces"]["datasets"]]
LOOKALIKE = config["lookalike"]
PRETRAIN = config["pretrain"]
# Files of the checkout that jobs depend on are params (their content), never inputs: an input
# path into the checkout would make a moved checkout, or a run with `-d`, rerun its jobs.
# The paper's published numbers (rule tables).
PAPER_RESULTS = load_paper_results(CHECKOUT / "config" / "paper_results.yaml")
# The look-alike generator's digest (rule lookalike), so that editing it regenerates the data
# (Snakemake's code trigger covers a rule's script, not the modules it imports).
LOOKALIKE_GENERATOR = hashlib.sha256(
    b"".join(
        (CHECKOUT / "conclugen" / "lookalike" / f"{name}.py").read_bytes()
        for name in ("__init__", "plan", "render", "archives")
    )
).hexdigest()

FEATURE_ROLES = ["video2d", "video3d", "audio", "text"]
# The video backbones share one job per shard (rule features_video, one decode per clip for
# both); every other role is a job of its own (rule features, wildcard `role`).
VIDEO_ROLES = ["video2d", "video3d"]
SINGLE_ROLES = [role for role in FEATURE_ROLES if role not in VIDEO_ROLES]


wildcard_constraints:
    dataset="|".join(DATASETS) or "none",
    shard=r"\d+",
    role="|".join(SINGLE_ROLES),
    method="|".join([*config["pretrain"]["methods"], "supervised"]),
    fraction=r"[0-9.e-]+",
    loss="|".join(config["downstream"]["regression"]["losses"]) or "none",


def growing_runtime(minutes):
    """A job's SLURM time limit, longer on each retry (profile `retries`): a job killed at its
    limit gets another chance instead of failing the same way again."""
    return lambda wildcards, attempt: minutes * attempt


def gpus(section):
    """1 GPU for a stage whose device is not `cpu` (`auto` uses one where a job sees one)."""
    return 0 if section["device"] == "cpu" else 1


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def dataset_exclusions(wildcards):
    """The dataset's known-bad samples (config `exclusions`), sample id -> reason: only its
    own, so that listing another dataset's sample leaves its manifest alone. A missing list
    is a warning while planning and refuses a run with manifest jobs (Snakefile `onstart`).
    """
    if not Path(config["exclusions"]).exists():
        return {}
    return load_exclusions(config["exclusions"], wildcards.dataset)


def job_settings(section):
    """A config section without the keys that only shape the DAG (which datasets, previews),
    so that adding a dataset does not rerun the jobs of the others (params are provenance).
    """
    return {
        k: v
        for k, v in config[section].items()
        if k not in ("datasets", "preview_clips")
    }


def shards(dataset):
    """Shard indices of a dataset (config `datasets.<name>.shards`)."""
    return range(config["datasets"][dataset]["shards"])


def download_input(wildcards):
    """What a dataset's download reads: the look-alike generator's output when the demo's
    sources point into it, and the user's archive files (so replacing one reruns it)."""
    archives = config["datasets"][wildcards.dataset]["source"]["archives"]
    files = source_files(config, wildcards.dataset)
    if any(produced_by_workflow(a.get("path", ""), config) for a in archives):
        files.append(f"{LOOKALIKE['root']}/{wildcards.dataset}/truth.parquet")
    return files


def shard_stages(dataset):
    """The per-shard stages that run on a dataset (config `faces.datasets` etc.)."""
    stages = ["probe"]
    stages += ["faces"] if dataset in config["faces"]["datasets"] else []
    stages += ["subtitles"] if dataset in config["subtitles"]["datasets"] else []
    return stages + [f"features/{role}" for role in feature_roles(dataset)]


def stage_ledgers(wildcards):
    """Every per-stage, per-shard failure ledger of a dataset, merged into failures.tsv."""
    d = wildcards.dataset
    return [f"results/{d}/failures/manifest.tsv"] + [
        f"results/{d}/failures/{stage}/{s}.tsv"
        for stage in shard_stages(d)
        for s in shards(d)
    ]


def feature_roles(dataset):
    """The shard stores merged into a dataset's features.zarr: the backbones' roles, and the
    keypoints (rule features_keypoints) where the dataset has face tracks."""
    return FEATURE_ROLES + (["keypoints"] if dataset in FACE_DATASETS else [])


DEMO_WEIGHTS = ["resnet18.pth", "r3d18_K_200ep.pth", "davenet.pth"]


def weights_spec(role):
    cfg = config["features"][role]
    return cfg[weights_key(role)]


def shard_features_input(d, s, roles):
    """The inputs of a feature job of ``roles``: its shard's clips, face tracks, subtitles
    (text) and (demo) weights."""
    inputs = {
        "manifest": f"results/{d}/manifest.parquet",
        "probe": f"results/{d}/probe/{s}.parquet",
    }
    if d in FACE_DATASETS:
        inputs["faces"] = f"results/{d}/faces/{s}.parquet"
    if "text" in roles and d in config["subtitles"]["datasets"]:
        inputs["subtitles"] = f"results/{d}/subtitles/{s}.parquet"
    weights = [
        weights_spec(r) for r in roles if produced_by_workflow(weights_spec(r), config)
    ]
    if weights:
        inputs["weights"] = weights
    return inputs


def features_input(wildcards):
    """The inputs of a one-role feature job (rule features)."""
    return shard_features_input(wildcards.dataset, wildcards.shard, [wildcards.role])


def video_features_input(wildcards):
    """The inputs of a shard's video job (rule features_video), with both backbones' weights."""
    return shard_features_input(wildcards.dataset, wildcards.shard, VIDEO_ROLES)


def feature_settings(wildcards):
    """The settings one feature job of one role depends on (:func:`role_settings`)."""
    return role_settings(wildcards.dataset, wildcards.role)


def video_feature_settings(wildcards):
    """The settings of a shard's video job, role -> :func:`role_settings`: a change to either
    backbone's reruns the job, so both stores (one decode feeds them both)."""
    return {role: role_settings(wildcards.dataset, role) for role in VIDEO_ROLES}


def window_settings(dataset):
    """A dataset's temporal windows (features.windows): count, seconds and seed, or None where
    the dataset gets none, so that changing them reruns only its feature jobs."""
    windows = config["features"]["windows"]
    if dataset not in windows["datasets"] or not windows["count"]:
        return None
    return {k: windows[k] for k in ("count", "seconds", "seed")}


def role_settings(dataset, role):
    """The settings one backbone's features depend on: its backbone's, the views of its
    dataset and role (features.views) and their local views (features.local_views), its
    modality's downstream copies (features.augment) and the dataset's temporal windows
    (features.windows)."""
    cfg = config["features"]
    views, augment = cfg["views"], cfg["augment"]
    with_views = dataset in views["datasets"] and role in views["roles"]
    copies = augment["count"] if dataset in augment["datasets"] else 0
    modality = "video" if role in VIDEO_ROLES else role
    # Which jobs get views; the rest of the settings say how they are drawn.
    which = ("datasets", "roles", "count", "seed")
    recipe = {k: v for k, v in views.items() if k not in which}
    # Only a dataset with windows has the key: adding windows elsewhere reruns no other job.
    windows = window_settings(dataset)
    return {
        **{k: cfg[k] for k in ("device", "precision", "dtype", "crop_size", "workers")},
        **cfg[role],
        "views": views["count"] if with_views else 0,
        "view_seed": views["seed"],
        "view_recipe": recipe if with_views else {},
        "local_views": cfg["local_views"] if with_views else {"count": 0},
        **({"windows": windows} if windows else {}),
        "augment": (
            {"count": copies, "seed": augment["seed"], modality: augment[modality]}
            if copies
            else {"count": 0, "seed": augment["seed"]}
        ),
    }


def feature_shards(wildcards):
    """Every (role, shard) store of a dataset, merged into features.zarr."""
    return {
        role: expand(
            "results/{dataset}/features/{role}/{shard}.zarr",
            dataset=wildcards.dataset,
            role=role,
            shard=shards(wildcards.dataset),
        )
        for role in feature_roles(wildcards.dataset)
    }


def pretrain_input(wildcards):
    """The features store of the dataset the method pretrains on (pretrain.dataset, or its
    entry of pretrain.datasets)."""
    return f"results/{pretraining_dataset(config, wildcards.method)}/features.zarr"


def pretrain_hparams(wildcards):
    """One method's hyperparameter overrides: pretrain.hparams, then its own entry of
    pretrain.method_hparams, so that changing one method's reruns only its job."""
    own = PRETRAIN["method_hparams"].get(wildcards.method, {})
    return {**PRETRAIN["hparams"], **own}


DOWNSTREAM = config["downstream"]
EVAL_DATASETS = [d for d in DOWNSTREAM["datasets"] if d in DATASETS]
EVAL_METHODS = (["supervised"] if DOWNSTREAM["supervised"] else []) + (
    PRETRAIN["methods"] if DOWNSTREAM["methods"] is None else DOWNSTREAM["methods"]
)


def protocols(method):
    """The protocols one method's downstream job runs (config downstream.finetune/vision)."""
    if method == "supervised":
        return ["supervised"]
    extra = [p for p in ("finetune", "vision") if method in DOWNSTREAM[p]]
    return ["linear"] + extra


def downstream_input(wildcards):
    """A labelled dataset's features and manifest, and the method's pretrained model."""
    d = wildcards.dataset
    inputs = {
        "features": f"results/{d}/features.zarr",
        "manifest": f"results/{d}/manifest.parquet",
    }
    if wildcards.method != "supervised":
        inputs["model"] = f"results/pretrain/{wildcards.method}/model.pt"
    return inputs


def downstream_settings(wildcards):
    """What one downstream job depends on: only its own method's overrides
    (downstream.method_hparams) and its own dataset's learning rate and weight decay, so
    changing another method's or dataset's leaves it alone."""
    task = DOWNSTREAM["tasks"].get(wildcards.dataset, {})
    own = DOWNSTREAM["method_hparams"].get(wildcards.method, {})
    return {
        "protocols": protocols(wildcards.method),
        "seeds": DOWNSTREAM["seeds"],
        "device": DOWNSTREAM["device"],
        "hparams": {**DOWNSTREAM["hparams"], **own, **task},
    }


def downstream_runs():
    """Every downstream cell's directory (each holds runs.csv)."""
    return expand(
        "results/downstream/{dataset}/{method}",
        dataset=EVAL_DATASETS,
        method=EVAL_METHODS,
    )


LABEL_EFFICIENCY = DOWNSTREAM["label_efficiency"]
LABEL_EFFICIENCY_DATASETS = [
    d for d in LABEL_EFFICIENCY["datasets"] if d in EVAL_DATASETS
]


def label_efficiency_protocols(method):
    """The protocols a label-efficiency job runs: the baseline, or linear and finetune."""
    return ["supervised"] if method == "supervised" else ["linear", "finetune"]


def label_efficiency_settings(wildcards):
    """The (dataset, method)'s downstream_settings with the label-efficiency protocols and the
    job's own share of the train labels, so that adding a fraction leaves the others alone.
    """
    settings = downstream_settings(wildcards)
    return {
        **settings,
        "protocols": label_efficiency_protocols(wildcards.method),
        "hparams": {**settings["hparams"], "train_fraction": float(wildcards.fraction)},
    }


def label_efficiency_cells():
    """Every label-efficiency cell's directory (each holds runs.csv) -> its share of the train
    labels. Fraction 1 of a method whose downstream job runs these protocols is that job's
    directory: a whole train split makes the same runs."""
    cells = {}
    for d in LABEL_EFFICIENCY_DATASETS:
        for m in LABEL_EFFICIENCY["methods"]:
            for f in LABEL_EFFICIENCY["fractions"]:
                reuse = f == 1 and m in EVAL_METHODS
                if reuse and set(label_efficiency_protocols(m)) <= set(protocols(m)):
                    cells[f"results/downstream/{d}/{m}"] = 1.0
                else:
                    cells[f"results/label_efficiency/{d}/{m}/{f:g}"] = float(f)
    return cells


# The paper's Figures 2-3: these four methods' confusion matrices on MELD and CAER.
CONFUSION_METHODS = [
    m for m in ("conclugen", "conclu", "multicont", "instancecont") if m in EVAL_METHODS
]
CONFUSION_DATASETS = [d for d in ("meld", "caer") if d in EVAL_DATASETS]
# Embedding plots on the first single-label dataset evaluated.
EMBEDDING_DATASETS = [d for d in ("caer", "meld") if d in EVAL_DATASETS][:1]


def report_figures():
    """The figures rule all asks for (the report holds them; the label-efficiency figure
    brings its table)."""
    figures = expand(
        "results/figures/confusion_{dataset}.png", dataset=CONFUSION_DATASETS
    ) + expand(
        "results/figures/embedding_{dataset}_{method}.png",
        dataset=EMBEDDING_DATASETS,
        method=[m for m in EVAL_METHODS if m != "supervised"],
    )
    if label_efficiency_cells():
        figures.append("results/figures/label_efficiency.png")
    return figures


# Exported models (rules/export.smk): ConCluGen's on every evaluated dataset, in rule all.
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
    the dataset's, its method's pretraining (its dataset and hyperparameter overrides, so that
    adding another method to pretrain.methods reruns no export) and its downstream job's
    settings."""
    d = wildcards.dataset
    pretraining = {
        "dataset": pretraining_dataset(config, wildcards.method),
        "hparams": pretrain_hparams(wildcards),
    }
    return {
        "features": config["features"],
        "faces": job_settings("faces"),
        "subtitles": job_settings("subtitles"),
        "cropped": d in FACE_DATASETS,
        "has_text": d not in config["subtitles"]["datasets"],
        "dataset": config["datasets"][d],
        "pretrain": pretraining if wildcards.method != "supervised" else None,
        "downstream": downstream_settings(wildcards),
    }


# Continuous labels (conclugen.regression): one job per (dataset, method, loss combination).
REGRESSION = DOWNSTREAM["regression"]
REGRESSION_DATASETS = [d for d in REGRESSION["datasets"] if d in EVAL_DATASETS]
REGRESSION_METHODS = (
    EVAL_METHODS if REGRESSION["methods"] is None else REGRESSION["methods"]
)


def regression_weights(loss):
    """A named loss combination's four weights (unset ones 0)."""
    return {k: 0.0 for k in ("ccc", "mse", "ce", "ncce")} | REGRESSION["losses"][loss]


def regression_settings(wildcards):
    """One regression job's downstream_settings with its loss weights and bins."""
    settings = downstream_settings(wildcards)
    return {
        **settings,
        "loss_weights": regression_weights(wildcards.loss),
        "bins": REGRESSION["bins"],
    }


def regression_cells():
    """Every regression cell's directory: each pretext-table method with the table's loss,
    and every loss combination on the loss table's methods."""
    cells = [
        (d, m, REGRESSION["loss"])
        for d in REGRESSION_DATASETS
        for m in REGRESSION_METHODS
    ]
    cells += [
        (d, m, loss)
        for d in REGRESSION_DATASETS
        for m in REGRESSION["loss_methods"]
        for loss in REGRESSION["losses"]
    ]
    return [f"results/regression/{d}/{m}/{loss}" for d, m, loss in dict.fromkeys(cells)]


def regression_tables():
    """The continuous-label tables rule all asks for (none when switched off)."""
    if not REGRESSION_DATASETS:
        return []
    return ["results/tables/pretext_task.html", "results/tables/loss.html"]
