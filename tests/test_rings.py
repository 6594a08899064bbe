"""The package's rings, enforced two ways: by reading imports and by running them.

cli -> app -> server (asyncio)  -> sansio (pure)
          -> engine (threads, llama_cpp) -^

- Every module's own imports (relative ones resolved, type-only and function-local
  ones included) must stay out of its ring's forbidden list.
- Importing a pure module must not *load* asyncio, threads, sockets, llama.cpp or
  the other rings, however indirectly: ``from rawstream.engine.base import X``
  runs ``rawstream/engine/__init__.py`` first, whatever ``base`` itself imports.
  Each module is imported in a fresh interpreter and the modules it loaded are read
  from ``sys.modules``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.import_graph import (
    import_graph,
    imports_of,
    is_under,
    loaded_by,
    module_name,
    modules_of,
    write_package,
)

PACKAGE = Path(__file__).resolve().parent.parent / "rawstream"
ROOT = PACKAGE.parent

#: For each ring, the imports it must not make (module name prefixes).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "sansio": (
        "asyncio", "socket", "threading", "time", "datetime", "selectors", "concurrent",
        "llama_cpp", "uvloop", "rawstream.engine", "rawstream.server", "rawstream.app",
        "rawstream.cli",
    ),
    "server": (
        "threading", "concurrent", "llama_cpp", "rawstream.engine", "rawstream.app",
        "rawstream.cli",
    ),
    "engine": ("h11", "wsproto", "socket", "rawstream.server", "rawstream.app", "rawstream.cli"),
    "app": ("threading", "concurrent", "llama_cpp", "rawstream.cli"),
}  # fmt: skip

#: What importing a pure module must not load, directly or through anything else.
#: (``time`` is not here: every interpreter has loaded it before the first import.)
SANSIO_MUST_NOT_LOAD = (
    "asyncio", "threading", "socket", "selectors", "concurrent", "llama_cpp", "uvloop",
    "rawstream.engine", "rawstream.server", "rawstream.app", "rawstream.cli",
)  # fmt: skip


def forbidden_imports(path: Path, module: str, forbidden: tuple[str, ...]) -> list[str]:
    """The imports of ``path`` that fall under ``forbidden``, as ``name (line N)``."""
    return sorted(
        f"{imp.name} (line {imp.line})"
        for imp in imports_of(path, module)
        if any(is_under(name, forbidden) for name in imp.names)
    )


def forbidden_loads(module: str, root: Path, forbidden: tuple[str, ...]) -> list[str]:
    """The modules under ``forbidden`` that importing ``module`` loads, with their chains."""
    loaded = loaded_by(module, root)
    assert loaded.file is not None and Path(loaded.file).is_relative_to(root), loaded.file
    blind = sorted(n for n in loaded.startup if is_under(n, forbidden))
    assert not blind, f"the interpreter loads {blind} at startup: the check cannot see them"
    return [" -> ".join(chain) for chain in loaded.offending(forbidden).values()]


# --- the rawstream package --------------------------------------------------------------


def _cases() -> list[tuple[str, Path]]:
    return [(ring, path) for ring in FORBIDDEN for path in sorted((PACKAGE / ring).rglob("*.py"))]


@pytest.mark.parametrize(("ring", "path"), _cases(), ids=lambda v: getattr(v, "name", v))
def test_ring_imports(ring: str, path: Path) -> None:
    bad = forbidden_imports(path, module_name(path, ROOT), FORBIDDEN[ring])
    assert not bad, f"{path.relative_to(ROOT)} ({ring} ring) imports {bad}"


def test_every_ring_has_modules() -> None:
    assert all(any((PACKAGE / ring).glob("*.py")) for ring in FORBIDDEN)


SANSIO_MODULES = sorted(modules_of(PACKAGE / "sansio", ROOT))


@pytest.mark.parametrize("module", SANSIO_MODULES)
def test_importing_a_pure_module_loads_nothing_impure(module: str) -> None:
    bad = forbidden_loads(module, ROOT, SANSIO_MUST_NOT_LOAD)
    assert not bad, f"importing {module} loads:\n" + "\n".join(bad)


def test_the_pure_modules_are_found() -> None:
    assert {"rawstream.sansio", "rawstream.sansio.openai", "rawstream.sansio.values"} <= set(
        SANSIO_MODULES
    )


# --- the checks themselves, on a package made for them ----------------------------------


#: A pure module that reaches the engine's threads only through the engine's __init__,
#: as ``rawstream/sansio/openai.py`` once did with ``from rawstream.engine.base import``.
INDIRECT = {
    "ringpkg/__init__.py": "",
    "ringpkg/engine/__init__.py": "import threading\nfrom ringpkg.engine.base import Value\n",
    "ringpkg/engine/base.py": "from dataclasses import dataclass\n\nValue = dataclass\n",
    "ringpkg/sansio/__init__.py": "VERSION = 1\n",
    "ringpkg/sansio/absolute.py": "from ringpkg.engine.base import Value\n",
    "ringpkg/sansio/relative.py": "from ..engine import base\n",
    "ringpkg/sansio/deep.py": "from .relative import base\n",
    "ringpkg/sansio/clean.py": "import json\nfrom . import VERSION\n",
}
RING_MUST_NOT_LOAD = ("threading", "ringpkg.engine")


def test_load_check_sees_what_the_old_scan_missed(tmp_path: Path) -> None:
    write_package(tmp_path, INDIRECT)
    # The scan as it was (absolute imports only, a list naming engine modules that
    # use threads) finds nothing wrong in absolute.py...
    source = (tmp_path / "ringpkg/sansio/absolute.py").read_text()
    assert "ringpkg.engine.base" in source and "threading" not in source
    # ...but importing it loads threading, and the check says through what.
    assert forbidden_loads("ringpkg.sansio.absolute", tmp_path, ("threading",)) == [
        "ringpkg.sansio.absolute -> ringpkg.engine -> threading"
    ]
    chains = forbidden_loads("ringpkg.sansio.deep", tmp_path, RING_MUST_NOT_LOAD)
    assert "ringpkg.sansio.deep -> ringpkg.sansio.relative -> ringpkg.engine" in chains
    assert any(chain.endswith("ringpkg.engine -> threading") for chain in chains)
    assert forbidden_loads("ringpkg.sansio.clean", tmp_path, RING_MUST_NOT_LOAD) == []


def test_load_check_imports_the_code_under_its_root(tmp_path: Path) -> None:
    write_package(tmp_path, INDIRECT)
    loaded = loaded_by("ringpkg.sansio.clean", tmp_path)
    assert loaded.file == str(tmp_path / "ringpkg/sansio/clean.py")
    assert "json" in loaded.chains or "json" in loaded.startup
    with pytest.raises(RuntimeError, match="ModuleNotFoundError"):
        loaded_by("ringpkg.sansio.missing", tmp_path)


def test_scanner_resolves_relative_imports(tmp_path: Path) -> None:
    package = write_package(tmp_path, INDIRECT)
    sansio = package / "sansio"
    assert [i.name for i in imports_of(sansio / "relative.py", "ringpkg.sansio.relative")] == [
        "ringpkg.engine.base"
    ]
    deep = imports_of(sansio / "deep.py", "ringpkg.sansio.deep")
    assert [(i.name, i.module) for i in deep] == [
        ("ringpkg.sansio.relative.base", "ringpkg.sansio.relative")
    ]
    # In a package's __init__, "." is the package itself.
    init = tmp_path / "ringpkg/engine/__init__.py"
    init.write_text("from . import base\nfrom .base import Value\n")
    assert [i.name for i in imports_of(init, "ringpkg.engine")] == [
        "ringpkg.engine.base",
        "ringpkg.engine.base.Value",
    ]
    assert forbidden_imports(sansio / "relative.py", "ringpkg.sansio.relative", ("ringpkg.engine",))
    assert not forbidden_imports(sansio / "clean.py", "ringpkg.sansio.clean", ("ringpkg.engine",))


def test_scanner_sees_every_kind_of_import(tmp_path: Path) -> None:
    sample = tmp_path / "pkg" / "sample.py"
    sample.parent.mkdir()
    sample.write_text(
        textwrap.dedent(
            """\
            import asyncio
            from typing import TYPE_CHECKING
            from rawstream import engine
            from rawstream.server import flow

            if TYPE_CHECKING:
                from rawstream.app.application import App

            def late():
                import threading
            """
        )
    )
    found = {i.name: i for i in imports_of(sample, "pkg.sample")}
    assert set(found) == {
        "asyncio",
        "typing.TYPE_CHECKING",
        "rawstream.engine",
        "rawstream.server.flow",
        "rawstream.app.application.App",
        "threading",
    }
    assert found["rawstream.app.application.App"].typing
    assert found["threading"].lazy and not found["asyncio"].lazy
    # ``from rawstream import engine`` is an import of the engine package.
    assert forbidden_imports(sample, "pkg.sample", ("rawstream.engine",)) == [
        "rawstream.engine (line 3)"
    ]


def test_graph_edges_go_to_the_module_named(tmp_path: Path) -> None:
    package = write_package(tmp_path, INDIRECT)
    graph = import_graph(package)
    assert set(graph["ringpkg.sansio.absolute"]) == {"ringpkg.engine.base"}
    assert set(graph["ringpkg.sansio.relative"]) == {"ringpkg.engine.base"}
    assert set(graph["ringpkg.sansio.deep"]) == {"ringpkg.sansio.relative"}
    assert set(graph["ringpkg.sansio.clean"]) == {"ringpkg.sansio"}
    assert set(graph["ringpkg.engine"]) == {"ringpkg.engine.base"}
