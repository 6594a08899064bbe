"""Thousands of mutated requests and frames against the live app (see ``tests/fuzz.py``).

The run's size and seed are printed (``pytest -s``) and are in every failure
message; the seed is random per run unless ``RAWSTREAM_FUZZ_SEED`` is set, and
``RAWSTREAM_FUZZ_CASES`` sets the number of cases. A failing case is replayed alone
with ``python -m tests.fuzz --seed SEED --case N``.

The second test keeps the fuzzer honest: against a server whose handler fails,
hangs and answers 500 on purpose, the same run must report exactly that.
"""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from rawstream.server.exchange import Exchange
from tests.fuzz import BATCH, FUZZ_CONFIG, GEN_ID, fuzz_server, run_fuzz
from tests.support import serve

CASES = int(os.environ.get("RAWSTREAM_FUZZ_CASES", "2000"))


@pytest.fixture(scope="module")
def fuzz_seed() -> int:
    """One seed per test run (for both event loops), random unless set."""
    value = os.environ.get("RAWSTREAM_FUZZ_SEED")
    return int(value) if value else random.SystemRandom().randrange(2**32)


@pytest.mark.timeout(max(120, CASES // 10))
async def test_fuzzed_requests_get_no_5xx_no_hang_and_others_are_served(fuzz_seed: int) -> None:
    print(f"fuzz: {CASES} cases, seed {fuzz_seed}")
    async with fuzz_server() as port:
        report = await run_fuzz(port, fuzz_seed, CASES)
    print(report.summary())
    assert report.batch_checks == -(-CASES // BATCH), report.explain()
    assert not report.failures, report.explain()


# --- the fuzzer finds what is there ---------------------------------------------------


async def faulty(exchange: Exchange) -> None:
    """Hangs on one path, fails on chat bodies, answers everything else."""
    if exchange.is_websocket_upgrade:
        await (await exchange.accept_websocket()).close()
        return
    if exchange.request.path == "/v1/models":
        await asyncio.Event().wait()  # never answers
    if b"Say hi" in await exchange.body():
        raise RuntimeError("deliberate failure")  # the server answers 500
    await exchange.respond(200, b"ok")


async def health_only(port: int) -> str:
    return GEN_ID.decode()


async def test_the_fuzzer_reports_5xx_hangs_and_logged_errors() -> None:
    seed = 2  # fixed: its first 30 cases include chat bodies and /v1/models
    async with serve(faulty, **FUZZ_CONFIG) as running:
        report = await run_fuzz(running.port, seed, 30, bound=1.0, check=health_only)
    problems = [p for failure in report.failures for p in failure.problems]
    explained = report.explain(limit=3)
    assert any(p.startswith("5xx answered") for p in problems), explained
    assert any(p.startswith("connection still open after 1 s") for p in problems), explained
    assert any("deliberate failure" in p for p in problems), explained
    assert f"seed {seed}" in explained
