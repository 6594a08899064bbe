"""The package's rings (DESIGN.md section 1), enforced by scanning imports.

cli -> app -> server (asyncio)  -> sansio (pure)
          -> engine (threads, llama_cpp) -^
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rawstream"

#: For each ring, the imports it must not make (module name prefixes).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "sansio": (
        "asyncio", "socket", "threading", "time", "datetime", "selectors", "concurrent",
        "llama_cpp", "uvloop", "rawstream.server", "rawstream.app", "rawstream.cli",
        "rawstream.engine.llama", "rawstream.engine.fake", "rawstream.engine.scheduler",
    ),
    "server": (
        "threading", "concurrent", "llama_cpp", "rawstream.engine", "rawstream.app",
        "rawstream.cli",
    ),
    "engine": ("h11", "wsproto", "socket", "rawstream.server", "rawstream.app", "rawstream.cli"),
    "app": ("threading", "concurrent", "llama_cpp", "rawstream.cli"),
}  # fmt: skip


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _cases() -> list[tuple[str, Path]]:
    return [(ring, path) for ring in FORBIDDEN for path in sorted((PACKAGE / ring).glob("*.py"))]


@pytest.mark.parametrize(("ring", "path"), _cases(), ids=lambda v: getattr(v, "name", v))
def test_ring_imports(ring: str, path: Path) -> None:
    bad = sorted(
        name
        for name in imports_of(path)
        for banned in FORBIDDEN[ring]
        if name == banned or name.startswith(banned + ".")
    )
    assert not bad, f"{path.relative_to(PACKAGE.parent)} ({ring} ring) imports {bad}"


def test_every_ring_has_modules() -> None:
    assert all(any((PACKAGE / ring).glob("*.py")) for ring in FORBIDDEN)


def test_scanner_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import asyncio\nfrom rawstream.server import flow\nfrom . import x\n")
    assert imports_of(sample) == {"asyncio", "rawstream.server"}
