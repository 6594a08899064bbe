"""A probe of event-loop lag: how late the loop wakes up a task that sleeps 5 ms.

It measures, it does not wait: a task in the loop under test sleeps ``interval``
seconds again and again and records by how much each wake-up came late. A loop
thread that is busy (a long callback, the GIL held by another thread) shows up as
large lags; an idle loop gives lags of a few tenths of a millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from types import TracebackType


class LagProbe:
    """``async with LagProbe() as probe:`` records lags until the block ends."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        #: How late each wake-up was, in seconds.
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._since = 0.0  #: when the sleep in progress began
        self._running = asyncio.Event()

    async def __aenter__(self) -> LagProbe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._running.wait()  # asleep: a stall from now on is measured
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        # The sleep in progress counts too: after a stall, the block may end before
        # the probe got its turn to record it.
        late = time.perf_counter() - self._since - self.interval
        if late > 0:
            self.lags.append(late)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            # perf_counter, not loop.time(): uvloop's clock ticks in milliseconds
            self._since = time.perf_counter()
            self._running.set()
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, time.perf_counter() - self._since - self.interval))

    def first(self, n: int) -> LagProbe:
        """A probe holding only the first ``n`` lags, to report part of a run."""
        part = LagProbe(self.interval)
        part.lags = self.lags[:n]
        return part

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the lags (nearest rank), 0 without samples."""
        if not self.lags:
            return 0.0
        ranked = sorted(self.lags)
        return ranked[min(len(ranked) - 1, max(0, math.ceil(q * len(ranked)) - 1))]

    @property
    def p99(self) -> float:
        return self.quantile(0.99)

    @property
    def max(self) -> float:
        return max(self.lags, default=0.0)

    def summary(self) -> str:
        """``n=…, p50/p99/max`` in milliseconds, for reports."""
        return (
            f"n={len(self.lags)} p50={self.quantile(0.5) * 1e3:.1f} ms "
            f"p99={self.p99 * 1e3:.1f} ms max={self.max * 1e3:.1f} ms"
        )
