"""One HTTP/1.1 connection: an ``asyncio.Protocol`` that drives h11.

Theory of operation
-------------------
The loop calls :class:`HTTPConnection`'s callbacks; the connection feeds received
bytes to h11 and reacts to the events h11 parses, one request-response cycle at a
time, like h11's own example server:

1. ``IDLE``: waiting for a request head. A deadline runs: ``--head-timeout`` from
   accept (so a fresh connection that sends nothing, or trickles a header byte at a
   time, is closed), ``--keepalive-timeout`` between requests until the next one's
   first byte arrives, then the head deadline again. Empty lines (CRLF or bare LF)
   in front of a request line are dropped before h11 sees them (RFC 9112 section
   2.2, see :mod:`rawstream.sansio.http`); they count as the first byte for the
   deadlines and against ``--max-header-bytes`` with the head after them.
2. h11 yields a ``Request``: rawstream's own checks run (:mod:`rawstream.sansio.http`),
   then the handler starts as a task with an :class:`~rawstream.server.exchange.Exchange`.
   The body (``Data`` events, then ``EndOfMessage``) flows to the exchange as it
   arrives, under two deadlines: ``--body-timeout`` while the handler waits for the
   next piece, and ``--body-deadline`` for all of it, from the end of the head, so
   a body trickled a byte at a time cannot hold the connection (slowloris). Either
   one cancels the handler and answers 408 with a lingering close. Reading
   continues while the handler runs, so a client that hangs up is noticed at once
   and its handler cancelled; pipelined requests stay in h11's buffer (h11 answers
   ``PAUSED``) and reading pauses if they pile up.
3. When both sides are ``DONE``, ``start_next_cycle()`` returns to ``IDLE`` (keep-alive);
   ``MUST_CLOSE`` or an error closes the connection. After a request that closes
   the connection (``Connection: close``, HTTP/1.0), nothing more is parsed: RFC
   9112 section 9.6, the server "MUST NOT process any further requests received
   on that connection". That request gets its complete response (h11 adds
   ``Connection: close``); bytes behind it, in the same read or later, are dropped,
   and the close lingers.
4. A WebSocket upgrade leaves h11 in ``SWITCHED_PROTOCOL``; from then on every byte
   goes to :class:`~rawstream.server.websocket.WebSocket` (wsproto).

Bad input: h11's ``RemoteProtocolError`` carries ``error_status_hint`` (400, 413, 431,
505, ...); the connection answers that status with ``Connection: close`` and closes.
The connection is the only place that turns protocol errors into responses. The
policies h11 leaves open (framing conflicts, versions, methods, head size) are
decided in :mod:`rawstream.sansio.http`.

Closing after an error is a *lingering close* (RFC 9112 section 9.6): a client that
is still sending a body we refused would otherwise have its unread bytes turn our
close into a TCP RST, and an RST can destroy the error response before the client
reads it. So the connection half-closes (FIN after the response), discards what
still arrives, and closes when the client does, or after :data:`LINGER_TIMEOUT`.

Disconnect is cancellation, and a half-close
--------------------------------------------
``connection_lost`` cancels the running handler, so whatever it was producing (a
generation) stops at once. EOF from the client (a FIN) means one of two things the
server cannot tell apart: the client closed its socket and left, or it only shut
down its sending side (``shutdown(SHUT_WR)``) and still reads. A fully closed
client shows only when a write to it fails. So ``eof_received`` decides by what
the connection is doing:

* a **complete request** waiting for a plain response (``respond``) is answered:
  the transport stays open for writing, the response goes out, then the
  connection closes. Pipelined requests that were complete before the EOF are
  answered too, in order; an incomplete one behind them is dropped. To notice a
  client that in fact closed and left while such a response is computed (a
  non-streaming completion can take many seconds), the connection *probes*: it
  sends an interim ``100 Continue`` after :data:`EOF_PROBE_FIRST` seconds and
  again at doubling intervals up to :data:`EOF_PROBE_MAX`. A client that only
  half-closed reads and skips them (RFC 9110 section 15.2: "A client MUST be able
  to parse one or more 1xx responses received prior to a final response, even if
  the client does not expect one"); a client that is gone answers the first probe
  with a TCP reset, the next write fails, ``connection_lost`` runs and the handler
  is cancelled. An HTTP/1.0 client gets no probe ("A server MUST NOT send a 1xx
  response to an HTTP/1.0 client"), so its handler runs to the end;
* an **SSE stream** (or a request whose handler starts one after the EOF) is
  cancelled at once: the client has left. A stream has no end the client waits
  for, ``EventSource`` never half-closes, and the FIN is the only prompt sign that
  a client is gone (a stream waiting in the engine's queue or processing a long
  prompt writes nothing but heartbeats). Long generations stream, so they stop
  with their client;
* an **incomplete request** (head or body) or a WebSocket upgrade is cancelled and
  closed: nothing more can arrive to complete it;
* an open WebSocket is closed with 1006 (:meth:`WebSocket.eof_received`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import TYPE_CHECKING, cast

import h11

from rawstream.sansio.http import (
    BadRequest,
    error_body,
    head_size,
    parse_request,
    reason,
    skip_empty_lines,
    version_error_in_line,
)
from rawstream.sansio.upgrade import is_upgrade_request
from rawstream.server.errors import ConnectionGone, UpgradeRefused
from rawstream.server.exchange import Exchange
from rawstream.server.flow import FlowControl, ReadPause
from rawstream.server.trace import Tracer

if TYPE_CHECKING:
    from rawstream.server.server import Server
    from rawstream.server.websocket import WebSocket

log = logging.getLogger("rawstream.server")
access_log = logging.getLogger("rawstream.access")

#: Seconds a lingering close keeps discarding input before it closes anyway.
#: RFC 9112 section 9.6: "The server then continues to read from the connection
#: until it receives a corresponding close by the client, or until the server is
#: reasonably certain that its own TCP stack has received the client's
#: acknowledgement". nginx lingers up to 5 s between reads (lingering_timeout),
#: Apache 2 s; on loopback and behind a proxy 2 s is plenty.
LINGER_TIMEOUT = 2.0

#: Seconds after a client's EOF before the first liveness probe (see the module
#: docstring), and the longest interval between two probes.
EOF_PROBE_FIRST = 0.25
EOF_PROBE_MAX = 2.0

#: Bytes of each request head kept to classify a request line h11 refuses.
_LINE_KEPT = 1024


class ConnState(enum.Enum):
    """What a connection is doing; the server counts connections by state."""

    IDLE = "idle"  #: waiting for a request head (fresh or keep-alive)
    ACTIVE = "active"  #: a request is being answered
    STREAMING = "streaming"  #: an SSE response is open
    WEBSOCKET = "websocket"  #: upgraded; wsproto owns the bytes
    CLOSING = "closing"  #: closing or closed


#: The moves :meth:`HTTPConnection._set_state` allows, and nothing else. Read it as
#: the connection's life: a request makes an idle connection active; its response
#: either completes (back to idle: keep-alive), turns into an SSE stream (which
#: ends back in idle) or into a WebSocket; any state can close, and closing is final.
#: ``docs/gen.py`` draws ``docs/diagrams/connection-states.md`` from this table.
TRANSITIONS: dict[ConnState, frozenset[ConnState]] = {
    ConnState.IDLE: frozenset({ConnState.ACTIVE, ConnState.CLOSING}),
    ConnState.ACTIVE: frozenset(
        {ConnState.IDLE, ConnState.STREAMING, ConnState.WEBSOCKET, ConnState.CLOSING}
    ),
    ConnState.STREAMING: frozenset({ConnState.IDLE, ConnState.CLOSING}),
    ConnState.WEBSOCKET: frozenset({ConnState.CLOSING}),
    ConnState.CLOSING: frozenset(),
}


class Deadline(enum.Enum):
    """A connection's deadlines, and what happens when one fires.

    A connection runs one of them at a time, except ``BODY_DEADLINE``, which runs
    alongside the others from the end of a request head to the end of its body.
    The values are the ``kind`` label of ``rawstream_timeouts_total``.
    """

    HEAD = "head"  #: request head incomplete: 408 (or silent close if nothing came)
    KEEPALIVE = "keepalive"  #: idle between requests: close
    BODY = "body"  #: request body stalled (no byte for --body-timeout): 408
    BODY_DEADLINE = "body_deadline"  #: whole body not in within --body-deadline: 408
    HANDSHAKE = "handshake"  #: WebSocket upgrade not completed: close
    LINGER = "linger"  #: half-closed after an error: stop discarding input, close


class HTTPConnection(asyncio.Protocol):
    """The protocol instance of one TCP connection (see the module docstring)."""

    def __init__(self, server: Server, conn_id: int) -> None:
        self.server = server
        self.config = server.config
        self.id = conn_id
        self.trace = Tracer(conn_id, server.config.trace)
        self.state = ConnState.IDLE
        self.h11: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.config.max_header_bytes
        )
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl | None = None
        self.client: tuple[str, int] | None = None
        self.exchange: Exchange | None = None
        self.websocket: WebSocket | None = None
        self._task: asyncio.Task[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_kind: Deadline | None = None
        self._body_deadline: asyncio.TimerHandle | None = None  # Deadline.BODY_DEADLINE
        self._eof_probe: asyncio.TimerHandle | None = None  # after a half-close
        self._accepted_at = 0.0
        self._head_bytes = 0  # bytes of the current request head seen so far
        self._head_start = bytearray()  # its first bytes, for version_error_in_line()
        self._line_started = False  # a byte of this cycle's request line went to h11
        self._skipped = 0  # empty-line bytes dropped in front of this request line
        self._cr_held = False  # a CR that may start a CRLF, not yet given to h11
        self._pipelined = 0  # bytes received after the current request ended
        self._client_eof = False  # the client half-closed (or closed): no more input
        self._shutdown_cancel = False  # the handler was cancelled by shutdown
        self._loop = asyncio.get_running_loop()

    # ------------------------------------------------------------------ callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self._accepted_at = self._loop.time()
        peer = transport.get_extra_info("peername")
        self.client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        self.flow = FlowControl(
            transport,
            write_high_water=self.config.write_high_water,
            stall_timeout=self.config.write_stall_timeout,
            on_stall=self._stalled,
        )
        if self.trace.enabled:
            self.trace.state(f"accepted from {self.client}")
        if not self.server.register(self):
            self._send_error(503, "too many connections", linger=False)
            return
        self._set_deadline(Deadline.HEAD, self.config.head_timeout)
        if self.server.shutting_down:
            self.begin_shutdown()

    def data_received(self, data: bytes) -> None:
        if self.state is ConnState.CLOSING:
            return  # closing (or lingering after an error): input is dropped
        if self.websocket is not None:
            self.websocket.data_received(data)
            return
        conn = self.h11
        if conn is None:
            return
        their_state = conn.their_state
        if their_state is h11.IDLE:
            if self._deadline_kind is Deadline.KEEPALIVE:
                # First byte of the next request (an empty line too): the head
                # deadline starts now.
                self._set_deadline(Deadline.HEAD, self.config.head_timeout)
            self._head_bytes += len(data)
            if not self._line_started:
                data = self._skip_empty_lines(data)
                if not data:
                    return
            if len(self._head_start) < _LINE_KEPT:
                self._head_start += data[: _LINE_KEPT - len(self._head_start)]
        elif their_state is h11.MUST_CLOSE:
            # RFC 9112 section 9.6: after a request with "Connection: close" the
            # server "MUST NOT process any further requests received on that
            # connection". Whatever follows it is read and dropped.
            if self.trace.enabled:
                self.trace.state(f"ignoring {len(data)} bytes after a closing request")
            return
        elif their_state in (h11.DONE, h11.MIGHT_SWITCH_PROTOCOL):  # type: ignore[attr-defined]
            # Pipelined: h11 keeps these bytes until the current response is done.
            self._pipelined += len(data)
            if self._pipelined > self.config.read_high_water and self.flow is not None:
                self.flow.pause_reading(ReadPause.PIPELINE)
        conn.receive_data(data)
        self._process_events()
        if self._skipped and self.h11 is conn and conn.their_state is h11.IDLE:
            self._check_head_with_empty_lines(len(conn.trailing_data[0]))

    def eof_received(self) -> bool:
        if self.websocket is not None:
            self.websocket.eof_received()
            return False
        if self.trace.enabled:
            self.trace.state("client sent EOF")
        self._client_eof = True
        if self._answer_after_eof():
            # A half-close after a complete request: answer it, then close
            # (_finish_cycle). The transport stays open for writing.
            if self.trace.enabled:
                self.trace.state("request complete: answering, then closing")
            self._schedule_eof_probe(EOF_PROBE_FIRST)
            return True
        # Anything else: the client has left, its handler is cancelled now.
        self._cancel_task()
        return False  # let the transport close itself

    def pause_writing(self) -> None:
        assert self.flow is not None
        self.flow.pause_writing()
        self.server.paused_writers += 1
        if self.trace.enabled:
            self.trace.state("write buffer full: producer paused")

    def resume_writing(self) -> None:
        assert self.flow is not None
        self.flow.resume_writing()
        self.server.paused_writers -= 1
        if self.trace.enabled:
            self.trace.state("write buffer drained: producer resumed")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.trace.enabled:
            self.trace.state(f"connection lost ({exc or 'closed'})")
        self._set_state(ConnState.CLOSING)
        self._clear_deadline()
        self._clear_body_deadline()
        self._cancel_eof_probe()
        if self.flow is not None:
            if self.flow.write_paused:
                self.server.paused_writers -= 1
            self.flow.connection_lost()
        if self.websocket is not None:
            self.websocket.connection_lost()
        if self.exchange is not None:
            self.exchange.connection_lost()
        self._cancel_task()
        self.server.unregister(self)

    # ------------------------------------------------------------------ h11 events
    def _process_events(self) -> None:
        conn = self.h11
        while conn is not None and self.state is not ConnState.CLOSING:
            if conn.their_state is h11.MUST_CLOSE:
                return  # nothing after a closing request is parsed (data_received)
            before = (conn.their_state, conn.our_state)
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if self.trace.enabled:
                    self.trace.state(f"h11 RemoteProtocolError: {exc}")
                status, message = exc.error_status_hint, str(exc)
                if before[0] is h11.IDLE:
                    line = bytes(self._head_start).split(b"\n", 1)[0]
                    refused = version_error_in_line(line)
                    if refused is not None:
                        status, message = refused.status, str(refused)
                self._protocol_error(status, message)
                return
            if self.trace.enabled:
                if event is not h11.NEED_DATA and event is not h11.PAUSED:
                    self.trace.inbound(event)
                self.trace.h11_states(conn, before)
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.Data):
                if self.exchange is not None:
                    self.exchange.feed_body(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._clear_body_deadline()
                if self.exchange is not None:
                    self.exchange.feed_end()
            elif isinstance(event, h11.ConnectionClosed):
                self.close()
                return

    def _on_request(self, event: h11.Request) -> None:
        self._clear_deadline()
        self._set_state(ConnState.ACTIVE)
        self._head_bytes = 0
        self._head_start.clear()
        if head_size(event) + self._skipped > self.config.max_header_bytes:
            # h11 only bounds heads still incomplete; this one came in one piece.
            # RFC 6585 section 5: 431 Request Header Fields Too Large.
            self._send_error(431, "request head too large")
            return
        try:
            request = parse_request(event)
        except BadRequest as exc:
            self._send_error(exc.status, str(exc))
            return
        if self.server.shutting_down:
            self._send_error(503, "server shutting down", [(b"retry-after", b"1")])
            return
        length = next((v for k, v in request.headers if k == b"content-length"), None)
        if length is not None and int(length) > self.config.max_body_bytes:
            # RFC 9110 15.5.14: 413 Content Too Large; the body is not read.
            self._send_error(413, "request body too large")
            return
        if is_upgrade_request(request):
            self._set_deadline(
                Deadline.HANDSHAKE,
                max(0.0, self._accepted_at + self.config.ws_handshake_timeout - self._loop.time()),
            )
        if (length is not None and length != b"0") or request.header(
            b"transfer-encoding"
        ) is not None:
            # A body follows: all of it must be in within --body-deadline, however
            # it trickles (--body-timeout restarts with every piece).
            self._body_deadline = self._loop.call_later(
                self.config.body_deadline, self._body_deadline_expired
            )
        self.exchange = Exchange(self, request)
        self._task = self._loop.create_task(self._run(self.exchange))

    async def _run(self, exchange: Exchange) -> None:
        """Run the handler for one request and end the cycle, whatever happens."""
        started = time.perf_counter()
        try:
            await self.server.handler(exchange)
        except asyncio.CancelledError:
            if self._shutdown_cancel and exchange.sse is not None:
                exchange.sse.end_for_shutdown()
        except (ConnectionGone, UpgradeRefused):
            pass
        except Exception:
            log.exception("handler failed on %s", exchange.request)
            if self.websocket is not None:
                self.websocket.close_nowait(1011, "internal error")
            elif not exchange.response_started:
                self._send_error(500, "internal server error")
            else:
                self.abort()
        finally:
            self._task = None
            if self.websocket is not None:
                self.websocket.handler_finished(shutdown=self._shutdown_cancel)
            elif not exchange.response_started and self.state is not ConnState.CLOSING:
                self._send_error(500, "handler sent no response")
            if self.config.access_log:
                exchange.log_access(time.perf_counter() - started)
        self._finish_cycle()

    def _finish_cycle(self) -> None:
        conn = self.h11
        self.exchange = None
        self._clear_body_deadline()
        if conn is None or self.state is ConnState.CLOSING or self.websocket is not None:
            return
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            if self.server.shutting_down:
                self.close()
                return
            self._next_cycle(conn)
        elif self._client_eof:
            self.close()  # the client sent its last byte: there is nothing to linger for
        elif conn.their_state is not h11.DONE or conn.trailing_data[0]:
            # A body we did not read, or a request that closes the connection
            # (MUST_CLOSE: HTTP/1.0, "Connection: close", or our response said
            # close): the client may still be sending, so the close lingers.
            self.close_lingering()
        else:
            # Our side cannot go on (a response that failed half-way): end it.
            self.close()

    def _next_cycle(self, conn: h11.Connection) -> None:
        """Keep-alive: back to ``IDLE`` for the next request on this connection."""
        before = (conn.their_state, conn.our_state)
        conn.start_next_cycle()
        if self.trace.enabled:
            self.trace.h11_states(conn, before)
        self._set_state(ConnState.IDLE)
        self._pipelined = 0
        self._skipped = 0
        self._set_deadline(Deadline.KEEPALIVE, self.config.keepalive_timeout)
        if self.flow is not None:
            self.flow.resume_reading(ReadPause.PIPELINE)
        self._skip_buffered_empty_lines(conn)
        self._process_events()  # a pipelined request may be waiting
        if self._client_eof and not self._answer_after_eof():
            # After a half-close only complete pipelined requests can be answered;
            # nothing more will come to finish an incomplete one.
            self._cancel_task()
            self.close()

    # ------------------------------------------------------------------ empty lines
    def _skip_empty_lines(self, data: bytes) -> bytes:
        """``data`` without the empty lines in front of a request line (RFC 9112 2.2).

        See :func:`~rawstream.sansio.http.skip_empty_lines`. The bytes dropped count
        against ``--max-header-bytes`` with the head that follows them.
        """
        if not self._cr_held and data[0] not in b"\r\n":
            self._line_started = True
            return data
        data, skipped, self._cr_held = skip_empty_lines(data, self._cr_held)
        self._skipped += skipped
        self._line_started = bool(data)
        if self._skipped > self.config.max_header_bytes:
            self._send_error(431, "request head too large (empty lines before it)")
            return b""
        return data

    def _skip_buffered_empty_lines(self, conn: h11.Connection) -> None:
        """At the start of a cycle: drop empty lines h11 already buffered.

        Bytes behind a request (pipelined, or a stray CRLF after a body in the same
        read) went to h11 before the request ended. h11 cannot drop bytes from its
        buffer, so when they start with an empty line a new ``h11.Connection``,
        which is what h11 is in ``IDLE``/``IDLE`` anyway, takes the rest of them.
        """
        pending = conn.trailing_data[0]
        self._line_started = bool(pending)
        if not pending or pending[0] not in b"\r\n":
            return
        self._line_started = False
        fresh = h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_header_bytes)
        self.h11 = fresh
        rest = self._skip_empty_lines(pending)
        if rest:
            fresh.receive_data(rest)
            self._check_head_with_empty_lines(len(rest))

    def _check_head_with_empty_lines(self, buffered: int) -> None:
        """431 if the empty lines and the incomplete head after them are too large."""
        if self.state is not ConnState.CLOSING and (
            self._skipped + buffered > self.config.max_header_bytes
        ):
            self._send_error(431, "request head too large")

    # ------------------------------------------------------------------ sending
    def send(self, event: h11.Event) -> int:
        """Serialise ``event`` with h11 and write it; return the bytes written.

        Raises :class:`ConnectionGone` if the connection is closing.
        """
        conn = self.h11
        if conn is None or self.transport is None or self.transport.is_closing():
            raise ConnectionGone("connection closed")
        if self.trace.enabled:
            self.trace.outbound(event)
            before = (conn.their_state, conn.our_state)
        data = conn.send(event)
        if self.trace.enabled:
            self.trace.h11_states(conn, before)
        if data:
            self.transport.write(data)
            return len(data)
        return 0

    def write_raw(self, data: bytes) -> int:
        """Write bytes that are already framed (see :meth:`SSEStream._write`).

        Raises :class:`ConnectionGone` if the connection is closing.
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionGone("connection closed")
        transport.write(data)
        return len(data)

    def _send_error(
        self,
        status: int,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        linger: bool = True,
    ) -> None:
        """Answer ``status`` with a short text body and close (if a response can start).

        The close lingers (see the module docstring) unless ``linger`` is false.
        """
        conn = self.h11
        if conn is None or self.transport is None or self.transport.is_closing():
            return
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self.abort()
            return
        body = error_body(status, message)
        all_headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *(headers or []),
            # The CORS headers the app chose for this request (an allowed page
            # must be able to read a 413 or 408 too, not see a network error).
            *(self.exchange.extra_headers if self.exchange is not None else ()),
        ]
        try:
            self.send(h11.Response(status_code=status, headers=all_headers, reason=reason(status)))
            if self.exchange is None or self.exchange.request.method != "HEAD":
                self.send(h11.Data(data=body))
            self.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self.abort()
            return
        if self.exchange is not None:
            self.exchange.record_response(status, len(body))
        if linger:
            self.close_lingering()
        else:
            self.close()

    def _protocol_error(self, status: int, message: str) -> None:
        self._cancel_task()
        self._send_error(status, message)
        if self.state is not ConnState.CLOSING:
            self.abort()  # no response could be sent

    # ------------------------------------------------------------------ deadlines
    def _set_deadline(self, kind: Deadline, delay: float) -> None:
        self._clear_deadline()
        self._deadline_kind = kind
        self._deadline = self._loop.call_later(delay, self._deadline_expired)

    def set_body_deadline(self, waiting: bool) -> None:
        """Start (or stop) the body deadline while a handler waits for body bytes."""
        if waiting:
            self._set_deadline(Deadline.BODY, self.config.body_timeout)
        elif self._deadline_kind is Deadline.BODY:
            self._clear_deadline()

    def _clear_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._deadline_kind = None

    def _clear_body_deadline(self) -> None:
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _deadline_expired(self) -> None:
        kind, self._deadline, self._deadline_kind = self._deadline_kind, None, None
        assert kind is not None
        self._expired(kind)

    def _body_deadline_expired(self) -> None:
        self._body_deadline = None
        if self.state is not ConnState.CLOSING:
            self._expired(Deadline.BODY_DEADLINE)

    def _expired(self, kind: Deadline) -> None:
        if self.trace.enabled:
            self.trace.state(f"{kind.value} deadline expired")
        if kind is Deadline.LINGER:
            self.close()
            return
        self.server.count_timeout(kind.value)
        if kind is Deadline.HEAD and self._head_bytes:
            self._send_error(408, "request head not received in time")
        elif kind is Deadline.BODY:
            self._cancel_task()
            self._send_error(408, "request body not received in time")
        elif kind is Deadline.BODY_DEADLINE:
            # The handler is cancelled; the 408 goes out if no response started
            # (else the connection is cut), then a lingering close.
            self._cancel_task()
            self._send_error(408, "request body not complete within the body deadline")
        if self.state is not ConnState.CLOSING:
            self.close()

    # ------------------------------------------------------------------ lifecycle
    def _set_state(self, state: ConnState) -> None:
        if state is not self.state:
            assert state in TRANSITIONS[self.state], f"{self.state} -> {state}"
            if self.trace.enabled:
                self.trace.state(f"connection {self.state.value}->{state.value}")
            old, self.state = self.state, state
            self.server.state_changed(self, old, state)

    def _schedule_eof_probe(self, delay: float) -> None:
        self._cancel_eof_probe()
        conn = self.h11
        if conn is not None and conn.their_http_version == b"1.1":
            self._eof_probe = self._loop.call_later(delay, self._probe_after_eof, delay)

    def _cancel_eof_probe(self) -> None:
        if self._eof_probe is not None:
            self._eof_probe.cancel()
            self._eof_probe = None

    def _probe_after_eof(self, delay: float) -> None:
        """Write an interim ``100 Continue`` to find out whether the client is still there.

        See the module docstring: a client that closed answers with a reset, and the
        write after that fails, which cancels the handler through ``connection_lost``.
        """
        self._eof_probe = None
        exchange = self.exchange
        if exchange is None or exchange.response_started or self.state is not ConnState.ACTIVE:
            return
        try:
            self.send(h11.InformationalResponse(status_code=100, headers=[], reason=reason(100)))
        except (ConnectionGone, h11.LocalProtocolError):
            return
        self._schedule_eof_probe(min(delay * 2, EOF_PROBE_MAX))

    def _answer_after_eof(self) -> bool:
        """Whether a client that sent EOF is still answered (see the module docstring).

        Only a complete request that asks for a plain response: not a request
        whose head or body is incomplete, not a WebSocket upgrade (the client could
        not send a frame), and nothing when no request is being answered.
        """
        conn, exchange = self.h11, self.exchange
        return (
            self.state is ConnState.ACTIVE
            and exchange is not None
            and conn is not None
            and conn.their_state in (h11.DONE, h11.MUST_CLOSE)
            and not exchange.is_websocket_upgrade
        )

    def set_streaming(self) -> None:
        """Called by the exchange when an SSE response starts."""
        self._set_state(ConnState.STREAMING)
        if self._client_eof:
            # An SSE client that half-closed has left (see the module docstring).
            self._cancel_task()
        elif self.server.shutting_down:
            # Started after shutdown told this (then active) connection: end it too.
            self.begin_shutdown()

    def upgraded(self, websocket: WebSocket) -> None:
        """Called by the exchange after the ``101``: wsproto owns the bytes from now."""
        self._clear_deadline()
        self.websocket = websocket
        self.h11 = None  # nothing more to parse as HTTP; free h11's buffers
        self._set_state(ConnState.WEBSOCKET)
        if self.server.shutting_down:
            self.begin_shutdown()  # upgraded after shutdown began: Close 1001 now

    def _stalled(self) -> None:
        log.info(
            "#%d: client read nothing for %.0f s; aborting",
            self.id,
            self.config.write_stall_timeout,
        )
        self.server.stall_aborts += 1
        self.abort()

    def _cancel_task(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def begin_shutdown(self) -> None:
        """Shutdown phase for this connection (see :meth:`Server.shutdown`)."""
        if self.state is ConnState.IDLE and not (self._head_bytes and self._line_started):
            self.close()  # an idle keep-alive (or fresh) connection, or only empty lines
        elif self.state is ConnState.STREAMING:
            self._shutdown_cancel = True
            self._cancel_task()  # _run() writes the final event and ends the stream
        elif self.state is ConnState.WEBSOCKET and self.websocket is not None:
            # The handler is cancelled first, so it can still tell its client why
            # (send_nowait); then _run() closes with 1001 "going away".
            self._shutdown_cancel = True
            if self._task is None:
                self.websocket.close_nowait(1001, "server shutting down")
            self._cancel_task()
        # ACTIVE: the response carries "Connection: close" and the cycle then closes.

    def close(self) -> None:
        """Close after the write buffer is flushed."""
        if self.transport is not None and not self.transport.is_closing():
            if self.trace.enabled:
                self.trace.state("closing")
            self.transport.close()
        self._set_state(ConnState.CLOSING)

    def close_lingering(self) -> None:
        """Half-close now; close when the client does, or after :data:`LINGER_TIMEOUT`.

        Whatever the client still sends is read and dropped (``data_received``
        ignores a closing connection), so the kernel never answers it with RST.
        """
        transport = self.transport
        self._set_state(ConnState.CLOSING)
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            self.close()
            return
        if self.trace.enabled:
            self.trace.state("half-closed; discarding input until the client closes")
        transport.write_eof()
        if self.flow is not None:
            self.flow.resume_reading(
                ReadPause.BODY | ReadPause.PIPELINE | ReadPause.WS_BACKLOG | ReadPause.WRITE_BACKLOG
            )
        self._set_deadline(Deadline.LINGER, LINGER_TIMEOUT)

    def abort(self) -> None:
        """Close now, discarding anything not yet written."""
        if self.transport is not None:
            self.transport.abort()
        self._set_state(ConnState.CLOSING)
