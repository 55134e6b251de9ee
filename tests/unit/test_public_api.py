"""Every module's curated public surface (``__all__``) names things that exist."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

PACKAGES = ["schemas", "topics", "fedsynth", "agents", "aggregator", "synth_gateway",
            "observability"]


def _modules() -> list[str]:
    names = []
    for pkg in PACKAGES:
        module = importlib.import_module(pkg)
        names.append(pkg)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{pkg}."):
            names.append(info.name)
    return sorted(n for n in names if hasattr(importlib.import_module(n), "__all__"))


@pytest.mark.parametrize("name", _modules())
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names {missing}"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
