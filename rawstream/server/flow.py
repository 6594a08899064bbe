"""Flow control of one connection: the only code that pauses and resumes a transport.

asyncio flow control has two directions, and each has its own signal:

* **Writing.** ``transport.write()`` never blocks; it appends to the transport's
  buffer. When that buffer grows past the *high-water mark* set with
  ``set_write_buffer_limits``, the loop calls the protocol's ``pause_writing()``;
  when it drains below the low-water mark, ``resume_writing()``. A producer that
  ignores the signal grows the buffer without bound. Here every producer awaits
  :meth:`FlowControl.wait_writable` before it writes, and the write buffer limits
  are small (``--write-high-water``, 16 KiB by default), so a slow reader costs at
  most that much memory in the transport.

* **Reading.** ``pause_reading()`` stops the loop from reading the socket; the
  kernel's receive buffer fills, the TCP window closes and the peer stops sending.
  Several reasons can want reading paused at once (a full request-body buffer, a
  backlog of unread WebSocket messages, a peer that sends but does not read);
  reading resumes only when none is left. :class:`ReadPause` names them.

* **Both.** A peer that keeps sending while it reads nothing of what we write
  (writing is paused) may be read for at most the high-water mark more bytes
  (:meth:`FlowControl.received`); then reading pauses with
  ``ReadPause.WRITE_BACKLOG`` until writing resumes. Whatever that peer's frames
  ask for (a pong per ping) waits meanwhile, and the kernel pushes back on it.
  Callbacks registered with :meth:`FlowControl.call_when_writable` run when
  writing resumes, before any waiting producer.

The **stall watchdog**: a client that stops reading forever would hold its
producer (and its engine slot) forever. When writing stays paused for
``--write-stall-timeout`` seconds, the watchdog calls ``on_stall`` (the connection
aborts the transport, which cancels the producer).

Adapted in spirit from the drain mechanism of ``websockets`` and asyncio's
``FlowControlMixin``; rawstream's version adds the reasons and the watchdog.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable

from rawstream.server.errors import ConnectionGone


class ReadPause(enum.Flag):
    """Why reading is paused; reading resumes when no reason is left."""

    NONE = 0
    BODY = enum.auto()  #: request body buffered above the high-water mark
    PIPELINE = enum.auto()  #: pipelined requests buffered while one is answered
    WS_BACKLOG = enum.auto()  #: too many WebSocket messages not yet consumed
    #: more than the high-water mark received while writing is paused
    WRITE_BACKLOG = enum.auto()


class FlowControl:
    """Pause/resume state of one transport in both directions, and the watchdog."""

    __slots__ = (
        "_closed",
        "_high_water",
        "_loop",
        "_on_stall",
        "_on_writable",
        "_read_paused",
        "_received_while_paused",
        "_stall_handle",
        "_stall_timeout",
        "_transport",
        "_waiter",
        "read_pauses",
        "write_paused",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        write_high_water: int,
        stall_timeout: float,
        on_stall: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._on_stall = on_stall
        self._stall_timeout = stall_timeout
        self._stall_handle: asyncio.TimerHandle | None = None
        self._read_paused = ReadPause.NONE
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._high_water = write_high_water
        self._received_while_paused = 0
        self._on_writable: list[Callable[[], None]] = []
        #: True between the loop's pause_writing() and resume_writing() calls.
        self.write_paused = False
        #: How many times reading has stopped (a peer's answer may have waited unread).
        self.read_pauses = 0
        transport.set_write_buffer_limits(high=write_high_water, low=write_high_water // 4)

    # --- reading -------------------------------------------------------------------
    def pause_reading(self, reason: ReadPause) -> None:
        """Add ``reason`` to the reasons to stop reading."""
        if not self._read_paused and not self._closed:
            self._transport.pause_reading()
            self.read_pauses += 1
        self._read_paused |= reason

    def resume_reading(self, reason: ReadPause) -> None:
        """Drop ``reason``; resume reading when no reason is left."""
        if not self._read_paused & reason:
            return
        self._read_paused &= ~reason
        if not self._read_paused and not self._closed:
            self._transport.resume_reading()

    def received(self, size: int) -> None:
        """Count ``size`` bytes just received from a peer that may not be reading.

        While writing is paused, past the high-water mark of such bytes reading
        pauses (``ReadPause.WRITE_BACKLOG``) until writing resumes.
        """
        if not self.write_paused:
            return
        self._received_while_paused += size
        if self._received_while_paused > self._high_water:
            self.pause_reading(ReadPause.WRITE_BACKLOG)

    @property
    def read_paused(self) -> ReadPause:
        """The reasons reading is paused for (``ReadPause.NONE`` when reading)."""
        return self._read_paused

    # --- writing: called by the protocol's callbacks ----------------------------------
    def pause_writing(self) -> None:
        """The transport's buffer is above the high-water mark."""
        self.write_paused = True
        if self._stall_timeout > 0:
            self._stall_handle = self._loop.call_later(self._stall_timeout, self._stalled)

    def resume_writing(self) -> None:
        """The transport's buffer drained below the low-water mark."""
        self.write_paused = False
        if self._stall_handle is not None:
            self._stall_handle.cancel()
            self._stall_handle = None
        callbacks, self._on_writable = self._on_writable, []
        for callback in callbacks:
            callback()
        self._received_while_paused = 0
        self.resume_reading(ReadPause.WRITE_BACKLOG)
        self._wake(None)

    def connection_lost(self) -> None:
        """The transport is gone: fail every waiting producer, stop the watchdog."""
        self._closed = True
        if self._stall_handle is not None:
            self._stall_handle.cancel()
            self._stall_handle = None
        self._on_writable.clear()
        self._wake(ConnectionGone("connection closed"))

    # --- producers ----------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether the transport is gone."""
        return self._closed

    def call_when_writable(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once when writing resumes (at once if it is not paused).

        For control data that must not pile up while the peer is not reading: the
        caller keeps only the latest of it and writes that from ``callback``.
        """
        if not self.write_paused:
            callback()
        elif not self._closed:
            self._on_writable.append(callback)

    async def wait_writable(self) -> None:
        """Return when the transport can take more data.

        Raises :class:`ConnectionGone` if the connection is lost before (or while)
        waiting, so a producer never writes into a dead transport silently.
        """
        if self._closed:
            raise ConnectionGone("connection closed")
        if not self.write_paused:
            return
        if self._waiter is None or self._waiter.done():
            self._waiter = self._loop.create_future()
        await asyncio.shield(self._waiter)

    def _wake(self, exc: BaseException | None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)
                # Mark retrieved: nobody may be awaiting a waiter that was shielded.
                waiter.exception()

    def _stalled(self) -> None:
        self._stall_handle = None
        if self.write_paused and not self._closed:
            self._on_stall()
