"""The fake engine's log-probabilities: a fixed distribution over its words.

:class:`~rawstream.engine.fake.FakeEngine` picks each word with a 64-bit linear
congruential generator (the top 6 bits of its state). For a request that asks
for log-probabilities, the same state also ranks the vocabulary at that position:

- the rank of the chosen word is the state's bits 54-55, so it is one of the four
  most likely words (not always the first, as with a sampler at temperature 1);
- the other words follow in vocabulary order, starting after the chosen one;
- rank ``r`` has the log-probability :data:`RANK_LOGPROBS` ``[r]``: weights
  ``1 / (r + 1)`` normalised over the vocabulary (Zipf's law), so the values are
  negative, decrease with the rank and their probabilities sum to 1.

What that guarantees, as the real engine does: every value is <= 0, the
alternatives are exactly the number asked for, most likely first, and when the
chosen word is among them it has the same log-probability there. It is the same
for the same request every time. A token's text is its word with the leading
space the fake's text puts before every word but the first.

A reply the fake writes from a script (the minimal instance of a schema, as a
grammar would force it) ranks each scripted token first, the words after it
(:func:`scripted_logprob`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from rawstream.engine.base import TokenLogprob

__all__ = ["RANK_LOGPROBS", "scripted_logprob", "word_logprob"]

_VOCABULARY_SIZE = 64
_WEIGHTS = [1.0 / (rank + 1) for rank in range(_VOCABULARY_SIZE)]
#: The log-probability of the word at each rank (most likely first).
RANK_LOGPROBS: tuple[float, ...] = tuple(math.log(w / math.fsum(_WEIGHTS)) for w in _WEIGHTS)


def word_logprob(state: int, index: int, top: int, words: Sequence[str]) -> TokenLogprob:
    """The log-probability of the word that ``state`` chose as token ``index``.

    ``state`` is the generator's state after the step that chose the word (the
    word is ``words[state >> 58]``); ``top`` the number of alternatives asked for.
    """
    chosen = state >> 58
    rank = (state >> 54) & 3
    text = _text(words[chosen], index)
    return TokenLogprob(
        text,
        text.encode(),
        RANK_LOGPROBS[rank],
        _alternatives(tuple(words), chosen, rank, index == 0, top),
    )


def scripted_logprob(
    text: str, state: int, index: int, top: int, words: Sequence[str]
) -> TokenLogprob:
    """The log-probability of ``text``, forced as token ``index`` of a scripted reply.

    ``text`` ranks first; after it come the words that ``state`` ranks most likely
    (as :func:`word_logprob` ranks them), but for one with the same text.
    """
    ranked = _alternatives(tuple(words), state >> 58, 0, index == 0, top)
    others = [alt for alt in ranked if alt.text != text][: max(top - 1, 0)]
    chosen = TokenLogprob(text, text.encode(), RANK_LOGPROBS[0])
    shifted = [TokenLogprob(a.text, a.piece, RANK_LOGPROBS[r + 1]) for r, a in enumerate(others)]
    return TokenLogprob(text, chosen.piece, chosen.logprob, (chosen, *shifted)[:top])


def _text(word: str, index: int) -> str:
    return " " + word if index else word


@functools.lru_cache(maxsize=4096)
def _alternatives(
    words: tuple[str, ...], chosen: int, rank: int, first: bool, top: int
) -> tuple[TokenLogprob, ...]:
    """The ``top`` most likely words when ``chosen`` has ``rank``, most likely first."""
    alternatives = []
    for r in range(min(top, len(words))):
        offset = r + 1 if r < rank else 0 if r == rank else r
        text = _text(words[(chosen + offset) % len(words)], 0 if first else 1)
        alternatives.append(TokenLogprob(text, text.encode(), RANK_LOGPROBS[r]))
    return tuple(alternatives)
