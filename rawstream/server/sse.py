"""The writer of one Server-Sent Events response.

The response head went out when the stream started (``Exchange.start_sse``), so
the client sees ``200`` and the SSE headers at once, before the first token. After
that every :meth:`SSEStream.send` is one HTTP/1.1 chunk holding one or more
complete events (the caller encodes them with :mod:`rawstream.sansio.sse`).

* **Backpressure.** ``send`` awaits the connection's flow control before writing,
  so a client that reads slowly slows its own producer and no one else's.
* **Disconnect.** ``send`` on a stream whose client has gone raises
  :class:`~rawstream.server.errors.ConnectionGone`, and the handler's task is
  cancelled as soon as the connection notices; a send is never silently dropped.
* **Heartbeats.** A comment line (``:``) every ``--sse-heartbeat`` seconds in
  which nothing else was written keeps proxies and browsers from timing out an
  idle stream; it carries no ``id``, so it does not move ``Last-Event-ID``.
* **Ending.** :meth:`end` sends the chunked terminator ``0\\r\\n\\r\\n`` (RFC 9112
  section 7.1), so the client can tell a complete stream from a cut one. At shutdown
  the connection calls :meth:`end_for_shutdown`: the stream's final event, a
  ``retry:`` telling the client when to reconnect, then the terminator.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import h11

from rawstream.sansio.http import chunk

if TYPE_CHECKING:
    from rawstream.server.exchange import Exchange

#: The final event of a stream cut by shutdown, unless the handler gave its own.
DEFAULT_SHUTDOWN_EVENT = b'event: shutdown\ndata: {"reason":"server shutting down"}\n\n'
HEARTBEAT = b":\n\n"


class SSEStream:
    """Writes events to one SSE response (see the module docstring)."""

    __slots__ = (
        "_chunked",
        "_conn",
        "_ended",
        "_exchange",
        "_heartbeat",
        "_shutdown_event",
        "_wrote",
        "closed",
    )

    def __init__(self, exchange: Exchange, shutdown_event: bytes | None) -> None:
        self._exchange = exchange
        self._conn = exchange.conn
        self._shutdown_event = shutdown_event or DEFAULT_SHUTDOWN_EVENT
        self._wrote = False
        self._ended = False
        #: No more events can be written (ended, or a HEAD request: headers only).
        self.closed = exchange.request.method == "HEAD"
        # h11 chose the body's framing when it sent the head: chunked for an
        # HTTP/1.1 client, close-delimited for HTTP/1.0 (the same test h11 makes).
        version = self._conn.h11.their_http_version if self._conn.h11 else None
        self._chunked = version is not None and version >= b"1.1" and not self.closed
        interval = self._conn.config.sse_heartbeat
        self._heartbeat: asyncio.TimerHandle | None = (
            asyncio.get_running_loop().call_later(interval, self._beat) if interval > 0 else None
        )

    async def send(self, data: bytes) -> None:
        """Write ``data`` (complete, encoded events) as one chunk, waiting if paused."""
        flow = self._conn.flow
        assert flow is not None
        if flow.write_paused or flow.closed:
            await flow.wait_writable()
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        conn = self._conn
        if self._chunked and not conn.trace.enabled:
            # The hot path: one event per token for every stream. h11 keeps no
            # state for the chunks of a chunked body, so framing them here writes
            # the same bytes and skips its per-event state machine pass (about a
            # sixth of the server's CPU per event). With --trace, h11 does it, so
            # every Data event shows in the trace.
            self._exchange.bytes_sent += conn.write_raw(chunk(data))
        else:
            self._exchange.bytes_sent += conn.send(h11.Data(data=data))
        self._wrote = True

    def _beat(self) -> None:
        self._heartbeat = None
        flow = self._conn.flow
        if self.closed or flow is None or flow.closed:
            return
        if not self._wrote and not flow.write_paused:
            self._write(HEARTBEAT)
        self._wrote = False
        self._heartbeat = asyncio.get_running_loop().call_later(
            self._conn.config.sse_heartbeat, self._beat
        )

    async def end(self, final: bytes = b"") -> None:
        """Write ``final`` (if any), then end the response with the chunked terminator."""
        if final:
            await self.send(final)
        self._finish()

    def end_for_shutdown(self) -> None:
        """(connection) Final event, ``retry:``, terminator; then close the connection."""
        flow = self._conn.flow
        if self.closed or flow is None or flow.closed:
            return
        retry = f"retry: {self._conn.config.sse_retry_ms}\n\n".encode()
        try:
            self._write(self._shutdown_event + retry)
            self._finish()
        except ConnectionError:
            return
        self._conn.close()

    def _finish(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        self.closed = True
        if not self._ended:
            self._ended = True
            self._conn.send(h11.EndOfMessage())
