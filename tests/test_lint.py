"""The tooling a Snakemake/PyTorch reader expects stays clean."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, run_snakemake


def _tool(name: str) -> str:
    """A tool installed in the venv that runs the tests."""
    return str(Path(sys.executable).parent / name)


def test_snakemake_lint_is_clean(tmp_path):
    proc = run_snakemake(["--configfile", str(ROOT / "config" / "demo.yaml"), "--lint"], ROOT)
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_snakefmt_is_clean():
    proc = subprocess.run(
        [_tool("snakefmt"), "--check", "Snakefile", "rules"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_ruff_is_clean():
    proc = subprocess.run(
        [_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout


def test_ruff_format_is_clean():
    """The code, and the Python code blocks of README.md and docs/ (markdown: ruff's preview)."""
    for args in (["conclugen", "tests", "workflow"], ["--preview", "README.md", "docs"]):
        proc = subprocess.run(
            [_tool("ruff"), "format", "--check", "--no-cache", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
