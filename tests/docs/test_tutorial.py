"""Run every shell command and Python example of docs/tutorial.md against a live server.

Convention (stated in the tutorial): a fenced block with the language ``console``,
``bash`` or ``sh`` holds commands on lines starting with ``$ `` (a trailing ``\\``
continues a command), followed by example output, which is not checked: the server
here runs the fake engine, so the text differs. A ``python`` block is a whole
program. An HTML comment ``<!-- skip -->`` on the line before a block leaves it out
(installing, starting the server). Other languages (``text``) are output only.

The server is ``python -m rawstream serve --engine fake`` on a free port; every
``127.0.0.1:8000`` and ``localhost:8000`` in a block is replaced by that port.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docs.gen_module import ROOT

TUTORIAL = ROOT / "docs" / "tutorial.md"
SHELL = {"console", "bash", "sh", "shell"}
RUNNABLE = SHELL | {"python"}
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    lang: str
    line: int  # 1-based line of the opening fence
    code: str
    skip: bool

    def commands(self) -> list[str]:
        """The ``$ `` commands of a shell block, continuation lines joined."""
        commands: list[str] = []
        continuing = False
        for raw in self.code.splitlines():
            if continuing:
                commands[-1] += "\n" + raw
            elif raw.startswith("$ "):
                commands.append(raw[2:])
            else:
                continue
            continuing = raw.endswith("\\")
        return commands


def blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, with whether a ``<!-- skip -->`` precedes it."""
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        start = i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip = before.strip().startswith("<!-- skip")
        out.append(Block(match.group(1), start + 1, "\n".join(lines[start + 1 : end]), skip))
        i = end + 1
    return out


def runnable() -> list[Block]:
    return [b for b in blocks(TUTORIAL) if b.lang in RUNNABLE and not b.skip]


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    """``rawstream serve --engine fake`` in a subprocess, on a free port."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rawstream", "serve", "--engine", "fake", "--port", "0",
         "--fake-tokens-per-s", "400", "--no-access-log"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.stderr is not None
    # The banner gives the port; "model ready" follows once /health answers 200.
    port = 0
    log: list[str] = []
    while line := proc.stderr.readline():
        log.append(line)
        match = re.search(r"listening on http://[^:]+:(\d+)", line)
        port = int(match.group(1)) if match else port
        if "model ready" in line:
            break
    assert port and "model ready" in log[-1], "server did not start:\n" + "".join(log)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def _local(code: str, port: int) -> str:
    return code.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace(
        "localhost:8000", f"localhost:{port}"
    )


def test_the_tutorial_has_runnable_blocks_of_each_kind():
    kinds = {b.lang for b in runnable()}
    assert {"console", "python"} <= kinds
    assert any(b.skip for b in blocks(TUTORIAL)), "the install steps are marked <!-- skip -->"
    for b in runnable():
        if b.lang in SHELL:
            assert b.commands(), f"docs/tutorial.md:{b.line}: a shell block without '$ ' lines"


@pytest.mark.parametrize("block", runnable(), ids=lambda b: f"{b.lang}-line{b.line}")
def test_tutorial_block_runs(block: Block, server_port: int, tmp_path: Path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if block.lang == "python":
        argv = [sys.executable, "-c", _local(block.code, server_port)]
    else:
        script = "set -euo pipefail\n" + "\n".join(block.commands())
        argv = ["bash", "-c", _local(script, server_port)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    where = f"docs/tutorial.md:{block.line}"
    assert done.returncode == 0, f"{where} failed:\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip(), f"{where} printed nothing"
