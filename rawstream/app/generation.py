"""The one generation path every transport consumes.

SSE, WebSocket and plain JSON responses all read an engine stream through
:class:`Generation`: it submits the request, observes time to first token and
inter-token latency as the deltas pass, and cancels the engine stream when its
consumer stops early for any reason (client gone, shutdown, error), so no
transport can forget to. Formatting is the transport's business; this module
knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType

from rawstream.app.metrics import Metrics
from rawstream.engine.base import (
    Delta,
    Engine,
    GenerationRequest,
    GenerationStream,
    Overloaded,
    Result,
)


class Generation:
    """One engine stream with the app's bookkeeping.

    Use it as an async context manager and iterate it::

        async with await Generation.submit(engine, metrics, request) as gen:
            async for delta in gen:
                ...
        gen.result

    Leaving the block before the end cancels the engine stream.
    """

    __slots__ = ("_deltas", "_last", "_metrics", "_submitted", "stream")

    def __init__(self, stream: GenerationStream, metrics: Metrics) -> None:
        self.stream = stream
        self._deltas = stream.__aiter__()
        self._metrics = metrics
        self._submitted = time.perf_counter()
        self._last: float | None = None  # when the previous delta arrived

    @classmethod
    async def submit(
        cls, engine: Engine, metrics: Metrics, request: GenerationRequest
    ) -> Generation:
        """Admit ``request`` or raise the engine's error (``Overloaded``, ...)."""
        try:
            stream = await engine.submit(request)
        except Overloaded:
            metrics.overloaded.inc()
            raise
        return cls(stream, metrics)

    @property
    def result(self) -> Result | None:
        """The engine's result once the stream has ended."""
        return self.stream.result

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> Delta:
        """The next delta, observed for the latency histograms.

        A plain ``__anext__`` rather than an async generator: this runs once per
        delta of every stream, and a generator's extra frame costs measurably there.
        """
        try:
            delta = await self._deltas.__anext__()
        except StopAsyncIteration:
            self._observe_end()
            raise
        now = time.perf_counter()
        if self._last is None:
            self._metrics.time_to_first_token.observe(now - self._submitted)
        elif delta.tokens:
            self._metrics.inter_token.observe((now - self._last) / delta.tokens)
        self._last = now
        return delta

    def _observe_end(self) -> None:
        result = self.stream.result
        if result is not None and result.timings.cancel_latency is not None:
            self._metrics.cancel_latency.observe(result.timings.cancel_latency)

    def cancel(self) -> None:
        """Stop the engine stream (idempotent)."""
        self.stream.cancel()

    async def __aenter__(self) -> Generation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.stream.result is None:
            self.stream.cancel()
            # The slot is freed in the engine's next step; record how long that took.
            task = asyncio.get_running_loop().create_task(self._wait_cancelled())
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def _wait_cancelled(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stream.wait_result(), 30.0)
            self._observe_end()


#: Tasks that observe cancellations, referenced until they finish.
_background: set[asyncio.Task[None]] = set()
