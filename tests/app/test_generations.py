"""Resumable generations: ``POST /v1/generations`` and its SSE events with ``Last-Event-ID``."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import httpx
import httpx_sse

from rawstream.engine.base import FinishReason
from tests.app.conftest import TIMEOUT, FakeAppFactory, RunningApp

BODY = {"messages": [{"role": "user", "content": "a long story please"}]}


@dataclass(frozen=True)
class Event:
    id: str
    event: str
    data: str

    @property
    def text(self) -> str:
        return str(json.loads(self.data)["text"])


async def create(client: httpx.AsyncClient, **extra: Any) -> str:
    response = await client.post("/v1/generations", json={**BODY, **extra})
    assert response.status_code == 201, response.text
    gen_id = response.json()["id"]
    assert response.headers["location"] == f"/v1/generations/{gen_id}/events"
    return str(gen_id)


async def view(
    client: httpx.AsyncClient, gen_id: str, last_event_id: int | None = None, stop_after: int = 0
) -> list[Event]:
    """Read the events (all of them, or ``stop_after`` and then drop the connection)."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    events: list[Event] = []
    async with httpx_sse.aconnect_sse(
        client, "GET", f"/v1/generations/{gen_id}/events", headers=headers
    ) as source:
        assert source.response.status_code == 200
        async for sse in source.aiter_sse():
            events.append(Event(sse.id, sse.event, sse.data))
            if len(events) == stop_after:
                break
    return events


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if e.event == "message")


def client_for(running: RunningApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT)


async def test_resume_gets_exactly_the_missed_events(fake_app: FakeAppFactory) -> None:
    # 30 tokens at 20 per second: at least 1.5 s, so the drop and the resume
    # happen while the generation runs, even on a loaded machine.
    async with fake_app(fake_tokens_per_s=20.0) as running, client_for(running) as client:
        gen_id = await create(client, max_tokens=30)
        async with client_for(running) as watcher, client_for(running) as second:
            uninterrupted = asyncio.create_task(view(watcher, gen_id))
            other = asyncio.create_task(view(second, gen_id))
            # A viewer on its own connection drops after 5 events...
            async with client_for(running) as dropping:
                first_part = await view(dropping, gen_id, stop_after=5)
            # ...and the generation is still running when it comes back.
            assert running.app.generations.logs[gen_id].finished is False
            async with client_for(running) as resuming:
                rest = await view(resuming, gen_id, last_event_id=int(first_part[-1].id))
            full = await asyncio.wait_for(uninterrupted, TIMEOUT)
            assert await asyncio.wait_for(other, TIMEOUT) == full

        resumed = first_part + rest
        assert [e.id for e in resumed] == [str(i) for i in range(1, len(resumed) + 1)]
        assert resumed == full
        assert text_of(resumed) == text_of(full)
        assert len(text_of(full).split()) == 30
        final = full[-1]
        assert final.event == "done"
        assert json.loads(final.data)["finish_reason"] == "length"
        assert json.loads(final.data)["usage"]["completion_tokens"] == 30

        # After the final event there is nothing more: 204 stops EventSource.
        response = await client.get(
            f"/v1/generations/{gen_id}/events", headers={"Last-Event-ID": final.id}
        )
        assert response.status_code == 204
        # A late viewer from the start gets the whole replay, from the buffer.
        assert await view(client, gen_id) == full
        # ?last_event_id= works too (for clients that cannot set headers).
        last = int(final.id)
        response = await client.get(f"/v1/generations/{gen_id}/events?last_event_id={last - 2}")
        assert response.status_code == 200
        ids = [line for line in response.text.splitlines() if line.startswith("id:")]
        assert ids == [f"id: {last - 1}", f"id: {last}"]


async def test_unknown_and_malformed(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running, client_for(running) as client:
        for method in ("GET", "DELETE"):
            path = "/v1/generations/gen-nope" + ("/events" if method == "GET" else "")
            response = await client.request(method, path)
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
        gen_id = await create(client, max_tokens=3)
        response = await client.get(
            f"/v1/generations/{gen_id}/events", headers={"Last-Event-ID": "abc"}
        )
        assert response.status_code == 400
        response = await client.post("/v1/generations", json={"messages": []})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "messages"


async def test_delete_cancels_and_viewers_see_done_cancelled(fake_app: FakeAppFactory) -> None:
    async with fake_app(fake_tokens_per_s=50.0) as running, client_for(running) as client:
        gen_id = await create(client, max_tokens=1000)
        events: list[Event] = []
        async with httpx_sse.aconnect_sse(
            client, "GET", f"/v1/generations/{gen_id}/events"
        ) as source:
            async for sse in source.aiter_sse():
                events.append(Event(sse.id, sse.event, sse.data))
                if len(events) == 3:
                    async with client_for(running) as other:
                        response = await other.delete(f"/v1/generations/{gen_id}")
                    assert response.status_code == 200
                    assert response.json() == {"id": gen_id, "cancelled": True}
        final = events[-1]
        assert final.event == "done"
        body = json.loads(final.data)
        assert body["finish_reason"] == "cancelled"
        assert body["usage"]["completion_tokens"] < 1000
        assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
        (stream,) = running.engine.streams
        result = await asyncio.wait_for(running.engine.ended(stream), TIMEOUT)
        assert result.finish_reason is FinishReason.CANCELLED
        assert running.engine.statistics().cancelled_total == 1


async def test_unwatched_generations_are_cancelled_then_freed(fake_app: FakeAppFactory) -> None:
    """Nobody watching: cancelled after --unwatched-timeout, freed --resume-window later."""
    async with fake_app(
        fake_tokens_per_s=50.0, unwatched_timeout=0.5, resume_window=0.5
    ) as running:
        generations = running.app.generations
        async with client_for(running) as client:
            never_watched = await create(client, max_tokens=1000)
            abandoned = await create(client, max_tokens=1000)
            seen = await view(client, abandoned, stop_after=2)
            assert [e.id for e in seen] == ["1", "2"]
        entries = [generations.logs[never_watched], generations.logs[abandoned]]
        for stream in running.engine.streams:
            result = await asyncio.wait_for(running.engine.ended(stream), TIMEOUT)
            assert result.finish_reason is FinishReason.CANCELLED
        for entry in entries:
            await asyncio.wait_for(entry.freed.wait(), TIMEOUT)
        assert never_watched not in generations.logs
        assert abandoned not in generations.logs
        assert running.engine.statistics().busy_slots == 0
        async with client_for(running) as client:
            response = await client.get(f"/v1/generations/{abandoned}/events")
            assert response.status_code == 404


async def test_viewer_that_stays_keeps_the_generation_alive(fake_app: FakeAppFactory) -> None:
    """The timeouts only count while nobody watches: a long viewer outlives them."""
    async with fake_app(
        fake_tokens_per_s=50.0, unwatched_timeout=0.2, resume_window=0.2
    ) as running:
        async with client_for(running) as client:
            gen_id = await create(client, max_tokens=40)  # 0.8 s: 4 windows long
            events = await view(client, gen_id)
        assert events[-1].event == "done"
        assert json.loads(events[-1].data)["finish_reason"] == "length"
        assert len(text_of(events).split()) == 40


async def test_head_answers_at_once_and_keeps_the_connection(fake_app: FakeAppFactory) -> None:
    async with fake_app(fake_tokens_per_s=20.0) as running, client_for(running) as client:
        gen_id = await create(client, max_tokens=1000)
        head = await client.head(f"/v1/generations/{gen_id}/events")
        assert head.status_code == 200
        assert head.headers["content-type"].startswith("text/event-stream")
        # the same keep-alive connection answers the next request
        health = await client.get("/health")
        assert health.status_code == 200
        assert running.app.server.statistics().accepted_total == 1
        assert running.app.generations.logs[gen_id].viewers == 0


async def test_key_in_the_query_and_last_event_id(fake_app: FakeAppFactory) -> None:
    """EventSource sends the key as ``?api_key=``; the resume parameter still works."""
    async with fake_app(api_key=("k1",)) as running, client_for(running) as client:
        auth = {"Authorization": "Bearer k1"}
        response = await client.post(
            "/v1/generations", json={**BODY, "max_tokens": 5}, headers=auth
        )
        gen_id = response.json()["id"]
        url = f"/v1/generations/{gen_id}/events"
        assert (await client.get(url)).status_code == 401
        full = await client.get(url + "?api_key=k1")
        ids = [line for line in full.text.splitlines() if line.startswith("id:")]
        last = int(ids[-1].removeprefix("id: "))
        tail = await client.get(f"{url}?api_key=k1&last_event_id={last - 1}")
        assert [line for line in tail.text.splitlines() if line.startswith("id:")] == [ids[-1]]
