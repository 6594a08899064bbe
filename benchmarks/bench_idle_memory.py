"""Memory per idle connection: RSS of a rawstream server before and after N idle clients.

Usage::

    .venv/bin/python benchmarks/bench_idle_memory.py --n 2000 [--loop uvloop|asyncio]
        [--tracemalloc]

For each kind of connection a fresh server process is started (the test app of
``tests/server/apps.py`` through ``rawstream.cli.main``, the real signal and
shutdown path):

* **WebSocket**: ``GET /ws-echo``, handshake completed, one echo round trip, then idle
  (the server keeps its keepalive ping timer running).
* **SSE**: ``GET /sse-idle``, the response head and one event received, then idle
  (the server keeps its heartbeat timer running).

The server's resident set size is read from ``/proc/<pid>/status`` (``VmRSS``, so no
garbage collection in the server can flatter it) after a warm-up of a few
connections of the same kind, then again with all N clients idle; the report is the
difference divided by N. Clients are raw sockets driven by h11 and wsproto in this
process, on loopback.

``--tracemalloc`` runs the servers with ``PYTHONTRACEMALLOC`` and prints, for each
kind, the source lines that allocated the most Python memory between the two
measurements (RSS then includes tracemalloc's own overhead: use it to find where
the bytes go, not for the figures).

The results go to stdout as a Markdown table and to
``benchmarks/results/idle-memory.md``; earlier tables in that file are kept below
the newest one.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server.apps import AppProcess, HTTPClient, WSClient  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "idle-memory.md"
WARMUP = 20
BATCH = 200
#: Goals (KiB per connection); uvicorn measured 17 (WebSocket) and 9 (SSE) here.
GOALS = {"websocket": 10.0, "sse": 8.0}


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@dataclass
class Result:
    kind: str
    n: int
    before_kib: int
    after_kib: int

    @property
    def per_conn_kib(self) -> float:
        return (self.after_kib - self.before_kib) / self.n


async def open_websocket(port: int) -> WSClient:
    from wsproto.events import TextMessage

    client = await WSClient.open(port, "/ws-echo")
    client.send(TextMessage(data="hi"))
    event = await client.next_event()
    assert isinstance(event, TextMessage) and event.data == "hi", event
    return client


async def open_sse(port: int) -> HTTPClient:
    client = await HTTPClient.open(port)
    client.request("/sse-idle")
    response = await client.response()
    assert response.status_code == 200
    await client.read_until(b"data: hello\n\n")
    return client


async def measure(kind: str, n: int, loop_name: str, trace: bool) -> Result:
    env_args = ["--loop", loop_name, "--max-connections", str(n + 100)]
    proc = AppProcess(*env_args)
    if trace:
        proc.env["PYTHONTRACEMALLOC"] = "1"
        proc.env["RAWSTREAM_TEST_DEBUG"] = "1"
    await proc.start(timeout=60)
    assert proc.proc is not None
    pid = proc.proc.pid
    opener = open_websocket if kind == "websocket" else open_sse
    clients: list[WSClient | HTTPClient] = []
    try:
        # Warm up: the first connections of a kind import, intern and cache things
        # that every later connection shares.
        warm = [await opener(proc.port) for _ in range(WARMUP)]
        for c in warm:
            c.close()
        await debug_call(proc.port, "/debug/baseline", trace)
        await asyncio.sleep(0.5)  # let the server process the closes (not a test)
        before = rss_kib(pid)
        for start in range(0, n, BATCH):
            count = min(BATCH, n - start)
            clients += await asyncio.gather(*(opener(proc.port) for _ in range(count)))
        await asyncio.sleep(0.5)  # let any per-connection lazy work settle
        after = rss_kib(pid)
        if trace:
            print(f"\n### tracemalloc, {kind}: top allocations since the baseline\n")
            print(await debug_call(proc.port, "/debug/top", trace))
    finally:
        for c in clients:
            c.close()
        await proc.stop()
    return Result(kind, n, before, after)


async def debug_call(port: int, target: str, enabled: bool) -> str:
    if not enabled:
        return ""
    client = await HTTPClient.open(port)
    client.request(target)
    await client.response()
    await client.read_to_end()
    client.close()
    return bytes(client.body).decode()


def versions() -> dict[str, str]:
    out = {"Python": platform.python_version()}
    for dist in ("uvloop", "h11", "wsproto"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "-"
    return out


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores, {model}, Linux {platform.release()}"


def table(results: list[Result], loop_name: str) -> str:
    v = versions()
    lines = [
        f"## {datetime.date.today().isoformat()}: {loop_name}, N = {results[0].n}",
        "",
        f"Machine: {machine()}. Python {v['Python']}, uvloop {v['uvloop']}, "
        f"h11 {v['h11']}, wsproto {v['wsproto']}.",
        "",
        "| connection | N | RSS before (MiB) | RSS after (MiB) | per connection (KiB) "
        "| goal (KiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| idle {r.kind} | {r.n} | {r.before_kib / 1024:.1f} | {r.after_kib / 1024:.1f} "
            f"| {r.per_conn_kib:.1f} | < {GOALS[r.kind]:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_results(new_table: str) -> None:
    header = (
        "# Memory per idle connection\n\n"
        "`.venv/bin/python benchmarks/bench_idle_memory.py --n 2000`: server RSS "
        "(`VmRSS`) before and after N idle connections, one fresh server process per "
        "kind, divided by N. Newest run first.\n\n"
    )
    earlier = ""
    if RESULTS.exists():
        text = RESULTS.read_text()
        if "\n## " in text:
            earlier = text[text.index("\n## ") + 1 :]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(header + new_table + ("\n" + earlier if earlier else ""))


async def main_async(args: argparse.Namespace) -> list[Result]:
    results = []
    for kind in ("websocket", "sse"):
        results.append(await measure(kind, args.n, args.loop, args.tracemalloc))
        gc.collect()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="idle connections per kind")
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    parser.add_argument("--tracemalloc", action="store_true", help="show where bytes go")
    parser.add_argument("--no-write", action="store_true", help="do not update the results")
    args = parser.parse_args()
    import uvloop

    results = uvloop.run(main_async(args))  # the clients' loop; the server's is --loop
    out = table(results, args.loop)
    print(out)
    if not args.no_write and not args.tracemalloc:
        write_results(out)
        print(f"written to {RESULTS.relative_to(ROOT)}")
    print(json.dumps({r.kind: round(r.per_conn_kib, 2) for r in results}))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    sys.exit(main())
