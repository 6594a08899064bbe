"""The loop-side stream: merging, flow counters, hooks, cancellation."""

from __future__ import annotations

import asyncio

from rawstream.engine.base import Delta, FinishReason, Result, Usage
from rawstream.engine.stream import EngineStream


class Hooks:
    def __init__(self) -> None:
        self.cancelled: list[EngineStream] = []
        self.drained: list[EngineStream] = []

    def stream(self, buffer_tokens: int = 4) -> EngineStream:
        return EngineStream(
            1, 3, buffer_tokens, on_cancel=self.cancelled.append, on_drain=self.drained.append
        )


def produce(stream: EngineStream, text: str, tokens: int = 1) -> None:
    stream.flow.sent += tokens
    stream.push(text, tokens)


RESULT = Result(FinishReason.STOP, Usage(3, 3))


async def test_pending_deltas_are_merged() -> None:
    stream = Hooks().stream()
    for word in ("a", "b", "c"):
        produce(stream, word)
    stream.finish(RESULT)
    assert [d async for d in stream] == [Delta("abc", 3)]
    assert stream.result is RESULT


async def test_reader_wakes_on_push() -> None:
    stream = Hooks().stream()
    reader = asyncio.ensure_future(anext(aiter(stream)))
    await asyncio.sleep(0)  # let the reader block
    produce(stream, "x")
    async with asyncio.timeout(1):
        assert await reader == Delta("x", 1)


async def test_full_buffer_pauses_and_reading_drains() -> None:
    hooks = Hooks()
    stream = hooks.stream(buffer_tokens=2)
    produce(stream, "a")
    assert not stream.paused
    produce(stream, "b")
    assert stream.paused
    assert await anext(aiter(stream)) == Delta("ab", 2)
    assert not stream.paused
    assert hooks.drained == [stream]


async def test_cancel_is_idempotent_and_discards_unread_text() -> None:
    hooks = Hooks()
    stream = hooks.stream(buffer_tokens=2)
    produce(stream, "a")
    produce(stream, "b")
    stream.cancel()
    stream.cancel()
    assert hooks.cancelled == [stream]
    assert stream.cancel_requested_at is not None
    assert stream.flow.unread == 0
    produce(stream, "late")  # in flight before the engine saw the cancel
    stream.finish(Result(FinishReason.CANCELLED, Usage(3, 3)))
    assert [d async for d in stream] == []
    stream.cancel()
    assert hooks.cancelled == [stream]


async def test_cancel_after_end_changes_nothing() -> None:
    hooks = Hooks()
    stream = hooks.stream()
    stream.finish(RESULT)
    stream.cancel()
    assert hooks.cancelled == []
    assert stream.result is RESULT


async def test_wait_result_discards_text_and_never_pauses() -> None:
    stream = Hooks().stream(buffer_tokens=1)
    waiter = asyncio.ensure_future(stream.wait_result())
    await asyncio.sleep(0)
    for word in ("a", "b", "c"):
        produce(stream, word)
        assert not stream.paused
    stream.finish(RESULT)
    async with asyncio.timeout(1):
        assert await waiter is RESULT


async def test_wait_started() -> None:
    stream = Hooks().stream()
    started = asyncio.ensure_future(stream.wait_started())
    await asyncio.sleep(0)
    assert not started.done()
    stream.mark_started(7)
    async with asyncio.timeout(1):
        await started
    assert stream.started_step == 7
