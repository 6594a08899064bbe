"""``GET /v1/ws``: many generations over one WebSocket (protocol: docs/ws-protocol.md).

One reader loop takes client messages in order and hands each to the connection's
:class:`~rawstream.sansio.wsmux.StreamTable`, which says what to do: start a
stream, cancel one, answer, or close the connection for a protocol violation. Each
accepted stream runs as its own task that reads its :class:`Generation` and sends
``delta`` messages, then its ``done`` or ``error``.

Fairness and bounds: every stream task waits for the socket to be writable before
each send, so when the client reads slowly all streams wait their turn, and each
stream's engine buffer (``--stream-buffer-tokens``) fills and pauses that stream in
the engine; text that piles up meanwhile is merged into the next delta. A stream
with a lot to say never holds the socket for longer than one message.

A stream's id is freed only once its ``done`` or ``error`` has been written
(:meth:`StreamTable.release`), so a ``generate`` that reuses the id while that last
message waits for a slow client is a ``duplicate_id``, and a ``cancel`` always
reaches the stream that holds the id.

One stream's failure is that stream's alone: an unexpected exception while it
starts, runs or is encoded is logged once with its traceback and ends the stream
with an ``error`` (code ``internal_error``); the socket and the other streams carry
on.

When the connection ends (client gone, shutdown's 1001, a violation), every stream
still running is cancelled with it.
"""

from __future__ import annotations

import asyncio
import logging

from rawstream.app.generation import Generation
from rawstream.app.openai_api import engine_error
from rawstream.app.services import Services
from rawstream.engine.base import EngineError
from rawstream.sansio.openai import APIError
from rawstream.sansio.upgrade import offered_subprotocols
from rawstream.sansio.wsmux import (
    Cancel,
    Generate,
    StreamId,
    StreamTable,
    Violation,
    choose_subprotocol,
)
from rawstream.server.errors import WebSocketClosed
from rawstream.server.exchange import Exchange
from rawstream.server.websocket import WebSocket

log = logging.getLogger("rawstream")


async def websocket(app: Services, exchange: Exchange) -> None:
    """Accept the upgrade and serve the multiplexing protocol until the socket closes."""
    offered = offered_subprotocols(exchange.request)
    ws = await exchange.accept_websocket(subprotocol=choose_subprotocol(offered))
    session = _Session(app, ws)
    try:
        await session.read_loop()
    finally:
        session.cancel_all(tell_client=exchange.shutting_down)


class _Session:
    """The live streams of one WebSocket connection."""

    def __init__(self, app: Services, ws: WebSocket) -> None:
        self.app = app
        self.ws = ws
        self.table = StreamTable.from_config(app.config)
        self.running: dict[StreamId, tuple[Generation, asyncio.Task[None]]] = {}

    async def read_loop(self) -> None:
        while True:
            try:
                message = await self.ws.receive()
            except WebSocketClosed:
                return
            action = self.table.receive(message)
            if isinstance(action, Generate):
                await self._start(action)
            elif isinstance(action, Cancel):
                entry = self.running.get(action.id)
                if entry is not None:
                    entry[0].cancel()
            elif isinstance(action, str):
                await self.ws.send(action)
            elif isinstance(action, Violation):
                await self.ws.close(int(action.code), action.reason)
                return

    async def _start(self, action: Generate) -> None:
        request = action.request.generation
        try:
            gen = await Generation.submit(self.app.engine, self.app.metrics, request)
        except EngineError as exc:
            error, _retry = engine_error(exc)
            await self._end(action.id, self.table.fail(action.id, error))
            return
        except Exception:
            log.exception("#%d: stream %r failed to start", self.ws.conn.id, action.id)
            await self._end(action.id, self.table.fail(action.id, INTERNAL_ERROR))
            return
        task = asyncio.get_running_loop().create_task(self._stream(action.id, gen))
        self.running[action.id] = (gen, task)

    async def _stream(self, stream_id: StreamId, gen: Generation) -> None:
        """Relay one generation and its end; a failure ends this stream alone."""
        try:
            try:
                end = await self._relay(stream_id, gen)
            except WebSocketClosed:
                raise
            except Exception:
                log.exception("#%d: stream %r failed", self.ws.conn.id, stream_id)
                end = self.table.fail(stream_id, INTERNAL_ERROR)
            await self._end(stream_id, end)
        except WebSocketClosed:
            pass
        except Exception:
            # Not even its error could be sent; the socket itself is fine.
            log.exception("#%d: stream %r could not be ended", self.ws.conn.id, stream_id)
        finally:
            entry = self.running.get(stream_id)
            if entry is not None and entry[0] is gen:
                del self.running[stream_id]

    async def _relay(self, stream_id: StreamId, gen: Generation) -> str:
        """Send the stream's deltas; return its encoded end."""
        async with gen:
            async for delta in gen:
                await self.ws.send(self.table.delta(stream_id, delta.text))
        assert gen.result is not None
        return self.table.finish(stream_id, gen.result)

    async def _end(self, stream_id: StreamId, end: str) -> None:
        """Send a stream's last message, then free its id (not before: see above)."""
        try:
            await self.ws.send(end)
        finally:
            self.table.release(stream_id)

    def cancel_all(self, *, tell_client: bool = False) -> None:
        """Cancel every stream of this connection (it is closing).

        At shutdown (``tell_client``) each stream still holding its id first gets
        its last message: ``error`` with code ``cancelled``, or the end it was
        waiting to send. The server then closes the socket with 1001.
        """
        for gen, task in self.running.values():
            gen.cancel()
            task.cancel()
        if tell_client:
            for end in self.table.end_all(SHUTDOWN):
                self.ws.send_nowait(end)
        self.table.clear()
        self.running.clear()


#: The error of each stream still open when the server shuts down.
SHUTDOWN = APIError(503, "the server is shutting down", type="server_error", code="cancelled")
#: The error of a stream that failed unexpectedly (logged with its traceback).
INTERNAL_ERROR = APIError(
    500, "the stream failed on the server", type="server_error", code="internal_error"
)
