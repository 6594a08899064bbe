"""Reading and parsing request bodies without monopolising the event loop.

Parsing a JSON body happens on the loop: it is the protocol ring's pure code, and
for an ordinary request it takes microseconds. A body near ``--max-body-bytes`` is
different: ``json.loads`` of 1 MiB takes about 15 ms, and while it runs no other
connection is served. One such body is a short stall; eight that arrive together
used to be parsed back to back in one turn of the loop, a stall of 120 ms for
every stream.

So large bodies take turns: :meth:`BodyParser.parse` lets at most one body above
:data:`LARGE_BODY` bytes be parsed per turn of the loop, and yields between two of
them, so the timers and sockets of every other connection are served between any
two large parses. Threads would not help here: ``json.loads`` holds the GIL, and
the loop could not run beside it anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from rawstream.server.exchange import Exchange

__all__ = ["LARGE_BODY", "BodyParser"]

T = TypeVar("T")

#: Bodies at least this large (bytes) are parsed one per turn of the loop. A chat
#: request with a long conversation is a few tens of KiB; 64 KiB of JSON parses in
#: about one millisecond.
LARGE_BODY = 65536


class BodyParser:
    """Reads a request body and parses it, large ones one at a time."""

    def __init__(self) -> None:
        self._turn = asyncio.Lock()

    async def parse(self, exchange: Exchange, parse: Callable[[bytes], T]) -> T:
        """Read ``exchange``'s whole body and return ``parse(body)``.

        ``parse`` raises :class:`~rawstream.sansio.openai.APIError` (or the API's
        own error) for a body it refuses; that propagates to the caller.
        """
        body = await exchange.body()
        if len(body) < LARGE_BODY:
            return parse(body)
        async with self._turn:
            try:
                return parse(body)
            finally:
                # Let one turn of the loop pass before the next large body is parsed.
                await asyncio.sleep(0)
