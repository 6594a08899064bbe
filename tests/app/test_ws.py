"""``/v1/ws``: many generations over one WebSocket (docs/ws-protocol.md)."""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from rawstream.engine.base import FinishReason
from tests.app.conftest import TIMEOUT, FakeAppFactory

MESSAGES = [{"role": "user", "content": "hello there"}]


def generate(id: str | int, **extra: Any) -> str:
    return json.dumps({"type": "generate", "id": id, "messages": MESSAGES, **extra})


async def receive(ws: ClientConnection) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(message, str)
    value = json.loads(message)
    assert isinstance(value, dict)
    return value


class Streams:
    """What one connection received, per stream id."""

    def __init__(self) -> None:
        self.deltas: dict[Any, list[dict[str, Any]]] = collections.defaultdict(list)
        self.ends: dict[Any, dict[str, Any]] = {}
        self.order: list[tuple[str, Any]] = []

    def add(self, message: dict[str, Any]) -> None:
        key = message["id"]
        assert key not in self.ends, f"message after the end of stream {key!r}: {message}"
        self.order.append((message["type"], key))
        if message["type"] == "delta":
            self.deltas[key].append(message)
        else:
            self.ends[key] = message

    def text(self, key: Any) -> str:
        return "".join(d["text"] for d in self.deltas[key])

    def check_seq(self, key: Any) -> None:
        assert [d["seq"] for d in self.deltas[key]] == list(range(len(self.deltas[key])))


async def test_four_streams_one_cancelled(fake_app: FakeAppFactory) -> None:
    async with fake_app(fake_tokens_per_s=100.0) as running:
        async with connect(running.ws_url, subprotocols=["rawstream"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "rawstream"
            await ws.send(generate("a", max_tokens=20))
            await ws.send(generate(2, max_tokens=25))
            await ws.send(generate("c"))  # no max_tokens: the fake ends with stop
            await ws.send(generate("long", max_tokens=1500))
            got = Streams()
            cancelled = False
            while len(got.ends) < 4:
                message = await receive(ws)
                got.add(message)
                if not cancelled and len(got.deltas["long"]) == 3:
                    await ws.send(json.dumps({"type": "cancel", "id": "long"}))
                    cancelled = True
            assert cancelled
            for key in ("a", 2, "c", "long"):
                got.check_seq(key)
                assert got.ends[key]["type"] == "done", got.ends[key]
            assert got.ends["a"]["finish_reason"] == "length"
            assert got.ends[2]["finish_reason"] == "length"
            assert got.ends["c"]["finish_reason"] == "stop"
            assert got.ends["long"]["finish_reason"] == "cancelled"
            assert len(got.text("a").split()) == 20
            assert got.ends["a"]["usage"]["completion_tokens"] == 20
            assert len(got.text(2).split()) == 25
            assert got.ends[2]["id"] == 2  # the id keeps its JSON type
            assert got.ends["long"]["usage"]["completion_tokens"] < 1500
            # The connection is still usable: a ping, and the id "a" can be reused.
            await ws.send(json.dumps({"type": "ping"}))
            assert await receive(ws) == {"type": "pong"}
            await ws.send(generate("a", max_tokens=2))
            again = Streams()
            while "a" not in again.ends:
                again.add(await receive(ws))
            assert again.ends["a"]["finish_reason"] == "length"
        stats = running.engine.statistics()
        assert stats.cancelled_total == 1


async def test_short_stream_is_not_held_up_by_a_long_fast_one(fake_app: FakeAppFactory) -> None:
    # Fast tokens and a small buffer: the long stream needs hundreds of engine
    # steps, each bounded by its buffer, while the short one needs very few.
    async with fake_app(fake_tokens_per_s=5000.0, stream_buffer_tokens=4) as running:
        engine = running.engine
        async with connect(running.ws_url) as ws:
            await ws.send(generate("long", max_tokens=2000))
            await ws.send(generate("short", max_tokens=3))
            got = Streams()
            while "short" not in got.ends:
                got.add(await receive(ws))
            assert got.ends["short"]["finish_reason"] == "length"
            assert got.text("short").count(" ") == 2
            long_stream = engine.streams[0]
            assert long_stream.result is None, "the long stream should still be running"
            assert "long" not in got.ends
            await ws.send(json.dumps({"type": "cancel", "id": "long"}))
            while "long" not in got.ends:
                got.add(await receive(ws))
            assert got.ends["long"]["finish_reason"] == "cancelled"
            got.check_seq("long")


async def test_per_stream_errors_keep_the_connection(fake_app: FakeAppFactory) -> None:
    async with (
        fake_app(fake_tokens_per_s=50.0, ws_max_streams=2) as running,
        connect(running.ws_url) as ws,
    ):
        await ws.send(generate("bad", temperature=5))
        error = await receive(ws)
        assert error["type"] == "error" and error["id"] == "bad"
        assert error["error"]["param"] == "temperature"
        assert error["error"]["code"] == "invalid_value"

        await ws.send(generate("x", max_tokens=10))
        await ws.send(generate("x", max_tokens=10))  # x is live: duplicate
        await ws.send(generate("y", max_tokens=1000))
        await ws.send(generate("z", max_tokens=5))  # over ws_max_streams=2
        await ws.send(json.dumps({"type": "subscribe", "id": "doc"}))
        await ws.send(json.dumps({"type": "cancel", "id": "never-started"}))  # ignored
        got = Streams()
        errors: dict[str, dict[str, Any]] = {}  # by code
        wanted = {"duplicate_id", "too_many_streams", "unknown_message_type"}
        while "x" not in got.ends or wanted - set(errors):
            message = await receive(ws)
            if message["type"] == "error":
                errors[message["error"]["code"]] = message
            else:
                got.add(message)
        assert set(errors) == wanted
        # x carried on after the duplicate and ended with its own done
        assert got.ends["x"]["type"] == "done"
        assert got.ends["x"]["finish_reason"] == "length"
        assert len(got.text("x").split()) == 10
        got.check_seq("x")
        assert errors["duplicate_id"]["id"] == "x"
        assert errors["too_many_streams"]["id"] == "z"
        assert errors["unknown_message_type"]["id"] == "doc"
        await ws.send(json.dumps({"type": "cancel", "id": "y"}))
        while "y" not in got.ends:
            got.add(await receive(ws))
        assert got.ends["y"]["finish_reason"] == "cancelled"
        assert "z" not in got.deltas


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (b"\x00\x01", 1003),
        ("not json", 1008),
        ("[1, 2]", 1008),
        ('{"id": 1}', 1008),
        ('{"type": "generate", "messages": []}', 1008),
    ],
)
async def test_violations_close_with_their_code(
    fake_app: FakeAppFactory, message: str | bytes, code: int
) -> None:
    async with fake_app() as running, connect(running.ws_url) as ws:
        await ws.send(generate("live", max_tokens=1000))
        assert (await receive(ws))["type"] == "delta"
        await ws.send(message)
        with pytest.raises(ConnectionClosedError) as caught:
            while True:
                await receive(ws)
        assert caught.value.rcvd is not None
        assert caught.value.rcvd.code == code
        # the closed connection's stream is cancelled with it
        (stream,) = running.engine.streams
        result = await asyncio.wait_for(running.engine.ended(stream), TIMEOUT)
        assert result.finish_reason is FinishReason.CANCELLED
        assert running.app.server.statistics().ws_close_codes_total.get(code, 0) >= 1


async def test_disconnect_cancels_every_stream(fake_app: FakeAppFactory) -> None:
    async with fake_app(fake_tokens_per_s=50.0) as running:
        engine = running.engine
        async with connect(running.ws_url) as ws:
            for key in range(3):
                await ws.send(generate(key, max_tokens=1000))
            seen: set[int] = set()
            while len(seen) < 3:
                seen.add((await receive(ws))["id"])
        for stream in engine.streams:
            result = await asyncio.wait_for(engine.ended(stream), TIMEOUT)
            assert result.finish_reason is FinishReason.CANCELLED
        assert engine.statistics().cancelled_total == 3


async def test_auth_with_the_bearer_subprotocol(fake_app: FakeAppFactory) -> None:
    async with fake_app(api_key=("k1",)) as running:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(running.ws_url, subprotocols=["rawstream"]):  # type: ignore[list-item]
                pass
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as wrong:
            async with connect(
                running.ws_url,
                subprotocols=["rawstream", "bearer.k2"],  # type: ignore[list-item]
            ):
                pass
        assert wrong.value.response.status_code == 401
        async with connect(
            running.ws_url,
            subprotocols=["rawstream", "bearer.k1"],  # type: ignore[list-item]
        ) as ws:
            assert ws.subprotocol == "rawstream"  # the key is never echoed
            await ws.send(generate(1, max_tokens=3))
            got = Streams()
            while 1 not in got.ends:
                got.add(await receive(ws))
            assert got.ends[1]["finish_reason"] == "length"
        async with connect(running.ws_url, additional_headers={"Authorization": "Bearer k1"}) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            assert await receive(ws) == {"type": "pong"}


async def test_engine_overload_is_a_stream_error(fake_app: FakeAppFactory) -> None:
    async with (
        fake_app(parallel=1, max_queue=0, fake_tokens_per_s=20.0) as running,
        connect(running.ws_url) as ws,
    ):
        await ws.send(generate("first", max_tokens=1000))
        await ws.send(generate("second", max_tokens=5))
        got = Streams()
        error: dict[str, Any] | None = None
        while error is None:
            message = await receive(ws)
            if message["type"] == "error":
                error = message
            else:
                got.add(message)
        assert error["id"] == "second"
        assert error["error"]["code"] == "overloaded"
        assert "second" not in got.deltas
        await ws.send(json.dumps({"type": "cancel", "id": "first"}))
        while "first" not in got.ends:
            got.add(await receive(ws))
        assert got.ends["first"]["finish_reason"] == "cancelled"
        # the id of the refused stream is free again
        await ws.send(generate("second", max_tokens=2))
        while "second" not in got.ends:
            got.add(await receive(ws))
        assert got.ends["second"]["finish_reason"] == "length"
