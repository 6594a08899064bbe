"""One WebSocket connection after the upgrade, driven by wsproto (RFC 6455).

The ``101`` response went out through h11; from then on the connection hands every
received byte to :meth:`WebSocket.data_received`, which feeds wsproto's frame-level
``Connection`` and reacts to the events it parses. wsproto starts with h11's
``trailing_data``: frames the client sent right behind its handshake.

Reading does not wait for the handler
    Messages wait in a small queue until the handler calls :meth:`receive`. Pings
    are answered and pongs recorded as soon as they are parsed, whatever the queue
    holds. Only when the queue passes its bound (16 messages or one maximum-size
    message) does reading pause, and while rawstream itself is not reading (or has
    not been, since its ping), the keepalive does not count a missing pong against
    the client.

Pongs respect flow control (RFC 6455 section 5.5.3)
    "If an endpoint receives a Ping frame and has not yet sent Pong frame(s) in
    response to previous Ping frame(s), the endpoint MAY elect to send a Pong frame
    for only the most recently processed Ping frame." While writing is paused (the
    peer is not reading), only the newest ping's payload is kept, and its pong is
    written when writing resumes. A peer that goes on sending meanwhile is read
    for at most ``--write-high-water`` more bytes, control frames included; then
    reading pauses (``ReadPause.WRITE_BACKLOG``) until writing resumes. A ping
    flood from a peer that never reads thus costs a bounded amount of memory, and
    the stall watchdog ends it.

Limits and close codes (RFC 6455 section 7.4.1)
    * a message larger than ``--ws-max-message-bytes`` (UTF-8 bytes for text):
      1009 "message too big";
    * a text message that is not UTF-8: 1007 (wsproto detects it);
    * any other framing error (reserved bits, bad opcodes, fragmented or oversized
      control frames, unmasked client frames): 1002 (wsproto detects it);
    * no pong within ``--ws-ping-timeout`` of a ping: 1011, then the TCP close.
    Failing the connection (section 7.1.7) sends the Close frame and closes TCP at
    once; the peer's answer is not awaited (what it still sends is read and
    dropped until it closes: a lingering close, see the connection module).

The close handshake (section 7.1.2-7.1.4)
    * Peer first: wsproto reports ``CloseConnection``; rawstream answers with the
      same code and closes TCP (section 7.1.1: "the server SHOULD close the
      underlying TCP connection first").
    * rawstream first (:meth:`close`, shutdown with 1001): send Close, wait for the
      peer's Close at most ``--ws-close-timeout`` seconds, then close TCP (or abort
      after the timeout).

Close codes are counted for the metrics (:meth:`Server.count_close_code`) as
:func:`close_code_bucket` groups them: a peer picks codes from 3000 to 4999
freely, and one series per code would let it create series without bound.

permessage-deflate is not offered: it costs memory per connection and wsproto
inflates without a size bound.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from rawstream.sansio.wsframe import data_frame
from rawstream.server.errors import ConnectionGone, WebSocketClosed
from rawstream.server.flow import ReadPause

if TYPE_CHECKING:
    from rawstream.server.connection import HTTPConnection

log = logging.getLogger("rawstream.server")

#: Close codes rawstream sends (RFC 6455 section 7.4.1).
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
TOO_BIG = 1009
INTERNAL_ERROR = 1011
ABNORMAL = 1006  #: never sent: "no close frame received"

#: Unread messages that pause reading.
MAX_QUEUED_MESSAGES = 16


def close_code_bucket(code: int) -> int:
    """The close code to count: itself if RFC 6455 defines it, else its range.

    Section 7.4.2: 1000-2999 are for the protocol (1000-1015 defined or registered;
    the rest never pass wsproto's check), "3000-3999 [...] registered with IANA"
    for libraries and frameworks, "4000-4999 [...] reserved for private use".
    Those two ranges are counted as 3000 and 4000; anything else as 0.
    """
    if 1000 <= code <= 1015:
        return code
    if 3000 <= code <= 4999:
        return code - code % 1000
    return 0


def _utf8_size(data: str | bytes) -> int:
    """Bytes of a message part: a text part counts as its UTF-8 encoding."""
    if isinstance(data, str) and not data.isascii():  # isascii() is O(1) in CPython
        return len(data.encode())
    return len(data)


class WebSocket:
    """The handler's WebSocket (see the module docstring)."""

    def __init__(self, conn: HTTPConnection, trailing: bytes, subprotocol: str | None) -> None:
        self.conn = conn
        self.config = conn.config
        self.subprotocol = subprotocol
        self._ws = Connection(ConnectionType.SERVER, extensions=None, trailing_data=b"")
        self._trailing = trailing
        #: Messages the handler has not read yet, each with its size in bytes.
        self._queue: collections.deque[tuple[str | bytes, int]] = collections.deque()
        self._queued_bytes = 0
        self._parts: list[str | bytes] = []
        self._part_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._closed_waiter: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._ping_handle: asyncio.TimerHandle | None = None
        self._pong_deadline: asyncio.TimerHandle | None = None
        self._close_handle: asyncio.TimerHandle | None = None
        self._ping_payload = b""
        self._ping_count = 0
        self._read_pauses_at_ping = 0
        #: The payload of the newest ping not yet answered while writing is paused.
        self._pending_pong: bytes | None = None
        #: Pongs that answered one of our keepalive pings (a statistic for tests/metrics).
        self.pongs_received = 0
        #: The close code, once the close handshake started or the TCP connection
        #: ended; ``None`` while open.
        self.close_code: int | None = None
        self.close_reason = ""

    def start(self) -> None:
        """(exchange) Begin: parse the trailing bytes, start the keepalive."""
        self._schedule_ping()
        if self._trailing:
            data, self._trailing = self._trailing, b""
            self.data_received(data)

    # ------------------------------------------------------------------ receiving
    def data_received(self, data: bytes) -> None:
        """(connection) Bytes from the peer."""
        if self._ws.state is ConnectionState.CLOSED:
            return
        if self._ws.state is ConnectionState.OPEN and self.conn.flow is not None:
            self.conn.flow.received(len(data))
        self._ws.receive_data(data)
        for event in self._ws.events():
            if self.conn.trace.enabled:
                self.conn.trace.inbound(event)
            self._on_event(event)
        if self.conn.trace.enabled and self._ws.state is not ConnectionState.OPEN:
            self.conn.trace.state(f"wsproto {self._ws.state.name}")

    def eof_received(self) -> None:
        """(connection) The peer closed its side without a Close frame."""
        self._finish(ABNORMAL, "connection closed without a Close frame")

    def connection_lost(self) -> None:
        """(connection) TCP is gone."""
        self._finish(self.close_code or ABNORMAL, self.close_reason)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Message):
            self._on_message(event)
        elif isinstance(event, Ping):
            self._on_ping(event)
        elif isinstance(event, Pong):
            if event.payload == self._ping_payload and self._pong_deadline is not None:
                self._pong_deadline.cancel()
                self._pong_deadline = None
                self.pongs_received += 1
        elif isinstance(event, CloseConnection):
            self._on_close(event)

    def _on_ping(self, event: Ping) -> None:
        """Answer now, or keep only the newest payload while writing is paused."""
        if self._ws.state is not ConnectionState.OPEN:
            return
        flow = self.conn.flow
        if flow is None or not flow.write_paused:
            self._send(event.response())
            return
        if self._pending_pong is None:
            flow.call_when_writable(self._send_pending_pong)
        self._pending_pong = bytes(event.payload)

    def _send_pending_pong(self) -> None:
        payload, self._pending_pong = self._pending_pong, None
        if payload is not None and self._ws.state is ConnectionState.OPEN:
            self._send(Pong(payload=payload))

    def _on_message(self, event: Message) -> None:  # type: ignore[type-arg]
        if self._ws.state is not ConnectionState.OPEN:
            return
        self._part_bytes += _utf8_size(event.data)
        if self._part_bytes > self.config.ws_max_message_bytes:
            self._fail(TOO_BIG, "message too big")
            return
        self._parts.append(event.data)
        if not event.message_finished:
            return
        if isinstance(event, TextMessage):
            message: str | bytes = "".join(p for p in self._parts if isinstance(p, str))
        else:
            message = b"".join(bytes(p) for p in self._parts if not isinstance(p, str))
        self._parts = []
        self._queue.append((message, self._part_bytes))
        self._queued_bytes += self._part_bytes
        self._part_bytes = 0
        if (
            len(self._queue) >= MAX_QUEUED_MESSAGES
            or self._queued_bytes > self.config.ws_max_message_bytes
        ) and self.conn.flow is not None:
            self.conn.flow.pause_reading(ReadPause.WS_BACKLOG)
        self._wake()

    def _on_close(self, event: CloseConnection) -> None:
        state = self._ws.state
        if state is ConnectionState.REMOTE_CLOSING:
            # The peer started the close handshake: echo its code, then close TCP.
            self.close_code, self.close_reason = event.code, event.reason or ""
            self._send(event.response())
            self._count_close(event.code)
            self.conn.close()
        elif state is ConnectionState.CLOSED:
            # The answer to our Close: the handshake is complete.
            self.conn.close()
        else:
            # wsproto reports a parse failure as a CloseConnection without
            # changing state: fail the connection with that code.
            self._fail(event.code, event.reason or "protocol error")
            return
        self._finish(self.close_code or event.code, self.close_reason)

    # ------------------------------------------------------------------ handler API
    async def receive(self) -> str | bytes:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Raises :class:`WebSocketClosed` once the connection is closing and every
        queued message has been read.
        """
        while not self._queue:
            if self.close_code is not None or self._ws.state is not ConnectionState.OPEN:
                raise WebSocketClosed(self.close_code or ABNORMAL, self.close_reason)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message, size = self._queue.popleft()
        self._queued_bytes -= size
        if len(self._queue) < MAX_QUEUED_MESSAGES // 2 and self.conn.flow is not None:
            self.conn.flow.resume_reading(ReadPause.WS_BACKLOG)
        return message

    async def send(self, message: str | bytes) -> None:
        """Send one text (``str``) or binary (``bytes``) message, waiting if paused.

        Raises :class:`WebSocketClosed` if the connection is closing or gone.
        """
        flow = self.conn.flow
        assert flow is not None
        if flow.write_paused or flow.closed:
            try:
                await flow.wait_writable()
            except ConnectionGone:
                raise WebSocketClosed(self.close_code or ABNORMAL, self.close_reason) from None
        if self._ws.state is not ConnectionState.OPEN:
            raise WebSocketClosed(self.close_code or ABNORMAL, self.close_reason)
        if self.conn.trace.enabled:
            # wsproto frames it, so the trace shows the event.
            self._send(
                TextMessage(data=message)
                if isinstance(message, str)
                else BytesMessage(data=message)
            )
            return
        # The hot path (one message per token delta): a complete server message
        # is one unmasked frame, written directly (see rawstream.sansio.wsframe).
        if isinstance(message, str):
            frame = data_frame(message.encode())
        else:
            frame = data_frame(message, binary=True)
        try:
            self.conn.write_raw(frame)
        except ConnectionGone:
            raise WebSocketClosed(self.close_code or ABNORMAL, self.close_reason) from None

    async def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Start the close handshake and wait until the connection is closed."""
        self.close_nowait(code, reason)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is closed."""
        if self.conn.flow is None or self.conn.flow.closed:
            return
        if self._closed_waiter is None:
            self._closed_waiter = self._loop.create_future()
        await asyncio.shield(self._closed_waiter)

    def close_nowait(self, code: int = NORMAL, reason: str = "") -> None:
        """Send a Close frame (once) and arm the close timeout."""
        if self._ws.state is not ConnectionState.OPEN:
            return
        self.close_code, self.close_reason = code, reason
        self._count_close(code)
        self._send(CloseConnection(code=code, reason=reason))
        self._stop_keepalive()
        self._close_handle = self._loop.call_later(
            self.config.ws_close_timeout, self._close_timeout
        )
        # While we wait for the peer's Close, read everything (and drop messages;
        # pings are no longer answered).
        if self.conn.flow is not None:
            self.conn.flow.resume_reading(ReadPause.WS_BACKLOG | ReadPause.WRITE_BACKLOG)
        self._wake()

    def handler_finished(self, *, shutdown: bool = False) -> None:
        """(connection) The handler returned: close if still open (1001 at shutdown)."""
        if shutdown:
            self.close_nowait(GOING_AWAY, "server shutting down")
        else:
            self.close_nowait(NORMAL, "")

    def send_nowait(self, message: str | bytes) -> bool:
        """Send one message now, ignoring backpressure; False if the socket is closing.

        For a few last words (a handler cancelled by shutdown cannot await): the
        bytes join the transport's buffer even if the client is not reading.
        """
        if self._ws.state is not ConnectionState.OPEN:
            return False
        event = (
            TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        )
        self._send(event)
        return True

    # ------------------------------------------------------------------ internals
    def _send(self, event: Event) -> None:
        if self.conn.trace.enabled:
            self.conn.trace.outbound(event)
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            return
        try:
            data = self._ws.send(event)
        except LocalProtocolError:
            return
        transport.write(data)

    def _fail(self, code: int, reason: str) -> None:
        """Fail the WebSocket connection (RFC 6455 section 7.1.7)."""
        log.debug("#%d: failing WebSocket: %d %s", self.conn.id, code, reason)
        self.close_code, self.close_reason = code, reason
        self._count_close(code)
        if self._ws.state is ConnectionState.OPEN:
            self._send(CloseConnection(code=code, reason=reason))
        # Frames may still be arriving behind the bad one; closing with them unread
        # would send RST, which can destroy our Close frame before the peer reads it.
        self.conn.close_lingering()
        self._finish(code, reason)

    def _count_close(self, code: int) -> None:
        self.conn.server.count_close_code(close_code_bucket(code))

    def _close_timeout(self) -> None:
        self._close_handle = None
        if self.conn.trace.enabled:
            self.conn.trace.state("close handshake timed out")
        self.conn.abort()

    def _finish(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._stop_keepalive()
        if self._close_handle is not None and (self.conn.flow is None or self.conn.flow.closed):
            self._close_handle.cancel()
            self._close_handle = None
        gone = self.conn.flow is None or self.conn.flow.closed
        if gone and self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # ------------------------------------------------------------------ keepalive
    def _schedule_ping(self) -> None:
        if self.config.ws_ping_interval > 0:
            self._ping_handle = self._loop.call_later(self.config.ws_ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_handle = None
        if self._ws.state is not ConnectionState.OPEN:
            return
        flow = self.conn.flow
        if flow is not None and not flow.read_paused and self._pong_deadline is None:
            self._ping_count += 1
            self._ping_payload = self._ping_count.to_bytes(4, "big")
            self._send(Ping(payload=self._ping_payload))
            self._read_pauses_at_ping = flow.read_pauses
            self._pong_deadline = self._loop.call_later(
                self.config.ws_ping_timeout, self._pong_missing
            )
        self._schedule_ping()

    def _pong_missing(self) -> None:
        self._pong_deadline = None
        flow = self.conn.flow
        if flow is not None and (flow.read_paused or flow.read_pauses != self._read_pauses_at_ping):
            # We stopped reading since the ping: the pong may be waiting in the
            # socket (or have arrived late for that reason). Ping again later.
            return
        self._fail(INTERNAL_ERROR, "keepalive ping timeout")

    def _stop_keepalive(self) -> None:
        for handle in (self._ping_handle, self._pong_deadline):
            if handle is not None:
                handle.cancel()
        self._ping_handle = self._pong_deadline = None
