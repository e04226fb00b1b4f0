"""The paper's tables: published numbers, our means over seeds beside them, and the writers."""

import math

import numpy as np
import pandas as pd
import pytest

from conclugen import tables
from conclugen.data.mosei import CLASSES as MOSEI
from tests.conftest import ROOT

PAPER = tables.load_paper_results(ROOT / "config" / "paper_results.yaml")
STUDY_IDS = [
    "conclugen",
    "conclu",
    "congen",
    "multicont",
    "instancecont",
    "generative",
    "conclugen_vision",
    "multicont_wo_text",
    "multicont_wo_audio",
]


def _run(dataset, method, protocol, seed, accuracy, f1=0.5, precision=0.5, recall=0.5):
    return dict(
        dataset=dataset,
        method=method,
        protocol=protocol,
        seed=seed,
        accuracy=accuracy,
        f1=f1,
        precision=precision,
        recall=recall,
    )


@pytest.fixture
def runs() -> pd.DataFrame:
    rows = [
        # CAER ConCluGen, linear: accuracy 30, 35, 40 % -> mean 35, std 5; f1 20, 25, 30 -> 25, 5
        *[
            _run("caer", "conclugen", "linear", s, a, f1=f)
            for s, a, f in [(0, 0.30, 0.20), (1, 0.35, 0.25), (2, 0.40, 0.30)]
        ],
        # CAER ConCluGen, finetuned: must not leak into Table 5 (linear).
        *[_run("caer", "conclugen", "finetune", s, 0.9) for s in (0, 1)],
        # CAER Instance-Cont: one seed -> std NaN.
        _run("caer", "instancecont", "linear", 0, 0.346),
        # MOSEI ConCluGen finetuned, 2 seeds: 66 and 67 -> 66.5 ± 0.7071; linear, 2 seeds.
        *[_run("mosei", "conclugen", "finetune", s, a) for s, a in [(0, 0.66), (1, 0.67)]],
        *[_run("mosei", "conclugen", "linear", s, a) for s, a in [(0, 0.59), (1, 0.61)]],
        # Supervised baseline on MOSEI and CAER; none on MELD.
        *[
            _run(d, "supervised", "supervised", s, a)
            for d, a in [("mosei", 0.5), ("caer", 0.3)]
            for s in (0, 1)
        ],
        # MELD: ConClu and ConCluGen/(vision) (a row Table 4 does not print).
        *[_run("meld", "conclu", "linear", s, 0.55) for s in (0, 1, 2)],
        *[_run("meld", "conclugen_vision", "linear", s, 0.5) for s in (0, 1)],
    ]
    return pd.DataFrame(rows)


def test_paper_results_hold_the_printed_tables():
    t1 = PAPER["table1"]["rows"]
    assert len(t1) == 12 and [r["method"] for r in t1 if r.get("ours")] == ["ConCluGen (ours)"]
    assert all(r["citation"].startswith("[") for r in t1 if not r.get("ours"))
    runs = {r["method"]: r["run"] for r in t1 if "run" in r}
    assert runs == {
        "Franceschini et al.": {"method": "mpuc", "protocol": "linear",
                                "metric": "weighted_accuracy"},
        "ConCluGen (ours)": {"method": "conclugen", "protocol": "finetune", "metric": "accuracy"},
    }  # fmt: skip
    theirs = {r["method"]: r for r in PAPER["franceschini"]["rows"] if "method" in r}
    assert (theirs["mpuc"]["weighted_accuracy"], theirs["mpuc"]["weighted_f1"]) == (66.70, 69.50)
    assert theirs["mpuc"]["weighted_accuracy"] == t1[2]["accuracy"]  # Table 1 prints their w-ACC
    assert (theirs["mpuc_wo_text"]["weighted_accuracy"], theirs["mpuc_wo_text"]["weighted_f1"]) == (
        55.50, 27.77
    )  # fmt: skip
    assert [r["group"] for r in t1].count("self_supervised") == 4
    assert [r["protocol"] for r in PAPER["table2"]["rows"]] == ["supervised", "linear", "finetune"]
    for name, dataset in [("table3", "mosei"), ("table5", "caer")]:
        assert PAPER[name]["dataset"] == dataset
        assert [r["method"] for r in PAPER[name]["rows"]] == STUDY_IDS
    t4 = PAPER["table4"]
    assert [r["method"] for r in t4["rows"]] == [m for m in STUDY_IDS if m != "conclugen_vision"]
    assert all(r[m] is None for r in t4["rows"] for m in tables.METRICS)
    # Single-label weighted recall is accuracy: the CAER table shows Acc. == Recall throughout.
    assert all(r["accuracy"] == r["recall"] for r in PAPER["table5"]["rows"])


def test_study_table_means_stds_and_differences(runs):
    t5 = tables.study_table(runs, PAPER, "table5")
    assert t5["id"].tolist() == STUDY_IDS
    assert t5["method"].tolist() == [r["label"] for r in PAPER["table5"]["rows"]]
    row = t5.set_index("id").loc["conclugen"]
    assert row["accuracy"] == pytest.approx(35.0) and row["accuracy_std"] == pytest.approx(5.0)
    assert row["accuracy_paper"] == 37.5 and row["accuracy_diff"] == pytest.approx(-2.5)
    assert row["f1"] == pytest.approx(25.0) and row["f1_diff"] == pytest.approx(25.0 - 26.1)
    assert row["n_seeds"] == 3
    single = t5.set_index("id").loc["instancecont"]
    assert single["accuracy"] == pytest.approx(34.6) and math.isnan(single["accuracy_std"])
    missing = t5.set_index("id").loc["conclu"]  # no CAER ConClu run
    assert missing["n_seeds"] == 0 and math.isnan(missing["accuracy"])
    assert math.isnan(missing["accuracy_diff"]) and missing["accuracy_paper"] == 36.6


def test_table4_has_no_paper_numbers_and_places_our_extra_row_seventh(runs):
    t4 = tables.study_table(runs, PAPER, "table4")
    assert t4["id"].tolist() == STUDY_IDS  # ConCluGen/(vision) where Tables 3 and 5 print it
    assert t4["method"].iloc[6] == "ConCluGen/(vision)"
    assert t4.set_index("id").loc["conclugen_vision", "accuracy"] == pytest.approx(50.0)
    for m in tables.METRICS:
        assert t4[f"{m}_paper"].isna().all() and t4[f"{m}_diff"].isna().all()
    conclu = t4.set_index("id").loc["conclu"]
    assert conclu["accuracy"] == pytest.approx(55.0) and conclu["accuracy_std"] == 0
    # Without runs the table is the paper's rows only, every cell empty.
    bare = tables.study_table(None, PAPER, "table4")
    assert len(bare) == 8 and bare["accuracy"].isna().all()


# The rows as the paper prints them, top to bottom (Table 1 without the group headings).
PAPER_ORDER = {
    "table1": [
        "SSE-FT",
        "CAE-LR",
        "Franceschini et al.",
        "ConCluGen (ours)",
        "CMIB",
        "Huynh et al.",
        "Graph-MFN",
        "CIA",
        "MESM",
        "Khare et al.",
        "Wen et al.",
        "Shenoy and Sardana",
    ],
    "table2": ["Supervised baseline", "ConCluGen (linear eval.)", "ConCluGen (finetuned)"],
    "table3": [tables.METHOD_LABELS[m] for m in STUDY_IDS],
    "table4": [tables.METHOD_LABELS[m] for m in STUDY_IDS if m != "conclugen_vision"],
    "table5": [tables.METHOD_LABELS[m] for m in STUDY_IDS],
}


def test_every_table_lists_its_rows_in_the_papers_order():
    key = {"table1": "method", "table2": "label"}
    for name, order in PAPER_ORDER.items():
        assert [r[key.get(name, "label")] for r in PAPER[name]["rows"]] == order, name
    # Every method run on every dataset, the runs listed in reverse so that input order cannot
    # give the right answer: Table 4 gains ConCluGen/(vision) at its Tables 3 and 5 place.
    every = [
        _run(d, m, "linear", 0, 0.5) for d in reversed(tables.DATASETS) for m in reversed(STUDY_IDS)
    ]
    every += [_run("mosei", "conclugen", "finetune", 0, 0.6)]
    every += [_run(d, "supervised", "supervised", 0, 0.4) for d in tables.DATASETS]
    for runs in (None, pd.DataFrame(every)):
        built = tables.build_tables(runs, PAPER)
        for name in ("table1", "table2", "table3", "table5"):
            assert built[name]["method"].tolist() == PAPER_ORDER[name], name
        table4 = built["table4"]["method"].tolist()
        full = PAPER_ORDER["table3"]
        assert table4 == (PAPER_ORDER["table4"] if runs is None else full)


def test_table1_puts_our_finetuned_mosei_row_beside_the_paper(runs):
    t1 = tables.table1(runs, PAPER)
    assert t1["method"].tolist() == [r["method"] for r in PAPER["table1"]["rows"]]
    ours = t1[t1["method"] == "ConCluGen (ours)"].iloc[0]
    assert ours["accuracy"] == pytest.approx(66.5)
    assert ours["accuracy_std"] == pytest.approx(np.std([66, 67], ddof=1))
    assert ours["accuracy_paper"] == 66.48 and ours["accuracy_diff"] == pytest.approx(0.02)
    baselines = t1[t1["method"] != "ConCluGen (ours)"]
    assert baselines["accuracy"].isna().all() and baselines["accuracy_paper"].notna().all()
    sse = t1.iloc[0]
    assert (sse["method"], sse["citation"], sse["accuracy_paper"]) == (
        "SSE-FT",
        "[52] Siriwardhana et al. 2020",
        55.7,
    )


def test_table2_rows_and_dataset_columns(runs):
    t2 = tables.table2(runs, PAPER)
    assert t2["method"].tolist() == [
        "Supervised baseline",
        "ConCluGen (linear eval.)",
        "ConCluGen (finetuned)",
    ]
    by = t2.set_index("id")
    assert by.loc["supervised/supervised", "mosei"] == pytest.approx(50.0)
    assert by.loc["supervised/supervised", "mosei_diff"] == pytest.approx(50.0 - 57.88)
    assert math.isnan(by.loc["supervised/supervised", "meld"])  # no MELD baseline run
    assert by.loc["supervised/supervised", "meld_paper"] == 55.97
    assert by.loc["conclugen/linear", "mosei"] == pytest.approx(60.0)
    assert by.loc["conclugen/linear", "mosei_diff"] == pytest.approx(0.0)
    assert by.loc["conclugen/finetune", "caer"] == pytest.approx(90.0)
    assert by.loc["conclugen/finetune", "caer_n_seeds"] == 2


def test_write_table_writes_three_parseable_files(runs, tmp_path):
    built = tables.build_tables(runs, PAPER)
    assert list(built) == ["table1", "table2", "table3", "table4", "table5", "franceschini"]
    frame = built["table5"]
    paths = tables.write_table(frame, tmp_path / "tables" / "table5")
    assert [p.name for p in paths] == ["table5.md", "table5.csv", "table5.tex"]
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == sorted(p.name for p in paths)

    back = pd.read_csv(paths[1])
    assert back.columns.tolist() == frame.columns.tolist()
    assert back["id"].tolist() == STUDY_IDS
    numeric = [c for c in frame.columns if c not in ("method", "id")]
    np.testing.assert_allclose(back[numeric].to_numpy(float), frame[numeric].to_numpy(float))
    assert back.set_index("id").loc["conclu"].isna()["accuracy"]  # empty cell

    md = paths[0].read_text().splitlines()
    assert md[0].startswith("| Method | Acc. ours | Acc. paper | Acc. Δ |")
    assert md[1].startswith("|---|---:|")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md[2:11]}
    assert list(rows) == [r["label"] for r in PAPER["table5"]["rows"]]
    assert "| 35.00 ± 5.00 | 37.5 | -2.50 |" in rows["ConCluGen"]
    assert "| 34.60 | 34.6 | +0.00 |" in rows["Instance-Cont"]  # one seed: no ±
    assert rows["ConClu"].startswith("| ConClu |  | 36.6 |  |")
    assert "Table 5." in md[-1]

    tex = paths[2].read_text()
    assert tex.startswith("% Table 5.") and r"\begin{tabular}{l" in tex
    assert r"35.00 $\pm$ 5.00 & 37.5 & -2.50" in tex and tex.rstrip().endswith(r"\end{tabular}")
    assert tex.count(r"\\") == 1 + len(frame)


def test_table4_renders_empty_paper_cells(runs, tmp_path):
    md_path, csv_path, _ = tables.write_table(
        tables.study_table(runs, PAPER, "table4"), tmp_path / "t4"
    )
    back = pd.read_csv(csv_path)
    assert back["accuracy_paper"].isna().all()
    conclu = next(
        line for line in md_path.read_text().splitlines() if line.startswith("| ConClu |")
    )
    assert conclu.startswith("| ConClu | 55.00 ± 0.00 |  |  |")


def test_tex_escape():
    assert tables.tex_escape("a_b 50% & c") == r"a\_b 50\% \& c"
    assert tables.tex_escape("1 ± 2, Δ") == r"1 $\pm$ 2, $\Delta$"


def test_bad_runs_are_rejected(runs):
    with pytest.raises(ValueError, match="fractions"):
        tables.summarise_runs(runs.assign(accuracy=runs["accuracy"] * 100))
    with pytest.raises(ValueError, match="duplicate"):
        tables.summarise_runs(pd.concat([runs, runs.iloc[:1]]))
    with pytest.raises(ValueError, match="lack columns"):
        tables.summarise_runs(runs.drop(columns="seed"))


def test_retrieval_summary_lists_every_method_and_pair():
    reports = {
        "conclugen": {
            "video->text": {"init": 0.1, "pretrained": 0.4, "chance": 0.05, "n": 20},
            "video->audio": {"init": 0.05, "pretrained": 0.349, "chance": 0.05, "n": 20},
        },
        "multicont_wo_audio": {
            "video->text": {"init": 0.0, "pretrained": 0.25, "chance": 0.05, "n": 20}
        },
    }
    lines = tables.retrieval_summary(reports).splitlines()
    assert lines[2:] == [
        "| conclugen | video->text | 0.10 | 0.40 | 0.050 | 20 |",
        "| conclugen | video->audio | 0.05 | 0.35 | 0.050 | 20 |",
        "| multicont_wo_audio | video->text | 0.00 | 0.25 | 0.050 | 20 |",
    ]
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|")


def test_collapse_summary_checks_the_methods_that_record_rep_std():
    histories = {
        "conclugen": pd.DataFrame({"epoch": [0, 1], "total": [2.0, 1.0]}),  # no collapse check
        "byol": pd.DataFrame({"rep_std": [0.02, 0.025], "rep_std_floor": [0.00625] * 2}),
        "dino": pd.DataFrame(
            {"rep_std": [0.01, 0.005], "rep_std_floor": [0.00625] * 2, "teacher_entropy": 0.914}
        ),
    }
    lines = tables.collapse_summary(histories).splitlines()
    assert lines[2:] == [
        "| byol | 2 | 0.0200 | 0.0250 | 0.0063 | 4.0 | ok |  |",
        "| dino | 2 | 0.0100 | 0.0050 | 0.0063 | 0.8 | collapsed | 0.91 |",
    ]
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    none = tables.collapse_summary({"conclugen": histories["conclugen"]}, synthetic=True)
    assert none.startswith("**Synthetic") and "No pretrained method" in none


def _outputs(runs, tmp_path, synthetic):
    """Every file the tables rule writes from tables code, as text, keyed by name."""
    built = tables.build_tables(runs, PAPER, synthetic=synthetic)
    texts = {}
    for name, frame in built.items():
        for path in tables.write_table(frame, tmp_path / name):
            texts[path.name] = path.read_text(encoding="utf-8")
    texts["tables.html"] = tables.to_html(built, PAPER)
    texts["headline.md"] = tables.headline(runs, {"caer": 0.25}, synthetic=synthetic)
    reports = {
        "conclugen": {"video->text": {"init": 0.1, "pretrained": 0.4, "chance": 0.05, "n": 20}}
    }
    texts["retrieval.md"] = tables.retrieval_summary(reports, synthetic=synthetic)
    history = pd.DataFrame({"rep_std": [0.02], "rep_std_floor": [0.006]})
    texts["collapse.md"] = tables.collapse_summary({"dino": history}, synthetic=synthetic)
    return texts


def test_synthetic_outputs_say_so_and_real_ones_do_not(runs, tmp_path):
    marked = _outputs(runs, tmp_path / "demo", synthetic=True)
    plain = _outputs(runs, tmp_path / "real", synthetic=False)
    assert len(marked) == 6 * 3 + 4
    for name, text in marked.items():
        assert "synthetic look-alike data" in text.lower(), name
        assert "synthetic" not in plain[name].lower(), name
    # The mark is what a reader meets first: the first line of markdown, LaTeX and the page.
    for name in ("table5.md", "headline.md", "retrieval.md", "collapse.md", "table5.tex"):
        assert "Synthetic look-alike data" in marked[name].splitlines()[0], name
    assert marked["tables.html"].index("Synthetic") < marked["tables.html"].index("<table")
    # Below the mark the markdown tables are the unmarked ones.
    assert marked["headline.md"].splitlines()[2:] == plain["headline.md"].splitlines()
    assert marked["table5.md"].endswith(plain["table5.md"])
    # LaTeX: the mark is also the tabular's first row, so a compiled table shows it.
    tex = marked["table5.tex"]
    assert r"\multicolumn{" in tex and tex.count(r"\\") == plain["table5.tex"].count(r"\\") + 1


def test_synthetic_csv_stays_parseable_with_a_data_column(runs, tmp_path):
    built = tables.build_tables(runs, PAPER, synthetic=True)
    _, csv, _ = tables.write_table(built["table2"], tmp_path / "table2")
    back = pd.read_csv(csv)
    assert back.columns[0] == "data" and (back["data"] == "synthetic look-alike data").all()
    assert back.columns[1:].tolist() == built["table2"].columns.tolist()
    assert back.set_index("id").loc["conclugen/linear", "mosei"] == pytest.approx(60.0)
    assert tables.csv_frame(runs, synthetic=False) is runs


@pytest.mark.parametrize(
    "name",
    [
        "workflow.rst",
        "tables.rst",
        "confusion.rst",
        "embedding.rst",
        "label_efficiency.rst",
        "paper_comparison.rst",
    ],
)
def test_report_text_marks_the_demo_only(name):
    """The report's front page and result captions, rendered as Snakemake renders them (Jinja
    with its settings, then docutils), say "synthetic" exactly when the look-alikes are on."""
    from docutils.core import publish_parts
    from jinja2 import Environment

    source = (ROOT / "workflow" / "report" / name).read_text()
    env = Environment(trim_blocks=True, lstrip_blocks=True)

    class Snakemake:
        def __init__(self, enabled):
            self.config = {"lookalike": {"enabled": enabled}, "downstream": {"seeds": [0, 1]}}

    html = {
        enabled: publish_parts(
            env.from_string(source).render(snakemake=Snakemake(enabled)), writer="html"
        )["html_body"]
        for enabled in (True, False)
    }
    assert "<strong>Synthetic look-alike data</strong>" in html[True]
    assert "ynthetic" not in html[False]


def _efficiency_runs() -> pd.DataFrame:
    """CAER and MOSEI at 10 % and 100 % of the labels: supervised and ConCluGen linear and
    finetuned, two seeds (F1 of seed s: base + s / 100)."""
    rows = []
    cells = [("supervised", "supervised"), ("conclugen", "linear"), ("conclugen", "finetune")]
    for d in ("mosei", "caer"):
        for (m, p), base in zip(cells, (0.2, 0.3, 0.4), strict=True):
            for f, n in ((1.0, 40), (0.1, 7)):
                for s in (0, 1):
                    f1 = base + f / 4 + s / 100
                    run = _run(d, m, p, s, accuracy=f1 + 0.05, f1=f1)
                    rows.append(run | dict(fraction=f, n_train=n))
    return pd.DataFrame(rows)


def test_label_efficiency_table_means_stds_and_order(tmp_path):
    table = tables.label_efficiency_table(_efficiency_runs(), synthetic=True)
    assert len(table) == 2 * 3 * 2
    assert table["dataset"].tolist() == ["mosei"] * 6 + ["caer"] * 6  # the paper's order
    assert table["id"].tolist()[:6] == [
        *["supervised/supervised"] * 2, *["conclugen/linear"] * 2, *["conclugen/finetune"] * 2
    ]  # fmt: skip
    assert table["labels"].tolist()[:2] == [10.0, 100.0]
    row = table.set_index(["dataset", "id", "labels"]).loc[("caer", "conclugen/linear", 10.0)]
    assert row["method"] == "ConCluGen (linear eval.)" and row["n_train"] == 7
    assert row["f1"] == pytest.approx(100 * (0.3 + 0.1 / 4 + 0.005))
    assert row["f1_std"] == pytest.approx(100 * 0.01 / math.sqrt(2))
    assert row["accuracy"] == pytest.approx(row["f1"] + 5) and row["n_seeds"] == 2
    md, csv, tex = tables.write_table(table, tmp_path / "label_efficiency")
    back = pd.read_csv(csv)
    assert (back["data"] == "synthetic look-alike data").all()
    assert back.columns[1:].tolist() == table.columns.tolist()
    text = md.read_text()
    assert text.startswith("**Synthetic look-alike data")
    assert "| Dataset | Method | Labels (%) | Train clips | F1 (%) |" in text
    assert "| caer | ConCluGen (linear eval.) | 10 | 7 | 33.00 ± 0.71 | 38.00 ± 0.71 | 2 |" in text
    assert "|---|---|---:|---:|---:|---:|---:|" in text
    assert r"\begin{tabular}{llrrrrr}" in tex.read_text()
    page = tables.table_page(table, "Label efficiency")
    assert page.index("Synthetic") < page.index("<h2>Label efficiency</h2>") < page.index("<table")
    plain = tables.label_efficiency_table(_efficiency_runs())
    assert "ynthetic" not in tables.to_markdown(plain) + tables.table_page(plain, "x")
    with pytest.raises(ValueError, match="duplicate"):
        tables.label_efficiency_table(pd.concat([_efficiency_runs()] * 2))


def test_label_efficiency_figure_has_a_log_axis_per_dataset(tmp_path, monkeypatch):
    from conclugen import figures

    table = tables.label_efficiency_table(_efficiency_runs())
    panels = {
        d: {m: (g["labels"], g["f1"], g["f1_std"]) for m, g in group.groupby("method")}
        for d, group in table.groupby("dataset")
    }
    saved, save = {}, figures.save_png
    monkeypatch.setattr(
        figures, "save_png", lambda fig, path: saved.update(fig=fig) or save(fig, path)
    )
    figures.label_efficiency_figure(panels, tmp_path / "le.png", "t", "weighted F1 (%)")
    axes = saved["fig"].axes
    assert [ax.get_title() for ax in axes] == ["caer", "mosei"]
    assert all(ax.get_xscale() == "log" for ax in axes)
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["10 %", "100 %"]
    assert len(axes[0].get_legend().get_texts()) == 3
    image = figures.pyplot().imread(tmp_path / "le.png")
    assert image.ndim == 3 and image.shape[1] > 2 * image.shape[0]


def test_paper_comparison_holds_every_published_cell_with_our_seeds(runs):
    frame = tables.paper_comparison(runs, PAPER)
    assert frame["table"].unique().tolist() == ["Table 2", "Table 3", "Table 5"]
    t2 = frame[frame["table"] == "Table 2"]
    assert len(t2) == 9 and set(t2["metric"]) == {"accuracy"}  # 3 protocols x 3 datasets
    linear_caer = t2[t2["row"] == "CAER: ConCluGen (linear eval.)"].iloc[0]
    assert linear_caer["paper"] == 37.5
    assert linear_caer["seeds"] == pytest.approx((30.0, 35.0, 40.0))
    assert t2[t2["row"].str.startswith("MELD: Supervised")].iloc[0]["seeds"] == ()
    t5 = frame[(frame["table"] == "Table 5") & (frame["metric"] == "f1")]
    in_order = sorted(PAPER["table5"]["rows"], key=lambda r: STUDY_IDS.index(r["method"]))
    assert t5["row"].tolist() == [r["label"] for r in in_order]
    assert t5.iloc[0]["seeds"] == pytest.approx((20.0, 25.0, 30.0))  # linear, not finetuned
    assert (frame["paper"].notna() | frame["seeds"].map(len).gt(0)).all()


def test_paper_comparison_figure_draws_a_panel_per_table_and_metric(runs, tmp_path, monkeypatch):
    from conclugen import figures

    frame = tables.paper_comparison(runs, PAPER)
    panels = {
        f"{t}: {m}": list(zip(g["row"], g["paper"], g["seeds"], strict=True))
        for (t, m), g in frame.groupby(["table", "metric"], sort=False)
    }
    saved, save = {}, figures.save_png
    monkeypatch.setattr(
        figures, "save_png", lambda fig, path: saved.update(fig=fig) or save(fig, path)
    )
    figures.paper_comparison_figure(panels, tmp_path / "cmp.png", "t")
    visible = [ax for ax in saved["fig"].axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == list(panels)
    caer = visible[0]  # Table 2: bars for our runs (6 cells) and every published number (9)
    assert len(caer.patches) == 6 + 9
    assert figures.pyplot().imread(tmp_path / "cmp.png").ndim == 3


def _regression_runs():
    """Continuous-label runs: two seeds of a baseline, three methods (one vision read-out) with
    the default loss, and ConCluGen under a second loss."""
    rows = []
    for method, protocol, loss, base in [
        ("conclugen", "linear", "best", 0.6),
        ("supervised", "supervised", "best", 0.5),
        ("byol", "linear", "best", 0.3),
        ("conclugen", "vision", "best", 0.4),
        ("conclugen", "linear", "ccc", 0.55),
        ("conclugen", "finetune", "best", 0.7),
    ]:
        for seed in (0, 1):
            value = base + 0.02 * seed
            rows.append(
                dict(dataset="mosei", method=method, protocol=protocol, seed=seed, loss=loss,
                     ccc=value, pearson=value + 0.1, mse=1 - value, acc2=0.8, acc7=0.3,
                     emotion_ccc=value / 2)
            )  # fmt: skip
    return pd.DataFrame(rows)


LOSSES = {"ccc": {"ccc": 1.0, "mse": 0, "ce": 0, "ncce": 0},
          "best": {"ccc": 0.5, "mse": 0.25, "ce": 0.25, "ncce": 0}}  # fmt: skip


def test_pretext_table_lists_every_method_under_linear_evaluation_with_one_loss(tmp_path):
    runs = _regression_runs()
    frame = tables.pretext_table(runs, "best", LOSSES["best"], synthetic=True)
    assert frame["id"].tolist() == ["supervised", "conclugen", "conclugen_vision", "byol"]
    assert frame["method"].tolist()[:3] == [
        "Supervised baseline",
        "ConCluGen",
        "ConCluGen/(vision)",
    ]
    row = frame.set_index("id").loc["conclugen"]
    assert row["ccc"] == pytest.approx(0.61) and row["ccc_std"] == pytest.approx(0.02 / 2**0.5)
    assert row["n_seeds"] == 2 and row["mse"] == pytest.approx(0.39)
    assert "w_ccc = 0.5, w_mse = 0.25, w_ce = 0.25" in frame.attrs["caption"]
    assert "SEWA" in frame.attrs["caption"] and "not comparable" in frame.attrs["caption"]
    md, csv, _ = tables.write_table(frame, tmp_path / "pretext_task")
    text = md.read_text()
    assert text.startswith(f"**{tables.SYNTHETIC}**")
    assert "| CCC | Pearson r |" in text and "0.610 ± 0.014" in text and "(%)" not in text
    assert "---:|" in text.splitlines()[3]  # numbers right-aligned
    assert pd.read_csv(csv)["ccc"].tolist() == pytest.approx(frame["ccc"].tolist())


def test_loss_table_rows_per_method_protocol_and_combination():
    frame = tables.loss_table(_regression_runs(), LOSSES, ["conclugen"])
    assert frame["id"].tolist() == [
        "conclugen/finetune/best", "conclugen/linear/ccc", "conclugen/linear/best",
        "conclugen_vision/linear/best",
    ]  # fmt: skip
    assert frame.loc[1, "loss"] == "w_ccc = 1" and frame.loc[1, "ccc"] == pytest.approx(0.56)
    both = tables.loss_table(_regression_runs(), LOSSES, ["supervised", "conclugen", "byol"])
    assert both["id"].tolist()[0] == "supervised/supervised/best" and len(both) == 6
    assert (
        tables.loss_label({"ccc": 0.5, "mse": 0, "ce": 0, "ncce": 0.5})
        == "w_ccc = 0.5, w_nCCE = 0.5"
    )
    with pytest.raises(ValueError, match="lack columns"):
        tables.loss_table(_regression_runs().drop(columns="loss"), LOSSES, ["conclugen"])
    assert tables.pretext_table(None, "best", LOSSES["best"]).empty


def _mpuc_runs() -> pd.DataFrame:
    """MPUC and its ablation on CMU-MOSEI with the literature's weighted metrics, and a CAER
    MPUC run without them (single-label)."""
    rows = [
        # weighted accuracy 0.65 and 0.68 -> 66.5 ± 2.1213; weighted F1 0.70, 0.72 -> 71 ± 1.41
        {**_run("mosei", "mpuc", "linear", 0, 0.40), "weighted_accuracy": 0.65,
         "weighted_f1": 0.70},
        {**_run("mosei", "mpuc", "linear", 1, 0.42), "weighted_accuracy": 0.68,
         "weighted_f1": 0.72},
        {**_run("mosei", "mpuc_wo_text", "linear", 0, 0.30), "weighted_accuracy": 0.55,
         "weighted_f1": 0.30},
        {**_run("mosei", "conclugen", "finetune", 0, 0.66), "weighted_accuracy": 0.60,
         "weighted_f1": 0.50},
        _run("caer", "mpuc", "linear", 0, 0.30),
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_table1_reproduces_franceschinis_row_in_their_weighted_accuracy():
    t1 = tables.table1(_mpuc_runs(), PAPER).set_index("method")
    row = t1.loc["Franceschini et al."]
    assert row["accuracy"] == pytest.approx(66.5)  # their metric, not our accuracy (41)
    assert row["accuracy_std"] == pytest.approx(np.std([65, 68], ddof=1))
    assert row["accuracy_paper"] == 66.70 and row["accuracy_diff"] == pytest.approx(-0.2)
    assert row["ours_metric"] == "w-Acc." and row["n_seeds"] == 2
    ours = t1.loc["ConCluGen (ours)"]
    assert ours["accuracy"] == pytest.approx(66.0) and ours["ours_metric"] == "Acc."
    assert t1.loc["CAE-LR", "ours_metric"] == "" and t1.loc["CAE-LR", "n_seeds"] == 0
    md = tables.to_markdown(tables.table1(_mpuc_runs(), PAPER))
    line = next(x for x in md.splitlines() if x.startswith("| Franceschini et al."))
    assert "| 66.50 ± 2.12 | 66.7 | -0.20 | w-Acc. | 2 |" in line


def test_the_mosei_table_has_the_weighted_metrics_beside_franceschinis():
    runs = _mpuc_runs()
    t3 = tables.study_table(runs, PAPER, "table3").set_index("id")
    assert list(t3.index[-2:]) == ["mpuc", "mpuc_wo_text"]  # after the paper's rows
    mpuc = t3.loc["mpuc"]
    assert mpuc["weighted_accuracy"] == pytest.approx(66.5)
    assert mpuc["weighted_f1"] == pytest.approx(71.0)
    assert mpuc["weighted_f1_std"] == pytest.approx(np.std([70, 72], ddof=1))
    assert mpuc["weighted_accuracy_paper"] == 66.70 and mpuc["weighted_f1_paper"] == 69.50
    assert mpuc["weighted_f1_diff"] == pytest.approx(71.0 - 69.5)
    assert mpuc["accuracy"] == pytest.approx(41.0) and math.isnan(mpuc["accuracy_paper"])
    wo = t3.loc["mpuc_wo_text"]
    assert (wo["weighted_accuracy"], wo["weighted_accuracy_paper"]) == (pytest.approx(55.0), 55.5)
    assert wo["weighted_f1_paper"] == 27.77 and math.isnan(wo["weighted_f1_std"])
    # ConCluGen's paper prints no weighted metric; a row without such runs has none either
    assert math.isnan(t3.loc["conclugen", "weighted_accuracy_paper"])
    assert math.isnan(t3.loc["conclu", "weighted_accuracy"])
    header = tables.to_markdown(tables.study_table(runs, PAPER, "table3")).splitlines()[0]
    assert "| w-Acc. ours | w-Acc. paper | w-Acc. Δ | w-F1 ours |" in header
    # the single-label tables have no such columns; their MPUC row is there all the same
    t5 = tables.study_table(runs, PAPER, "table5")
    assert "weighted_accuracy" not in t5.columns and t5["id"].iloc[-1] == "mpuc"
    # runs without the weighted metrics at all (older cells) leave the columns empty
    older = _mpuc_runs().drop(columns=["weighted_accuracy", "weighted_f1"])
    t3_old = tables.study_table(older, PAPER, "table3")
    assert t3_old["weighted_accuracy"].isna().all()


def test_paper_results_hold_franceschinis_table_ii_per_emotion():
    rows = {r["label"]: r for r in PAPER["franceschini"]["rows"]}
    assert list(rows) == ["Late Fusion", "Attention Mec.", "Ours wout/ text", "Ours"]
    assert [r.get("method") for r in rows.values()] == [None, None, "mpuc_wo_text", "mpuc"]
    assert rows["Ours"]["emotions"]["surprise"] == [62.93, 72.73]
    assert rows["Late Fusion"]["emotions"]["surprise"] == [50.01, 3.31]
    for label, row in rows.items():
        assert list(row["emotions"]) == list(MOSEI), label
        # each printed Overall is the mean of the printed emotions, to the digits they print
        for i, metric in enumerate(("weighted_accuracy", "weighted_f1")):
            mean = np.mean([v[i] for v in row["emotions"].values()])
            assert row[metric] == pytest.approx(mean, abs=0.06), (label, metric)


def test_franceschini_table_puts_our_mpuc_runs_beside_their_table_ii_per_emotion():
    runs = _mpuc_runs()
    for metric, base in (("weighted_accuracy", 0.60), ("weighted_f1", 0.50)):
        for i, emotion in enumerate(MOSEI):  # seed 0: base + i/100, seed 1: base + 3 i/100
            runs[f"{metric}_{emotion}"] = base + i / 100 * np.where(runs["seed"] == 0, 1, 3)
    frame = tables.franceschini_table(runs, PAPER)
    assert len(frame) == 4 * 7 and frame.attrs["title"] == "Franceschini et al., Table II"
    table = frame.set_index(["method", "emotion"])
    fear = table.loc[("MPUC", "Fear")]  # i = 5: 0.65 and 0.75 -> 70 ± 7.07
    assert fear["weighted_accuracy"] == pytest.approx(70.0)
    assert fear["weighted_accuracy_std"] == pytest.approx(np.std([65, 75], ddof=1))
    assert fear["weighted_accuracy_paper"] == 64.49
    assert fear["weighted_accuracy_diff"] == pytest.approx(70.0 - 64.49)
    assert fear["weighted_f1"] == pytest.approx(60.0) and fear["weighted_f1_paper"] == 74.85
    assert fear["n_seeds"] == 2
    overall = table.loc[("MPUC", "Overall")]  # the runs' own mean over the emotions
    assert overall["weighted_accuracy"] == pytest.approx(66.5)
    assert overall["weighted_f1_paper"] == 69.50
    wo = table.loc[("MPUC Wout/text", "Happy")]  # one seed: no std
    assert wo["weighted_accuracy"] == pytest.approx(60.0) and math.isnan(wo["weighted_f1_std"])
    assert wo["weighted_accuracy_paper"] == 63.96
    baseline = table.loc[("Late Fusion", "Sad")]  # theirs only
    assert math.isnan(baseline["weighted_accuracy"]) and baseline["weighted_f1_paper"] == 27.97
    assert baseline["n_seeds"] == 0
    md = tables.to_markdown(frame)
    assert md.splitlines()[0].startswith("| Method | Emotion | w-Acc. ours | w-Acc. paper |")
    line = next(x for x in md.splitlines() if x.startswith("| MPUC | Fear |"))
    assert "| 70.00 ± 7.07 | 64.49 | +5.51 |" in line
    # runs without the per-emotion columns (older cells): their emotions only, our Overall kept
    older = tables.franceschini_table(_mpuc_runs(), PAPER)
    per_emotion = older["emotion"] != "Overall"
    assert older.loc[per_emotion, "weighted_f1"].isna().all()
    assert older.loc[~per_emotion, "weighted_f1"].notna().sum() == 2  # MPUC and without text
