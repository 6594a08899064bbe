"""``/v1/ws``: one stream's failure, a reused id, and peer close codes stay contained.

* An unexpected exception while one stream starts, runs or is encoded ends that
  stream alone with an ``error`` (``internal_error``); the socket and the other
  streams carry on, and the failure is logged once with its traceback.
* An id is live until its ``done`` or ``error`` is on the wire: a ``generate`` that
  reuses it while that last message still waits for a slow client is a duplicate,
  and a cancel after the reuse reaches the stream that holds the id.
* ``rawstream_websocket_close_codes_total`` has one series per registered code and
  one per range of the codes a peer picks (3000-3999, 4000-4999).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from wsproto.events import TextMessage

from rawstream.app.application import App
from rawstream.config import Config
from rawstream.engine.base import Delta, FinishReason, GenerationRequest, GenerationStream, Result
from tests.app.conftest import TIMEOUT, RunningApp, SpyEngine, run_app
from tests.app.test_metrics import samples
from tests.app.test_ws import Streams, generate, receive
from tests.server.apps import WSClient

#: Markers in a request's message content that make :class:`FaultyEngine` misbehave.
FAIL_AT_SUBMIT = "fail-at-submit"
FAIL_MIDWAY = "fail-midway"
HUGE_DELTA = "huge-delta"
#: A delta far larger than the kernel's socket buffers: writing it pauses writes.
HUGE = 16 << 20


class _Wrapped(GenerationStream):
    """An engine stream whose deltas a test rewrites (or breaks)."""

    def __init__(self, inner: GenerationStream, marker: str) -> None:
        self.inner = inner
        self.marker = marker
        self.id = inner.id
        self.prompt_tokens = inner.prompt_tokens
        #: Set when the consumer asks for the delta after the first one.
        self.asked_again = asyncio.Event()

    @property
    def result(self) -> Result | None:
        return self.inner.result

    def cancel(self) -> None:
        self.inner.cancel()

    async def wait_result(self) -> Result:
        return await self.inner.wait_result()

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[Delta]:
        first = True
        async for delta in self.inner:
            if not first:
                yield delta
                continue
            first = False
            if self.marker == FAIL_MIDWAY:
                yield delta
                raise RuntimeError("the stream broke")
            if self.marker == HUGE_DELTA:
                yield replace(delta, text="x" * HUGE)
                self.asked_again.set()
            else:
                yield delta


class FaultyEngine(SpyEngine):
    """A :class:`SpyEngine` that fails the requests whose content names a marker."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        #: The streams it rewrites, in order.
        self.wrapped: list[_Wrapped] = []

    async def submit(self, request: GenerationRequest) -> GenerationStream:
        content = request.messages[-1].content if request.messages else ""
        if FAIL_AT_SUBMIT in content:
            raise RuntimeError("the engine broke at submit")
        stream = await super().submit(request)
        for marker in (FAIL_MIDWAY, HUGE_DELTA):
            if marker in content:
                self.wrapped.append(_Wrapped(stream, marker))
                return self.wrapped[-1]
        return stream


@contextlib.asynccontextmanager
async def faulty_app(**overrides: object) -> AsyncIterator[RunningApp]:
    config = Config(port=0, engine="fake", fake_tokens_per_s=200.0, access_log=False).replace(
        **overrides
    )
    engine = FaultyEngine(config)
    async with run_app(App(config, engine=engine)) as app:
        yield RunningApp(app, engine)


def ask(id: str | int, content: str, **extra: Any) -> str:
    return json.dumps(
        {"type": "generate", "id": id, "messages": [{"role": "user", "content": content}], **extra}
    )


# --- per-stream failures ------------------------------------------------------------


@pytest.mark.parametrize("content", [FAIL_AT_SUBMIT, FAIL_MIDWAY])
async def test_an_unexpected_error_fails_one_stream_only(
    content: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with faulty_app(fake_tokens_per_s=50.0) as running, connect(running.ws_url) as ws:
        await ws.send(ask("ok", "hello", max_tokens=30))
        got = Streams()
        got.add(await receive(ws))  # "ok" runs before the other fails
        with caplog.at_level(logging.ERROR, logger="rawstream"):
            await ws.send(ask("bad", content, max_tokens=30))
            while len(got.ends) < 2:
                got.add(await receive(ws))
        assert got.ends["bad"]["type"] == "error"
        assert got.ends["bad"]["error"]["type"] == "server_error"
        assert got.ends["bad"]["error"]["code"] == "internal_error"
        assert got.ends["ok"]["type"] == "done"
        assert got.ends["ok"]["finish_reason"] == "length"
        assert len(got.text("ok").split()) == 30
        got.check_seq("ok")
        # The socket carries on: a ping, and the id is free again.
        await ws.send(json.dumps({"type": "ping"}))
        assert await receive(ws) == {"type": "pong"}
        await ws.send(ask("bad", "hello again", max_tokens=2))
        again = Streams()
        while "bad" not in again.ends:
            again.add(await receive(ws))
        assert again.ends["bad"]["finish_reason"] == "length"
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert failures[0].exc_info is not None
    assert "broke" in str(failures[0].exc_info[1])
    assert running.app.server.statistics().ws_close_codes_total.get(1011, 0) == 0


async def test_lone_surrogate_in_content_fails_that_stream_not_the_socket() -> None:
    """``"\\ud800"`` cannot be encoded as UTF-8: whichever layer refuses it, only
    its own stream ends, with an ``error``."""
    async with faulty_app(fake_tokens_per_s=50.0) as running, connect(running.ws_url) as ws:
        await ws.send(ask("ok", "hello", max_tokens=20))
        assert (await receive(ws))["id"] == "ok"
        await ws.send(ask("bad", "a lone \ud800 surrogate", max_tokens=20))
        got = Streams()
        while len(got.ends) < 2:
            got.add(await receive(ws))
        assert got.ends["bad"]["type"] == "error"
        assert "bad" not in got.deltas
        assert got.ends["ok"]["type"] == "done"
        await ws.send(json.dumps({"type": "ping"}))
        assert await receive(ws) == {"type": "pong"}


# --- a reused id while the previous stream's end waits -------------------------------


async def _messages_until(client: WSClient, done: Any) -> list[dict[str, Any]]:
    """JSON messages (skipping the huge delta's text) until ``done(message)``."""
    out: list[dict[str, Any]] = []
    parts: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            event = await client.next_event()
            assert event is not None, "server closed the connection"
            if not isinstance(event, TextMessage):
                continue
            parts.append(event.data)
            if not event.message_finished:
                continue
            text, parts = "".join(parts), []
            message = json.loads(text)
            if message.get("type") == "delta" and len(message["text"]) == HUGE:
                message["text"] = "<huge>"
            out.append(message)
            if done(message):
                return out


async def test_id_reused_while_its_end_waits_is_a_duplicate_and_cancel_is_not_lost() -> None:
    async with faulty_app() as running:
        engine = running.engine
        assert isinstance(engine, FaultyEngine)
        client = await WSClient.open(running.port, "/v1/ws", rcvbuf=4096)
        try:
            client.send(TextMessage(data=ask("a", HUGE_DELTA, max_tokens=1)))
            await engine.wait_submitted(1)
            (first,) = engine.wrapped
            # The huge delta is written (writes are now paused) and the stream's
            # "done" waits for the client, which reads nothing yet.
            await asyncio.wait_for(first.asked_again.wait(), TIMEOUT)
            assert running.app.server.statistics().paused_writers == 1
            client.send(TextMessage(data=generate("a", max_tokens=100_000)))
            client.send(TextMessage(data=json.dumps({"type": "ping"})))
            got = await _messages_until(client, lambda m: m["type"] == "pong")
            kinds = [(m["type"], m.get("id")) for m in got]
            assert kinds == [("delta", "a"), ("done", "a"), ("error", "a"), ("pong", None)]
            assert got[1]["finish_reason"] == "length"
            assert got[2]["error"]["code"] == "duplicate_id"
            assert len(engine.streams) == 1, "the duplicate started a stream"
            # Now the id is free: reuse it, and cancel the new stream.
            client.send(TextMessage(data=generate("a", max_tokens=100_000)))
            (_, second) = await engine.wait_submitted(2)
            client.send(TextMessage(data=json.dumps({"type": "cancel", "id": "a"})))
            result = await asyncio.wait_for(engine.ended(second), TIMEOUT)
            assert result.finish_reason is FinishReason.CANCELLED
            ends = await _messages_until(client, lambda m: m["type"] != "delta")
            assert ends[-1]["type"] == "done" and ends[-1]["finish_reason"] == "cancelled"
        finally:
            client.close()


# --- close codes in /metrics ----------------------------------------------------------


async def test_peer_close_codes_are_exported_by_range() -> None:
    async with faulty_app() as running:
        for code in (1000, 3001, 3999, 4321, 4999):
            async with connect(running.ws_url) as ws:
                await ws.send(json.dumps({"type": "ping"}))
                assert await receive(ws) == {"type": "pong"}
                await ws.close(code=code)
        async with httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as http:
            text = (await http.get("/metrics")).text
    found = {
        labels: value
        for (name, labels), value in samples(text).items()
        if name == "rawstream_websocket_close_codes_total"
    }
    assert found == {
        (("code", "1000"),): 1,
        (("code", "3000-3999"),): 2,
        (("code", "4000-4999"),): 2,
    }
