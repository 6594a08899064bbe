"""Helpers for tests that run a rawstream server on a real loopback socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

from rawstream.config import Config
from rawstream.server.server import Handler, Server


@dataclass
class Running:
    """A server started by :func:`serve`."""

    server: Server
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"


@contextlib.asynccontextmanager
async def serve(handler: Handler, **overrides: object) -> AsyncIterator[Running]:
    """Run a :class:`Server` with ``handler`` on a free port in this loop."""
    config = Config(port=0, access_log=False).replace(**overrides)
    server = Server(config, handler)
    await server.start()
    try:
        yield Running(server, config.host, server.port)
    finally:
        server.abort()
        await asyncio.wait_for(server._all_closed.wait(), 5)


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain TCP connection to the server, for hand-written requests."""
    return await asyncio.open_connection("127.0.0.1", port)


async def read_until_close(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), timeout)


async def read_response_head(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Bytes up to and including the blank line ending a response head."""
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)


class ServerProcess:
    """``python -m rawstream serve`` in a subprocess (for signals and real exits)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = [sys.executable, "-m", "rawstream", "serve", "--port", "0", *args]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.log: list[str] = []

    async def start(self, timeout: float = 120.0) -> ServerProcess:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=self.env
        )
        assert self.proc.stderr is not None
        pattern = re.compile(r"listening on http://[^:]+:(\d+)")

        async def wait_banner() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            while True:
                line = (await self.proc.stderr.readline()).decode()
                if not line:
                    raise RuntimeError("server exited:\n" + "".join(self.log))
                self.log.append(line)
                match = pattern.search(line)
                if match:
                    self.port = int(match.group(1))
                    return

        await asyncio.wait_for(wait_banner(), timeout)
        self._drain = asyncio.create_task(self._collect())
        return self

    async def _collect(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.log.append(line.decode())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._drain, 5)
        return code

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
