"""FakeEngine: deterministic text at a fixed token rate, for tests and benchmarks.

It implements the engine interface with the same :class:`EngineStream`, the same
:class:`Admission` (``slots`` streams in progress, ``max_queue`` waiting, then
:class:`Overloaded`, checked before the prompt is looked at), the same refusals
(:func:`~rawstream.engine.base.check_max_tokens` and
:func:`~rawstream.engine.base.check_prompt_length`: same codes, same messages), the
same backpressure (a stream with a full buffer sits out ticks) and the same
cancellation semantics as :class:`~rawstream.engine.llama.LlamaEngine`, so the server
can be tested and benchmarked without a model. Its prompt "tokens" are the words of
the prompt (a chat is rendered as ``role: content`` lines) plus one; an empty prompt
has none.

Theory of operation: ONE periodic timer on the event loop drives every stream, the
way one decode step of the real engine serves every slot. Each tick turns elapsed
time into a whole number of tokens (``credit``, carried over between ticks, so the
rate holds even when the loop is late) and gives that many tokens to every active
stream that has room in its buffer. There is no task, thread or timer per stream,
so thousands of concurrent streams cost one ``call_later`` per tick plus a few
microseconds per stream. The timer runs only while some stream is active.

The text is words from a fixed list, chosen by a 64-bit linear congruential
generator seeded with the request's ``seed`` (or, without one, a CRC of the
prompt): the same request always yields the same text. One word is one token.
``max_tokens`` is honoured exactly (finish reason ``length``); without it a stream
ends after :data:`DEFAULT_MAX_TOKENS` tokens with ``stop``, as if the model had
emitted its end token. Stop strings are cut exactly, as in the real engine.

A reply the request constrains (``response_format``, a forced tool call) is instead
the smallest instance of its schema as JSON, in word-sized tokens
(:func:`~rawstream.sansio.tools.minimal_reply`), ending with ``stop`` as a grammar
would end it; ``tool_choice: auto`` with tools is refused as by a chat template
without tool support.

Log-probabilities, when a request asks for them, come from a fixed distribution
over the 64 words (:data:`RANK_LOGPROBS`, Zipf-like, most likely first): at each
position the generator's state ranks the chosen word among the four most likely
(``state`` bits 54-55) and the other words after it in vocabulary order, so the
alternatives are deterministic, sorted, and hold the chosen word with its own
log-probability whenever it ranks among them (:mod:`rawstream.engine.fake_logprobs`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import zlib
from collections import deque
from dataclasses import dataclass

from rawstream.config import Config
from rawstream.engine.admission import Admission
from rawstream.engine.base import (
    Engine,
    EngineState,
    EngineStatistics,
    FinishReason,
    GenerationRequest,
    GenerationStream,
    InvalidRequest,
    NotReady,
    Result,
    Timings,
    TokenLogprob,
    Usage,
    check_max_tokens,
    check_prompt_length,
)
from rawstream.engine.chat import check_tool_choice
from rawstream.engine.detok import Detokenizer, StopMatcher
from rawstream.engine.fake_logprobs import RANK_LOGPROBS, scripted_logprob, word_logprob
from rawstream.engine.stream import EngineStream
from rawstream.sansio.tools import minimal_reply

__all__ = ["DEFAULT_MAX_TOKENS", "RANK_LOGPROBS", "WORDS", "FakeEngine"]

#: Tokens a fake stream produces when the request sets no ``max_tokens``.
DEFAULT_MAX_TOKENS = 64
#: Shortest tick, in seconds: above 200 tokens/s a tick carries several tokens.
MIN_TICK = 0.005

_VOCABULARY = """\
the a stream of tokens flows from model to client through engine server socket and
back again while every byte waits its turn in buffer queue slot step batch event
loop thread timer frame header chunk window message reader writer request response
pause resume cancel drain close open quiet fast slow steady light river stone cloud
green bright small large early late north south
"""
#: The fake model's vocabulary: 64 words, one token each.
WORDS: tuple[str, ...] = tuple(_VOCABULARY.split())
assert len(WORDS) == 64

_LCG_MUL = 6364136223846793005
_LCG_INC = 1442695040888963407
_MASK64 = (1 << 64) - 1


@dataclass(eq=False, slots=True)
class _FakeJob:
    stream: EngineStream
    limit: int  #: tokens to produce
    limit_reason: FinishReason
    stops: StopMatcher | None
    state: int  #: LCG state
    submitted_at: float
    started_at: float = 0.0
    first_token_at: float = 0.0
    generated: int = 0
    unreleased: int = 0  #: tokens whose text a stop string still holds back
    top: int | None = None  #: the request's ``logprobs``
    detok: Detokenizer | None = None  #: with logprobs: stop strings, token by token
    script: tuple[str, ...] | None = None  #: a constrained reply's tokens (minimal_reply)


class FakeEngine(Engine):
    """A model-free engine producing ``config.fake_tokens_per_s`` tokens per stream.

    ``slots`` defaults to ``config.parallel``; pass a large value (thousands) to
    benchmark a server with many concurrent streams.
    """

    def __init__(self, config: Config, *, slots: int | None = None) -> None:
        self.config = config
        self.model_name = "fake"
        self.slots = max(1, slots if slots is not None else config.parallel)
        self.rate = max(0.001, config.fake_tokens_per_s)
        self.ctx_per_slot = config.ctx_per_slot
        self._interval = max(MIN_TICK, 1.0 / self.rate)
        self._state = EngineState.LOADING
        self._admission = Admission(self.slots, config.max_queue)
        self._ids = itertools.count(1)
        self._active: dict[int, _FakeJob] = {}
        self._waiting: deque[_FakeJob] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._credit = 0.0
        self._last_tick = 0.0
        # counters, as the real engine keeps them
        self.steps = 0
        self._busy_seconds = 0.0
        self._batch_tokens = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._cancelled = 0
        self._cancel_latency_sum = 0.0
        self._cancel_latency_max = 0.0

    @property
    def state(self) -> EngineState:
        return self._state

    async def start(self) -> None:
        """Nothing to load: the engine is ready at once."""
        self._loop = asyncio.get_running_loop()
        if self._state is EngineState.LOADING:
            self._state = EngineState.READY

    # --- admission ------------------------------------------------------------------

    async def submit(self, request: GenerationRequest) -> GenerationStream:
        """Admit ``request``; raises like :meth:`LlamaEngine.submit`."""
        if self._state is not EngineState.READY:
            raise NotReady(f"engine is {self._state}")
        check_max_tokens(request)
        self._admission.admit()  # first: a full engine refuses before any work
        if request.messages is not None:
            text = "\n".join(f"{m.role}: {m.content}" for m in request.messages)
        else:
            assert request.prompt is not None
            text = request.prompt
        prompt_tokens = len(text.split()) + 1 if text else 0
        try:
            check_tool_choice(request, supports_tools=False)  # no template: as the bundled one
            check_prompt_length(prompt_tokens, self.ctx_per_slot)
        except InvalidRequest:
            self._admission.refund()
            raise
        room = self.ctx_per_slot - prompt_tokens
        if request.max_tokens is None:
            limit, reason = DEFAULT_MAX_TOKENS, FinishReason.STOP
        else:
            limit, reason = request.max_tokens, FinishReason.LENGTH
        if limit > room:
            limit, reason = room, FinishReason.LENGTH
        if (script := minimal_reply(request)) is not None and len(script) <= limit:
            limit, reason = len(script), FinishReason.STOP  # the grammar would end it there
        seed = request.seed if request.seed is not None else zlib.crc32(text.encode())
        stream = EngineStream(
            next(self._ids),
            prompt_tokens,
            self.config.stream_buffer_tokens,
            on_cancel=self._on_cancel,
            on_drain=self._on_drain,
        )
        job = _FakeJob(
            stream=stream,
            limit=limit,
            limit_reason=reason,
            stops=StopMatcher(request.stop) if any(request.stop) else None,
            state=seed & _MASK64,
            submitted_at=time.perf_counter(),
            top=request.logprobs,
            detok=Detokenizer(request.stop) if request.logprobs is not None else None,
            script=script,
        )
        self._prompt_tokens += prompt_tokens
        if len(self._active) < self.slots:
            self._start_job(job)
        else:
            self._waiting.append(job)
        return stream

    def _start_job(self, job: _FakeJob) -> None:
        job.started_at = time.perf_counter()
        self._active[job.stream.id] = job
        job.stream.mark_started(self.steps)
        self._ensure_timer()

    def _admit_waiting(self) -> None:
        while self._waiting and len(self._active) < self.slots:
            self._start_job(self._waiting.popleft())

    # --- the tick ---------------------------------------------------------------------

    def _ensure_timer(self) -> None:
        if self._timer is None:
            loop = self._loop or asyncio.get_running_loop()
            self._last_tick = loop.time()
            self._timer = loop.call_later(self._interval, self._tick)

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        t0 = time.perf_counter()
        now = loop.time()
        # carry fractions of a token over; after a long stall, catch up one second at most
        self._credit = min(self._credit + (now - self._last_tick) * self.rate, self.rate + 1.0)
        self._last_tick = now
        n = int(self._credit)
        if n > 0:
            self._credit -= n
            self._step(n, t0)
        self._busy_seconds += time.perf_counter() - t0
        if self._active:
            self._timer = loop.call_later(self._interval, self._tick)
        else:
            self._timer = None

    def _step(self, n: int, now: float) -> None:
        self.steps += 1
        ended: list[tuple[_FakeJob, FinishReason]] = []
        produced = 0
        for job in self._active.values():
            flow = job.stream.flow
            room = flow.limit - (flow.sent - flow.read)
            if room <= 0:
                flow.steps_paused += 1
                continue
            k = min(n, room, job.limit - job.generated)
            if job.generated == 0:
                job.first_token_at = now
            if job.detok is not None:
                produced += self._step_with_logprobs(job, k)
                if job.detok.stopped:
                    ended.append((job, FinishReason.STOP))
                elif job.generated >= job.limit:
                    ended.append((job, job.limit_reason))
                continue
            text = self._words(job, k)
            job.generated += k
            produced += k
            stops = job.stops
            if stops is None:
                tokens = k
            else:
                job.unreleased += k
                text = stops.feed(text)
                tokens = job.unreleased if text else 0
                if text:
                    job.unreleased = 0
            if text:
                flow.sent += tokens
                job.stream.push(text, tokens)
            if stops is not None and stops.stopped:
                ended.append((job, FinishReason.STOP))
            elif job.generated >= job.limit:
                ended.append((job, job.limit_reason))
        self._batch_tokens += produced
        self._completion_tokens += produced
        for job, reason in ended:
            if job.detok is not None and not job.detok.stopped:
                piece = job.detok.finish()
                if piece is not None:
                    job.stream.flow.sent += piece.tokens
                    job.stream.push(piece.text, piece.tokens, piece.logprobs)
            if job.stops is not None and not job.stops.stopped:
                rest = job.stops.flush()
                if rest:
                    job.stream.flow.sent += job.unreleased
                    job.stream.push(rest, job.unreleased)
            self._end(job, reason, now)
        if ended:
            self._admit_waiting()

    @staticmethod
    def _step_with_logprobs(job: _FakeJob, k: int) -> int:
        """Produce ``k`` tokens with their logprobs, through the job's detokenizer.

        Token by token, as the real engine does, so that held text keeps its
        logprobs and a stop string drops the tokens it swallows. Returns the
        tokens produced (fewer than ``k`` when a stop string ends the stream).
        """
        detok = job.detok
        assert detok is not None and job.top is not None
        state = job.state
        texts: list[str] = []
        logprobs: list[TokenLogprob] = []
        tokens = used = 0
        for i in range(job.generated, job.generated + k):
            state = (state * _LCG_MUL + _LCG_INC) & _MASK64  # as in _words
            if job.script is None:
                logprob = word_logprob(state, i, job.top, WORDS)
            else:  # a constrained reply: its script's tokens, as _words gives them
                logprob = scripted_logprob(job.script[i], state, i, job.top, WORDS)
            used += 1
            piece = detok.feed(logprob.piece, logprob)
            if piece is not None:
                texts.append(piece.text)
                logprobs += piece.logprobs
                tokens += piece.tokens
            if detok.stopped:
                break
        job.state = state
        job.generated += used
        if texts:
            job.stream.flow.sent += tokens
            job.stream.push("".join(texts), tokens, tuple(logprobs))
        return used

    @staticmethod
    def _words(job: _FakeJob, k: int) -> str:
        if job.script is not None:
            return "".join(job.script[job.generated : job.generated + k])
        state = job.state
        words = WORDS
        parts = []
        for i in range(job.generated, job.generated + k):
            state = (state * _LCG_MUL + _LCG_INC) & _MASK64
            word = words[state >> 58]
            parts.append(" " + word if i else word)
        job.state = state
        return parts[0] if k == 1 else "".join(parts)

    def _end(
        self, job: _FakeJob, reason: FinishReason, now: float, cancel_latency: float | None = None
    ) -> None:
        self._active.pop(job.stream.id, None)
        started = job.started_at or now
        first = job.first_token_at or now
        timings = Timings(
            queued=started - job.submitted_at,
            prompt=first - started,
            generation=now - first,
            cancel_latency=cancel_latency,
        )
        result = Result(reason, Usage(job.stream.prompt_tokens, job.generated), timings)
        self._admission.release(now - job.submitted_at)
        job.stream.finish(result, self.steps)

    # --- hooks from the streams -------------------------------------------------------

    def _on_cancel(self, stream: EngineStream) -> None:
        job = self._active.get(stream.id)
        if job is None:
            job = next((j for j in self._waiting if j.stream is stream), None)
            if job is None:
                return
            self._waiting.remove(job)
        now = time.perf_counter()
        requested = stream.cancel_requested_at
        latency = now - requested if requested is not None else 0.0
        self._cancelled += 1
        self._cancel_latency_sum += latency
        self._cancel_latency_max = max(self._cancel_latency_max, latency)
        self._end(job, FinishReason.CANCELLED, now, cancel_latency=latency)
        self._admit_waiting()

    def _on_drain(self, stream: EngineStream) -> None:
        pass  # the next tick sees the room; the timer runs while streams are active

    # --- statistics and shutdown ------------------------------------------------------

    def statistics(self) -> EngineStatistics:
        """Counters in the same shape as the real engine's."""
        paused = sum(1 for job in self._active.values() if job.stream.flow.paused)
        return EngineStatistics(
            state=self._state,
            slots=self.slots,
            busy_slots=len(self._active),
            active_streams=len(self._active),
            queued_streams=len(self._waiting),
            paused_streams=paused,
            prompt_tokens_total=self._prompt_tokens,
            completion_tokens_total=self._completion_tokens,
            decode_steps_total=self.steps,
            decode_seconds_total=self._busy_seconds,
            batch_tokens_total=self._batch_tokens,
            cancelled_total=self._cancelled,
            extra={
                "model": self.model_name,
                "tokens_per_s": self.rate,
                "cancel_latency_seconds_total": self._cancel_latency_sum,
                "cancel_latency_seconds_max": self._cancel_latency_max,
            },
        )

    async def close(self) -> None:
        """Cancel every stream and stop the timer."""
        self._state = EngineState.STOPPED
        for job in [*self._waiting, *self._active.values()]:  # waiting first: none moves up
            job.stream.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
