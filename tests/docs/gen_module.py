"""Load ``docs/gen.py`` (the docs generator), which is a script, not a package module."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_gen() -> ModuleType:
    """Import ``docs/gen.py`` as a module."""
    spec = importlib.util.spec_from_file_location("rawstream_docs_gen", ROOT / "docs" / "gen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
