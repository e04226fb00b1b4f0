"""Every file that code, configs and docs point at is in the repository.

A pointer to a design note, a section (``§``) or a folder outside the checkout sends a reader
nowhere; the facts it meant belong in a docstring or under ``docs/``."""

import re
from pathlib import Path

from tests.conftest import ROOT

SKIP = {
    ".git",
    ".venv",
    ".snakemake",
    ".pytest_cache",
    ".ruff_cache",
    "__pycache__",
    "results",
    "build",
}
SUFFIXES = {".py", ".smk", ".md", ".yaml"}
# a path into one of the folders a pointer names (docs/x.md, notes/..., shared/...), or a
# capitalised Markdown file (DESIGN.md; lower-case names such as headline.md are outputs)
PATH = re.compile(r"(?<![\w./-])((?:\.\./)*(?:docs|notes|shared)/[\w./-]*\w|[A-Z][A-Z_-]*\.md)\b")
SECTION = re.compile(r"§")


def scanned_files(root: Path) -> list[Path]:
    """The repository's code, configs and docs (not the venv, outputs or caches)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix in SUFFIXES or p.name in ("Snakefile", "Makefile")
        if not any(part in SKIP or part.endswith(".egg-info") for part in p.relative_to(root).parts)
        if p.is_file() and p != Path(__file__).resolve()  # this file quotes what it finds
    )


def resolves(ref: str, source: Path, root: Path) -> bool:
    """Whether ``ref`` names a file of the repository (outside it counts as not): from its
    root, beside ``source``, or (a bare name) in ``docs/``."""
    candidates = [root / ref, source.parent / ref]
    if "/" not in ref:
        candidates.append(root / "docs" / ref)
    return any(c.exists() and c.resolve().is_relative_to(root.resolve()) for c in candidates)


def dangling(root: Path) -> list[str]:
    """``file:line: what`` for each pointer that does not resolve: a path that is not there, or
    a ``§`` that follows no file of the repository on its line."""
    found = []
    for path in scanned_files(root):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.relative_to(root)}:{n}"
            refs = [(m.start(), m.group(1)) for m in PATH.finditer(line)]
            good = [start for start, ref in refs if resolves(ref, path, root)]
            found += [f"{where}: {ref}" for start, ref in refs if start not in good]
            for m in SECTION.finditer(line):
                if not any(start < m.start() for start in good):
                    found.append(f"{where}: {line.strip()}")
    return found


def test_dangling_pointers_are_found(tmp_path):
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "real.md").write_text("# Real\n")
    (repo / "docs" / "REAL.md").write_text("# Real\n")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "real.md").write_text("outside the repository\n")
    (repo / "a.py").write_text(
        '"""See docs/real.md §2 and REAL.md; DESIGN.md §3, notes/x.md, shared/papers/p.pdf."""\n'
        "# ../shared/real.md; a bare § 4\n"
    )
    assert dangling(repo) == [
        "a.py:1: DESIGN.md",
        "a.py:1: notes/x.md",
        "a.py:1: shared/papers/p.pdf",
        "a.py:2: ../shared/real.md",
        "a.py:2: # ../shared/real.md; a bare § 4",
    ]


def test_every_pointer_in_the_repository_resolves():
    assert dangling(ROOT) == []
