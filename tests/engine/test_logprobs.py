"""Log-probabilities in the engine: the arithmetic, the detokenizer, the stream, both
engines.

The arithmetic (:func:`~rawstream.engine.backend.top_logprobs`) is checked against a
plain float64 log-softmax and a full sort. The tests marked ``model`` read the
real bundled model's logits; the figures of the cost per token are printed by
``benchmarks/bench_logprobs.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import AsyncIterator
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

from rawstream.config import Config
from rawstream.engine import (
    ChatMessage,
    Delta,
    EngineState,
    EngineStream,
    FinishReason,
    GenerationRequest,
    Result,
    Usage,
)
from rawstream.engine.backend import LOGPROB_FLOOR, top_logprobs
from rawstream.engine.base import TokenLogprob
from rawstream.engine.detok import Detokenizer
from rawstream.engine.fake import RANK_LOGPROBS, WORDS, FakeEngine
from rawstream.engine.llama import LlamaEngine
from rawstream.sansio.values import JsonFormat

TIMEOUT = 60.0


def lp(text: str, logprob: float = -1.0) -> TokenLogprob:
    return TokenLogprob(text, text.encode(), logprob)


# --- the arithmetic ---------------------------------------------------------------------


def reference(logits: npt.NDArray[np.float32], top: int) -> tuple[np.ndarray, list[int]]:
    """log-softmax in float64, and the top ids by a full stable sort."""
    x = logits.astype(np.float64)
    logprobs = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
    order = sorted(range(len(x)), key=lambda i: (-x[i], i))
    return logprobs, order[:top]


def vocab(seed: int, n: int = 49_152, scale: float = 3.0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * scale).astype(np.float32)


@pytest.mark.parametrize("top", [0, 1, 3, 20])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_logprobs_match_a_float64_log_softmax_and_a_full_sort(seed: int, top: int) -> None:
    logits = vocab(seed)
    token = seed * 977
    chosen, alternatives = top_logprobs(logits, token, top)
    expected, ids = reference(logits, top)
    assert chosen == pytest.approx(expected[token], abs=1e-5)
    assert [i for i, _ in alternatives] == ids
    assert [v for _, v in alternatives] == pytest.approx([expected[i] for i in ids], abs=1e-5)
    assert all(v <= 0.0 for _, v in alternatives) and chosen <= 0.0


def test_probabilities_sum_to_one() -> None:
    logits = vocab(7, n=1000)
    total = math.fsum(math.exp(top_logprobs(logits, t, 0)[0]) for t in range(1000))
    assert total == pytest.approx(1.0, abs=1e-6)


def test_a_peaked_distribution_and_the_scratch_buffer() -> None:
    logits = vocab(3)
    logits[[5, 40_000, 123]] = [30.0, 29.0, 28.0]
    scratch = np.empty_like(logits)
    chosen, alternatives = top_logprobs(logits, 5, 3, scratch)
    assert [i for i, _ in alternatives] == [5, 40_000, 123]
    assert alternatives[0][1] == chosen  # the chosen token, as the first alternative
    assert -1.0 < chosen < 0.0
    assert logits[5] == 30.0  # the logits themselves are not touched


def test_ties_come_in_token_order_as_greedy_sampling_breaks_them() -> None:
    logits = np.zeros(5000, dtype=np.float32)
    logits[[4000, 7, 300]] = 2.0
    _, alternatives = top_logprobs(logits, 7, 4)
    assert [i for i, _ in alternatives][:3] == [7, 300, 4000]
    assert alternatives[3][0] == 0  # then the zeros, lowest id first


def test_a_small_vocabulary_and_more_alternatives_than_tokens() -> None:
    logits = np.array([0.0, 1.0, 2.0], dtype=np.float32)
    _, alternatives = top_logprobs(logits, 0, 20)
    assert [i for i, _ in alternatives] == [2, 1, 0]


def test_masked_tokens_get_the_floor_not_infinity() -> None:
    logits = vocab(4, n=4096)
    logits[10] = -np.inf
    chosen, alternatives = top_logprobs(logits, 10, 2)
    assert chosen == LOGPROB_FLOOR
    assert all(math.isfinite(v) for _, v in alternatives)


def test_an_adversarial_layout_still_finds_the_top() -> None:
    # The strided sample sees only small values: the threshold is low, the answer exact.
    logits = np.full(64 * 100, -5.0, dtype=np.float32)
    logits[::64] = -10.0
    logits[1::64] = np.linspace(0.0, 1.0, 100, dtype=np.float32)
    _, alternatives = top_logprobs(logits, 0, 5)
    assert [i for i, _ in alternatives] == [1 + 64 * k for k in range(99, 94, -1)]


# --- the detokenizer --------------------------------------------------------------------


def test_held_text_is_released_with_its_logprobs() -> None:
    detok = Detokenizer(("\n\nUser:",))
    a, b, c = lp("Hi"), lp("\n"), lp("\nThere")
    first = detok.feed(b"Hi", a)
    assert first is not None and first.logprobs == (a,)
    assert detok.feed(b"\n", b) is None  # may start the stop string: held
    released = detok.feed(b"\nThere", c)
    assert released is not None
    assert (released.text, released.tokens, released.logprobs) == ("\n\nThere", 2, (b, c))


def test_tokens_swallowed_by_a_stop_string_are_dropped() -> None:
    detok = Detokenizer(("User:",))
    hello, us, er = lp("Hello"), lp(" Us"), lp("er:")
    pieces = [detok.feed(t.piece, t) for t in (hello, us, er)]
    assert detok.stopped
    released = [p for p in pieces if p is not None]
    assert [p.text for p in released] == ["Hello", " "]
    # " Us" counts where its first character is released; "er:" is wholly stop string.
    assert [p.logprobs for p in released] == [(hello,), (us,)]


def test_a_split_character_releases_both_tokens_logprobs_together() -> None:
    detok = Detokenizer()
    data = "🙂".encode()
    first, second = TokenLogprob("\ufffd", data[:2], -0.5), TokenLogprob("\ufffd", data[2:], -0.1)
    assert detok.feed(first.piece, first) is None
    piece = detok.feed(second.piece, second)
    assert piece is not None and piece.text == "🙂" and piece.logprobs == (first, second)


def test_finish_releases_held_logprobs() -> None:
    detok = Detokenizer(("###",))
    a, b = lp("ok"), lp(" #")
    assert detok.feed(b"ok", a) is not None
    assert detok.feed(b" #", b) is not None  # " " released, "#" held
    c = lp("#")
    assert detok.feed(b"#", c) is None
    end = detok.finish()
    assert end is not None and end.text == "##" and end.logprobs == (c,)


def test_without_logprobs_pieces_carry_none() -> None:
    detok = Detokenizer(("x",))
    piece = detok.feed(b"abc")
    assert piece is not None and piece.logprobs == ()


@pytest.mark.parametrize("seed", range(20))
def test_every_released_token_has_its_logprob_in_order(seed: int) -> None:
    """Random pieces and stop strings: each piece carries exactly the logprobs of the
    tokens it counts, in the order fed, and the text never runs past them."""
    rng = random.Random(seed)
    alphabet = ["a", "b", "\n", "é", "🙂"]
    stops = tuple("".join(rng.choices(alphabet, k=rng.randint(1, 3))) for _ in range(2))
    detok = Detokenizer(stops)
    fed: list[TokenLogprob] = []
    got: list[TokenLogprob] = []
    counted = 0
    data = "".join(rng.choices(alphabet, k=60)).encode()
    i = 0
    while i < len(data) and not detok.stopped:
        n = rng.randint(1, 4)
        token = TokenLogprob(str(len(fed)), data[i : i + n], -float(len(fed)))
        i += n
        fed.append(token)
        piece = detok.feed(token.piece, token)
        if piece is not None:
            assert len(piece.logprobs) == piece.tokens
            got += piece.logprobs
            counted += piece.tokens
    if not detok.stopped:
        end = detok.finish()
        if end is not None:
            assert len(end.logprobs) == end.tokens
            got += end.logprobs
            counted += end.tokens
    assert got == fed[: len(got)] and counted == len(got)


# --- the stream -------------------------------------------------------------------------


def stream() -> EngineStream:
    return EngineStream(1, 3, 64, on_cancel=lambda s: None, on_drain=lambda s: None)


def produce(s: EngineStream, text: str, logprobs: tuple[TokenLogprob, ...]) -> None:
    s.flow.sent += len(logprobs)
    s.push(text, len(logprobs), logprobs)


async def test_merged_deltas_concatenate_their_logprobs() -> None:
    s = stream()
    a, b, c = lp("a"), lp("b"), lp("c")
    produce(s, "a", (a,))
    produce(s, "bc", (b, c))
    s.finish(Result(FinishReason.STOP, Usage(3, 3)))
    assert [d async for d in s] == [Delta("abc", 3, (a, b, c))]


async def test_logprobs_handed_over_ahead_of_their_text() -> None:
    s = stream()
    a, b = lp("a"), lp("b")
    s.push_logprobs((a, b))
    s.flow.sent += 2
    s.push("ab", 2)
    assert await anext(aiter(s)) == Delta("ab", 2, (a, b))
    produce(s, "c", ())
    assert (await anext(aiter(s))).logprobs == ()  # nothing left over


async def test_cancel_and_discard_drop_pending_logprobs() -> None:
    s = stream()
    produce(s, "a", (lp("a"),))
    s.cancel()
    s.push_logprobs((lp("b"),))
    produce(s, "b", (lp("b"),))
    s.finish(Result(FinishReason.CANCELLED, Usage(3, 1)))
    assert [d async for d in s] == []
    other = stream()
    produce(other, "a", (lp("a"),))
    task = asyncio.ensure_future(other.wait_result())
    await asyncio.sleep(0)
    other.finish(Result(FinishReason.STOP, Usage(3, 1)))
    await task
    assert [d async for d in other] == []


# --- the fake engine --------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeEngine]:
    engine = FakeEngine(Config(engine="fake", fake_tokens_per_s=2000.0))
    await engine.start()
    yield engine
    await engine.close()


async def deltas(engine: FakeEngine, request: GenerationRequest) -> tuple[list[Delta], Result]:
    s = await engine.submit(request)
    async with asyncio.timeout(TIMEOUT):
        got = [d async for d in s]
    assert s.result is not None
    return got, s.result


def check_contract(tokens: list[TokenLogprob], top: int) -> None:
    for token in tokens:
        assert token.logprob <= 0.0
        assert len(token.top) == top
        values = [alt.logprob for alt in token.top]
        assert values == sorted(values, reverse=True)
        for alt in token.top:
            if alt.text == token.text:
                assert alt.logprob == token.logprob
        assert token.text == token.piece.decode()


@pytest.mark.parametrize("top", [0, 3, 20])
async def test_fake_logprobs_honour_the_contract(fake: FakeEngine, top: int) -> None:
    request = GenerationRequest(prompt="hello", max_tokens=40, seed=5, logprobs=top)
    got, result = await deltas(fake, request)
    tokens = [t for d in got for t in d.logprobs]
    assert all(len(d.logprobs) == d.tokens for d in got)
    assert len(tokens) == result.usage.completion_tokens == 40
    assert "".join(t.text for t in tokens) == "".join(d.text for d in got)
    check_contract(tokens, top)
    assert {t.logprob for t in tokens} <= set(RANK_LOGPROBS[:4])
    if top >= 4:  # the chosen word always ranks among the four most likely
        assert all(t.text in [a.text for a in t.top] for t in tokens)


async def test_fake_text_is_the_same_with_and_without_logprobs(fake: FakeEngine) -> None:
    plain, _ = await deltas(fake, GenerationRequest(prompt="hi", max_tokens=30, seed=9))
    with_lp, _ = await deltas(
        fake, GenerationRequest(prompt="hi", max_tokens=30, seed=9, logprobs=2)
    )
    again, _ = await deltas(fake, GenerationRequest(prompt="hi", max_tokens=30, seed=9, logprobs=2))
    assert "".join(d.text for d in plain) == "".join(d.text for d in with_lp)
    assert all(d.logprobs == () for d in plain)
    assert [t for d in with_lp for t in d.logprobs] == [t for d in again for t in d.logprobs]


async def test_fake_stop_string_drops_the_tokens_it_swallows(fake: FakeEngine) -> None:
    text = "".join(d.text for d in (await deltas(fake, GenerationRequest(prompt="x", seed=3)))[0])
    words = text.split(" ")
    stop = " " + words[5]  # stop at the sixth word: the first five remain
    assert WORDS.index(words[5]) >= 0 and stop not in " ".join(words[:5])
    got, result = await deltas(
        fake, GenerationRequest(prompt="x", seed=3, stop=(stop,), logprobs=1)
    )
    assert result.finish_reason is FinishReason.STOP
    content = "".join(d.text for d in got)
    tokens = [t for d in got for t in d.logprobs]
    assert content == " ".join(words[:5])
    assert "".join(t.text for t in tokens) == content


async def test_fake_constrained_reply_keeps_its_text_with_logprobs(fake: FakeEngine) -> None:
    """A reply the fake writes from a schema is the same text with logprobs asked for,
    and its tokens spell it."""
    schema = '{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}'
    plain = GenerationRequest(prompt="x", json_format=JsonFormat(schema))
    text = "".join(d.text for d in (await deltas(fake, plain))[0])
    assert json.loads(text) == {"n": 0}
    got, result = await deltas(fake, replace(plain, logprobs=2))
    tokens = [t for d in got for t in d.logprobs]
    assert "".join(d.text for d in got) == text
    assert "".join(t.text for t in tokens) == text
    assert len(tokens) == result.usage.completion_tokens
    check_contract(tokens, 2)


# --- the real model ---------------------------------------------------------------------


def chat(question: str, **kw: object) -> GenerationRequest:
    messages = (ChatMessage("user", question),)
    return GenerationRequest(messages=messages, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def model() -> AsyncIterator[LlamaEngine]:
    # One llama.cpp thread: on a shared, busy machine, spinning workers slow every step.
    engine = LlamaEngine(Config(parallel=2, ctx_per_slot=1024, max_queue=4, threads=1))
    await engine.start()
    assert engine.state is EngineState.READY, engine.error
    yield engine
    await engine.close()


def count_logprob_reads(engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the ``top`` of every :meth:`LlamaBackend.logprobs` call of ``engine``."""
    scheduler = engine._scheduler
    assert scheduler is not None and scheduler.backend is not None
    backend = scheduler.backend
    calls: list[int] = []
    real = backend.logprobs

    def spy(index: int, token: int, top: int) -> TokenLogprob:
        calls.append(top)
        return real(index, token, top)

    monkeypatch.setattr(backend, "logprobs", spy)
    return calls


async def read(engine: LlamaEngine, request: GenerationRequest) -> tuple[list[Delta], Result]:
    s = await engine.submit(request)
    async with asyncio.timeout(TIMEOUT):
        got = [d async for d in s]
    assert s.result is not None
    return got, s.result


@pytest.mark.model
async def test_greedy_tokens_are_the_most_likely_and_spell_the_text(
    model: LlamaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_logprob_reads(model, monkeypatch)
    request = chat("Name three colours.", temperature=0.0, max_tokens=24, logprobs=3)
    plain_request = chat("Say hello.", temperature=0.0, max_tokens=24)
    (got, result), (plain, plain_result) = await asyncio.gather(
        read(model, request), read(model, plain_request)
    )
    tokens = [t for d in got for t in d.logprobs]
    assert all(len(d.logprobs) == d.tokens for d in got)
    assert len(tokens) == result.usage.completion_tokens > 0
    check_contract_bytes(tokens, 3)
    for token in tokens:
        assert (token.top[0].piece, token.top[0].logprob) == (token.piece, token.logprob)
    assert b"".join(t.piece for t in tokens).decode() == "".join(d.text for d in got)
    # The stream batched next to it asked for nothing and got nothing, at no cost:
    assert all(d.logprobs == () for d in plain) and plain_result.usage.completion_tokens > 0
    assert calls == [3] * len(tokens)


def check_contract_bytes(tokens: list[TokenLogprob], top: int) -> None:
    for token in tokens:
        assert token.logprob <= 0.0 and math.isfinite(token.logprob)
        assert len(token.top) == top
        values = [alt.logprob for alt in token.top]
        assert values == sorted(values, reverse=True)
        for alt in token.top:
            if alt.piece == token.piece:
                assert alt.logprob == token.logprob
        assert token.text == token.piece.decode("utf-8", "replace")


@pytest.mark.model
async def test_logprobs_are_the_raw_distribution_whatever_the_sampler(
    model: LlamaEngine,
) -> None:
    """The first position depends on the prompt only: the same logprobs at
    temperature 0 and at temperature 1.9 with top-k 2 and a strong penalty."""
    prompt = "The capital of France is"
    greedy, _ = await read(
        model, GenerationRequest(prompt=prompt, temperature=0.0, max_tokens=1, logprobs=5)
    )
    hot, _ = await read(
        model,
        GenerationRequest(
            prompt=prompt,
            temperature=1.9,
            top_k=2,
            repeat_penalty=1.5,
            seed=1,
            max_tokens=1,
            logprobs=5,
        ),
    )
    first, other = greedy[0].logprobs[0], hot[0].logprobs[0]
    assert [a.piece for a in first.top] == [a.piece for a in other.top]
    assert [a.logprob for a in other.top] == pytest.approx([a.logprob for a in first.top], abs=1e-4)
    assert other.piece in [a.piece for a in first.top[:2]]  # top-k 2 picked one of those
    assert math.exp(first.top[0].logprob) > 0.05  # a real distribution, not uniform


@pytest.mark.model
async def test_stop_strings_keep_logprobs_one_per_token(model: LlamaEngine) -> None:
    request = GenerationRequest(
        prompt="1, 2, 3, 4,", temperature=0.0, max_tokens=40, stop=(" 9",), logprobs=0
    )
    got, result = await read(model, request)
    text = "".join(d.text for d in got)
    tokens = [t for d in got for t in d.logprobs]
    assert result.finish_reason is FinishReason.STOP and " 9" not in text
    assert all(len(d.logprobs) == d.tokens for d in got)
    assert all(t.top == () for t in tokens)
    # Only tokens wholly inside the stop string were dropped: the rest spell the text.
    spelled = b"".join(t.piece for t in tokens).decode()
    assert spelled.startswith(text) and " 9" not in spelled[: len(text) + 1]
    assert len(tokens) <= result.usage.completion_tokens
