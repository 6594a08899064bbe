"""Resumable generations under pressure: slow viewers, other callers, abandoned work, bad ids.

Each test drives the real app on a loopback port (the fake engine stands in for the
model). The slow viewers are raw sockets with a tiny receive buffer that stop
reading, so the server's writes back up exactly as they would for a phone on a bad
network.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import h11
import httpx
import httpx_sse
import pytest

from rawstream.app.generations import GenerationLog
from rawstream.engine.base import FinishReason
from rawstream.sansio.sse import ServerSentEvent, SSEParser
from tests.app.conftest import TIMEOUT, FakeAppFactory, RunningApp
from tests.app.test_generations import BODY, client_for, create, text_of, view

KEY_A = {"Authorization": "Bearer key-a"}
KEY_B = {"Authorization": "Bearer key-b"}


def client_with(running: RunningApp, headers: dict[str, str]) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT, headers=headers)


async def wait_for_events(entry: GenerationLog, last_id: int) -> None:
    """Wait until the generation's log holds event ``last_id``."""
    async with asyncio.timeout(TIMEOUT):
        while entry.last_id < last_id:
            await entry.wait_change()


async def wait_freed(entry: GenerationLog) -> None:
    """Wait until the registry has let go of ``entry``."""
    await asyncio.wait_for(entry.freed.wait(), TIMEOUT)


# ------------------------------------------------------------------ a slow viewer
@dataclass
class SlowViewer:
    """An SSE client on a raw socket that reads only when told to.

    The receive buffer is set before ``connect()`` (so TCP's window is chosen for
    it) and the stream reader's limit is small: while the test reads nothing, the
    server's writes back up after a few kilobytes.
    """

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def open(cls, port: int, target: str, rcvbuf: int = 2048) -> SlowViewer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        return cls(reader, writer)

    async def read_all(self) -> tuple[int, list[ServerSentEvent]]:
        """Read the whole response: its status and its events (fails on a cut body)."""
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        parser = SSEParser()
        events: list[ServerSentEvent] = []
        status = 0
        async with asyncio.timeout(TIMEOUT):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await self.reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    events += parser.feed(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    return status, events
                else:
                    raise AssertionError(f"the response ended with {event}")

    def close(self) -> None:
        self.writer.close()


def messages(events: list[ServerSentEvent]) -> Iterator[ServerSentEvent]:
    return (e for e in events if e.event == "message")


#: A fast fake model with big events (hundreds of tokens each, about 3 KB) and a
#: small write buffer: the socket buffers between the server and a slow viewer
#: (about 150 KB once TCP has sized them) fill within a few dozen events.
FAST = {
    "fake_tokens_per_s": 100_000.0,
    "stream_buffer_tokens": 1000,
    "write_high_water": 1024,
    "ctx_per_slot": 1_000_000,
}
#: Events appended while the slow viewer reads nothing (about 800 KB).
BACKLOG = 250
#: Tokens of the generation: it is still running after BACKLOG events.
TOKENS = 300_000


async def test_a_slow_viewer_gets_every_event_exactly_once(fake_app: FakeAppFactory) -> None:
    async with (
        fake_app(**FAST, replay_buffer_events=16384) as running,
        client_for(running) as client,
    ):
        gen_id = await create(client, max_tokens=TOKENS)
        entry = running.app.generations.logs[gen_id]
        viewer = await SlowViewer.open(running.port, f"/v1/generations/{gen_id}/events")
        try:
            # The viewer reads nothing while the generation runs far ahead of it...
            await wait_for_events(entry, BACKLOG)
            # ...so the server is waiting for its socket to drain (the premise).
            assert running.app.server.paused_writers == 1
            assert not entry.finished
            status, events = await viewer.read_all()
        finally:
            viewer.close()
        assert status == 200
        ids = [int(e.id) for e in events]
        assert ids == list(range(1, entry.last_id + 1))
        assert events[-1].event == "done"
        replay = await view(client, gen_id)
        assert [e.id for e in replay] == [e.id for e in events]
        assert "".join(json.loads(e.data)["text"] for e in messages(events)) == text_of(replay)
        assert len(text_of(replay).split()) == TOKENS


async def test_a_viewer_left_behind_the_buffer_gets_an_error_event(
    fake_app: FakeAppFactory,
) -> None:
    """A viewer slower than the log is bounded ends cleanly with ``events_expired``."""
    async with (
        fake_app(**FAST, replay_buffer_events=64) as running,
        client_for(running) as client,
    ):
        gen_id = await create(client, max_tokens=TOKENS)
        entry = running.app.generations.logs[gen_id]
        viewer = await SlowViewer.open(running.port, f"/v1/generations/{gen_id}/events")
        try:
            await wait_for_events(entry, BACKLOG)
            assert running.app.server.paused_writers == 1
            status, events = await viewer.read_all()
        finally:
            viewer.close()
        assert status == 200
        *delivered, last = events
        assert [int(e.id) for e in delivered] == list(range(1, len(delivered) + 1))
        assert last.event == "error"
        assert last.id == delivered[-1].id  # it carries no id of its own
        error = json.loads(last.data)["error"]
        assert error["code"] == "events_expired"
        # The generation itself went on for everyone else.
        assert running.app.generations.logs[gen_id] is entry


# ------------------------------------------------------------------ scoped to the caller
async def test_another_key_cannot_see_or_cancel_a_generation(fake_app: FakeAppFactory) -> None:
    async with (
        fake_app(api_key=("key-a", "key-b"), fake_tokens_per_s=100.0) as running,
        client_with(running, KEY_A) as alice,
        client_with(running, KEY_B) as bob,
    ):
        gen_id = await create(alice, max_tokens=40)
        unknown = "gen-" + "0" * 24
        for method, suffix in (("GET", "/events"), ("HEAD", "/events"), ("DELETE", "")):
            theirs = await bob.request(method, f"/v1/generations/{gen_id}{suffix}")
            missing = await bob.request(method, f"/v1/generations/{unknown}{suffix}")
            assert theirs.status_code == missing.status_code == 404, method
            # Byte for byte the answer for an id that does not exist: no oracle.
            assert theirs.content.replace(gen_id.encode(), unknown.encode()) == missing.content
            assert theirs.headers.keys() == missing.headers.keys()
        # The key in the query string (EventSource) is scoped the same way.
        response = await bob.get(
            f"/v1/generations/{gen_id}/events?api_key=key-b", headers={"Authorization": ""}
        )
        assert response.status_code == 404
        # Bob's DELETE did nothing: Alice reads her generation to its natural end.
        events = await view(alice, gen_id)
        assert json.loads(events[-1].data)["finish_reason"] == "length"
        assert len(text_of(events).split()) == 40
        assert running.engine.statistics().cancelled_total == 0
        assert (await alice.delete(f"/v1/generations/{gen_id}")).status_code == 200


# ------------------------------------------------------------------ unwatched generations
async def test_unwatched_generations_are_capped_per_caller(fake_app: FakeAppFactory) -> None:
    async with (
        fake_app(
            api_key=("key-a", "key-b"),
            max_unwatched_generations=2,
            unwatched_timeout=20.0,
            fake_tokens_per_s=20.0,
        ) as running,
        client_with(running, KEY_A) as alice,
        client_with(running, KEY_B) as bob,
    ):
        first = await create(alice, max_tokens=1000)
        await create(alice, max_tokens=1000)
        refused = await alice.post("/v1/generations", json={**BODY, "max_tokens": 1000})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= math.ceil(20.0)
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error"
        assert error["code"] == "too_many_unwatched_generations"
        assert len(running.engine.streams) == 2  # refused before the engine saw it
        # Another caller is not affected by Alice's generations.
        await create(bob, max_tokens=1000)
        # A generation somebody watches does not count: follow the first one.
        async with httpx_sse.aconnect_sse(
            alice, "GET", f"/v1/generations/{first}/events"
        ) as source:
            await anext(source.aiter_sse())
            await create(alice, max_tokens=1000)
            again = await alice.post("/v1/generations", json={**BODY, "max_tokens": 1000})
            assert again.status_code == 429
        assert len(running.engine.streams) == 4


async def test_unwatched_generation_is_cancelled_and_watched_one_is_not(
    fake_app: FakeAppFactory,
) -> None:
    # Long enough for a viewer to arrive after its POST even on a loaded machine;
    # the watched generation lasts three of these.
    timeout = 1.0
    async with (
        fake_app(fake_tokens_per_s=100.0, unwatched_timeout=timeout) as running,
        client_for(running) as client,
        client_for(running) as watcher,
    ):
        watched = await create(client, max_tokens=300)
        following = asyncio.create_task(view(watcher, watched))
        never_watched = await create(client, max_tokens=2000)
        abandoned = await create(client, max_tokens=2000)
        seen = await view(client, abandoned, stop_after=2)
        never_stream, abandoned_stream = running.engine.streams[1:3]
        for stream in (never_stream, abandoned_stream):
            result = await asyncio.wait_for(running.engine.ended(stream), TIMEOUT)
            assert result.finish_reason is FinishReason.CANCELLED
        # The watched one ran to its end.
        events = await asyncio.wait_for(following, TIMEOUT)
        assert json.loads(events[-1].data)["finish_reason"] == "length"
        assert len(text_of(events).split()) == 300
        # A viewer coming back within --resume-window still gets the rest, and the end.
        rest = await view(client, abandoned, last_event_id=int(seen[-1].id))
        assert [e.id for e in seen + rest] == [str(i) for i in range(1, len(rest) + 3)]
        assert rest[-1].event == "done"
        assert json.loads(rest[-1].data)["finish_reason"] == "cancelled"
        assert never_watched in running.app.generations.logs


# ------------------------------------------------------------------ malformed Last-Event-ID
BAD_IDS = ["-1", "abc", "1.5", "+3", "1_0", "0x10", "\u0663", "9" * 20, "1" * 5000]


@pytest.mark.parametrize("where", ["header", "query"])
async def test_malformed_last_event_id_is_400(fake_app: FakeAppFactory, where: str) -> None:
    async with fake_app(replay_buffer_events=2) as running, client_for(running) as client:
        gen_id = await create(client, max_tokens=20)
        last = int((await view(client, gen_id))[-1].id)
        assert last >= 4  # (a delta may carry several tokens)
        url = f"/v1/generations/{gen_id}/events"

        async def get(value: str) -> httpx.Response:
            if where == "header":
                return await client.get(url, headers={"Last-Event-ID": value.encode()})
            return await client.get(url, params={"last_event_id": value})

        # Malformed, or an id this generation never sent: the request is wrong.
        for value in [*BAD_IDS, str(last + 1), "123456789"]:
            response = await get(value)
            assert response.status_code == 400, value
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error"
            assert error["param"] == "Last-Event-ID"
            assert error["code"] == "invalid_last_event_id"
        # Well formed but older than the two kept events: gone.
        response = await get(str(last - 3))
        assert response.status_code == 410
        assert response.json()["error"]["code"] == "events_expired"
        assert (await get(str(last - 2))).status_code == 200
        assert (await get(str(last))).status_code == 204


# ------------------------------------------------------------------ bounded state
async def test_finished_generations_are_freed_and_leave_nothing_behind(
    fake_app: FakeAppFactory,
) -> None:
    async with fake_app(resume_window=0.2) as running, client_for(running) as client:
        generations = running.app.generations
        entries = []
        for _ in range(3):
            gen_id = await create(client, max_tokens=3)
            entries.append(generations.logs[gen_id])
            await view(client, gen_id)
        for entry in entries:
            await wait_freed(entry)
            assert entry.expiry is None
        assert generations.logs == {}
        assert not generations._finished
        assert not generations._pending


async def test_finished_generations_kept_are_capped(fake_app: FakeAppFactory) -> None:
    async with fake_app(max_finished_generations=2) as running, client_for(running) as client:
        ids = []
        for _ in range(3):
            ids.append(await create(client, max_tokens=2))
            await view(client, ids[-1])
        assert list(running.app.generations.logs) == ids[1:]
        assert (await client.get(f"/v1/generations/{ids[0]}/events")).status_code == 404


#: The parameters schema of a function that takes none.
OBJECT = {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": OBJECT}}]},
            "tools",
        ),
    ],
)
async def test_what_events_cannot_carry_is_refused(
    fake_app: FakeAppFactory, extra: dict[str, object], param: str
) -> None:
    """Generation events hold text: logprobs or tool calls asked for there are a 400."""
    async with fake_app() as running, client_for(running) as client:
        body = {"messages": [{"role": "user", "content": "hi"}], **extra}
        response = await client.post("/v1/generations", json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["param"], error["code"]) == (param, "unsupported_parameter")
        assert running.engine.requests == []
