"""The layers of docs/design.md section 6, kept true by reading every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (``import a.b`` and ``from a.b import c`` give ``a.b``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def importers(top: str) -> set[str]:
    """Project files that import ``top`` or one of its submodules."""
    return {
        str(p.relative_to(ROOT))
        for package in ("gan", "structsearch", "search_spaces")
        for p in modules(package)
        if any(m == top or m.startswith(f"{top}.") for m in imports(p))
    }


@pytest.mark.parametrize("path", modules("gan"), ids=lambda p: p.name)
def test_gan_is_pure_pytorch(path: Path) -> None:
    banned = {m for m in imports(path) if m.split(".")[0] in ("structsearch", "optuna", "mlflow", "pgmpy")}
    assert not banned, f"{path.name} imports {sorted(banned)}"


@pytest.mark.parametrize("path", modules("search_spaces"), ids=lambda p: p.name)
def test_search_spaces_do_not_import_the_search_loop(path: Path) -> None:
    loop = ("structsearch.search", "structsearch.study", "structsearch.trial", "structsearch.cli", "mlflow")
    banned = {m for m in imports(path) if m.startswith(loop)}
    assert not banned, f"{path.name} imports {sorted(banned)}"


def test_only_scoring_imports_pgmpy() -> None:
    assert importers("pgmpy") == {"structsearch/scoring.py"}


def test_only_tracking_imports_mlflow() -> None:
    assert importers("mlflow") == {"structsearch/tracking.py"}


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from pgmpy.base import DAG\n    import mlflow.tracking\n")
    assert imports(source) == {"pgmpy.base", "mlflow.tracking"}
