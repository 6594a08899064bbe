"""The fake engine: the engine contract (admission, backpressure, cancellation)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from rawstream.config import Config
from rawstream.engine import (
    EngineState,
    EngineStream,
    FinishReason,
    GenerationRequest,
    InvalidRequest,
    NotReady,
    Overloaded,
    collect,
    create_engine,
)
from rawstream.engine.fake import DEFAULT_MAX_TOKENS, WORDS, FakeEngine

TIMEOUT = 10.0


def config(**changes: object) -> Config:
    base = Config(engine="fake", fake_tokens_per_s=1000.0, parallel=4, max_queue=4)
    return base.replace(**changes)


@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    fake = FakeEngine(config())
    await fake.start()
    yield fake
    await fake.close()


def req(max_tokens: int | None = 8, **kw: object) -> GenerationRequest:
    return GenerationRequest(prompt="hello there", max_tokens=max_tokens, **kw)  # type: ignore[arg-type]


async def submit(engine: FakeEngine, request: GenerationRequest) -> EngineStream:
    stream = await engine.submit(request)
    assert isinstance(stream, EngineStream)
    return stream


async def test_factory_builds_the_fake_engine() -> None:
    engine = create_engine(config())
    assert isinstance(engine, FakeEngine)
    assert engine.state is EngineState.LOADING
    with pytest.raises(NotReady):
        await engine.submit(req())
    await engine.start()
    assert engine.state is EngineState.READY
    await engine.close()
    assert engine.state is EngineState.STOPPED
    with pytest.raises(ValueError, match="unknown engine"):
        create_engine(config(engine="nope"))


async def test_text_is_deterministic_per_seed(engine: FakeEngine) -> None:
    async with asyncio.timeout(TIMEOUT):
        a, _ = await collect(await engine.submit(req(16, seed=1)))
        b, _ = await collect(await engine.submit(req(16, seed=1)))
        c, _ = await collect(await engine.submit(req(16, seed=2)))
    assert a == b != c
    assert all(word in WORDS for word in a.split())


async def test_max_tokens_and_usage(engine: FakeEngine) -> None:
    async with asyncio.timeout(TIMEOUT):
        stream = await engine.submit(req(5))
        deltas = [d async for d in stream]
        text, default = await collect(await engine.submit(req(None)))
    result = stream.result
    assert result is not None
    assert result.finish_reason is FinishReason.LENGTH
    assert result.usage.completion_tokens == 5 == sum(d.tokens for d in deltas)
    assert len("".join(d.text for d in deltas).split()) == 5
    assert result.usage.prompt_tokens == stream.prompt_tokens > 0
    assert default.finish_reason is FinishReason.STOP  # "end of generation"
    assert default.usage.completion_tokens == DEFAULT_MAX_TOKENS == len(text.split())
    assert engine.statistics().prefix_cached_tokens_total == 0  # no KV, nothing reused


async def test_stop_string_is_cut_exactly(engine: FakeEngine) -> None:
    async with asyncio.timeout(TIMEOUT):
        full, _ = await collect(await engine.submit(req(40, seed=3)))
        words = full.split()
        stop = " " + words[10][:2]  # ends inside a token
        cut = full.index(stop)
        text, result = await collect(await engine.submit(req(40, seed=3, stop=(stop,))))
    assert text == full[:cut]
    assert result.finish_reason is FinishReason.STOP
    assert result.usage.completion_tokens < 40


async def test_admission_queue_and_overload() -> None:
    engine = FakeEngine(config(parallel=2, max_queue=1))
    await engine.start()
    streams = [await engine.submit(req(4)) for _ in range(3)]
    with pytest.raises(Overloaded) as info:
        await engine.submit(req())
    assert info.value.retry_after >= 1
    stats = engine.statistics()
    assert (stats.busy_slots, stats.queued_streams) == (2, 1)
    async with asyncio.timeout(TIMEOUT):
        results = [(await collect(s))[1] for s in streams]
    assert all(r.finish_reason is FinishReason.LENGTH for r in results)
    await engine.submit(req())  # room again
    await engine.close()


async def test_cancel_frees_the_slot_for_the_next_stream() -> None:
    engine = FakeEngine(config(parallel=1, max_queue=2))
    await engine.start()
    running = await submit(engine, req(1000))
    queued = await submit(engine, req(1000))
    waiting = await submit(engine, req(3))
    async with asyncio.timeout(TIMEOUT):
        await anext(aiter(running))  # it is generating
        queued.cancel()  # cancelled while waiting: never starts
        running.cancel()
        assert (await running.wait_result()).finish_reason is FinishReason.CANCELLED
        _, result = await collect(waiting)
    assert queued.result is not None
    assert queued.result.finish_reason is FinishReason.CANCELLED
    assert queued.started_step is None
    assert waiting.started_step == running.ended_step  # no step in between
    assert result.finish_reason is FinishReason.LENGTH
    cancelled = running.result
    assert cancelled is not None and cancelled.timings.cancel_latency is not None
    assert 1 <= cancelled.usage.completion_tokens < 1000
    assert engine.statistics().cancelled_total == 2
    await engine.close()


async def test_stalled_consumer_does_not_slow_the_others() -> None:
    # 100 tokens/s: one token per tick, unless the loop runs late
    engine = FakeEngine(config(stream_buffer_tokens=4, fake_tokens_per_s=100.0))
    await engine.start()
    stalled = await submit(engine, req(30))
    others = [await engine.submit(req(30)) for _ in range(3)]
    async with asyncio.timeout(TIMEOUT):
        results = [result for _, result in await asyncio.gather(*map(collect, others))]
    assert all(r.usage.completion_tokens == 30 for r in results)
    assert stalled.result is None and stalled.paused
    assert stalled.flow.unread == 4
    stats = engine.statistics()
    # every step either gave it a token (4 at most) or it sat the step out
    assert stalled.flow.steps_paused >= stats.decode_steps_total - 4
    assert stalled.flow.steps_paused > 0
    assert stats.paused_streams == 1
    async with asyncio.timeout(TIMEOUT):
        first = await anext(aiter(stalled))
        assert first.tokens == 4  # the whole buffer, merged into one delta
        rest = [d async for d in stalled]
    assert 4 + sum(d.tokens for d in rest) == 30
    await engine.close()


async def test_close_cancels_every_stream() -> None:
    engine = FakeEngine(config(parallel=1, max_queue=1))
    await engine.start()
    streams = [await engine.submit(req(1000)) for _ in range(2)]
    await engine.close()
    for stream in streams:
        assert stream.result is not None
        assert stream.result.finish_reason is FinishReason.CANCELLED


async def test_prompt_longer_than_the_context_is_refused(engine: FakeEngine) -> None:
    with pytest.raises(InvalidRequest):
        await engine.submit(GenerationRequest(prompt="word " * 5000))
    with pytest.raises(InvalidRequest):
        await engine.submit(req(0))
    assert engine.statistics().busy_slots == 0


async def test_refusals_are_the_real_engines(engine: FakeEngine) -> None:
    # The same codes and messages as LlamaEngine (tests/engine/test_llama.py).
    with pytest.raises(InvalidRequest) as empty:
        await engine.submit(GenerationRequest(prompt=""))
    assert (empty.value.code, str(empty.value)) == ("empty_prompt", "the prompt is empty")
    with pytest.raises(InvalidRequest) as too_long:
        await engine.submit(GenerationRequest(prompt="word " * 2047))
    assert too_long.value.code == "context_length_exceeded"
    assert str(too_long.value) == (
        "the prompt is 2048 tokens; the context of a stream is 2048 tokens, "
        "with room for at least one generated token"
    )
    with pytest.raises(InvalidRequest) as no_tokens:
        await engine.submit(req(0))
    assert (no_tokens.value.code, str(no_tokens.value)) == (
        "invalid_max_tokens",
        "max_tokens must be at least 1",
    )
    assert engine.statistics().busy_slots == 0


async def test_a_full_engine_refuses_before_it_reads_the_prompt() -> None:
    engine = FakeEngine(config(parallel=1, max_queue=0))
    await engine.start()
    running = await engine.submit(req(1000))
    with pytest.raises(Overloaded):  # not InvalidRequest: no work for a refused request
        await engine.submit(GenerationRequest(prompt="word " * 5000))
    running.cancel()
    for _ in range(3):  # a refused prompt gives its place back
        with pytest.raises(InvalidRequest):
            await engine.submit(GenerationRequest(prompt="word " * 5000))
    async with asyncio.timeout(TIMEOUT):
        _, result = await collect(await engine.submit(req(3)))
    assert result.finish_reason is FinishReason.LENGTH
    await engine.close()


async def test_thousands_of_streams_on_one_timer() -> None:
    engine = FakeEngine(config(fake_tokens_per_s=200.0, max_queue=0), slots=3000)
    await engine.start()
    streams = [await engine.submit(req(5, seed=i)) for i in range(3000)]
    async with asyncio.timeout(30):
        results = await asyncio.gather(*(s.wait_result() for s in streams))
    assert all(r.usage.completion_tokens == 5 for r in results)
    stats = engine.statistics()
    assert stats.completion_tokens_total == 15000
    assert stats.decode_steps_total < 100  # one timer served them all
    await engine.close()
