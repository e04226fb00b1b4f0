"""The paper's Tables 1-5 with our results beside the published numbers (pure functions, pandas).

Input: a frame of our downstream runs, one row per (dataset, method, protocol, seed) with the
metrics of :mod:`conclugen.metrics` as fractions, and the published numbers of
``config/paper_results.yaml``. Every table lists the paper's rows in the paper's order; per
metric it holds our mean and standard deviation over seeds (sample std, ddof=1, so NaN for a
single seed) in percent, the paper's number and the difference ours - paper in percentage points.
A cell is NaN where the paper prints no number (all of Table 4 in our copy) or we have no run.

- Table 1: the published CMU-MOSEI baselines (with citations); the rows with a ``run`` in
  ``config/paper_results.yaml`` get our number in the metric the printed one is: ConCluGen
  finetuned on CMU-MOSEI (Sec. 4.2.1: "pretrained on VoxCeleb and finetuned on CMU-MOSEI"), in
  the paper's accuracy, and Franceschini et al. (MPUC, method ``mpuc``, its read-out), in the
  CMU-MOSEI literature's weighted accuracy (:func:`conclugen.metrics.emotion_metrics`): the
  66.70 printed is their Table II's overall w-ACC, as most of Table 1's other numbers are the
  w-ACC their Table IV prints (column ``ours_metric`` says which metric each of ours is).
- Table 2: accuracy per dataset of the supervised baseline (method ``supervised``, trained from
  scratch), ConCluGen linear evaluation and ConCluGen finetuned.
- Tables 3-5 (CMU-MOSEI, MELD, CAER): every pretraining method under **linear evaluation**. The
  paper never names the protocol of these tables; it follows from its numbers: Table 5's
  ConCluGen row (Acc. 37.5) is Table 2's "ConCluGen (linear eval.)" CAER value (37.5; finetuned
  is 50.75), and Table 3's ConCluGen (60.4) is near Table 2's linear 60.0, far from the finetuned
  66.48 (the paper's two linear MOSEI numbers disagree by 0.4). The appendix gives one set of
  downstream hyperparameters per dataset "that worked well for all methods", and the authors'
  released downstream configs freeze the representation heads.
  ConCluGen/(vision) (method ``conclugen_vision``) is the linear evaluation of ConCluGen's video
  representation alone. A method we ran that the paper's table lacks (ConCluGen/(vision) on
  MELD: our copy of Table 4 does not print it, though the paper's text discusses it) gets empty
  paper cells and its place in the order of Tables 3 and 5 (:data:`METHOD_LABELS`), so every
  study table lists its rows in the same order: ConCluGen/(vision) seventh.
  The CMU-MOSEI table (Table 3) also has the literature's weighted accuracy and weighted F1
  (``weighted_accuracy``, ``weighted_f1``; ConCluGen's paper prints neither), their paper
  numbers those of Franceschini et al.'s Table II (its "Overall" column: MPUC and MPUC without
  text; ``franceschini`` in ``config/paper_results.yaml``).
- Franceschini et al.'s Table II (:func:`franceschini_table`, ``franceschini``): per emotion
  and overall, the weighted accuracy and F1 of their rows (their two supervised baselines as
  printed, theirs only), our ``mpuc`` and ``mpuc_wo_text`` linear evaluations beside theirs
  (the runs' ``{metric}_{emotion}`` columns); one row per method and emotion.

Numeric columns: for each value key ``k`` (a metric, or a dataset in Table 2) ``k`` (ours),
``k_std``, ``k_paper``, ``k_diff``, and the number of seeds (``n_seeds``, Table 2
``{dataset}_n_seeds``). :func:`write_table` renders them as markdown, CSV and LaTeX.

The label-efficiency table (:func:`label_efficiency_table`, no paper numbers: the paper claims
the saving but never measures it) holds weighted F1 and accuracy (``k``, ``k_std``) per dataset,
method/protocol and share of the train labels (``labels``, in percent), with the mean number of
train clips (``n_train``) and of seeds.

The continuous-label tables (:func:`pretext_table`, :func:`loss_table`; no paper numbers:
SS-VAERR's, whose study they follow, are arousal and valence on SEWA and RECOLA from an
end-to-end video network, not comparable cell by cell) hold CMU-MOSEI sentiment's test CCC,
Pearson r, MSE, binary and 7-class accuracy and the six intensities' mean CCC
(:mod:`conclugen.regression`), as plain values (mean, sample std over seeds; 3 decimals): the
pretext-task table every method under linear evaluation with the default composite loss, the
loss table each loss combination on the methods it was run for.

Synthetic data: tables built with ``synthetic=True`` (the workflow passes config
``lookalike.enabled``) carry :data:`SYNTHETIC` in every rendering, so demo numbers and their
differences from the paper never read as a result: the first line of the markdown and of the
HTML page, a comment line and a first table row in LaTeX, and in CSV a first column ``data``
on every row (a ``#`` line would break readers that do not skip comments, and a column
survives filtering and copying rows). :func:`headline` and :func:`retrieval_summary` take the
same flag.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from conclugen.io import atomic_path
from conclugen.metrics import EMOTION_METRICS

METRICS = ("accuracy", "f1", "precision", "recall")
DATASETS = ("mosei", "caer", "meld")
RUN_COLUMNS = ("dataset", "method", "protocol", "seed", *METRICS)  # EMOTION_METRICS optional
MULTILABEL_DATASETS = ("mosei",)  # their runs also have EMOTION_METRICS
STUDY_TABLES = ("table3", "table4", "table5")
STUDY_PROTOCOL = "linear"  # Tables 3-5 (see the module docstring)
TABLE1_DATASET = "mosei"  # our Table 1 rows' runs (paper_results.yaml: each row's ``run``)
TABLE2_RUNS = {  # Table 2 row protocol -> (method, protocol) of our runs
    "supervised": ("supervised", "supervised"),
    "linear": ("conclugen", "linear"),
    "finetune": ("conclugen", "finetune"),
}
# Printed names of the pretraining methods, in the paper's row order (Tables 3 and 5), then ours.
METHOD_LABELS = {
    "conclugen": "ConCluGen",
    "conclu": "ConClu",
    "congen": "ConGen",
    "multicont": "Multi-Cont",
    "instancecont": "Instance-Cont",
    "generative": "Generative",
    "conclugen_vision": "ConCluGen/(vision)",
    "multicont_wo_text": "Multi-Cont Wout/text",
    "multicont_wo_audio": "Multi-Cont Wout/audio",
    # not in the paper's tables (SS-VAERR's pretext tasks): rows of their own after the paper's
    "byol": "BYOL",
    "dino": "DINO",
    # MPUC (Franceschini et al., ICPR 2022), pretrained on CMU-MOSEI, and its Table II ablation
    "mpuc": "MPUC",
    "mpuc_wo_text": "MPUC Wout/text",
}
HEADERS = {
    "accuracy": "Acc.",
    "f1": "F1",
    "precision": "Prec.",
    "recall": "Recall",
    "weighted_accuracy": "w-Acc.",
    "weighted_f1": "w-F1",
    "ours_metric": "Ours as",
    "mosei": "CMU-MOSEI",
    "caer": "CAER",
    "meld": "MELD",
    "method": "Method",
    "citation": "Ref.",
    "year": "Year",
    "modalities": "Mod.",
    "group": "Group",
    "n_seeds": "Seeds",
    "dataset": "Dataset",
    "labels": "Labels (%)",
    "n_train": "Train clips",
    "ccc": "CCC",
    "pearson": "Pearson r",
    "mse": "MSE",
    "acc2": "Acc-2",
    "acc7": "Acc-7",
    "emotion_ccc": "Emotions CCC",
    "protocol": "Protocol",
    "loss": "Loss",
    "emotion": "Emotion",
}
NOTE = "Ours: mean ± std over seeds, in percent; Δ = ours − paper (percentage points)."
SYNTHETIC = (
    "Synthetic look-alike data (the embedded demo), not the real datasets: these numbers and "
    "their differences from the paper are not results."
)
SYNTHETIC_SHORT = "synthetic look-alike data"  # the CSV column ``data`` and the LaTeX row


def load_paper_results(path: str | os.PathLike) -> dict:
    """The published numbers (``config/paper_results.yaml``) as a dict."""
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def _check_runs(
    runs: pd.DataFrame | None, columns=RUN_COLUMNS, keys=("dataset", "method", "protocol", "seed")
) -> pd.DataFrame:
    """``runs`` with ``columns``, metrics in [0, 1] and one row per ``keys``; None: no runs."""
    if runs is None:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in columns})
    missing = [c for c in columns if c not in runs.columns]
    if missing:
        raise ValueError(f"runs lack columns {missing}")
    values = runs[[*METRICS, *(k for k in EMOTION_METRICS if k in runs)]].to_numpy(dtype=float)
    if ((values < 0) | (values > 1)).any():
        raise ValueError("run metrics must be fractions in [0, 1], not percentages")
    dup = runs.duplicated(list(keys))
    if dup.any():
        raise ValueError(f"duplicate runs:\n{runs[dup][list(keys)]}")
    return runs


def summarise_runs(
    runs: pd.DataFrame | None, metrics: tuple[str, ...] = (*METRICS, *EMOTION_METRICS)
) -> pd.DataFrame:
    """Mean and sample std (ddof=1) over seeds, in percent, per (dataset, method, protocol):
    columns ``{metric}``, ``{metric}_std`` for ``metrics`` (by default :data:`METRICS` and
    :data:`EMOTION_METRICS`; NaN where the runs lack one, e.g. single-label ones) and
    ``n_seeds``."""
    runs = _check_runs(runs)
    runs = runs.assign(**{k: np.nan for k in metrics if k not in runs})
    groups = runs.groupby(["dataset", "method", "protocol"])[list(metrics)]
    mean, std = groups.mean() * 100, groups.std(ddof=1) * 100
    out = pd.concat([mean, std.add_suffix("_std")], axis=1)
    out["n_seeds"] = groups.size()
    return out


def _ours(summary: pd.DataFrame, dataset: str, method: str, protocol: str) -> pd.Series | None:
    key = (dataset, method, protocol)
    return summary.loc[key] if key in summary.index else None


def _value_cells(ours: pd.Series | None, paper: dict, keys, metric: str | None = None) -> dict:
    """Cells ``k, k_std, k_paper, k_diff`` per key; ours is metric ``k`` (or ``metric``)."""
    cells = {}
    for k in keys:
        m = metric or k
        mean = float(ours[m]) if ours is not None else np.nan
        std = float(ours[f"{m}_std"]) if ours is not None else np.nan
        published = paper.get(k)
        published = np.nan if published is None else float(published)
        diff = mean - published
        cells |= {k: mean, f"{k}_std": std, f"{k}_paper": published, f"{k}_diff": diff}
    # 6 decimals of a percentage: drop float noise (34.6 - 34.6 = -7e-15) from the files.
    cells = {k: round(v, 6) + 0.0 for k, v in cells.items()}
    return cells


def _seeds(ours: pd.Series | None) -> int:
    return 0 if ours is None else int(ours["n_seeds"])


def _framed(rows: list[dict], caption: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame.attrs["caption"] = f"{caption} {NOTE}"
    return frame


def _synthetic(frame: pd.DataFrame) -> bool:
    return bool(frame.attrs.get("synthetic"))


TABLE1_NOTE = (
    "Ours beside the rows we ran, in the metric the printed number is (Ours as): ConCluGen's "
    "accuracy (support-weighted, as the paper's), and for Franceschini et al. (MPUC) the "
    "CMU-MOSEI literature's weighted accuracy, which their 66.70 and most other rows print."
)


def table1(runs: pd.DataFrame | None, paper: dict) -> pd.DataFrame:
    """Table 1: the published CMU-MOSEI benchmarks, and ours on the rows with a ``run``
    (method, protocol and metric of our CMU-MOSEI runs: ConCluGen finetuned, accuracy; MPUC,
    weighted accuracy)."""
    summary = summarise_runs(runs)
    rows = []
    for row in paper["table1"]["rows"]:
        run = row.get("run")
        ours = _ours(summary, TABLE1_DATASET, run["method"], run["protocol"]) if run else None
        metric = run["metric"] if run else None
        rows.append(
            {
                "method": row["method"],
                "citation": row.get("citation") or "",
                "year": row["year"],
                "modalities": row["modalities"],
                "group": row["group"].replace("_", "-"),
                **_value_cells(ours, row, ["accuracy"], metric=metric),
                "ours_metric": HEADERS[metric] if run else "",
                "n_seeds": _seeds(ours),
            }
        )
    return _framed(rows, f"Table 1. {paper['table1']['caption']} {TABLE1_NOTE}")


def table2(runs: pd.DataFrame | None, paper: dict) -> pd.DataFrame:
    """Table 2: accuracy per dataset, supervised baseline and ConCluGen (linear, finetuned)."""
    summary = summarise_runs(runs)
    rows = []
    for row in paper["table2"]["rows"]:
        method, protocol = TABLE2_RUNS[row["protocol"]]
        cells = {"method": row["label"], "id": f"{method}/{protocol}"}
        for d in DATASETS:
            ours = _ours(summary, d, method, protocol)
            cells |= _value_cells(ours, row, [d], metric="accuracy")
            cells[f"{d}_n_seeds"] = _seeds(ours)
        rows.append(cells)
    return _framed(rows, f"Table 2. {paper['table2']['caption']}")


STUDY_EMOTION_NOTE = (
    "w-Acc. and w-F1: the CMU-MOSEI literature's weighted accuracy and weighted F1, averaged "
    "over the six emotions; their paper numbers are Franceschini et al.'s Table II (Overall). "
    "MPUC's read-out is its prediction layer (fc + ReLU + fc)."
)


def study_table(runs: pd.DataFrame | None, paper: dict, name: str) -> pd.DataFrame:
    """Table 3, 4 or 5 (``name``): linear evaluation of every pretraining method on one dataset;
    on the multi-label dataset (:data:`MULTILABEL_DATASETS`) with :data:`EMOTION_METRICS` too,
    whose published numbers are Franceschini et al.'s (``paper["franceschini"]``)."""
    summary = summarise_runs(runs)
    spec = paper[name]
    multilabel = spec["dataset"] in MULTILABEL_DATASETS
    keys = [*METRICS, *EMOTION_METRICS] if multilabel else list(METRICS)
    theirs = {
        r["method"]: r for r in paper.get("franceschini", {}).get("rows", []) if "method" in r
    }
    rows = list(spec["rows"])
    printed = {r["method"] for r in rows}
    # Methods we ran that the paper's table lacks get empty paper cells and their place in the
    # paper's row order (Tables 3 and 5): the printed rows follow that order already.
    ran = {m for d, m, p in summary.index if d == spec["dataset"] and p == STUDY_PROTOCOL}
    extra = [m for m in METHOD_LABELS if m in ran and m not in printed]
    rows += [{"method": m, "label": METHOD_LABELS[m]} for m in extra]
    rows.sort(key=lambda r: list(METHOD_LABELS).index(r["method"]))
    out = []
    for row in rows:
        ours = _ours(summary, spec["dataset"], row["method"], STUDY_PROTOCOL)
        published = {**theirs.get(row["method"], {}), **row} if multilabel else row
        out.append(
            {
                "method": row["label"],
                "id": row["method"],
                **_value_cells(ours, published, keys),
                "n_seeds": _seeds(ours),
            }
        )
    note = f" {STUDY_EMOTION_NOTE}" if multilabel else ""
    return _framed(out, f"Table {name[-1]}. {spec['caption']} Linear evaluation.{note}")


# Label efficiency: the protocols it runs, in row order, and how a row names them.
LABEL_EFFICIENCY_PROTOCOLS = {"supervised": "", "linear": "linear eval.", "finetune": "finetuned"}
LABEL_EFFICIENCY_METRICS = ("f1", "accuracy")
LABEL_EFFICIENCY_CAPTION = (
    "Label efficiency: weighted F1 and accuracy on the test split, in percent, mean ± std over "
    "seeds, with a share of each train split's labels (drawn per seed, stratified by class, "
    "nested across shares, the same clips for every method; validation and test whole)."
)


def label_efficiency_table(runs: pd.DataFrame | None, synthetic: bool = False) -> pd.DataFrame:
    """One row per (dataset, method, protocol, label fraction) of ``runs`` (one row per run:
    :data:`RUN_COLUMNS`, ``fraction`` of the train labels, ``n_train`` clips): columns
    ``dataset``, ``method`` (as printed), ``id`` (method/protocol), ``labels`` (the fraction in
    percent), ``n_train`` (mean over seeds), per metric of :data:`LABEL_EFFICIENCY_METRICS` the
    mean and sample std over seeds in percent, and ``n_seeds``. Rows by dataset (the paper's
    order), method (the supervised baseline, then :data:`METHOD_LABELS`' order), protocol and
    fraction; ``synthetic`` is kept in ``attrs`` for the writers."""
    columns = (*RUN_COLUMNS, "fraction", "n_train")
    runs = _check_runs(runs, columns, ("dataset", "method", "protocol", "fraction", "seed"))
    methods, protocols = ["supervised", *METHOD_LABELS], list(LABEL_EFFICIENCY_PROTOCOLS)
    rows = []
    for (d, m, p, f), group in runs.groupby(["dataset", "method", "protocol", "fraction"]):
        label = LABEL_EFFICIENCY_PROTOCOLS[p]
        name = "Supervised baseline" if m == "supervised" else f"{METHOD_LABELS[m]} ({label})"
        cells = {"dataset": d, "method": name, "id": f"{m}/{p}", "labels": 100 * f}
        cells["n_train"] = round(float(group["n_train"].mean()), 1)
        for k in LABEL_EFFICIENCY_METRICS:
            mean, std = group[k].mean() * 100, group[k].std(ddof=1) * 100
            cells |= {k: round(mean, 6) + 0.0, f"{k}_std": round(std, 6) + 0.0}
        cells["n_seeds"] = len(group)
        order = (list(DATASETS).index(d), methods.index(m), protocols.index(p), f)
        rows.append((order, cells))
    keys = ["dataset", "method", "id", "labels", "n_train"]
    keys += [f"{k}{s}" for k in LABEL_EFFICIENCY_METRICS for s in ("", "_std")] + ["n_seeds"]
    frame = pd.DataFrame([cells for _, cells in sorted(rows, key=lambda r: r[0])], columns=keys)
    frame.attrs |= {"caption": LABEL_EFFICIENCY_CAPTION, "synthetic": synthetic}
    return frame


# Continuous labels (conclugen.regression): the run metrics, in column order, and the captions.
REGRESSION_METRICS = ("ccc", "pearson", "mse", "acc2", "acc7", "emotion_ccc")
REGRESSION_COLUMNS = ("dataset", "method", "protocol", "seed", "loss", *REGRESSION_METRICS)
SS_VAERR_NOTE = (
    "SS-VAERR's published numbers (Jegorova et al., Tables II-III) are arousal and valence on "
    "SEWA and RECOLA from a video network trained end to end; these are CMU-MOSEI sentiment on "
    "frozen features, so the two are not comparable cell by cell."
)
PRETEXT_CAPTION = (
    "Pretext task: CMU-MOSEI sentiment on the test split, linear evaluation of each method's "
    "representations with the composite loss {loss}; CCC on the whole test set, Pearson r, "
    "MSE, binary and 7-class accuracy, and the six emotion intensities' mean CCC; mean ± std "
    "over seeds."
)
LOSS_CAPTION = (
    "Downstream loss: CMU-MOSEI sentiment on the test split for each combination of SS-VAERR's "
    "losses (Eq. 6: w_ccc (1 - CCC) + w_mse MSE + w_ce CE + w_nCCE nCCE); mean ± std over seeds."
)


def loss_label(weights: dict[str, float]) -> str:
    """A loss combination as SS-VAERR's Table III prints it: its non-zero weights."""
    names = {"ccc": "w_ccc", "mse": "w_mse", "ce": "w_ce", "ncce": "w_nCCE"}
    return ", ".join(f"{names[k]} = {w:g}" for k, w in weights.items() if w)


def _regression_rows(runs: pd.DataFrame, keys: list[str]) -> list[dict]:
    """Per group of ``keys``: the mean and sample std over seeds of :data:`REGRESSION_METRICS`
    and the number of seeds."""
    rows = []
    for values, group in runs.groupby(keys, sort=False):
        cells = dict(zip(keys, values, strict=True))
        for k in REGRESSION_METRICS:
            mean, std = group[k].mean(), group[k].std(ddof=1)
            # 9 decimals: plain values, not percentages (float noise dropped as _value_cells')
            cells |= {k: round(float(mean), 9) + 0.0, f"{k}_std": round(float(std), 9) + 0.0}
        cells["n_seeds"] = len(group)
        rows.append(cells)
    return rows


def _regression_frame(rows: list[dict], columns: list[str], caption: str, synthetic: bool):
    keys = [f"{k}{s}" for k in REGRESSION_METRICS for s in ("", "_std")]
    frame = pd.DataFrame(rows, columns=[*columns, *keys, "n_seeds"])
    frame.attrs |= {
        "caption": f"{caption} {SS_VAERR_NOTE}",
        "synthetic": synthetic,
        "unit": "",
        "decimals": 3,
    }
    return frame


def _regression_runs(runs: pd.DataFrame | None) -> pd.DataFrame:
    """``runs`` checked (:data:`REGRESSION_COLUMNS`, one row per run), the vision-only read-out
    as method ``{method}_vision`` under ``linear`` (as :func:`collect_runs`), rows in the
    methods' order (the supervised baseline first, then :data:`METHOD_LABELS`)."""
    if runs is None:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in REGRESSION_COLUMNS})
    missing = [c for c in REGRESSION_COLUMNS if c not in runs.columns]
    if missing:
        raise ValueError(f"runs lack columns {missing}")
    runs = runs.copy()
    vision = runs["protocol"] == "vision"
    runs.loc[vision, "method"] = runs.loc[vision, "method"] + "_vision"
    runs.loc[vision, "protocol"] = "linear"
    dup = runs.duplicated(["dataset", "method", "protocol", "loss", "seed"])
    if dup.any():
        raise ValueError(f"duplicate runs:\n{runs[dup]}")
    order = ["supervised", *METHOD_LABELS]
    rank = runs["method"].map(lambda m: order.index(m) if m in order else len(order))
    return runs.assign(rank=rank).sort_values(["rank", "protocol", "seed"], kind="stable")


def _method_name(method: str) -> str:
    return "Supervised baseline" if method == "supervised" else METHOD_LABELS.get(method, method)


def pretext_table(
    runs: pd.DataFrame | None, loss: str, weights: dict[str, float], synthetic: bool = False
) -> pd.DataFrame:
    """The "pretext task" table: one row per method (the supervised baseline, then
    :data:`METHOD_LABELS`' order) of the continuous-label ``runs`` (:data:`REGRESSION_COLUMNS`)
    under linear evaluation (the baseline: its own protocol) with loss combination ``loss``
    (whose ``weights`` the caption prints): columns ``method`` (as printed), ``id``, per metric
    of :data:`REGRESSION_METRICS` the mean and ``_std``, and ``n_seeds``."""
    runs = _regression_runs(runs)
    runs = runs[(runs["loss"] == loss) & runs["protocol"].isin(["linear", "supervised"])]
    rows = _regression_rows(runs, ["method"])
    for row in rows:
        row["id"] = row["method"]
        row["method"] = _method_name(row["method"])
    caption = PRETEXT_CAPTION.format(loss=loss_label(weights))
    return _regression_frame(rows, ["method", "id"], caption, synthetic)


def loss_table(
    runs: pd.DataFrame | None,
    losses: dict[str, dict[str, float]],
    methods: list[str],
    synthetic: bool = False,
) -> pd.DataFrame:
    """The "loss" table: one row per (method, protocol, loss combination) of the
    continuous-label ``runs`` of ``methods`` (their vision-only read-out included), methods in
    the pretext table's order, the combinations in the order of ``losses`` (name -> weights):
    columns ``method``, ``protocol``, ``loss`` (its non-zero weights, :func:`loss_label`),
    ``id`` (method/protocol/loss name), the metrics as :func:`pretext_table`'s, and
    ``n_seeds``."""
    runs = _regression_runs(runs)
    listed = runs["method"].str.removesuffix("_vision").isin(list(methods))
    runs = runs[runs["loss"].isin(list(losses)) & listed]
    runs = runs.assign(order=runs["loss"].map(list(losses).index))
    runs = runs.sort_values(["rank", "protocol", "order"], kind="stable")
    rows = _regression_rows(runs, ["method", "protocol", "loss"])
    for row in rows:
        row["id"] = f"{row['method']}/{row['protocol']}/{row['loss']}"
        row["method"] = _method_name(row["method"])
        row["loss"] = loss_label(losses[row["loss"]])
    return _regression_frame(rows, ["method", "protocol", "loss", "id"], LOSS_CAPTION, synthetic)


FRANCESCHINI_TITLE = "Franceschini et al., Table II"
FRANCESCHINI_NOTE = (
    "Ours: MPUC and MPUC without text, pretrained on CMU-MOSEI's train split and read out by "
    "their prediction layer (fc + ReLU + fc, linear evaluation), on CMU-MOSEI's test split: "
    "each emotion's weighted accuracy (TP·N/P + TN)/2N and weighted F1, and Overall, their "
    "mean over the six emotions. Late Fusion and Attention Mec. are their supervised "
    "baselines, not run here."
)


def franceschini_table(runs: pd.DataFrame | None, paper: dict) -> pd.DataFrame:
    """Franceschini et al.'s Table II (``paper["franceschini"]``) with our MPUC runs beside
    theirs: one row per printed method and emotion (then Overall), columns
    :data:`EMOTION_METRICS` (ours: the runs' ``{metric}_{emotion}`` columns, and for Overall
    the metric itself, the mean over emotions; linear evaluation on CMU-MOSEI)."""
    spec = paper["franceschini"]
    emotions = list(spec["rows"][0]["emotions"])
    column = {(e, k): f"{k}_{e}" for e in emotions for k in EMOTION_METRICS}
    column |= {("overall", k): k for k in EMOTION_METRICS}
    summary = summarise_runs(runs, tuple(column.values()))
    rows = []
    for row in spec["rows"]:
        method = row.get("method")
        ours = _ours(summary, TABLE1_DATASET, method, STUDY_PROTOCOL) if method else None
        for emotion in [*emotions, "overall"]:
            if emotion == "overall":
                published = {k: row[k] for k in EMOTION_METRICS}
            else:
                published = dict(zip(EMOTION_METRICS, row["emotions"][emotion], strict=True))
            cells = {}
            for k in EMOTION_METRICS:
                cells |= _value_cells(ours, published, [k], metric=column[emotion, k])
            rows.append(
                {
                    "method": METHOD_LABELS[method] if method else row["label"],
                    "emotion": emotion.capitalize(),
                    **cells,
                    "n_seeds": _seeds(ours),
                }
            )
    frame = _framed(rows, f"{FRANCESCHINI_TITLE}. {spec['caption']} {FRANCESCHINI_NOTE}")
    frame.attrs["title"] = FRANCESCHINI_TITLE
    return frame


def build_tables(
    runs: pd.DataFrame | None, paper: dict, synthetic: bool = False
) -> dict[str, pd.DataFrame]:
    """The paper's five tables, keyed ``table1`` ... ``table5``, then Franceschini et al.'s
    Table II (``franceschini``); ``synthetic`` (the runs are on the look-alike data) is kept in
    each frame's ``attrs`` for the writers."""
    tables = {"table1": table1(runs, paper), "table2": table2(runs, paper)}
    tables |= {name: study_table(runs, paper, name) for name in STUDY_TABLES}
    tables["franceschini"] = franceschini_table(runs, paper)
    for frame in tables.values():
        frame.attrs["synthetic"] = synthetic
    return tables


# --- rendering ---------------------------------------------------------------------------------


def _value_keys(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if f"{c}_std" in frame.columns]


def _number(x, fmt: str, decimals: int | None = None) -> str:
    if pd.isna(x):
        return ""
    x = float(x) if decimals is None else round(float(x), decimals) + 0.0  # no "-0.00"
    return format(x, fmt)


def display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The text a reader sees: per value key ``ours`` as "mean ± std" (2 decimals; no ± for a
    single seed), ``paper`` as YAML read it (``%g``: 66.70 shows as 66.7), ``Δ`` signed (2
    decimals); a table without paper numbers has one "mean ± std" column per key, headed
    "{key} (%)". Other numbers as ``%g``; empty strings for missing numbers and for 0 seeds.
    The ``id`` column is left out. A frame's ``attrs`` may set ``unit`` (the header suffix,
    "%" by default; "" for none) and ``decimals`` (2 by default)."""
    keys = _value_keys(frame)
    unit, decimals = frame.attrs.get("unit", "%"), frame.attrs.get("decimals", 2)
    derived = {f"{k}{s}" for k in keys for s in ("", "_std", "_paper", "_diff")}
    cols, numeric = {}, []
    for c in frame.columns:
        if c == "id" or (c in derived and c not in keys):
            continue
        if c in keys:
            head = HEADERS.get(c, c)
            ours = [
                _number(m, f".{decimals}f", decimals)
                + ("" if pd.isna(s) or pd.isna(m) else f" ± {s:.{decimals}f}")
                for m, s in zip(frame[c], frame[f"{c}_std"], strict=True)
            ]
            if f"{c}_paper" not in frame.columns:
                cols[f"{head} ({unit})" if unit else head] = ours
                numeric.append(f"{head} ({unit})" if unit else head)
                continue
            cols[f"{head} ours"] = ours
            cols[f"{head} paper"] = [_number(x, "g") for x in frame[f"{c}_paper"]]
            cols[f"{head} Δ"] = [_number(x, "+.2f", 2) for x in frame[f"{c}_diff"]]
        elif c.endswith("n_seeds"):
            head = "Seeds" if c == "n_seeds" else f"{HEADERS.get(c[: -len('_n_seeds')])} seeds"
            cols[head] = [str(int(x)) if x else "" for x in frame[c]]  # 0: no run
        elif pd.api.types.is_float_dtype(frame[c]):
            cols[HEADERS.get(c, c)] = [_number(x, "g") for x in frame[c]]
        else:
            cols[HEADERS.get(c, c)] = ["" if pd.isna(x) else str(x) for x in frame[c]]
    text = pd.DataFrame(cols)
    text.attrs["numeric"] = numeric  # right-aligned although their header has no unit
    return text


def _numeric_header(head: str, text: pd.DataFrame) -> bool:
    if head in text.attrs.get("numeric", ()):
        return True
    return head.endswith((" ours", " paper", " Δ", " (%)")) or head.lower().endswith(
        ("seeds", "clips")
    )


def to_markdown(frame: pd.DataFrame, caption: str | None = None) -> str:
    """A GitHub markdown table (numbers right-aligned), the caption below it; a synthetic
    frame's first line is :data:`SYNTHETIC` in bold."""
    text = display_frame(frame)

    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    align = ["---:" if _numeric_header(h, text) else "---" for h in text.columns]
    lines = [line(text.columns), "|" + "|".join(align) + "|"]
    lines += [line(r) for r in text.itertuples(index=False)]
    caption = frame.attrs.get("caption", "") if caption is None else caption
    head = f"**{SYNTHETIC}**\n\n" if _synthetic(frame) else ""
    return head + "\n".join(lines) + (f"\n\n{caption}\n" if caption else "\n")


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped and ± / Δ / − in math mode."""
    out = re.sub(r"[\\&%$#_{}~^]", lambda m: _TEX_SPECIAL[m.group()], str(text))
    return out.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("−", "--")


def to_latex(frame: pd.DataFrame, caption: str | None = None) -> str:
    """A plain LaTeX ``tabular`` (no packages needed); the caption as a comment above it. A
    synthetic frame starts with :data:`SYNTHETIC` as a comment and its first row says so."""
    text = display_frame(frame)
    spec = "".join("r" if _numeric_header(h, text) else "l" for h in text.columns)

    def line(cells) -> str:
        return " & ".join(tex_escape(c) for c in cells) + r" \\"

    caption = frame.attrs.get("caption", "") if caption is None else caption
    lines = [f"% {tex_escape(SYNTHETIC)}"] if _synthetic(frame) else []
    lines += [f"% {tex_escape(' '.join(caption.split()))}"] if caption else []
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\hline"]
    if _synthetic(frame):
        mark = tex_escape(SYNTHETIC_SHORT[0].upper() + SYNTHETIC_SHORT[1:])
        lines += [rf"\multicolumn{{{len(spec)}}}{{l}}{{\textbf{{{mark}}}}} \\", r"\hline"]
    lines += [line(text.columns), r"\hline"]
    lines += [line(r) for r in text.itertuples(index=False)]
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def csv_frame(frame: pd.DataFrame, synthetic: bool) -> pd.DataFrame:
    """``frame`` as its CSV holds it: synthetic data gets a first column ``data`` that says so."""
    if not synthetic:
        return frame
    marked = frame.copy()
    marked.insert(0, "data", SYNTHETIC_SHORT)
    return marked


def write_table(frame: pd.DataFrame, stem: str | os.PathLike) -> list[Path]:
    """Write ``{stem}.md``, ``{stem}.csv`` (the numbers, empty cells for NaN; a synthetic
    frame's first column ``data`` says ``synthetic look-alike data``) and ``{stem}.tex``, each
    atomically; return their paths."""
    paths = [Path(f"{os.fspath(stem)}{ext}") for ext in (".md", ".csv", ".tex")]
    md, csv, tex = paths
    with atomic_path(md) as tmp:
        tmp.write_text(to_markdown(frame), encoding="utf-8")
    with atomic_path(csv) as tmp:
        csv_frame(frame, _synthetic(frame)).to_csv(tmp, index=False, float_format="%.10g")
    with atomic_path(tex) as tmp:
        tmp.write_text(to_latex(frame), encoding="utf-8")
    return paths


# --- the workflow's side: collecting runs, the HTML page, the headline figures ----------------


def collect_runs(cell_dirs: list[str | os.PathLike]) -> pd.DataFrame:
    """Every downstream cell's ``runs.csv`` in one frame. The vision-only read-out of a method
    becomes method ``{method}_vision`` under protocol ``linear``, as the tables list it."""
    frames = [pd.read_csv(Path(d) / "runs.csv") for d in cell_dirs]
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RUN_COLUMNS)
    vision = runs["protocol"] == "vision"
    runs.loc[vision, "method"] = runs.loc[vision, "method"] + "_vision"
    runs.loc[vision, "protocol"] = "linear"
    return runs


def to_html(tables: dict[str, pd.DataFrame], paper: dict) -> str:
    """All tables on one page, each under its number and the paper's caption (for the report);
    :data:`SYNTHETIC` first when the tables are synthetic."""
    parts = [f"<p>{NOTE}</p>"]
    if any(_synthetic(frame) for frame in tables.values()):
        parts.insert(0, f"<p><strong>{SYNTHETIC}</strong></p>")
    for name, frame in tables.items():
        caption = frame.attrs.get("caption") or paper.get(name, {}).get("caption", "")
        title = frame.attrs.get("title", f"Table {name.removeprefix('table')}")
        parts.append(f"<h2>{title}</h2><p>{caption}</p>")
        parts.append(display_frame(frame).to_html(index=False, border=0))
    return "<html><body>\n" + "\n".join(parts) + "\n</body></html>\n"


def table_page(frame: pd.DataFrame, title: str) -> str:
    """One table as an HTML page (for the report): :data:`SYNTHETIC` first when the table is
    synthetic, then ``title``, the caption and the table."""
    parts = [f"<p><strong>{SYNTHETIC}</strong></p>"] if _synthetic(frame) else []
    parts += [f"<h2>{title}</h2>", f"<p>{frame.attrs.get('caption', '')}</p>"]
    parts.append(display_frame(frame).to_html(index=False, border=0))
    return "<html><body>\n" + "\n".join(parts) + "\n</body></html>\n"


def _plain_markdown(frame: pd.DataFrame, align: list[str], synthetic: bool) -> str:
    """``frame`` (strings) as a markdown table with the given column alignments;
    ``synthetic``: :data:`SYNTHETIC` in bold comes first."""
    lines = [f"**{SYNTHETIC}**", ""] if synthetic else []
    lines += ["| " + " | ".join(frame.columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def chance_levels(cell_dirs: list[str | os.PathLike]) -> dict[str, float]:
    """Per dataset, :func:`majority_accuracy` of the ConCluGen cell's first linear run (every
    run of a dataset has the same train and test split)."""
    from conclugen.downstream import run_dir

    chance = {}
    for cell in map(Path, cell_dirs):
        if cell.name == "conclugen":
            predictions = pd.read_parquet(run_dir(cell, "linear", 0) / "predictions.parquet")
            chance[cell.parent.name] = majority_accuracy(predictions)
    return chance


def headline_frame(runs: pd.DataFrame, chance: dict[str, float]) -> pd.DataFrame:
    """ConCluGen's linear-evaluation accuracy per dataset (mean ± std over seeds, in percent)
    against chance, here the accuracy of always guessing the train split's majority
    (:func:`majority_accuracy`; for single-label data, the test share of the train split's
    largest class). Printed strings, one row per dataset."""
    sel = runs[(runs["method"] == "conclugen") & (runs["protocol"] == "linear")]
    rows = []
    for dataset, group in sel.groupby("dataset"):
        acc = group["accuracy"] * 100
        spread = f" ± {acc.std(ddof=1):.1f}" if len(acc) > 1 else ""
        rows.append(
            [dataset, f"{acc.mean():.1f}{spread}", str(len(acc)),
             f"{100 * chance.get(dataset, float('nan')):.1f}"]
        )  # fmt: skip
    columns = ["dataset", "ConCluGen linear eval. accuracy (%)", "seeds", "majority guess (%)"]
    return pd.DataFrame(rows, columns=columns, dtype=str)


def headline(runs: pd.DataFrame, chance: dict[str, float], synthetic: bool = False) -> str:
    """:func:`headline_frame` as markdown: what the demo prints. ``synthetic``:
    :data:`SYNTHETIC` comes first."""
    return _plain_markdown(headline_frame(runs, chance), ["---"] * 4, synthetic)


def retrieval_frame(reports: dict[str, dict]) -> pd.DataFrame:
    """Each method's held-out cross-modal recall@1 at initialisation and after pretraining
    (``{method: retrieval.json}``, :func:`conclugen.pretrain.pretrain`), against chance (one
    over the held-out clips). Printed strings, one row per method and pair of modalities."""
    rows = [
        [method, pair, f"{r['init']:.2f}", f"{r['pretrained']:.2f}", f"{r['chance']:.3f}",
         str(r["n"])]
        for method, report in reports.items()
        for pair, r in report.items()
    ]  # fmt: skip
    columns = ["method", "retrieval", "recall@1 at init", "recall@1 pretrained", "chance",
               "clips"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns, dtype=str)


def retrieval_summary(reports: dict[str, dict], synthetic: bool = False) -> str:
    """:func:`retrieval_frame` as markdown: what the demo prints after the headline.
    ``synthetic``: :data:`SYNTHETIC` comes first."""
    align = ["---", "---", "---:", "---:", "---:", "---:"]
    return _plain_markdown(retrieval_frame(reports), align, synthetic)


def collapse_frame(histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The collapse check of the methods with one (BYOL, DINO: ``history.csv`` with
    ``rep_std``, :func:`conclugen.pretrain.representation_std`): per method its rep_std after
    the first and the last epoch, the floor, ``ok`` or ``collapsed`` (last rep_std below the
    floor) and, for DINO, the last ``teacher_entropy`` (a fraction of log K, near 1: the
    teacher has gone uniform). Printed strings, one row per method; methods without the check
    are left out."""
    rows = []
    for method, h in histories.items():
        if "rep_std" not in h:
            continue
        first, last = h["rep_std"].iloc[0], h["rep_std"].iloc[-1]
        floor = h["rep_std_floor"].iloc[-1]
        entropy = f"{h['teacher_entropy'].iloc[-1]:.2f}" if "teacher_entropy" in h else ""
        rows.append(
            [method, str(len(h)), f"{first:.4f}", f"{last:.4f}", f"{floor:.4f}",
             f"{last / floor:.1f}", "ok" if last >= floor else "collapsed", entropy]
        )  # fmt: skip
    columns = ["method", "epochs", "rep_std epoch 1", "rep_std final", "floor", "final / floor",
               "collapse check", "teacher entropy / log K"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns, dtype=str)


def collapse_summary(histories: dict[str, pd.DataFrame], synthetic: bool = False) -> str:
    """:func:`collapse_frame` as markdown (what the demo prints last), or a line saying that no
    pretrained method has the check. ``synthetic``: :data:`SYNTHETIC` comes first."""
    frame = collapse_frame(histories)
    if frame.empty:
        lead = f"**{SYNTHETIC}**\n\n" if synthetic else ""
        return f"{lead}No pretrained method with a collapse check (byol, dino) in this run.\n"
    align = ["---", "---:", "---:", "---:", "---:", "---:", "---", "---:"]
    return _plain_markdown(frame, align, synthetic)


def paper_comparison(runs: pd.DataFrame | None, paper: dict) -> pd.DataFrame:
    """Every cell of Tables 2, 3 and 5 as one row: ``table`` (e.g. "Table 3"), ``row`` (as
    printed; Table 2: "{dataset}: {label}"), ``metric``, ``paper`` (the published number, NaN
    where none) and ``seeds`` (our per-seed values in percent, a tuple; empty without runs).
    Rows in the tables' order; cells with neither a published number nor a run are left out."""
    runs = _check_runs(runs)
    values = runs.set_index(["dataset", "method", "protocol"]).sort_index()

    def seeds(dataset, method, protocol, metric):
        key = (dataset, method, protocol)
        if key not in values.index:
            return ()
        return tuple(float(v) * 100 for v in values.loc[[key]].sort_values("seed")[metric])

    rows = []
    for row in paper["table2"]["rows"]:
        method, protocol = TABLE2_RUNS[row["protocol"]]
        for d in DATASETS:
            label = f"{HEADERS[d]}: {row['label']}"
            rows.append(("Table 2", label, "accuracy", row.get(d),
                         seeds(d, method, protocol, "accuracy")))  # fmt: skip
    for name in ("table3", "table5"):
        frame = study_table(runs, paper, name)
        printed = {r["method"]: r for r in paper[name]["rows"]}
        for method, label in zip(frame["id"], frame["method"], strict=True):
            for metric in METRICS:
                published = printed.get(method, {}).get(metric)
                ours = seeds(paper[name]["dataset"], method, STUDY_PROTOCOL, metric)
                rows.append((f"Table {name[-1]}", label, metric, published, ours))
    frame = pd.DataFrame(rows, columns=["table", "row", "metric", "paper", "seeds"])
    frame["paper"] = pd.to_numeric(frame["paper"], errors="coerce").astype(float)
    keep = frame["paper"].notna() | frame["seeds"].map(len).gt(0)
    return frame[keep].reset_index(drop=True)


def majority_accuracy(predictions: pd.DataFrame) -> float:
    """Test accuracy (the paper's weighted sense) of always predicting the train split's
    majority: the class (single-label) or each label's majority value (multi-label)."""
    from conclugen.metrics import classification_metrics

    train, test = (predictions[predictions["split"] == s] for s in ("train", "test"))
    if "target" in predictions:
        classes = sorted(c.removeprefix("score_") for c in predictions if c.startswith("score_"))
        guess = np.full(len(test), train["target"].mode().iloc[0])
        return classification_metrics(test["target"], guess, False, len(classes))["accuracy"]
    labels = [c for c in predictions if c.startswith("target_")]
    guess = np.tile((train[labels].mean() > 0.5).to_numpy(np.int64), (len(test), 1))
    return classification_metrics(test[labels].to_numpy(), guess, True)["accuracy"]
