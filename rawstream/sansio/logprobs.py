"""Log-probabilities in OpenAI's two JSON formats, as pure functions.

The engine hands over one :class:`~rawstream.sansio.values.TokenLogprob` per
generated token: its text, its exact bytes, its log-probability and, when asked
for, the most likely tokens at that position. This module writes them the way
each endpoint's clients expect:

- **Chat** (``logprobs: true``, ``top_logprobs`` 0 to 20), the object OpenAI puts
  in ``choices[0].logprobs`` of a ``chat.completion`` and of each streamed chunk::

      {"content": [{"token": "Hi", "logprob": -0.12, "bytes": [72, 105],
                    "top_logprobs": [{"token": "Hi", "logprob": -0.12, "bytes": [72, 105]},
                                     ...]}]}

  ``bytes`` are the token's raw bytes: a token may hold part of a UTF-8 character,
  whose ``token`` text then shows U+FFFD; joining the bytes of consecutive tokens
  gives the exact text.
- **Completions** (``logprobs`` 0 to 5), OpenAI's legacy format: parallel lists ::

      {"tokens": ["Hi"], "token_logprobs": [-0.12],
       "top_logprobs": [{"Hi": -0.12, "Hello": -2.3}], "text_offset": [0]}

  Each ``top_logprobs`` entry maps the text of the most likely tokens to their
  log-probability, and, as OpenAI documents ("the API will always return the
  logprob of the sampled token, so there may be up to logprobs+1 elements"), the
  sampled token's too. Two tokens with the same text share one key: the likelier
  one's. ``text_offset`` is the character offset of each token in the generated
  text, counted over the whole response (:class:`TextOffsets` carries it from one
  streamed chunk to the next).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any

from rawstream.sansio.values import TokenLogprob

__all__ = [
    "MAX_COMPLETION_LOGPROBS",
    "MAX_TOP_LOGPROBS",
    "TextOffsets",
    "chat_logprobs",
    "completion_logprobs",
]

#: Largest ``top_logprobs`` of a chat request (OpenAI's bound).
MAX_TOP_LOGPROBS = 20
#: Largest ``logprobs`` of a completion request (OpenAI's bound).
MAX_COMPLETION_LOGPROBS = 5


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> dict[str, Any]:
    """The chat ``logprobs`` object for ``tokens``, in the order generated."""
    return {"content": [_chat_token(token) for token in tokens]}


def _chat_token(token: TokenLogprob) -> dict[str, Any]:
    return {
        "token": token.text,
        "logprob": token.logprob,
        "bytes": list(token.piece),
        "top_logprobs": [
            {"token": alt.text, "logprob": alt.logprob, "bytes": list(alt.piece)}
            for alt in token.top
        ],
    }


class TextOffsets:
    """Character offsets of consecutive tokens in the text they make up.

    A token's offset is the number of characters its predecessors complete. The
    bytes are decoded incrementally, so a character split over two tokens counts
    once, where it is completed, as it does in the text itself.
    """

    __slots__ = ("_chars", "_decoder")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chars = 0

    def take(self, piece: bytes) -> int:
        """The offset of the token whose bytes are ``piece``; then move past it."""
        offset = self._chars
        self._chars += len(self._decoder.decode(piece))
        return offset


def completion_logprobs(
    tokens: Sequence[TokenLogprob], offsets: TextOffsets | None = None
) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object for ``tokens``.

    ``offsets`` carries ``text_offset`` over from the previous chunk of a stream;
    without it the tokens start the text.
    """
    if offsets is None:
        offsets = TextOffsets()
    return {
        "tokens": [token.text for token in tokens],
        "token_logprobs": [token.logprob for token in tokens],
        "top_logprobs": [_top_map(token) for token in tokens],
        "text_offset": [offsets.take(token.piece) for token in tokens],
    }


def _top_map(token: TokenLogprob) -> dict[str, float]:
    top: dict[str, float] = {}
    for alt in token.top:  # most likely first: a repeated text keeps the likelier one
        top.setdefault(alt.text, alt.logprob)
    top.setdefault(token.text, token.logprob)
    return top
