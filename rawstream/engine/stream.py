"""The consumer's end of a generation, shared by every engine in this package.

An engine *produces* into an :class:`EngineStream` with :meth:`~EngineStream.push`
and :meth:`~EngineStream.finish`; the consumer *reads* it with ``async for``. Both
methods and the iterator run on the event loop's thread: an engine that works in a
thread hops to the loop first (one ``call_soon_threadsafe`` per step, carrying the
results of every stream in that step).

Backpressure works on token counts kept in a :class:`FlowControl`:

- the producer adds to ``sent`` when it decides to hand over text (in its own
  thread, before the hop to the loop), and checks :attr:`FlowControl.paused`
  before it spends work on the stream;
- the consumer adds to ``read`` when ``__anext__`` returns text. When that takes
  the stream from paused to not paused, the engine's ``on_drain`` hook runs so a
  sleeping producer wakes up.

Each counter has a single writer, so no lock is needed; a stale value only makes a
stream look paused a little longer, never lets the buffer grow past its bound.

Whatever is waiting when the consumer reads comes back merged into one
:class:`~rawstream.engine.base.Delta`: a slow consumer gets fewer, larger deltas.
Their log-probabilities, for a request that asked for them, are concatenated in
the same order, so a delta always holds one per token it accounts for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from rawstream.engine.base import Delta, FinishReason, GenerationStream, Result, TokenLogprob

__all__ = ["EngineStream", "FlowControl"]


class FlowControl:
    """Token counters of one stream's buffer between the engine and its reader."""

    __slots__ = ("limit", "read", "sent", "steps_paused")

    def __init__(self, limit: int) -> None:
        #: Unread tokens at which the engine stops producing for the stream.
        self.limit = max(1, limit)
        #: Tokens handed to the consumer side (written by the producer only).
        self.sent = 0
        #: Tokens the consumer has taken (written by the consumer only).
        self.read = 0
        #: Engine steps the stream sat out because its buffer was full.
        self.steps_paused = 0

    @property
    def unread(self) -> int:
        """Tokens produced and not read yet."""
        return self.sent - self.read

    @property
    def paused(self) -> bool:
        """Whether the buffer is full, so the engine must skip this stream."""
        return self.sent - self.read >= self.limit


class EngineStream(GenerationStream):
    """A :class:`GenerationStream` fed by an engine on the event loop's thread.

    ``on_cancel`` and ``on_drain`` are the engine's hooks: the first is called once,
    by the first :meth:`cancel` before the end; the second whenever reading frees
    room in a full buffer.
    """

    def __init__(
        self,
        stream_id: int,
        prompt_tokens: int,
        buffer_tokens: int,
        *,
        on_cancel: Callable[[EngineStream], None],
        on_drain: Callable[[EngineStream], None],
    ) -> None:
        self.id = stream_id
        self.prompt_tokens = prompt_tokens
        self.flow = FlowControl(buffer_tokens)
        #: ``time.perf_counter()`` of the first :meth:`cancel`, else ``None``.
        self.cancel_requested_at: float | None = None
        #: Engine steps completed when the stream got its slot (``None`` before).
        self.started_step: int | None = None
        #: Engine steps completed when the stream's slot was free again. A stream
        #: admitted into that freed slot at once has ``started_step`` equal to it.
        self.ended_step: int | None = None
        self._on_cancel = on_cancel
        self._on_drain = on_drain
        self._texts: list[str] = []
        self._tokens = 0
        self._logprobs: list[TokenLogprob] = []
        self._result: Result | None = None
        self._discard = False
        self._waiter: asyncio.Future[None] | None = None
        self._started: asyncio.Event | None = None
        self._loop = asyncio.get_running_loop()

    def __repr__(self) -> str:
        state = self._result.finish_reason if self._result else "open"
        return f"<EngineStream {self.id} {state} unread={self.flow.unread}>"

    # --- producer side (event loop thread) -------------------------------------

    def push(self, text: str, tokens: int, logprobs: tuple[TokenLogprob, ...] = ()) -> None:
        """Append generated text; ``tokens`` were already added to ``flow.sent``.

        ``logprobs`` are those of the ``tokens``, when the request asked for them.
        """
        if self._result is not None:
            return
        if self._discard or self.cancel_requested_at is not None:
            self._consumed(tokens)  # nobody will read it; keep the buffer empty
            return
        self._texts.append(text)
        self._tokens += tokens
        if logprobs:
            self._logprobs += logprobs
        self._wake()

    def push_logprobs(self, logprobs: tuple[TokenLogprob, ...]) -> None:
        """Add the log-probabilities of text that the next :meth:`push` brings.

        For a producer that hands over text and log-probabilities separately, in
        the same turn of the loop, log-probabilities first.
        """
        if self._result is None and not self._discard and self.cancel_requested_at is None:
            self._logprobs += logprobs

    def mark_started(self, step: int) -> None:
        """Record that the stream got a slot after ``step`` engine steps."""
        self.started_step = step
        if self._started is not None:
            self._started.set()

    def finish(self, result: Result, step: int | None = None) -> None:
        """End the stream with ``result``; later calls are ignored."""
        if self._result is not None:
            return
        self._result = result
        self.ended_step = step
        if result.finish_reason is FinishReason.CANCELLED:
            self._texts.clear()
            self._tokens = 0
            self._logprobs.clear()
        if self._started is not None:
            self._started.set()
        self._wake()

    # --- consumer side ------------------------------------------------------------

    @property
    def result(self) -> Result | None:
        return self._result

    @property
    def paused(self) -> bool:
        """Whether the engine is skipping this stream because nobody reads it."""
        return self._result is None and self.flow.paused

    def cancel(self) -> None:
        if self._result is not None or self.cancel_requested_at is not None:
            return
        self.cancel_requested_at = time.perf_counter()
        self._consumed(self._tokens)
        self._texts.clear()
        self._tokens = 0
        self._logprobs.clear()
        self._on_cancel(self)

    async def wait_started(self) -> None:
        """Wait until the stream holds a slot (or has ended without one)."""
        if self.started_step is not None or self._result is not None:
            return
        if self._started is None:
            self._started = asyncio.Event()
        await self._started.wait()

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self

    async def __anext__(self) -> Delta:
        while True:
            if self._texts:
                text = self._texts[0] if len(self._texts) == 1 else "".join(self._texts)
                tokens = self._tokens
                self._texts.clear()
                self._tokens = 0
                self._consumed(tokens)
                if self._logprobs:
                    logprobs = tuple(self._logprobs)
                    self._logprobs.clear()
                    return Delta(text, tokens, logprobs)
                return Delta(text, tokens)
            if self._result is not None:
                raise StopAsyncIteration
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def wait_result(self) -> Result:
        self._discard = True
        self._consumed(self._tokens)
        self._texts.clear()
        self._tokens = 0
        self._logprobs.clear()
        while self._result is None:
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._result

    # --- internals ----------------------------------------------------------------

    def _consumed(self, tokens: int) -> None:
        if not tokens:
            return
        flow = self.flow
        was_paused = flow.paused
        flow.read += tokens
        if was_paused and not flow.paused and self._result is None:
            self._on_drain(self)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
