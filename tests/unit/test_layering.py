"""House rule 2: the pure core never imports an I/O library or an adapter package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IO_LIBS = {"aiokafka", "faust", "aiohttp", "duckdb", "opentelemetry", "mode"}
ADAPTERS = {"agents", "topics", "aggregator", "synth_gateway", "observability"}
PURE_TREES = [ROOT / "fedsynth", ROOT / "aggregator" / "strategies", ROOT / "schemas"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _pure_files() -> list[Path]:
    return sorted(p for tree in PURE_TREES for p in tree.rglob("*.py"))


@pytest.mark.parametrize("path", _pure_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_has_no_io_imports(path: Path) -> None:
    bad = _imports(path) & (IO_LIBS | ADAPTERS)
    if path.is_relative_to(ROOT / "aggregator"):
        bad -= {"aggregator"}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_checker_catches_a_bad_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import aiokafka\nfrom agents.x import y\n")
    assert _imports(bad) & (IO_LIBS | ADAPTERS) == {"aiokafka", "agents"}
