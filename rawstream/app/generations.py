"""Resumable generations: ``POST /v1/generations`` and ``GET /v1/generations/{id}/events``.

A browser's ``EventSource`` reconnects by itself after a dropped connection and
sends the ``id:`` of the last event it received as ``Last-Event-ID`` (WHATWG HTML,
"Server-sent events", section 9.2.4). For that to resume a reply without a gap or
a duplicate, the generation must outlive the connection. So here the generation
belongs to the server, not to a request:

* ``POST /v1/generations`` (a chat completion body) submits it and returns its id.
  A background task reads the engine stream into a :class:`GenerationLog`: every
  delta becomes an event with the next integer ``id:``; the last event is
  ``event: done`` (finish reason, usage) or ``event: error``.
* ``GET /v1/generations/{id}/events`` replays the events after ``Last-Event-ID``
  (header, or ``?last_event_id=`` for clients that cannot set headers) and then
  follows the live ones. Any number of viewers may watch one generation; each has
  its own cursor into the same log (the log is the in-process publish/subscribe
  broker; several servers would share it through Redis instead).
* ``DELETE /v1/generations/{id}`` cancels it (the chat page's stop button).

Bounds: the log keeps at most ``--replay-buffer-events`` events (a resume from
before the oldest kept event gets ``410 Gone``). When the last viewer leaves, the
generation lives on for ``--resume-window`` seconds; if nobody comes back in that
time it is cancelled and its log freed. A finished generation is kept the same
window after its last viewer, then freed. A viewer that resumes after the final
event gets ``204 No Content``, which tells ``EventSource`` to stop reconnecting.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
from typing import TYPE_CHECKING

from rawstream.app.generation import Generation
from rawstream.app.openai_api import engine_error, respond_error
from rawstream.engine.base import EngineError, FinishReason, Result
from rawstream.sansio.auth import Identity
from rawstream.sansio.openai import APIError, error_for_result, parse_chat_completion, usage_json
from rawstream.server.exchange import Exchange

if TYPE_CHECKING:
    from rawstream.app.application import App

log = logging.getLogger("rawstream")

#: Finished generations kept for late viewers, at most (the oldest go first).
MAX_FINISHED = 1024


def token_event(event_id: int, text: str) -> bytes:
    """A delta: ``id: N`` and ``data: {"text": ...}`` (JSON never holds a raw newline)."""
    return b'id: %d\ndata: {"text":%s}\n\n' % (event_id, json.dumps(text).encode())


def final_event(event_id: int, result: Result) -> bytes:
    """``event: done`` for a complete or cancelled generation, ``event: error`` otherwise.

    A generation is only cancelled while someone can see it through ``DELETE``, so
    ``cancelled`` is a normal end here (shutdown never gets this far).
    """
    error = error_for_result(result)
    if error is not None and result.finish_reason is not FinishReason.CANCELLED:
        return b"id: %d\nevent: error\ndata: %s\n\n" % (event_id, error.body())
    body = {"finish_reason": str(result.finish_reason), "usage": usage_json(result.usage)}
    return b"id: %d\nevent: done\ndata: %s\n\n" % (event_id, json.dumps(body).encode())


#: The last event of a viewer's stream cut by shutdown.
SHUTDOWN_EVENT = (
    b"event: error\ndata: "
    + APIError(503, "the server is shutting down", type="server_error", code="shutting_down").body()
    + b"\n\n"
)


class GenerationLog:
    """The events of one generation: a bounded replay buffer that viewers follow."""

    def __init__(self, gen_id: str, max_events: int) -> None:
        self.id = gen_id
        self.events: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=max_events)
        self.last_id = 0
        self.finished = False
        self.viewers = 0
        self.generation: Generation | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self._changed: asyncio.Future[None] | None = None

    def append(self, event: bytes, *, final: bool = False) -> None:
        """Add the next event (the caller encoded it with ``self.last_id + 1``)."""
        self.last_id += 1
        self.events.append((self.last_id, event))
        self.finished = final
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    def since(self, after: int) -> bytes:
        """Every kept event with an id above ``after``, concatenated.

        Raises :class:`LookupError` if some of them are no longer kept.
        """
        if not self.events or after >= self.last_id:
            return b""
        oldest = self.events[0][0]
        if after + 1 < oldest:
            raise LookupError(f"events {after + 1} to {oldest - 1} are no longer kept")
        events = self.events
        # Live viewers ask for the last few events: index from the end of the deque.
        return b"".join(events[i][1] for i in range(after + 1 - oldest, len(events)))

    async def wait_change(self) -> None:
        """Wait for the next event."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._changed)


class Generations:
    """The registry of resumable generations."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.config = app.config
        self.logs: dict[str, GenerationLog] = {}
        self._finished: collections.deque[str] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ endpoints
    async def create(self, exchange: Exchange, identity: Identity) -> None:
        """``POST /v1/generations``."""
        raw = await exchange.body()
        request = parse_chat_completion(raw, max_messages=self.config.max_messages)
        try:
            gen = await Generation.submit(self.app.engine, self.app.metrics, request.generation)
        except EngineError as exc:
            error, retry = engine_error(exc)
            await respond_error(exchange, error, retry)
            return
        gen_id = "gen-" + os.urandom(12).hex()
        entry = GenerationLog(gen_id, self.config.replay_buffer_events)
        entry.generation = gen
        self.logs[gen_id] = entry
        task = asyncio.get_running_loop().create_task(self._pump(entry, gen))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._arm_expiry(entry)
        url = f"/v1/generations/{gen_id}/events"
        body = json.dumps({"id": gen_id, "events_url": url, "model": self.app.engine.model_name})
        await exchange.respond(201, body.encode(), [(b"location", url.encode())])

    async def events(self, exchange: Exchange, gen_id: str, identity: Identity) -> None:
        """``GET /v1/generations/{id}/events``."""
        entry = await self._find(exchange, gen_id)
        if entry is None:
            return
        raw = exchange.request.header(b"last-event-id")
        text = (
            raw.decode("latin-1")
            if raw is not None
            else exchange.request.query_params().get("last_event_id", "0")
        )
        try:
            cursor = int(text or "0")
        except ValueError:
            error = APIError(400, "Last-Event-ID must be an integer", param="Last-Event-ID")
            await respond_error(exchange, error)
            return
        if entry.finished and cursor >= entry.last_id:
            await exchange.respond(204)  # EventSource: "no content" stops reconnecting
            return
        try:
            backlog = entry.since(cursor)
        except LookupError as exc:
            await respond_error(exchange, APIError(410, str(exc), code="events_expired"))
            return
        if exchange.request.method == "HEAD":
            # The headers of the GET and no body (RFC 9110 section 9.3.2): end the
            # response at once instead of following a stream nobody will read.
            await (await exchange.start_sse()).end()
            return
        # Join before the first await, so the resume window cannot expire the
        # generation while the response head waits for a writable socket.
        self._viewer_joined(entry)
        try:
            sse = await exchange.start_sse(shutdown_event=SHUTDOWN_EVENT)
            while True:
                if backlog:
                    await sse.send(backlog)
                    cursor = entry.last_id
                if entry.finished and cursor >= entry.last_id:
                    break
                await entry.wait_change()
                backlog = entry.since(cursor)
            await sse.end()
        finally:
            self._viewer_left(entry)

    async def cancel(self, exchange: Exchange, gen_id: str, identity: Identity) -> None:
        """``DELETE /v1/generations/{id}``: stop generating (viewers get the final event)."""
        entry = await self._find(exchange, gen_id)
        if entry is None:
            return
        if entry.generation is not None:
            entry.generation.cancel()
        await exchange.respond(200, json.dumps({"id": gen_id, "cancelled": True}).encode())

    async def _find(self, exchange: Exchange, gen_id: str) -> GenerationLog | None:
        """The generation ``gen_id``, or ``None`` after answering 404."""
        entry = self.logs.get(gen_id)
        if entry is None:
            error = APIError(404, f"no generation {gen_id!r}", code="not_found")
            await respond_error(exchange, error)
        return entry

    # ------------------------------------------------------------------ lifecycle
    async def _pump(self, entry: GenerationLog, gen: Generation) -> None:
        async with gen:
            async for delta in gen:
                entry.append(token_event(entry.last_id + 1, delta.text))
        assert gen.result is not None
        entry.append(final_event(entry.last_id + 1, gen.result), final=True)
        entry.generation = None
        self._finished.append(entry.id)
        while len(self._finished) > MAX_FINISHED:
            self._forget(self._finished.popleft())

    def _viewer_joined(self, entry: GenerationLog) -> None:
        entry.viewers += 1
        if entry.expiry is not None:
            entry.expiry.cancel()
            entry.expiry = None

    def _viewer_left(self, entry: GenerationLog) -> None:
        entry.viewers -= 1
        if entry.viewers == 0:
            self._arm_expiry(entry)

    def _arm_expiry(self, entry: GenerationLog) -> None:
        loop = asyncio.get_running_loop()
        entry.expiry = loop.call_later(self.config.resume_window, self._expire, entry.id)

    def _expire(self, gen_id: str) -> None:
        entry = self.logs.get(gen_id)
        if entry is not None and entry.viewers == 0:
            if entry.generation is not None:
                log.info(
                    "generation %s: no viewer for %.0f s, cancelled",
                    gen_id,
                    self.config.resume_window,
                )
            self._forget(gen_id)

    def _forget(self, gen_id: str) -> None:
        entry = self.logs.pop(gen_id, None)
        if entry is None:
            return
        if entry.expiry is not None:
            entry.expiry.cancel()
        if entry.generation is not None:
            entry.generation.cancel()

    async def close(self) -> None:
        """Cancel every generation (at shutdown, after the server has drained)."""
        for gen_id in list(self.logs):
            self._forget(gen_id)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
