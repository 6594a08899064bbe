"""What a handler sees of one request: its body, and the ways to answer it.

A handler is ``async def handler(exchange: Exchange) -> None``. It reads
``exchange.request`` (a :class:`~rawstream.sansio.http.Request`), may await
:meth:`Exchange.body`, and answers exactly once, in one of three ways:

* :meth:`Exchange.respond`: a complete response with ``Content-Length``;
* :meth:`Exchange.start_sse`: a Server-Sent Events stream (chunked, open-ended);
* :meth:`Exchange.accept_websocket`: the ``101`` upgrade to a WebSocket.

If the client goes away, the handler's task is cancelled; awaiting any of these
raises ``CancelledError`` or :class:`~rawstream.server.errors.ConnectionGone`.

Request bodies are read as they arrive, into a small buffer: above
``--read-high-water`` bytes not yet consumed, reading pauses (TCP backpressure on
the uploader). ``Expect: 100-continue`` is answered when the handler first asks for
the body, not before: a handler that rejects the request (401, 413) never invites
the client to send it (RFC 9110 section 10.1.1).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import h11

from rawstream.sansio.http import Headers, Request, reason
from rawstream.sansio.upgrade import UpgradeRejected, check_upgrade, is_upgrade_request
from rawstream.server.errors import ConnectionGone, UpgradeRefused
from rawstream.server.flow import ReadPause
from rawstream.server.sse import SSEStream
from rawstream.server.websocket import WebSocket

if TYPE_CHECKING:
    from rawstream.server.connection import HTTPConnection

access_log = logging.getLogger("rawstream.access")

#: Headers of every SSE response (DESIGN: no caching, no proxy buffering).
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class Exchange:
    """One request and its response, as seen by a handler."""

    def __init__(self, conn: HTTPConnection, request: Request) -> None:
        self.request = request
        self.conn = conn
        self.client = conn.client
        self.connection_id = conn.id
        #: Set by :meth:`start_sse`.
        self.sse: SSEStream | None = None
        #: Extra fields for the access log line (the app adds e.g. ``tokens``).
        self.log_extra: dict[str, Any] = {}
        #: Headers added to every response of this exchange (the app's CORS headers);
        #: a tuple, so that an exchange without any allocates nothing.
        self.extra_headers: tuple[tuple[bytes, bytes], ...] = ()
        self.status: int | None = None
        self.bytes_sent = 0
        # A list, not a deque (an empty deque costs 624 bytes per connection); it is
        # emptied whole by receive_body_chunk(), never popped from the front.
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._received = 0
        self._complete = False
        self._waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ state
    @property
    def response_started(self) -> bool:
        """Whether a status line has been sent (only one response per request)."""
        return self.status is not None

    @property
    def is_websocket_upgrade(self) -> bool:
        """Whether the request asks for a WebSocket upgrade."""
        return is_upgrade_request(self.request)

    @property
    def shutting_down(self) -> bool:
        """Whether the server is shutting down (responses close their connection)."""
        return self.conn.server.shutting_down

    def record_response(self, status: int, body_bytes: int) -> None:
        """Note the status and bytes of a response sent for this exchange."""
        self.status = status
        self.bytes_sent += body_bytes

    # ------------------------------------------------------------------ body
    def feed_body(self, data: bytes) -> None:
        """(connection) A piece of the request body arrived."""
        self._received += len(data)
        if self._received > self.conn.config.max_body_bytes:
            self.conn._cancel_task()
            self.conn._send_error(413, "request body too large")
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > self.conn.config.read_high_water and self.conn.flow is not None:
            self.conn.flow.pause_reading(ReadPause.BODY)
        self._wake()

    def feed_end(self) -> None:
        """(connection) The request body is complete."""
        self._complete = True
        self._wake()

    def connection_lost(self) -> None:
        """(connection) The peer is gone."""
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def body(self) -> bytes:
        """The whole request body (at most ``--max-body-bytes``; larger gets 413)."""
        parts = []
        while (chunk := await self.receive_body_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    async def receive_body_chunk(self) -> bytes | None:
        """The next piece of the request body, or ``None`` at its end."""
        conn = self.conn
        h11_conn = conn.h11
        if h11_conn is not None and h11_conn.they_are_waiting_for_100_continue:
            # RFC 9110 10.1.1: the client waits for this before sending the body.
            conn.send(h11.InformationalResponse(status_code=100, headers=[], reason=reason(100)))
        while not self._chunks:
            if self._complete:
                return None
            if conn.flow is None or conn.flow.closed:
                raise ConnectionGone("connection closed while reading the body")
            self._waiter = asyncio.get_running_loop().create_future()
            conn.set_body_deadline(True)
            try:
                await self._waiter
            finally:
                conn.set_body_deadline(False)
                self._waiter = None
        # Everything buffered, in one piece (at most --read-high-water plus a read).
        chunks, self._chunks = self._chunks, []
        chunk = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._buffered -= len(chunk)
        if self._buffered <= self.conn.config.read_high_water // 2 and conn.flow is not None:
            conn.flow.resume_reading(ReadPause.BODY)
        return chunk

    # ------------------------------------------------------------------ responses
    def _response_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> Headers:
        out = [*headers, *self.extra_headers]
        conn = self.conn.h11
        unread_body = conn is not None and conn.their_state is not h11.DONE
        if self.shutting_down or unread_body:
            # Answering before the body was read, or shutting down: this
            # connection cannot carry another request.
            out.append((b"connection", b"close"))
        return out

    async def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: Iterable[tuple[bytes, bytes]] = (),
        content_type: bytes = b"application/json",
    ) -> None:
        """Send a complete response with ``Content-Length``.

        For ``HEAD`` the headers are those of the ``GET`` response and no body is
        sent (RFC 9110 section 9.3.2; h11 enforces it). A ``204`` has neither body
        nor body headers: RFC 9110 section 8.6, "A server MUST NOT send a
        Content-Length header field in any response with a status code of 1xx
        (Informational) or 204 (No Content)."
        """
        if self.response_started:
            raise RuntimeError("a response was already sent")
        if status == 204:
            if body:
                raise ValueError("a 204 response has no body")
            all_headers = self._response_headers(headers)
        else:
            all_headers = [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *self._response_headers(headers),
            ]
        assert self.conn.flow is not None
        await self.conn.flow.wait_writable()
        self.status = status
        self.conn.send(h11.Response(status_code=status, headers=all_headers, reason=reason(status)))
        if body and self.request.method != "HEAD":
            self.bytes_sent += self.conn.send(h11.Data(data=body))
        self.conn.send(h11.EndOfMessage())

    async def start_sse(
        self,
        headers: Iterable[tuple[bytes, bytes]] = (),
        shutdown_event: bytes | None = None,
    ) -> SSEStream:
        """Start a Server-Sent Events response and return its writer.

        ``shutdown_event`` is the last event each client of this stream receives if
        the server shuts down while it is open (followed by ``retry:``); the default
        is a generic ``event: shutdown``.
        """
        if self.response_started:
            raise RuntimeError("a response was already sent")
        assert self.conn.flow is not None
        await self.conn.flow.wait_writable()
        self.status = 200
        all_headers = [*SSE_HEADERS, *self._response_headers(headers)]
        self.conn.send(h11.Response(status_code=200, headers=all_headers, reason=reason(200)))
        self.sse = SSEStream(self, shutdown_event)
        self.conn.set_streaming()
        return self.sse

    async def accept_websocket(
        self,
        subprotocol: str | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> WebSocket:
        """Validate the upgrade request, send ``101`` and return the WebSocket.

        An invalid handshake is answered here (400, 405 or 426, RFC 6455 section 4.2.1
        and 4.4) and :class:`UpgradeRefused` is raised.
        """
        decision = check_upgrade(self.request)
        if isinstance(decision, UpgradeRejected):
            self.conn._send_error(decision.status, decision.message, decision.headers)
            raise UpgradeRefused(decision.status, decision.message)
        await self.body()  # a GET has none, but h11 must reach EndOfMessage
        conn = self.conn.h11
        assert conn is not None
        response = h11.InformationalResponse(
            status_code=101,
            headers=[*decision.response_headers(subprotocol), *headers],
            reason=reason(101),
        )
        self.conn.send(response)
        self.status = 101
        # h11 is now in SWITCHED_PROTOCOL; whatever it read beyond the request
        # already belongs to the WebSocket (a client may send frames right away).
        trailing, _closed = conn.trailing_data
        websocket = WebSocket(self.conn, bytes(trailing), subprotocol)
        self.conn.upgraded(websocket)
        websocket.start()
        return websocket

    # ------------------------------------------------------------------ logging
    def log_access(self, duration: float) -> None:
        """Write the access-log line of this exchange."""
        if not access_log.isEnabledFor(logging.INFO):
            return
        extra = " ".join(f"{k}={v}" for k, v in self.log_extra.items())
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        access_log.info(
            '%s "%s %s" %s %d %.3fs %s',
            client,
            self.request.method,
            self.request.target,
            self.status if self.status is not None else "-",
            self.bytes_sent,
            duration,
            extra,
        )
