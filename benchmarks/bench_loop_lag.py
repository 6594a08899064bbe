"""Event-loop lag while huge chat bodies arrive, with the real model.

Run::

    .venv/bin/python benchmarks/bench_loop_lag.py [--rounds 3] [--bodies 4]
        [--messages 30000] [--source DIR]

The app (``rawstream.app.application.App``, the bundled model, ``--threads 1``,
``--max-messages`` raised to ``--messages`` where that flag exists) runs in this
process, on uvloop, with a lag probe in its loop: a task that sleeps 5 ms again and
again and records how late each wake-up is (``tests/engine/lag.py``). One long
streaming completion runs throughout. Each round sends ``--bodies`` chat bodies of
``--messages`` tiny messages at once (about 1 MiB at 30,000; each is refused with
400 ``context_length_exceeded`` once its prompt is tokenised) while ``/health`` is
requested every 20 ms, and reports the lag p50, p99 and max over the round, the
slowest ``/health`` answer, the time until every body was answered and the chunks
the running stream delivered meanwhile. The table gives the median of each column
over the rounds.

``--source DIR`` imports rawstream from another checkout (e.g. an older commit
extracted with ``git archive <commit> | tar -x -C DIR``), for before/after figures;
the probe always comes from this checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def load_probe() -> Any:
    """``LagProbe`` from this checkout, whichever rawstream is imported."""
    spec = importlib.util.spec_from_file_location("lag", ROOT / "tests" / "engine" / "lag.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LagProbe


@dataclasses.dataclass
class Round:
    p50_ms: float
    p99_ms: float
    max_ms: float
    health_max_ms: float
    answered_s: float
    chunks: int
    wrong: int  #: bodies that did not get 400 context_length_exceeded


async def one_round(
    client: httpx.AsyncClient, body: bytes, bodies: int, chunks: list[int], probe_cls: Any
) -> Round:
    health: list[float] = []
    quiet = asyncio.Event()

    async def ping() -> None:
        while not quiet.is_set():
            started = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                await client.get("/health")
            health.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)  # a monitor's pace, not a load generator

    async def post() -> bool:
        """Whether the body got its answer, 400 ``context_length_exceeded``."""
        headers = {"content-type": "application/json"}
        try:
            response = await client.post("/v1/chat/completions", content=body, headers=headers)
        except httpx.HTTPError:
            return False
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        return bool(response.status_code == 400 and code == "context_length_exceeded")

    async with probe_cls() as probe:
        before = chunks[0]
        started = time.perf_counter()
        pinger = asyncio.ensure_future(ping())
        right = await asyncio.gather(*(post() for _ in range(bodies)))
        answered = time.perf_counter() - started
        quiet.set()
        await pinger
    return Round(
        p50_ms=probe.quantile(0.5) * 1e3,
        p99_ms=probe.p99 * 1e3,
        max_ms=probe.max * 1e3,
        health_max_ms=max(health, default=0.0) * 1e3,
        answered_s=answered,
        chunks=chunks[0] - before,
        wrong=right.count(False),
    )


async def main(args: argparse.Namespace) -> None:
    from rawstream.app.application import App
    from rawstream.config import Config

    probe_cls = load_probe()
    config = Config(port=0, access_log=False, threads=1)
    if any(f.name == "max_messages" for f in dataclasses.fields(Config)):
        config = config.replace(max_messages=args.messages)
    app = App(config)
    await app.start()
    chunks = [0]
    messages = [{"role": "user", "content": "hi"}] * args.messages
    body = json.dumps({"messages": messages, "max_tokens": 4}, separators=(",", ":")).encode()
    url = f"http://127.0.0.1:{app.server.port}"
    rounds: list[Round] = []
    try:
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            generating = asyncio.Event()

            async def stream() -> None:  # one stream after another, to the end
                payload = {"prompt": "1, 2, 3, 4, 5,", "max_tokens": 4000, "stream": True}
                while True:
                    with contextlib.suppress(httpx.HTTPError):  # cut by a stalled server
                        async with client.stream("POST", "/v1/completions", json=payload) as r:
                            async for line in r.aiter_lines():
                                if line.startswith("data: {"):
                                    chunks[0] += 1
                                    generating.set()

            reader = asyncio.ensure_future(stream())
            await generating.wait()
            for i in range(args.rounds):
                result = await one_round(client, body, args.bodies, chunks, probe_cls)
                rounds.append(result)
                print(f"round {i + 1}: {result}", flush=True)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    finally:
        await app.server.shutdown()
        await app.close()
    source = args.source or str(ROOT)
    print(
        f"\n{args.bodies} bodies of {args.messages} messages ({len(body)} bytes) at once, "
        f"medians over {args.rounds} rounds, rawstream from {source}:\n"
    )
    print(
        "| lag p50 | lag p99 | lag max | slowest /health | all answered | stream chunks "
        "| wrong answers |"
    )
    print("|---|---|---|---|---|---|---|")
    med = {
        f.name: statistics.median(getattr(r, f.name) for r in rounds)
        for f in dataclasses.fields(Round)
    }
    print(
        f"| {med['p50_ms']:.1f} ms | {med['p99_ms']:.1f} ms | {med['max_ms']:.0f} ms "
        f"| {med['health_max_ms']:.0f} ms | {med['answered_s']:.2f} s | {med['chunks']:.0f} "
        f"| {med['wrong']:.0f} |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bodies", type=int, default=4)
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--source", help="import rawstream from this directory")
    arguments = parser.parse_args()
    sys.path.insert(0, arguments.source or str(ROOT))
    import uvloop

    uvloop.run(main(arguments))
