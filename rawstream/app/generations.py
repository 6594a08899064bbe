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

A generation belongs to the caller that created it (its :class:`Identity`, one per
API key; everyone is the same anonymous caller without keys). For anyone else its
events and its ``DELETE`` answer ``404`` exactly as an id that does not exist.

A viewer's cursor is the ``Last-Event-ID`` it sent, then the last id of what it was
written, never the log's newest id: a viewer whose socket is slow is still
writing while new events arrive, and gets them in its next write. A cursor that is
not 1 to :data:`MAX_ID_DIGITS` ASCII digits (empty is the start), or is past the
last event sent, is a ``400`` (code ``invalid_last_event_id``); a well-formed one
older than the oldest kept event is ``410 Gone``; one at the end of a finished
generation gets ``204 No Content``, which tells ``EventSource`` to stop reconnecting.

Nobody watching: a generation nobody follows costs an engine slot and helps no one,
so every generation has one timer, running only while it has no viewer:

* ``--unwatched-timeout`` (10 s) while it runs: started at the ``POST`` and again
  whenever its last viewer leaves. If nobody comes, the generation is cancelled;
  its log gets ``event: done`` with ``finish_reason: cancelled``. The chat page
  opens its ``EventSource`` milliseconds after the ``POST``, and a dropped
  ``EventSource`` reconnects after about 3 s, well inside the timeout.
* ``--resume-window`` (30 s) once it has finished (or was cancelled): how long its
  log stays available for ``Last-Event-ID`` after its last viewer left (or after
  it finished, if nobody was watching). Then the log is freed.
* ``--max-unwatched-generations`` (4): a caller may have at most this many running
  generations without a viewer (those being submitted included); one more gets
  ``429`` with ``Retry-After`` (when the first of them will be cancelled) and code
  ``too_many_unwatched_generations``, before the engine sees it.

Bounds (everything this module holds):

* ``logs``: the running generations, at most what the engine admits
  (``--parallel`` + ``--max-queue``; each holds an engine stream), plus the finished
  ones, at most ``--max-finished-generations``; the oldest finished one is freed first.
* each log: ``--replay-buffer-events`` events. A viewer that falls further behind
  than that ends with ``event: error`` (code ``events_expired``, no ``id``).
* ``_finished``: the ids of the finished logs, so at most ``--max-finished-generations``; an
  expired log leaves it at once.
* ``_pending``: one count per caller with a ``POST`` awaiting the engine, deleted
  at zero; each counted request holds a connection (``--max-connections``).
* timers: one per log, cancelled before it is re-armed and when the log is freed;
  the background tasks: one per running generation.
* viewers: a cursor and at most one log's worth of bytes each, one per
  connection (``--max-connections``), cut by ``--write-stall-timeout`` if they stop
  reading.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import re
from typing import TYPE_CHECKING

from rawstream.app.generation import Generation
from rawstream.app.openai_api import respond_error, submit_or_refuse
from rawstream.app.services import Services
from rawstream.engine.base import FinishReason, Result
from rawstream.sansio import tools
from rawstream.sansio.auth import Identity
from rawstream.sansio.openai import (
    APIError,
    error_for_result,
    refuse_beyond_text,
    usage_json,
)
from rawstream.server.exchange import Exchange

if TYPE_CHECKING:
    from rawstream.server.sse import SSEStream

log = logging.getLogger("rawstream")

#: The longest ``Last-Event-ID`` accepted: ids count events, 19 digits hold any int64.
MAX_ID_DIGITS = 19
_EVENT_ID = re.compile(f"[0-9]{{1,{MAX_ID_DIGITS}}}")


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

    def __init__(self, gen_id: str, owner: Identity, max_events: int) -> None:
        self.id = gen_id
        #: Who created it: nobody else can see it or cancel it.
        self.owner = owner
        self.events: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=max_events)
        self.last_id = 0
        self.finished = False
        self.viewers = 0
        #: The engine stream while it runs; ``None`` once the final event is in.
        self.generation: Generation | None = None
        #: The one timer of this generation: the unwatched timeout while it runs,
        #: the resume window once it has finished (``None`` while watched).
        self.expiry: asyncio.TimerHandle | None = None
        #: Set when the registry lets go of it (expired, evicted, shutdown).
        self.freed = asyncio.Event()
        self._changed: asyncio.Future[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the engine is still generating it."""
        return self.generation is not None

    def append(self, event: bytes, *, final: bool = False) -> None:
        """Add the next event (the caller encoded it with ``self.last_id + 1``)."""
        self.last_id += 1
        self.events.append((self.last_id, event))
        self.finished = final
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    def since(self, after: int) -> tuple[bytes, int]:
        """Every kept event with an id above ``after``, concatenated, and the last id in it.

        The id is the viewer's new cursor: events appended while the bytes are being
        written are not in them, so the cursor must not move past what they hold.
        Raises :class:`LookupError` if some of the events are no longer kept.
        """
        if not self.events or after >= self.last_id:
            return b"", after
        oldest = self.events[0][0]
        if after + 1 < oldest:
            raise LookupError(f"events {after + 1} to {oldest - 1} are no longer kept")
        events = self.events
        # Live viewers ask for the last few events: index from the end of the deque.
        data = b"".join(events[i][1] for i in range(after + 1 - oldest, len(events)))
        return data, self.last_id

    async def wait_change(self) -> None:
        """Wait for the next event."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._changed)


def parse_last_event_id(text: str) -> int:
    """The cursor a viewer sent: ``""`` is the start, anything but an id is a 400.

    This server's ids are counters from 1, written in decimal; so a well-formed
    ``Last-Event-ID`` is ASCII digits only (no sign, no space, no ``_``, none of the
    other digits Python's ``int()`` would accept) and at most :data:`MAX_ID_DIGITS`.
    """
    if not text:
        return 0
    if _EVENT_ID.fullmatch(text) is None:
        raise invalid_last_event_id(
            f"Last-Event-ID must be an event id: 1 to {MAX_ID_DIGITS} digits 0-9"
        )
    return int(text)


def invalid_last_event_id(message: str) -> APIError:
    """The 400 for a ``Last-Event-ID`` (header or ``?last_event_id=``) that is no id."""
    return APIError(400, message, param="Last-Event-ID", code="invalid_last_event_id")


def expired_event(message: str) -> bytes:
    """The last event of a viewer that fell further behind than the log keeps (no ``id``)."""
    error = APIError(410, message, code="events_expired")
    return b"event: error\ndata: " + error.body() + b"\n\n"


class Generations:
    """The registry of resumable generations (bounds in the module docstring)."""

    def __init__(self, app: Services) -> None:
        self.app = app
        self.config = app.config
        self.logs: dict[str, GenerationLog] = {}
        #: Ids of the finished generations still kept, oldest first (a dict: ordered,
        #: and an expired one leaves it at once).
        self._finished: dict[str, None] = {}
        #: Generations being submitted to the engine, per caller: they count as
        #: unwatched while ``engine.submit`` is awaited.
        self._pending: collections.Counter[Identity] = collections.Counter()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ endpoints
    async def create(self, exchange: Exchange, identity: Identity) -> None:
        """``POST /v1/generations``."""
        limit = self.config.max_messages
        request = await self.app.bodies.parse(
            exchange,
            lambda body: refuse_beyond_text(
                tools.parse_chat_completion(body, max_messages=limit), "/v1/generations"
            ),
        )
        refusal = self._unwatched_refusal(identity)
        if refusal is not None:
            await respond_error(exchange, *refusal)
            return
        self._pending[identity] += 1
        try:
            gen = await submit_or_refuse(self.app, exchange, request.generation)
        finally:
            self._pending[identity] -= 1
            if not self._pending[identity]:
                del self._pending[identity]
        if gen is None:
            return
        gen_id = "gen-" + os.urandom(12).hex()
        entry = GenerationLog(gen_id, identity, self.config.replay_buffer_events)
        entry.generation = gen
        self.logs[gen_id] = entry
        task = asyncio.get_running_loop().create_task(self._pump(entry, gen))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._arm(entry, self.config.unwatched_timeout)
        url = f"/v1/generations/{gen_id}/events"
        body = json.dumps({"id": gen_id, "events_url": url, "model": self.app.engine.model_name})
        await exchange.respond(201, body.encode(), [(b"location", url.encode())])

    async def events(self, exchange: Exchange, gen_id: str, identity: Identity) -> None:
        """``GET /v1/generations/{id}/events``."""
        entry = self._find(gen_id, identity)
        cursor = self._cursor(exchange, entry)
        if entry.finished and cursor == entry.last_id:
            await exchange.respond(204)  # EventSource: "no content" stops reconnecting
            return
        try:
            backlog, cursor = entry.since(cursor)
        except LookupError as exc:
            raise APIError(410, str(exc), code="events_expired") from None
        if exchange.request.method == "HEAD":
            # The headers of the GET and no body (RFC 9110 section 9.3.2): end the
            # response at once instead of following a stream nobody will read.
            await (await exchange.start_sse()).end()
            return
        # Join before the first await, so no timer can expire the generation while
        # the response head waits for a writable socket.
        self._viewer_joined(entry)
        try:
            sse = await exchange.start_sse(shutdown_event=SHUTDOWN_EVENT)
            await self._follow(sse, entry, backlog, cursor)
        finally:
            self._viewer_left(entry)

    async def cancel(self, exchange: Exchange, gen_id: str, identity: Identity) -> None:
        """``DELETE /v1/generations/{id}``: stop generating (viewers get the final event)."""
        entry = self._find(gen_id, identity)
        if entry.generation is not None:
            entry.generation.cancel()
        await exchange.respond(200, json.dumps({"id": gen_id, "cancelled": True}).encode())

    def _find(self, gen_id: str, identity: Identity) -> GenerationLog:
        """The caller's generation ``gen_id``; raises the 404 otherwise.

        Another caller's generation gets exactly the answer of one that does not
        exist, so ids cannot be probed.
        """
        entry = self.logs.get(gen_id)
        if entry is None or entry.owner != identity:
            raise APIError(404, f"no generation {gen_id!r}", code="not_found")
        return entry

    def _cursor(self, exchange: Exchange, entry: GenerationLog) -> int:
        """The viewer's ``Last-Event-ID`` (the header wins over ``?last_event_id=``).

        EventSource's own reconnection sends the header while the URL still holds the
        query parameter of the first request, and the header is the newer of the two.
        """
        raw = exchange.request.header(b"last-event-id")
        if raw is not None:
            text = raw.decode("latin-1")
        else:
            text = exchange.request.query_params().get("last_event_id", "")
        cursor = parse_last_event_id(text)
        if cursor > entry.last_id:
            raise invalid_last_event_id(
                f"Last-Event-ID {cursor} was never sent: the last event is {entry.last_id}"
            )
        return cursor

    async def _follow(
        self, sse: SSEStream, entry: GenerationLog, backlog: bytes, cursor: int
    ) -> None:
        """Write ``backlog``, then every event after ``cursor`` as it comes, then end."""
        while True:
            if backlog:
                await sse.send(backlog)  # may wait for a slow reader: events pile up
            if cursor == entry.last_id:
                if entry.finished:
                    await sse.end()
                    return
                await entry.wait_change()
            try:
                backlog, cursor = entry.since(cursor)
            except LookupError as exc:
                # This viewer reads slower than the log keeps events: say so and end
                # cleanly; resuming from its last id then gets 410 too.
                await sse.end(expired_event(f"this viewer fell behind: {exc}"))
                return

    def _unwatched_refusal(self, identity: Identity) -> tuple[APIError, float] | None:
        """The 429 and its Retry-After if ``identity`` runs its share of unwatched ones."""
        unwatched = [
            entry
            for entry in self.logs.values()
            if entry.running and not entry.viewers and entry.owner == identity
        ]
        count = len(unwatched) + self._pending[identity]
        limit = self.config.max_unwatched_generations
        if count < limit:
            return None
        # Retry-After: when the first of them is cancelled, if nobody comes to watch.
        now = asyncio.get_running_loop().time()
        waits = [entry.expiry.when() - now if entry.expiry else 0.0 for entry in unwatched]
        retry_after = min(waits, default=self.config.unwatched_timeout)
        error = APIError(
            429,
            f"{count} of your generations are running with nobody watching them (at most "
            f"{limit}): follow one at its events_url, cancel one, or retry later",
            type="rate_limit_error",
            code="too_many_unwatched_generations",
        )
        return error, retry_after

    # ------------------------------------------------------------------ lifecycle
    async def _pump(self, entry: GenerationLog, gen: Generation) -> None:
        async with gen:
            async for delta in gen:
                entry.append(token_event(entry.last_id + 1, delta.text))
        assert gen.result is not None
        entry.append(final_event(entry.last_id + 1, gen.result), final=True)
        entry.generation = None
        if entry.freed.is_set():
            return  # forgotten while running (shutdown)
        self._finished[entry.id] = None
        while len(self._finished) > self.config.max_finished_generations:
            self._forget(next(iter(self._finished)))
        if not entry.viewers:
            self._arm(entry, self.config.resume_window)

    def _viewer_joined(self, entry: GenerationLog) -> None:
        entry.viewers += 1
        if entry.expiry is not None:
            entry.expiry.cancel()
            entry.expiry = None

    def _viewer_left(self, entry: GenerationLog) -> None:
        entry.viewers -= 1
        if entry.viewers == 0 and not entry.freed.is_set():
            delay = self.config.unwatched_timeout if entry.running else self.config.resume_window
            self._arm(entry, delay)

    def _arm(self, entry: GenerationLog, delay: float) -> None:
        """(Re)start the one timer of an unwatched generation."""
        if entry.expiry is not None:
            entry.expiry.cancel()
        entry.expiry = asyncio.get_running_loop().call_later(delay, self._expire, entry)

    def _expire(self, entry: GenerationLog) -> None:
        """Nobody watched ``entry`` for the whole delay: cancel it, or free it if finished."""
        entry.expiry = None
        if entry.viewers or entry.freed.is_set():
            return
        if entry.generation is not None:
            log.info(
                "generation %s: nobody watched it for %g s, cancelled",
                entry.id,
                self.config.unwatched_timeout,
            )
            # The pump appends the final event and starts the resume window.
            entry.generation.cancel()
        else:
            self._forget(entry.id)

    def _forget(self, gen_id: str) -> None:
        entry = self.logs.pop(gen_id, None)
        self._finished.pop(gen_id, None)
        if entry is None:
            return
        if entry.expiry is not None:
            entry.expiry.cancel()
            entry.expiry = None
        if entry.generation is not None:
            entry.generation.cancel()
        entry.freed.set()

    async def close(self) -> None:
        """Cancel every generation (at shutdown, after the server has drained)."""
        for gen_id in list(self.logs):
            self._forget(gen_id)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
