"""The scripts under bench/ as modules, for their tests (bench/ is scripts, not a package)."""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"


def load(name: str) -> ModuleType:
    """``bench/<name>.py``, executed as a fresh module named ``name``."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
