"""Flow control over real sockets: slow readers, the stall watchdog, upload backpressure.

A producer that writes as fast as it can to a client that never reads must be
paused by the transport's high-water mark (its ``send()`` awaits), keep the
server's write buffer bounded, and be cancelled when the stall watchdog aborts the
transport. An upload to a handler that does not read must stop the uploader (TCP
backpressure), and resume when the handler reads. A client that leaves cancels its
handler at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
from pathlib import Path

import h11
import pytest

from rawstream.server.exchange import Exchange
from rawstream.server.flow import ReadPause
from tests.server.apps import HTTPClient, silent_socket, silent_websocket
from tests.support import serve

HIGH_WATER = 16384
STALL = 0.5
CLIENT_RCVBUF = 4096
EVENT = b"data: " + b"x" * 1000 + b"\n\n"


def kernel_buffer_bound() -> int:
    """Most bytes the kernel can hold for one stalled loopback connection.

    The server's send buffer may grow to ``tcp_wmem[2]``; the client's receive
    buffer was set to ``CLIENT_RCVBUF`` (the kernel doubles it).
    """
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    return wmem_max + 2 * CLIENT_RCVBUF


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Read one response from a blocking socket with h11; return status and body."""
    sock.settimeout(10)
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("host", "x")]))
    status, body = 0, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, body


class Producer:
    """A handler side that writes as fast as it may and records what happened."""

    def __init__(self) -> None:
        self.produced = 0
        self.max_buffer = 0
        self.paused_at: float | None = None
        self.cancelled = asyncio.Event()

    def wrote(self, exchange: Exchange, size: int) -> None:
        transport = exchange.conn.transport
        assert transport is not None
        self.produced += size
        self.max_buffer = max(self.max_buffer, transport.get_write_buffer_size())
        flow = exchange.conn.flow
        if self.paused_at is None and flow is not None and flow.write_paused:
            self.paused_at = asyncio.get_running_loop().time()

    def check_bounded(self, chunk: int) -> None:
        # The transport pauses the producer as soon as its buffer passes the
        # high-water mark: it never holds more than that plus one write.
        assert 0 < self.max_buffer <= HIGH_WATER + chunk
        # An unbounded producer would have written hundreds of megabytes in the
        # stall period; this one wrote no more than the buffers can hold.
        assert self.produced <= kernel_buffer_bound() + HIGH_WATER + chunk
        assert self.paused_at is not None


async def test_sse_client_that_stops_reading_pauses_producer_then_stall_aborts() -> None:
    producer = Producer()

    async def handler(exchange: Exchange) -> None:
        sse = await exchange.start_sse()
        try:
            while True:
                await sse.send(EVENT)
                producer.wrote(exchange, len(EVENT))
        except asyncio.CancelledError:
            producer.cancelled.set()
            raise

    config = {"write_high_water": HIGH_WATER, "write_stall_timeout": STALL}
    async with serve(handler, **config) as running:
        sock = await silent_socket(
            running.port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", CLIENT_RCVBUF
        )
        try:
            await asyncio.wait_for(producer.cancelled.wait(), 10)
            cancelled_at = asyncio.get_running_loop().time()
            assert producer.paused_at is not None
            # The watchdog waits the whole stall timeout (timers may fire up to one
            # clock tick early).
            assert cancelled_at - producer.paused_at >= STALL - 0.05
            producer.check_bounded(len(EVENT) + 16)  # chunk-size line and CRLF
            stats = running.server.statistics()
            assert stats.stall_aborts_total == 1
            assert stats.paused_writers == 0
        finally:
            sock.close()


async def test_websocket_client_that_stops_reading_pauses_producer_then_stall_aborts() -> None:
    producer = Producer()
    message = "x" * 1000

    async def handler(exchange: Exchange) -> None:
        ws = await exchange.accept_websocket()
        try:
            while True:
                await ws.send(message)
                producer.wrote(exchange, len(message))
        except asyncio.CancelledError:
            producer.cancelled.set()
            raise

    config = {"write_high_water": HIGH_WATER, "write_stall_timeout": STALL}
    async with serve(handler, **config) as running:
        sock = await silent_websocket(running.port, "/", CLIENT_RCVBUF)
        try:
            await asyncio.wait_for(producer.cancelled.wait(), 10)
            assert producer.paused_at is not None
            assert asyncio.get_running_loop().time() - producer.paused_at >= STALL - 0.05
            producer.check_bounded(len(message) + 4)  # frame header
            assert running.server.statistics().stall_aborts_total == 1
        finally:
            sock.close()


async def test_upload_to_a_handler_that_does_not_read_pauses_the_uploader() -> None:
    read_high_water = 65536
    # More than every kernel buffer between client and server can hold, so a
    # server that kept reading would take it all while the handler waits.
    size = 48 * 1024 * 1024
    body = bytes(range(256)) * (size // 256)
    release = asyncio.Event()
    started = asyncio.Event()
    buffered_while_waiting: list[int] = []

    async def handler(exchange: Exchange) -> None:
        started.set()
        await release.wait()
        buffered_while_waiting.append(exchange._buffered)
        flow = exchange.conn.flow
        assert flow is not None and flow.read_paused & ReadPause.BODY
        digest = hashlib.sha256()
        received = 0
        while (chunk := await exchange.receive_body_chunk()) is not None:
            digest.update(chunk)
            received += len(chunk)
        await exchange.respond(200, f"{received} {digest.hexdigest()}".encode())

    def upload(sock: socket.socket, start: int, timeout: float | None) -> int:
        """Send ``body[start:]``; return where sending stopped (a timeout: blocked)."""
        sock.settimeout(timeout)
        view = memoryview(body)
        sent = start
        try:
            while sent < len(body):
                sent += sock.send(view[sent : sent + 65536])
        except TimeoutError:
            pass
        return sent

    config = {"read_high_water": read_high_water, "max_body_bytes": 2 * size, "body_timeout": 30}
    async with serve(handler, **config) as running:
        sock = socket.create_connection(("127.0.0.1", running.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        head = f"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n".encode()
        sock.sendall(head)
        try:
            await asyncio.wait_for(started.wait(), 5)
            # The client's send blocks: no byte moves for a whole second while the
            # server loop runs, because the server stopped reading.
            sent = await asyncio.to_thread(upload, sock, 0, 1.0)
            assert sent < size
            release.set()
            sent = await asyncio.to_thread(upload, sock, sent, 20.0)
            assert sent == size
            status, answer = await asyncio.to_thread(read_response, sock)
        finally:
            sock.close()
    assert status == 200
    assert answer == f"{size} {hashlib.sha256(body).hexdigest()}".encode()
    assert buffered_while_waiting[0] <= read_high_water + 256 * 1024


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_client_disconnect_mid_sse_cancels_the_handler_at_once(how: str) -> None:
    cancelled = asyncio.Event()

    async def handler(exchange: Exchange) -> None:
        sse = await exchange.start_sse()
        await sse.send(b"data: first\n\n")
        try:
            await asyncio.sleep(3600)  # a long wait for the next token
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with serve(handler) as running:
        client = await HTTPClient.open(running.port)
        client.request("/")
        await client.response()
        await asyncio.wait_for(client.read_until(b"data: first\n\n"), 5)
        if how == "rst":
            sock = client.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        # "At once": the handler is cancelled by the disconnect itself, long before
        # any heartbeat or timeout could notice.
        await asyncio.wait_for(cancelled.wait(), 2)
