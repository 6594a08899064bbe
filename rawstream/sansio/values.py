"""The values of a generation that the engine and the protocols share.

A leaf module: it imports nothing of rawstream (and nothing beyond the standard
library's ``enum`` and ``dataclasses``), so the pure protocol code in
:mod:`rawstream.sansio` can build and read requests and results without loading
the engine, its threads or llama.cpp. :mod:`rawstream.engine.base` re-exports
every name here as part of the engine interface.

- :class:`GenerationRequest`: what to generate (chat messages or a prompt) and how
  to sample it; :class:`ChatMessage` one message of a chat.
- :class:`Delta`: new text of a stream; :class:`Result`: how it ended, with its
  :class:`FinishReason`, :class:`Usage` and :class:`Timings`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "ChatMessage",
    "Delta",
    "FinishReason",
    "GenerationRequest",
    "Result",
    "Timings",
    "TokenLogprob",
    "Usage",
]


class FinishReason(enum.StrEnum):
    """Why a stream ended. The first two are OpenAI's values."""

    STOP = "stop"  #: end-of-generation token or a stop string
    LENGTH = "length"  #: max_tokens reached, or the context is full
    CANCELLED = "cancelled"  #: the consumer (or shutdown) cancelled it
    ERROR = "error"  #: the engine failed; see :attr:`Result.error`


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a chat; ``role`` is system, user, assistant or tool."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What to generate and how to sample it.

    Exactly one of ``messages`` (rendered with the model's chat template) and
    ``prompt`` (used verbatim) is set. ``max_tokens=None`` means until the end of
    generation or the slot's context is full.
    """

    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  #: 0 disables top-k
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    #: Log-probabilities: ``None`` for none; ``N`` (0 to 20) for the chosen token's
    #: and those of the ``N`` most likely tokens at each position.
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("set exactly one of messages and prompt")


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token with its log-probability (natural log, <= 0).

    ``text`` is the token's piece decoded as UTF-8 with replacement (a token may
    hold part of a character); ``piece`` is its exact bytes. ``top`` holds the most
    likely tokens at that position, most likely first, when they were asked for.
    """

    text: str
    piece: bytes
    logprob: float
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Delta:
    """New text of a stream, the number of tokens it came from, and their
    log-probabilities when the request asked for them (one per token)."""

    text: str
    tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts in OpenAI's sense."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Timings:
    """Where the time of one stream went, in seconds."""

    queued: float = 0.0  #: submit -> slot assigned
    prompt: float = 0.0  #: slot assigned -> first token sampled
    generation: float = 0.0  #: first token -> end
    cancel_latency: float | None = None  #: cancel() -> slot freed, when cancelled


@dataclass(frozen=True, slots=True)
class Result:
    """How a stream ended."""

    finish_reason: FinishReason
    usage: Usage
    timings: Timings = field(default_factory=Timings)
    error: str | None = None
