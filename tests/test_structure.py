"""The package's shape: no import cycle, figures imports no stage."""

import ast
from pathlib import Path

from tests.conftest import ROOT


def _module(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of ``root/conclugen`` it imports, at module level or inside a
    function."""
    files = {_module(p, root): p for p in sorted((root / "conclugen").rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets.add(base)
                targets |= {f"{base}.{a.name}" for a in node.names}
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" on the current path, "done" once explored

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], node, nxt]  # open: on the path
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_are_read_at_every_level(tmp_path):
    pkg = tmp_path / "conclugen"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\n\ndef f():\n    from conclugen.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("from ..a import f\nimport conclugen.sub\n")
    graph = package_imports(tmp_path)
    assert graph == {
        "conclugen": set(),
        "conclugen.a": {"conclugen.sub", "conclugen.sub.b"},
        "conclugen.sub": {"conclugen.sub.b"},
        "conclugen.sub.b": {"conclugen.a", "conclugen.sub"},
    }
    assert find_cycle(graph) == ["conclugen.a", "conclugen.sub", "conclugen.sub.b", "conclugen.a"]


def test_the_package_has_no_import_cycle():
    assert find_cycle(package_imports()) is None


def test_figures_imports_no_stage():
    assert package_imports()["conclugen.figures"] <= {"conclugen.io"}


def test_the_method_list_has_one_source():
    """pretrain.METHODS; the schema's method lists and the tables' labels follow it."""
    import yaml

    from conclugen.pretrain import METHODS
    from conclugen.tables import METHOD_LABELS

    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())["properties"]
    pretrain, downstream = schema["pretrain"]["properties"], schema["downstream"]["properties"]
    methods = list(METHODS)
    assert pretrain["methods"]["items"]["enum"] == methods
    assert pretrain["methods"]["default"] == methods
    assert downstream["methods"]["items"]["enum"] == methods
    efficiency = downstream["label_efficiency"]["properties"]["methods"]["items"]["enum"]
    assert efficiency == ["supervised", *methods]
    # and the one vision-only read-out Table 4 prints (tables.collect_runs names it)
    assert set(METHOD_LABELS) == {*methods, "conclugen_vision"}
