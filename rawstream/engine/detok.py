"""Incremental detokenisation: token bytes in, safe text out.

A model emits tokens, and a token is a run of *bytes*, not of characters: byte-level
BPE vocabularies split a multi-byte UTF-8 character (an emoji, most CJK characters)
over two or more tokens. Decoding each token on its own would print U+FFFD for every
half character. :class:`Utf8Decoder` keeps the incomplete tail of a character until
the token that completes it arrives.

Stop strings have the same problem one level up: ``"\\n\\nUser:"`` may arrive as
``"\\n"``, ``"\\nUs"``, ``"er:"``. Text that *could* be the start of a stop string must
not reach the client until it is resolved, because once sent it cannot be taken
back. :class:`StopMatcher` holds back the longest suffix of the text that is a prefix
of some stop string, releases it as soon as the next piece rules the match out, and
cuts the output exactly before the stop string that was complete first: the output
is what a character-by-character check would give, whatever the token boundaries.

:class:`Detokenizer` chains the two and counts tokens, so that every piece of text
it releases carries the number of tokens it came from, and, when the request asked
for them, those tokens' log-probabilities: a token whose text is held back is
released with the text, and one swallowed by a stop string is dropped with it.

Everything here is pure and synchronous: no model, no threads, no clock.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from rawstream.engine.base import TokenLogprob


class Utf8Decoder:
    """Decode a byte stream that arrives in arbitrary pieces.

    Bytes that end in the middle of a character are kept until the rest arrives.
    Bytes that can never form a character (invalid UTF-8 from the model) become
    U+FFFD, as :meth:`bytes.decode` with ``errors="replace"`` would.
    """

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, data: bytes) -> str:
        """Return the complete characters that ``data`` finishes."""
        return self._decoder.decode(data)

    @property
    def pending(self) -> bool:
        """Whether an incomplete character is waiting for its remaining bytes."""
        return bool(self._decoder.getstate()[0])


class StopMatcher:
    """Release text, holding back what may still become a stop string.

    Call :meth:`feed` with each new piece of text; it returns the text that is now
    safe to send. Once a stop string is complete, :attr:`stopped` is true and the
    returned text ends exactly before it. At the natural end of generation,
    :meth:`flush` releases what was held back (it did not turn into a stop string).
    """

    __slots__ = ("_held", "_stops", "stopped")

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self._stops = tuple(s for s in stops if s)  # "" would match everywhere
        self._held = ""
        self.stopped = False

    @property
    def held(self) -> str:
        """Text received but not released yet."""
        return self._held

    def feed(self, text: str) -> str:
        """Add ``text``; return the part of the output that can be released now."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buf = self._held + text
        # The stop string that was complete first (smallest end; on a tie, the longer
        # one) wins, so the result does not depend on how the text was split into
        # tokens. A match cannot start inside text released earlier: that text had no
        # suffix that begins a stop string.
        cut = end = -1
        for stop in self._stops:
            i = buf.find(stop)
            if i != -1 and (end == -1 or (i + len(stop), i) < (end, cut)):
                cut, end = i, i + len(stop)
        if cut != -1:
            self.stopped = True
            self._held = ""
            return buf[:cut]
        keep = self._longest_partial(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """Release the held-back text at the end of generation."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_partial(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a stop."""
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:k]):
                    best = k
                    break
        return best


@dataclass(slots=True)
class Piece:
    """Text released by :class:`Detokenizer` and the tokens it accounts for.

    ``logprobs`` holds one entry per token when they were fed with one, else none.
    Not frozen: one is made for nearly every token, and a frozen dataclass pays an
    ``object.__setattr__`` per field (2.4 times the cost of three plain stores).
    """

    text: str
    tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()


class Detokenizer:
    """Token bytes in, releasable text out: UTF-8 reassembly, then stop strings.

    Tokens whose text is still held back (half a character, or a possible start of
    a stop string) are counted into the next piece that is released, so the token
    counts of all pieces add up to the tokens fed, except for tokens whose text was
    cut by a stop string or by the end of generation. Log-probabilities follow the
    same rule: a piece carries those of exactly the tokens it counts.

    A token that a stop string cuts in the middle (``"ok.\\n"`` with the stop
    ``"\\n"``) counts in the piece that releases its first part, so its text reaches
    past the piece's; a token wholly inside the stop string is dropped.
    """

    __slots__ = ("_logprobs", "_stops", "_unreleased", "_utf8")

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self._utf8 = Utf8Decoder()
        self._stops = StopMatcher(stops)
        self._unreleased = 0
        self._logprobs: list[TokenLogprob] = []

    @property
    def stopped(self) -> bool:
        """Whether a stop string has completed; no more text will be released."""
        return self._stops.stopped

    def feed(self, data: bytes, logprob: TokenLogprob | None = None) -> Piece | None:
        """Add one token's bytes (and its log-probability); return what it releases."""
        self._unreleased += 1
        text = self._stops.feed(self._utf8.decode(data))
        if logprob is not None:  # then every token of the stream has one
            self._logprobs.append(logprob)
            return self._release(text) if text else None
        if not text:
            return None
        piece = Piece(text, self._unreleased)  # the plain path, for every token: inline
        self._unreleased = 0
        return piece

    def finish(self) -> Piece | None:
        """End of generation: release held text that did not become a stop string.

        An incomplete character at the very end (generation stopped between the
        bytes of one character) is dropped rather than sent as U+FFFD.
        """
        text = self._stops.flush()
        if not text:
            return None
        return self._release(text)

    def _release(self, text: str) -> Piece:
        if self._logprobs:
            piece = Piece(text, self._unreleased, tuple(self._logprobs))
            self._logprobs.clear()
        else:
            piece = Piece(text, self._unreleased)
        self._unreleased = 0
        return piece
