"""Flags out of their range fail at start-up, naming the flag (not deep in a server)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rawstream.config import Config, flag_name, options


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ws_max_streams", 0, "--ws-max-streams must be at least 1, got 0"),
        ("replay_buffer_events", 0, "--replay-buffer-events must be at least 1, got 0"),
        ("parallel", 0, "--parallel must be at least 1, got 0"),
        ("head_timeout", 0.0, "--head-timeout must be greater than 0, got 0"),
        ("body_deadline", -1.0, "--body-deadline must be greater than 0, got -1"),
        ("max_messages", 0, "--max-messages must be at least 1, got 0"),
        ("port", -1, "--port must be at least 0, got -1"),
    ],
)
def test_a_value_out_of_range_is_refused_with_the_flag_name(
    field: str, value: float, message: str
) -> None:
    with pytest.raises(ValueError) as refused:
        Config(**{field: value})
    assert str(refused.value) == message


def test_every_default_is_in_its_own_range() -> None:
    Config()  # would raise otherwise
    ranged = [f for f in options() if f.metadata["minimum"] is not None or f.metadata["above"]]
    assert len(ranged) > 20, [flag_name(f.name) for f in ranged]


def test_the_command_line_exits_with_the_reason() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rawstream", "serve", "--ws-max-streams", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--ws-max-streams must be at least 1, got 0" in done.stderr
    assert "Traceback" not in done.stderr
