"""Admission: how many streams an engine accepts, and what to tell the rest.

An engine has ``slots`` streams in progress and a wait queue of ``max_queue`` more.
A request that finds both full is refused at once with
:class:`~rawstream.engine.base.Overloaded`, before any work and before the app has
committed a response header, so the app can still answer 503 with ``Retry-After``.

The ``retry_after`` estimate is the time for the queue ahead of a new request to move
by one full round of slots: ``(queued + 1) / slots`` times the recent mean duration of
a stream (an exponentially weighted moving average), at least one second, since
``Retry-After`` counts whole seconds.

This object lives on the event loop's thread; it is plain counting, no locks.
"""

from __future__ import annotations

import math

from rawstream.engine.base import Overloaded

__all__ = ["Admission"]

#: Weight of the newest stream duration in the moving average.
_EWMA_ALPHA = 0.2
#: Assumed duration of a stream before any has finished, in seconds.
_INITIAL_DURATION = 5.0


class Admission:
    """Count streams admitted to an engine; refuse past ``slots + max_queue``."""

    __slots__ = ("_mean_duration", "admitted", "max_queue", "slots")

    def __init__(self, slots: int, max_queue: int) -> None:
        self.slots = max(1, slots)
        self.max_queue = max(0, max_queue)
        #: Streams accepted and not finished yet (running or waiting).
        self.admitted = 0
        self._mean_duration = _INITIAL_DURATION

    @property
    def queued(self) -> int:
        """Streams waiting for a slot, as seen from the loop."""
        return max(0, self.admitted - self.slots)

    def retry_after(self) -> float:
        """Seconds after which a refused request may find room."""
        rounds = (self.queued + 1) / self.slots
        return float(max(1, math.ceil(rounds * self._mean_duration)))

    def admit(self) -> None:
        """Take a place for a new stream or raise :class:`Overloaded`."""
        if self.admitted >= self.slots + self.max_queue:
            raise Overloaded(self.retry_after())
        self.admitted += 1

    def release(self, duration: float) -> None:
        """Give back the place of a stream that ended after ``duration`` seconds."""
        self.admitted -= 1
        self._mean_duration += _EWMA_ALPHA * (duration - self._mean_duration)

    def refund(self) -> None:
        """Give back a place whose stream never started (its prompt was refused).

        The mean duration is left alone: a refusal says nothing about how long
        streams take.
        """
        self.admitted -= 1
