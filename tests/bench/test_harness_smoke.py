"""The benchmark harness still works: a tiny run of rawstream against the FastAPI peer.

Ten SSE streams and ten WebSocket streams from the fake engine, against
``rawstream-uvloop`` and ``fastapi-h11``, for one short window each, through the
same code as ``make bench`` (separate server and load client processes). The test
checks that the harness produced well-formed results: every run finished, every
number is present, no stream failed, the report has its tables. It never checks
which server is faster: that is what the benchmark is for.
"""

from __future__ import annotations

import math

import pytest

from benchmarks.run import Plan, Results, markdown, run_plan

SERVERS = ("rawstream-uvloop", "fastapi-h11")


def tiny_plan() -> Plan:
    return Plan(
        name="smoke",
        rounds=1,
        warmup=0.3,
        window=1.0,
        sse_streams=(10,),
        sse_servers=SERVERS,
        ws_streams=(10,),
        ws_servers=SERVERS,
        workloads=("sse", "ws"),
    )


@pytest.mark.timeout(120)
async def test_tiny_matrix_gives_well_formed_results() -> None:
    lines: list[str] = []
    results: Results = await run_plan(tiny_plan(), log=lines.append)

    assert len(results.runs) == 4
    assert len(lines) == 4  # one progress line per run
    for run in results.runs:
        assert "error" not in run, run.get("error")
        assert run["server"] in SERVERS
        assert run["streams_up"] == 10
        assert run["error_count"] == 0, run["errors"]
        assert run["events"] > 0
        for key in ("events_per_s", "itl_p50_ms", "itl_p99_ms", "cpu_ms_per_1k_events", "rss_mb"):
            assert isinstance(run[key], float) and math.isfinite(run[key]), key
            # The kernel counts process CPU in 10 ms ticks: a few hundred events in
            # a one-second window can cost less than one tick, so CPU may read 0.
            floor = 0.0 if key == "cpu_ms_per_1k_events" else 1e-9
            assert run[key] >= floor, key
        assert run["itl_p50_ms"] <= run["itl_p99_ms"]
    assert {(r["workload"], r["server"]) for r in results.runs} == {
        (w, s) for w in ("sse", "ws") for s in SERVERS
    }
    assert results.meta["cores"] and results.meta["python"]

    report = markdown(results)
    assert "Workload 1: SSE streams" in report and "Workload 2: WebSocket" in report
    assert "| 10 | fastapi-h11 |" in report and "Ratios rawstream-uvloop / peer" in report
