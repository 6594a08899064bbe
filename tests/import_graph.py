"""What a package's modules import, read two ways: from the source and by running it.

- :func:`imports_of` reads one file's ``import`` statements (all of them: top level,
  inside functions, under ``if TYPE_CHECKING:``) and resolves relative ones to
  absolute names, the way :func:`importlib.util.resolve_name` does.
- :func:`import_graph` and :func:`cycles` turn a package's files into a module graph
  and find its import cycles (strongly connected components).
- :func:`loaded_by` imports one module in a fresh interpreter and reports every
  module that importing it loaded, each with the chain of modules through which it
  came (``a -> b -> threading``): a scan of one file's own imports cannot see that
  ``from pkg.engine.base import X`` runs ``pkg/engine/__init__.py`` first.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Import",
    "cycles",
    "import_graph",
    "imports_of",
    "is_under",
    "loaded_by",
    "module_name",
    "modules_of",
    "shortest_cycle",
    "write_package",
]


@dataclass(frozen=True, slots=True)
class Import:
    """One name an import statement asks for, resolved to absolute dotted names.

    ``import a.b`` asks for the module ``a.b`` (``name`` and ``module``).
    ``from a.b import c`` asks for ``name`` ``a.b.c``, a submodule or an attribute
    of the module ``a.b`` (only the package's file list can tell). ``typing`` is
    true under ``if TYPE_CHECKING:``, ``lazy`` inside a function or class body.
    """

    name: str
    module: str
    line: int
    typing: bool = False
    lazy: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        """Both names, for matching against module prefixes."""
        return (self.name, self.module)


def is_under(name: str, prefixes: Iterable[str]) -> bool:
    """Whether ``name`` is one of ``prefixes`` or inside one (``a.b`` is under ``a``)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def module_name(path: Path, root: Path) -> str:
    """The dotted name of the module in ``path`` below the import root ``root``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_of(package: Path, root: Path | None = None) -> dict[str, Path]:
    """Every module of the package in directory ``package``, by dotted name.

    ``root`` is the import root, by default the package's parent directory (give it
    for a subpackage).
    """
    root = package.parent if root is None else root
    return {module_name(p, root): p for p in sorted(package.rglob("*.py"))}


def imports_of(path: Path, module: str) -> list[Import]:
    """Every import in the file ``path`` of module ``module``, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []
    _visit(tree.body, package, found, typing=False, lazy=False)
    return found


def _visit(
    body: Iterable[ast.stmt], package: str, found: list[Import], *, typing: bool, lazy: bool
) -> None:
    for node in body:
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, a.name, node.lineno, typing, lazy) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            found.extend(
                Import(
                    base if a.name == "*" else f"{base}.{a.name}", base, node.lineno, typing, lazy
                )
                for a in node.names
            )
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            _visit(node.body, package, found, typing=True, lazy=lazy)
            _visit(node.orelse, package, found, typing=typing, lazy=lazy)
        else:
            inner = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            for child in _statement_lists(node):
                _visit(child, package, found, typing=typing, lazy=lazy or inner)


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _statement_lists(node: ast.stmt) -> Iterator[list[ast.stmt]]:
    """The nested bodies of a compound statement (``if``, ``try``, ``def``, ``with``...)."""
    for field in ("body", "orelse", "finalbody"):
        value = getattr(node, field, None)
        if isinstance(value, list):
            yield value
    for handler in getattr(node, "handlers", ()):
        yield handler.body
    for case in getattr(node, "cases", ()):
        yield case.body


def write_package(root: Path, files: Mapping[str, str]) -> Path:
    """Write ``files`` (path below ``root`` -> source, dedented); return the package dir."""
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root / next(iter(files)).split("/")[0]


# --- the module graph and its cycles ----------------------------------------------------

#: module -> {module it imports: the import statements that make that edge}
Graph = dict[str, dict[str, list[Import]]]


def import_graph(package: Path) -> Graph:
    """The graph of imports among the modules of the package in directory ``package``.

    An edge goes to the most specific module an import names: ``from a.b import c``
    is an edge to ``a.b.c`` when that is a module of the package, else to ``a.b``.
    """
    modules = modules_of(package)
    graph: Graph = {name: {} for name in modules}
    for name, path in modules.items():
        for imp in imports_of(path, name):
            target = _target(imp, modules)
            if target is not None and target != name:
                graph[name].setdefault(target, []).append(imp)
    return graph


def _target(imp: Import, modules: Mapping[str, Path]) -> str | None:
    if imp.name in modules:
        return imp.name
    return imp.module if imp.module in modules else None


def cycles(graph: Graph) -> list[list[str]]:
    """The import cycles: each strongly connected component with more than one module.

    Tarjan's algorithm (iterative); components and their members are sorted.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for succ in edges:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, {})))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def shortest_cycle(graph: Graph, component: list[str]) -> list[str]:
    """One shortest cycle through the first module of ``component``, closed (a, b, a)."""
    start = component[0]
    members = set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for succ in sorted(graph[node]):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if succ in members and succ not in came_from:
                    came_from[succ] = node
                    following.append(succ)
        frontier = following
    raise ValueError(f"{component} is not a cycle of the graph")


# --- what importing loads ---------------------------------------------------------------

_PROBE = r"""
import importlib, json, sys

class Witness:
    # For each module first imported: the modules whose code was running (outermost
    # first), i.e. the chain of imports that brought it in.
    chains = {}

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        chain, frame = [], sys._getframe(1)
        while frame is not None:
            who = frame.f_globals.get("__name__", "")
            if who not in ("", "__main__") and not who.startswith(
                ("importlib", "_frozen_importlib")
            ) and (not chain or chain[-1] != who):
                chain.append(who)
            frame = frame.f_back
        cls.chains.setdefault(name, chain[::-1] + [name])
        return None

module, root = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
before = set(sys.modules)
sys.meta_path.insert(0, Witness)
loaded = importlib.import_module(module)
sys.meta_path.remove(Witness)
new = set(sys.modules) - before
after = [n for n in Witness.chains if n in new] + sorted(new - set(Witness.chains))
print(json.dumps({
    "file": getattr(loaded, "__file__", None),
    "startup": sorted(before),
    "loaded": {name: Witness.chains.get(name, [name]) for name in after},
}))
"""


@dataclass(frozen=True, slots=True)
class Loaded:
    """What importing one module in a fresh interpreter did."""

    #: The file the module was loaded from (to check it is the code meant).
    file: str | None
    #: The modules the interpreter had before the import (its own startup).
    startup: frozenset[str]
    #: Every module the import loaded, in the order it did -> the chain of modules
    #: that brought it in.
    chains: dict[str, list[str]]

    def offending(self, forbidden: Iterable[str]) -> dict[str, list[str]]:
        """The loaded modules under any of ``forbidden``, with their chains.

        Each forbidden prefix is listed where a chain first reaches it: ``asyncio``,
        not also every ``asyncio.*`` module it loads in turn.
        """
        found: dict[str, list[str]] = {}
        for name, chain in self.chains.items():
            under = [p for p in forbidden if is_under(name, (p,))]
            came_through = [*chain[:-1], *found]
            if under and not any(is_under(name, (c,)) or is_under(c, under) for c in came_through):
                found[name] = chain
        return found


def loaded_by(module: str, root: Path, *, timeout: float = 60.0) -> Loaded:
    """Import ``module`` (from the import root ``root``) in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, module, str(root)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=root,
    )
    if done.returncode != 0:
        raise RuntimeError(f"importing {module} failed:\n{done.stderr}")
    report = json.loads(done.stdout)
    return Loaded(report["file"], frozenset(report["startup"]), report["loaded"])
