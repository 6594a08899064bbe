"""Import cycles among rawstream's modules, type-only imports included.

A cycle through ``if TYPE_CHECKING:`` imports runs fine, but it still ties the
modules into one unit: neither can be understood, typed or tested without the other.
The detector (:func:`tests.import_graph.cycles`) is proven on packages made for it;
on rawstream it holds the line: the cycles that exist today are listed in
:data:`KNOWN`, and no module may join one or form a new one.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from tests.import_graph import Graph, cycles, import_graph, shortest_cycle, write_package

PACKAGE = Path(__file__).resolve().parent.parent / "rawstream"

#: The import cycles rawstream has today, each a set of modules that import each
#: other (the back edges are ``if TYPE_CHECKING:`` imports of the composing class).
#: Remove a set once its cycle is broken; the goal is an empty list.
KNOWN: list[frozenset[str]] = [
    frozenset(
        {
            "rawstream.server.connection",
            "rawstream.server.exchange",
            "rawstream.server.server",
            "rawstream.server.sse",
            "rawstream.server.websocket",
        }
    ),
]


def describe(graph: Graph, component: list[str]) -> str:
    """A component and one shortest cycle in it, each edge marked with its kind."""
    path = shortest_cycle(graph, component)
    steps = [path[0]]
    for here, there in itertools.pairwise(path):
        imports = graph[here][there]
        kind = (
            "type-only" if all(i.typing for i in imports)
            else "in a function" if all(i.lazy or i.typing for i in imports)
            else "top level"
        )  # fmt: skip
        steps.append(f"-[{kind}, line {imports[0].line}]-> {there}")
    return f"{len(component)} modules {component}\n  e.g. " + " ".join(steps)


def test_no_new_import_cycles() -> None:
    graph = import_graph(PACKAGE)
    found = cycles(graph)
    new = [c for c in found if not any(set(c) <= known for known in KNOWN)]
    assert not new, "import cycles:\n" + "\n".join(describe(graph, c) for c in new)


# --- the detector, on packages made for it ----------------------------------------------


CYCLIC = {
    "cyc/__init__.py": "from cyc.a import A\n",  # a package re-exporting: not a cycle
    "cyc/a.py": "from cyc import b\nA = 1\n",
    "cyc/b.py": """\
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from .a import A
        """,
    "cyc/c.py": "import cyc.d\n",
    "cyc/d.py": "def late():\n    from . import e\n",
    "cyc/e.py": "from .c import *\n",
    "cyc/f.py": "import cyc.f\nfrom cyc.a import A\n",  # imports itself: not a cycle
    "cyc/sub/__init__.py": "",
    "cyc/sub/g.py": "from .. import c\n",
}


def test_finds_cycles_through_type_only_lazy_and_relative_imports(tmp_path: Path) -> None:
    graph = import_graph(write_package(tmp_path, CYCLIC))
    found = cycles(graph)
    assert found == [["cyc.a", "cyc.b"], ["cyc.c", "cyc.d", "cyc.e"]]
    assert shortest_cycle(graph, found[0]) == ["cyc.a", "cyc.b", "cyc.a"]
    assert shortest_cycle(graph, found[1]) == ["cyc.c", "cyc.d", "cyc.e", "cyc.c"]
    assert graph["cyc.b"]["cyc.a"][0].typing
    assert graph["cyc.d"]["cyc.e"][0].lazy
    text = describe(graph, found[0])
    assert "cyc.a -[top level, line 1]-> cyc.b -[type-only, line 4]-> cyc.a" in text


def test_an_acyclic_package_has_no_cycles(tmp_path: Path) -> None:
    files = {**CYCLIC, "cyc/b.py": "X = 1\n", "cyc/e.py": "import json\n"}
    graph = import_graph(write_package(tmp_path, files))
    assert cycles(graph) == []
    assert set(graph["cyc"]) == {"cyc.a"} and set(graph["cyc.a"]) == {"cyc.b"}
    assert set(graph["cyc.sub.g"]) == {"cyc.c"}


def test_a_long_cycle_is_one_component(tmp_path: Path) -> None:
    count = 200  # deeper than a recursive search would like, were it recursive
    files = {"cyc/__init__.py": ""}
    files |= {f"cyc/m{i}.py": f"from . import m{(i + 1) % count}\n" for i in range(count)}
    graph = import_graph(write_package(tmp_path, files))
    (component,) = cycles(graph)
    assert len(component) == count
    assert len(shortest_cycle(graph, component)) == count + 1
