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
from collections.abc import AsyncIterator
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

        async with Generation.submit(engine, metrics, request) as gen:
            async for delta in gen:
                ...
        gen.result

    Leaving the block before the end cancels the engine stream.
    """

    __slots__ = ("_metrics", "_submitted", "stream")

    def __init__(self, stream: GenerationStream, metrics: Metrics) -> None:
        self.stream = stream
        self._metrics = metrics
        self._submitted = time.perf_counter()

    @classmethod
    def submit(cls, engine: Engine, metrics: Metrics, request: GenerationRequest) -> Generation:
        """Admit ``request`` or raise the engine's error (``Overloaded``, ...) at once."""
        try:
            stream = engine.submit(request)
        except Overloaded:
            metrics.overloaded.inc()
            raise
        return cls(stream, metrics)

    @property
    def result(self) -> Result | None:
        """The engine's result once the stream has ended."""
        return self.stream.result

    async def __aiter__(self) -> AsyncIterator[Delta]:
        metrics = self._metrics
        last = self._submitted
        first = True
        async for delta in self.stream:
            now = time.perf_counter()
            if first:
                metrics.time_to_first_token.observe(now - last)
                first = False
            elif delta.tokens:
                metrics.inter_token.observe((now - last) / delta.tokens)
            last = now
            yield delta
        self._observe_end()

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
