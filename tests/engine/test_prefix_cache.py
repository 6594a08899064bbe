"""Prefix caching with the real bundled model: a slot's KV is reused by the next prompt.

Outputs are compared between solo runs only (one stream at a time), as in
test_llama.py: batched greedy output may differ from a solo run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from rawstream.config import Config
from rawstream.engine import (
    ChatMessage,
    EngineStatistics,
    FinishReason,
    GenerationRequest,
    collect,
    create_engine,
)
from rawstream.engine.llama import LlamaEngine
from rawstream.engine.scheduler import PREFILL_CHUNK, common_prefix

TIMEOUT = 60.0
SYSTEM = ChatMessage("system", "You are a helpful assistant.")
MakeEngine = Callable[..., Awaitable[LlamaEngine]]


def test_common_prefix() -> None:
    assert common_prefix([], [1, 2]) == 0
    assert common_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert common_prefix([1, 2, 3], [1, 2]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([9, 2, 3], [1, 2, 3]) == 0
    long = list(range(3000))
    for cut in (1, 127, 128, 1500, 2999):
        other = [*long[:cut], -1, *long[cut + 1 :]]
        assert common_prefix(long, other) == cut


@pytest.fixture
async def make_engine() -> AsyncIterator[MakeEngine]:
    engines: list[LlamaEngine] = []

    async def make(**changes: object) -> LlamaEngine:
        config = Config(parallel=2, ctx_per_slot=2048, max_queue=8, threads=1)
        engine = create_engine(config.replace(**changes))
        assert isinstance(engine, LlamaEngine)
        engines.append(engine)
        await engine.start()
        return engine

    yield make
    for engine in engines:
        await engine.close()


def chat(*messages: ChatMessage, max_tokens: int = 48) -> GenerationRequest:
    return GenerationRequest(messages=(SYSTEM, *messages), temperature=0.0, max_tokens=max_tokens)


def user(text: str) -> ChatMessage:
    return ChatMessage("user", text)


def delta(after: EngineStatistics, before: EngineStatistics) -> tuple[int, int]:
    """(prompt tokens decoded, prompt tokens reused) between two snapshots."""
    return (
        after.prompt_tokens_total - before.prompt_tokens_total,
        after.prefix_cached_tokens_total - before.prefix_cached_tokens_total,
    )


@pytest.mark.model
async def test_chat_next_turn_prefills_only_the_new_tokens(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    first = chat(user("What is the capital of France?"))
    async with asyncio.timeout(TIMEOUT):
        reply, result = await collect(await engine.submit(first))
        assert result.finish_reason is FinishReason.STOP  # ended by <|im_end|>
        before = engine.statistics()
        second = chat(
            user("What is the capital of France?"),
            ChatMessage("assistant", reply),
            user("And of Germany?"),
        )
        _, result2 = await collect(await engine.submit(second))
    decoded, cached = delta(engine.statistics(), before)
    prompt1 = engine._tokenize(first)
    prompt2 = engine._tokenize(second)
    # The KV of the first prompt and of every generated token that was decoded
    # (all but the end-of-generation token, which is sampled, never decoded) is
    # kept, and the next turn's rendering repeats exactly those tokens.
    assert cached == len(prompt1) + result.usage.completion_tokens
    assert decoded == len(prompt2) - cached
    assert result2.usage.prompt_tokens == len(prompt2)  # usage counts the whole prompt


@pytest.mark.model
async def test_greedy_output_after_a_cached_prefix_equals_a_cold_run(
    make_engine: MakeEngine,
) -> None:
    cold_engine = await make_engine(parallel=1)
    engine = await make_engine(parallel=1)
    request = chat(user("Write a short poem about the sea."), max_tokens=64)
    async with asyncio.timeout(TIMEOUT):
        cold, cold_result = await collect(await cold_engine.submit(request))
        assert cold_engine.statistics().prefix_cached_tokens_total == 0
        # Same system prompt, another question: the slot then holds a shared prefix.
        await collect(await engine.submit(chat(user("What is 2 + 2?"), max_tokens=8)))
        before = engine.statistics()
        warm, warm_result = await collect(await engine.submit(request))
        _, partly_cached = delta(engine.statistics(), before)
        # The same request again: all but its last prompt token come from the cache.
        before = engine.statistics()
        again, _ = await collect(await engine.submit(request))
        decoded, fully_cached = delta(engine.statistics(), before)
    prompt = engine._tokenize(request)
    assert 0 < partly_cached < len(prompt)
    assert (decoded, fully_cached) == (1, len(prompt) - 1)
    assert cold_result.usage.completion_tokens == 64
    assert warm == cold
    assert again == cold
    assert warm_result.usage == cold_result.usage


@pytest.mark.model
async def test_cancel_during_prompt_then_the_same_prompt_reuses_what_was_decoded(
    make_engine: MakeEngine,
) -> None:
    cold_engine = await make_engine(parallel=1)
    engine = await make_engine(parallel=1)
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 90
    request = GenerationRequest(prompt=long_prompt, temperature=0.0, max_tokens=24)
    async with asyncio.timeout(TIMEOUT):
        cold, _ = await collect(await cold_engine.submit(request))
        stream = await engine.submit(request)
        chunks = -(-stream.prompt_tokens // PREFILL_CHUNK)
        assert chunks >= 5
        await stream.wait_started()  # type: ignore[attr-defined]
        stream.cancel()
        cancelled = await stream.wait_result()
        assert cancelled.finish_reason is FinishReason.CANCELLED
        done = engine.statistics().prompt_tokens_total  # chunks decoded before the cancel
        before = engine.statistics()
        warm, result = await collect(await engine.submit(request))
    decoded, cached = delta(engine.statistics(), before)
    # The cancelled stream's slot kept exactly the chunks that were decoded.
    assert 0 < done < stream.prompt_tokens
    assert done % PREFILL_CHUNK == 0
    assert cached == done
    assert decoded == stream.prompt_tokens - done
    assert result.finish_reason is FinishReason.LENGTH
    assert warm == cold


@pytest.mark.model
async def test_new_prompt_takes_the_slot_with_the_longest_shared_prefix(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine(parallel=3)
    scheduler = engine._scheduler
    assert scheduler is not None
    questions = ("Name a colour.", "Name a fruit.", "Name a planet.")
    async with asyncio.timeout(TIMEOUT):
        # Three at once: each gets its own slot.
        await asyncio.gather(
            *[collect(await engine.submit(chat(user(q), max_tokens=4))) for q in questions]
        )
        prompts = {q: engine._tokenize(chat(user(q))) for q in questions}
        holders = {
            q: next(
                seq
                for seq, tokens in enumerate(scheduler.slot_tokens)
                if tokens[: len(prompts[q])] == prompts[q]
            )
            for q in questions
        }
        # Each slot holds its prompt and 3 of the 4 tokens generated: the 4th was
        # sampled, never decoded.
        assert all(len(scheduler.slot_tokens[holders[q]]) == len(prompts[q]) + 3 for q in questions)
        assert sorted(holders.values()) == [0, 1, 2]
        before = engine.statistics()
        await collect(await engine.submit(chat(user(questions[1]), max_tokens=4)))
    _, cached = delta(engine.statistics(), before)
    # The whole prompt is cached there; its last token is decoded again for logits.
    prompt = prompts[questions[1]]
    assert cached == len(prompt) - 1
    assert scheduler.slot_tokens[holders[questions[1]]][: len(prompt)] == prompt
    for q in (questions[0], questions[2]):  # the other slots are untouched
        assert scheduler.slot_tokens[holders[q]][: len(prompts[q])] == prompts[q]


@pytest.mark.model
async def test_switching_the_cache_off_decodes_whole_prompts_and_drops_kept_cells(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    scheduler = engine._scheduler
    assert scheduler is not None
    request = chat(user("Name a colour."), max_tokens=4)
    async with asyncio.timeout(TIMEOUT):
        text, _ = await collect(await engine.submit(request))
        assert any(scheduler.slot_tokens)  # the slot kept its cells
        engine.prefix_cache = False
        before = engine.statistics()
        again, _ = await collect(await engine.submit(request))
    decoded, cached = delta(engine.statistics(), before)
    assert (decoded, cached) == (len(engine._tokenize(request)), 0)
    assert not any(scheduler.slot_tokens)  # idle slots keep nothing
    assert again == text
