"""The listening server: accepts connections, tracks them, shuts down gracefully.

Graceful shutdown, phase by phase (:meth:`Server.shutdown`)
-----------------------------------------------------------
1. **Stop accepting.** The listening socket closes; nothing new connects.
2. **Tell every connection** (:meth:`HTTPConnection.begin_shutdown`):

   * idle keep-alive (and fresh) connections close at once;
   * a request being answered finishes, its response says ``Connection: close``;
     a request that arrives now is answered ``503`` with ``Connection: close``;
   * an SSE stream's producer is cancelled, then the stream receives its final
     event, ``retry:`` and the chunked terminator ``0\\r\\n\\r\\n``, and closes;
   * a WebSocket gets Close ``1001`` (going away) and the close handshake runs,
     bounded by ``--ws-close-timeout``.
3. **Wait** until every connection is gone, at most ``--graceful-timeout`` seconds.
   The wait is an event set by the last connection to leave, not a polling loop,
   and does not rely on ``asyncio.Server.wait_closed()`` (whose meaning differs
   between CPython versions and uvloop).
4. **Cut** whatever is left: abort the transports, which cancels their handlers.

A second signal during shutdown skips to phase 4 (:meth:`Server.abort`).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from rawstream.config import Config
from rawstream.server.connection import ConnState, HTTPConnection
from rawstream.server.exchange import Exchange

log = logging.getLogger("rawstream.server")

Handler = Callable[[Exchange], Awaitable[None]]


class ShutdownPhase(enum.Enum):
    """Where a server is in its life, in order; :attr:`Server.phase` only moves forward."""

    RUNNING = "serving requests"
    STOP_ACCEPTING = "the listening socket is closed: nothing new connects"
    NOTIFY = "every connection is told (HTTPConnection.begin_shutdown)"
    DRAIN = "waiting for connections to leave, at most --graceful-timeout"
    CUT = "aborting every connection left (grace over, or a second signal)"
    DONE = "every connection is gone; the drain time is recorded"

    @property
    def description(self) -> str:
        """What happens in this phase."""
        return str(self.value)


#: The moves between phases. The first signal runs STOP_ACCEPTING, NOTIFY and DRAIN
#: in one synchronous call, so nothing can come between them; the drain ends in
#: ``DONE`` when the last connection leaves, or in ``CUT`` when the grace period ends
#: or a second signal arrives (:meth:`Server.abort`, which may also be called alone).
#: ``docs/gen.py`` draws ``docs/diagrams/shutdown-phases.md`` from this table.
SHUTDOWN_TRANSITIONS: dict[ShutdownPhase, frozenset[ShutdownPhase]] = {
    ShutdownPhase.RUNNING: frozenset({ShutdownPhase.STOP_ACCEPTING, ShutdownPhase.CUT}),
    ShutdownPhase.STOP_ACCEPTING: frozenset({ShutdownPhase.NOTIFY}),
    ShutdownPhase.NOTIFY: frozenset({ShutdownPhase.DRAIN}),
    ShutdownPhase.DRAIN: frozenset({ShutdownPhase.DONE, ShutdownPhase.CUT}),
    ShutdownPhase.CUT: frozenset({ShutdownPhase.DONE}),
    ShutdownPhase.DONE: frozenset(),
}
_PHASE_ORDER = {phase: i for i, phase in enumerate(ShutdownPhase)}


@dataclass(slots=True)
class ServerStatistics:
    """Counters of a server; the app exports them as metrics."""

    connections: dict[str, int]
    accepted_total: int
    rejected_total: int
    paused_writers: int
    stall_aborts_total: int
    timeouts_total: dict[str, int] = field(default_factory=dict)
    ws_close_codes_total: dict[int, int] = field(default_factory=dict)
    shutdown_drain_seconds: float | None = None


class Server:
    """An HTTP/1.1 + WebSocket server running ``handler`` for every request."""

    def __init__(self, config: Config, handler: Handler) -> None:
        self.config = config
        self.handler = handler
        self.connections: set[HTTPConnection] = set()
        self.shutting_down = False
        #: Where the server is in its life (see :class:`ShutdownPhase`).
        self.phase = ShutdownPhase.RUNNING
        self.paused_writers = 0
        self.stall_aborts = 0
        self._ids = itertools.count(1)
        self._by_state: collections.Counter[ConnState] = collections.Counter()
        self._accepted = 0
        self._rejected = 0
        self._timeouts: collections.Counter[str] = collections.Counter()
        self._close_codes: collections.Counter[int] = collections.Counter()
        self._server: asyncio.Server | None = None
        self._all_closed = asyncio.Event()
        self._drain_seconds: float | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._stop_requested = asyncio.Event()

    # ------------------------------------------------------------------ listening
    async def start(self) -> None:
        """Bind and listen on ``config.host:config.port``."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HTTPConnection(self, next(self._ids)),
            self.config.host,
            self.config.port,
            backlog=2048,
            reuse_address=True,
        )

    @property
    def port(self) -> int:
        """The bound port (useful with ``--port 0``)."""
        assert self._server is not None
        for sock in self._server.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return int(sock.getsockname()[1])
        raise RuntimeError("not listening")

    # ------------------------------------------------------------------ bookkeeping
    def register(self, conn: HTTPConnection) -> bool:
        """(connection) A connection was accepted; False if over the limit.

        Only registered connections are counted by state: one refused here is in
        no gauge, though it still answers 503 and closes.
        """
        if len(self.connections) >= self.config.max_connections:
            self._rejected += 1
            return False
        self.connections.add(conn)
        self._by_state[conn.state] += 1
        self._accepted += 1
        return True

    def unregister(self, conn: HTTPConnection) -> None:
        """(connection) A connection is gone."""
        if conn in self.connections:
            self.connections.discard(conn)
            self._by_state[conn.state] -= 1
        if self.shutting_down and not self.connections:
            self._all_closed.set()

    def state_changed(self, conn: HTTPConnection, old: ConnState, new: ConnState) -> None:
        """(connection) Keep the per-state counts of the registered connections."""
        if conn in self.connections:
            self._by_state[old] -= 1
            self._by_state[new] += 1

    def count_timeout(self, kind: str) -> None:
        """(connection) A deadline of ``kind`` fired."""
        self._timeouts[kind] += 1

    def count_close_code(self, code: int) -> None:
        """(WebSocket) A close handshake or failure with ``code``."""
        self._close_codes[code] += 1

    def statistics(self) -> ServerStatistics:
        """A snapshot of the counters.

        ``connections`` counts the open connections by state: the counts add up to
        ``len(self.connections)``, each connection in exactly one state.
        """
        return ServerStatistics(
            connections={s.value: self._by_state[s] for s in ConnState},
            accepted_total=self._accepted,
            rejected_total=self._rejected,
            paused_writers=self.paused_writers,
            stall_aborts_total=self.stall_aborts,
            timeouts_total=dict(self._timeouts),
            ws_close_codes_total=dict(self._close_codes),
            shutdown_drain_seconds=self._drain_seconds,
        )

    # ------------------------------------------------------------------ shutdown
    def _advance(self, phase: ShutdownPhase) -> None:
        """Enter ``phase`` unless the server is already there or past it."""
        if _PHASE_ORDER[phase] > _PHASE_ORDER[self.phase]:
            assert phase in SHUTDOWN_TRANSITIONS[self.phase], f"{self.phase} -> {phase}"
            log.debug("shutdown phase %s: %s", phase.name, phase.description)
            self.phase = phase

    def request_shutdown(self) -> None:
        """First signal: start a graceful shutdown; a second one aborts."""
        if self._shutdown_task is None:
            log.info(
                "shutting down (grace %.1f s); signal again to abort", self.config.graceful_timeout
            )
            self._begin_shutdown()
        else:
            log.warning("second signal: aborting every connection")
            self.abort()

    async def wait_shutdown(self) -> None:
        """Wait for a shutdown started by :meth:`request_shutdown` to finish."""
        await self._stop_requested.wait()
        assert self._shutdown_task is not None
        await asyncio.shield(self._shutdown_task)

    async def shutdown(self) -> None:
        """Graceful shutdown (see the module docstring); return when it is complete."""
        self._begin_shutdown()
        await self.wait_shutdown()

    def _begin_shutdown(self) -> None:
        """Phases 1 and 2, synchronously, then phases 3 and 4 in a task.

        Synchronous so that from the moment the signal is handled, every request
        parsed (even one already in the socket buffer) sees ``shutting_down``.
        """
        if self._shutdown_task is not None:
            return
        loop = asyncio.get_running_loop()
        self.shutting_down = True
        self._advance(ShutdownPhase.STOP_ACCEPTING)
        if self._server is not None:
            self._server.close()  # phase 1
        self._advance(ShutdownPhase.NOTIFY)
        for conn in list(self.connections):  # phase 2
            conn.begin_shutdown()
        if not self.connections:
            self._all_closed.set()
        self._advance(ShutdownPhase.DRAIN)
        self._shutdown_task = loop.create_task(self._drain(time.perf_counter()))
        self._stop_requested.set()

    async def _drain(self, started: float) -> None:
        """Phases 3 and 4: wait for the connections to leave, then cut the rest."""
        try:  # phase 3
            await asyncio.wait_for(self._all_closed.wait(), self.config.graceful_timeout)
        except TimeoutError:
            log.warning(
                "%d connections still open after the grace period; cutting them",
                len(self.connections),
            )
            self.abort()  # phase 4
            await self._all_closed.wait()
        # perf_counter, not loop.time(): uvloop's clock ticks in milliseconds.
        self._drain_seconds = time.perf_counter() - started
        self._advance(ShutdownPhase.DONE)
        log.info("shutdown complete in %.2f s", self._drain_seconds)

    def abort(self) -> None:
        """Abort every connection now (their handlers are cancelled)."""
        self.shutting_down = True
        self._advance(ShutdownPhase.CUT)
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        if not self.connections:
            self._all_closed.set()
