"""The generated diagrams and tables in docs/ match the code they are drawn from."""

from __future__ import annotations

import pytest

from tests.docs.gen_module import ROOT, load_gen

REGENERATE = "run `.venv/bin/python docs/gen.py` and commit the result"

gen = load_gen()
EXPECTED = gen.expected_files()


@pytest.mark.parametrize("path", sorted(EXPECTED), ids=lambda p: str(p.relative_to(ROOT)))
def test_generated_file_is_up_to_date(path):
    current = path.read_text() if path.exists() else None
    assert current == EXPECTED[path], f"{path.relative_to(ROOT)} is out of date: {REGENERATE}"


def test_every_diagram_page_and_table_is_generated():
    names = {p.relative_to(ROOT).as_posix() for p in EXPECTED}
    assert {"docs/diagrams/connection-states.md", "docs/diagrams/shutdown-phases.md"} <= names
    reference = (ROOT / "docs" / "reference.md").read_text()
    for region in ("flags", "endpoints", "metrics", "errors", "close-codes"):
        assert f"<!-- BEGIN GENERATED: {region} -->" in reference, region


def test_diagram_edges_match_the_transition_tables():
    """Every move of the tables is drawn, and nothing else (the labels cannot drift)."""
    from rawstream.server.connection import TRANSITIONS
    from rawstream.server.server import SHUTDOWN_TRANSITIONS

    drawn = gen.connection_diagram()
    for old, targets in TRANSITIONS.items():
        for new in targets:
            assert f"    {old.name} --> {new.name}: " in drawn
    assert drawn.count(" --> ") == sum(map(len, TRANSITIONS.values())) + 2  # [*] in and out
    drawn = gen.shutdown_diagram()
    for old, targets in SHUTDOWN_TRANSITIONS.items():
        for new in targets:
            assert f"    {old.name} --> {new.name}: " in drawn
