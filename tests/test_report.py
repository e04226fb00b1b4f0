"""The report's front page: what it holds, that nothing wraps, and that the Snakemake report's
landing page embeds it."""

import base64
import re

import pandas as pd

from conclugen import report, tables
from tests.conftest import ROOT

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def _stats(dataset: str, reasons: int) -> dict:
    ledger = [
        {"stage": "faces", "action": "dropped", "reason": f"reason {i}", "count": 10 - i,
         "example": f"{dataset}_{i}"}
        for i in range(reasons)
    ]  # fmt: skip
    ledger.append({"stage": "download", "action": "extra", "reason": "x", "count": 50,
                   "example": "e"})  # fmt: skip
    return {
        "dataset": dataset,
        "samples": {"train": 8, "val": 2, "test": 3},
        "usable": {"train": 7, "val": 2, "test": 2},
        "classes": {},
        "ledger": ledger,
        "totals": {"dropped": sum(r["count"] for r in ledger[:-1]), "kept": 0, "extra": 50},
    }


def test_failures_list_the_commonest_reasons_and_count_the_rest():
    frame = report.failures_frame([_stats("caer", 7), _stats("meld", 2)], top=5)
    caer = frame[frame["dataset"] == "caer"]
    assert caer["reason"].tolist()[:5] == [f"reason {i}" for i in range(5)]
    assert caer.iloc[-1]["reason"].startswith("2 more reasons")
    assert caer.iloc[-1]["samples"] == 5 + 4
    assert "extra" not in frame["action"].tolist()  # extras are not failures
    assert frame[frame["dataset"] == "meld"]["samples"].tolist() == [10, 9]


def test_datasets_table_counts_samples_usable_and_ledger_totals():
    frame = report.datasets_frame([_stats("caer", 3)])
    row = frame.iloc[0]
    assert (row["train"], row["val"], row["test"], row["all"], row["usable"]) == (8, 2, 3, 13, 11)
    assert (row["dropped"], row["kept with a defect"], row["extras"]) == (27, 0, 50)


def test_front_page_holds_the_four_items_and_never_wraps_a_cell():
    runs = pd.DataFrame(
        [dict(dataset="caer", method="conclugen", protocol="linear", seed=s, accuracy=a, f1=a,
              precision=a, recall=a) for s, a in ((0, 0.3), (1, 0.4))]
    )  # fmt: skip
    headline = tables.headline_frame(runs, {"caer": 0.25})
    retrieval = tables.retrieval_frame(
        {"conclugen": {"video->text": {"init": 0.1, "pretrained": 0.4, "chance": 0.05, "n": 20}}}
    )
    page = report.front_page(headline, PNG, retrieval, [_stats("caer", 7)], synthetic=True)
    order = [
        "Synthetic look-alike data", "Headline", "35.0 ± 7.1", "Cross-modal retrieval",
        "video->text", "Ours against the paper", "data:image/png;base64,", "<h2>Datasets",
        "<h2>Failures", "reason 0",
    ]  # fmt: skip
    at = [page.index(s.replace(">", "&gt;") if s == "video->text" else s) for s in order]
    assert at == sorted(at)
    image = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(image) == PNG
    assert re.search(r"\.conclugen-front th, \.conclugen-front td \{\s*white-space: nowrap", page)
    assert page.count('<div class="scroll">') == 4  # every table scrolls rather than wraps
    plain = report.front_page(headline, PNG, retrieval, [_stats("caer", 1)])
    assert "ynthetic" not in plain


def test_the_report_landing_page_embeds_the_front_page(tmp_path, monkeypatch):
    """workflow.rst rendered as Snakemake renders it (Jinja, then docutils, in the working
    directory): the front page's HTML once the rule has run, a sentence before."""
    from docutils.core import publish_parts
    from jinja2 import Environment

    source = (ROOT / "workflow" / "report" / "workflow.rst").read_text()
    env = Environment(trim_blocks=True, lstrip_blocks=True)

    class Snakemake:
        config = {"lookalike": {"enabled": False}, "downstream": {"seeds": 2}}

    class Result:
        target = "front_page.html"

    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "report").mkdir(parents=True)
    (tmp_path / "results/report/front_page.html").write_text('<div class="conclugen-front">x</div>')

    def render(files):
        text = env.from_string(source).render(snakemake=Snakemake, files=files, categories={})
        return publish_parts(text, writer="html")["html_body"]

    assert '<div class="conclugen-front">x</div>' in render([Result()])
    before = render([])
    assert "conclugen-front" not in before and "appears here once" in before
