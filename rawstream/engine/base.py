"""The engine interface: what the server and the app may rely on.

An engine turns a :class:`GenerationRequest` into a :class:`GenerationStream`, an
async iterator of :class:`Delta` values followed by one :class:`Result`. The interface
knows nothing of HTTP or WebSocket, so an in-process model, a fake, or (later) a pool
of upstream servers can all implement it.

Threading contract: every method here is called on the event loop's thread. An
engine that works in another thread hands results back with
``loop.call_soon_threadsafe`` (one hop per decode step, not per token).

Backpressure contract: a stream buffers at most ``buffer_tokens`` tokens that its
consumer has not read yet. While the buffer is full the engine skips that stream
(it does not decode for it) and every other stream carries on. Reading from the
stream drains the buffer; when several deltas are waiting, ``__anext__`` returns
them merged into one, so a slow consumer gets fewer, larger deltas.

Cancellation contract: :meth:`GenerationStream.cancel` is idempotent and never
blocks. The engine stops work for the stream before its next step and frees the
slot; the stream then ends with ``finish_reason == FinishReason.CANCELLED``.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from rawstream.sansio.values import (
    ChatMessage,
    Delta,
    FinishReason,
    GenerationRequest,
    Result,
    Timings,
    TokenLogprob,
    Usage,
)


class EngineState(enum.StrEnum):
    """Lifecycle of an engine: loading -> ready -> stopped (or failed)."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


class EngineError(Exception):
    """Base of the errors :meth:`Engine.submit` raises before any work starts."""

    #: Suggested HTTP status for the app to answer with.
    status: int = 500
    #: OpenAI-style error type and code.
    type: str = "server_error"
    code: str | None = None


class InvalidRequest(EngineError):
    """The request cannot be served (e.g. the prompt is longer than the context)."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class Overloaded(EngineError):
    """Every slot is busy and the wait queue is full; retry after ``retry_after`` s."""

    status = 503
    type = "server_error"
    code = "overloaded"

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"server overloaded, retry after {retry_after:.0f} s")
        self.retry_after = retry_after


class NotReady(EngineError):
    """The engine is still loading, has failed, or is stopped."""

    status = 503
    type = "server_error"
    code = "not_ready"


class GenerationStream(abc.ABC):
    """The consumer's end of one generation.

    ``async for delta in stream`` yields text as it is generated; when iteration
    ends, :attr:`result` is set. An engine failure ends iteration too, with
    ``result.finish_reason == FinishReason.ERROR``; it never raises from the
    iterator. :meth:`cancel` may be called at any time, also after the end.
    """

    id: int
    #: Tokens of the rendered prompt (known at submit).
    prompt_tokens: int

    @property
    @abc.abstractmethod
    def result(self) -> Result | None:
        """The outcome, once the stream has ended; ``None`` before."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop generating; idempotent, never blocks."""

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[Delta]: ...

    @abc.abstractmethod
    async def wait_result(self) -> Result:
        """Wait for the end without reading (draining and discarding the text)."""


@dataclass(frozen=True, slots=True)
class EngineStatistics:
    """A snapshot of an engine's counters; the app exports them as metrics."""

    state: EngineState
    slots: int
    busy_slots: int
    active_streams: int
    queued_streams: int
    paused_streams: int
    prompt_tokens_total: int  #: prompt tokens decoded
    completion_tokens_total: int
    decode_steps_total: int
    decode_seconds_total: float
    batch_tokens_total: int  #: sum of tokens over all decode calls
    cancelled_total: int
    #: prompt tokens not decoded because their KV was kept from an earlier stream
    prefix_cached_tokens_total: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(abc.ABC):
    """A source of generation streams."""

    #: Name reported by ``/v1/models`` and in responses.
    model_name: str

    @property
    @abc.abstractmethod
    def state(self) -> EngineState: ...

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model (without blocking the loop); state becomes READY or FAILED."""

    @abc.abstractmethod
    async def submit(self, request: GenerationRequest) -> GenerationStream:
        """Admit a request or raise an :class:`EngineError`, before any decoding.

        A coroutine, so that an engine can prepare the prompt (render a chat
        template, tokenise) off the event loop: a huge request must not stall
        every other connection.

        Raises :class:`Overloaded` when the wait queue is full, :class:`NotReady`
        before ``start()`` has finished, :class:`InvalidRequest` for a prompt that
        does not fit the context or a model without a chat template.
        """

    @abc.abstractmethod
    def statistics(self) -> EngineStatistics:
        """Counters for metrics and health."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Cancel every stream and release the model."""


def check_max_tokens(request: GenerationRequest) -> None:
    """Refuse a ``max_tokens`` below 1 (:class:`InvalidRequest`, ``invalid_max_tokens``).

    Every engine checks a request with this and :func:`check_prompt_length`, so they
    refuse the same requests with the same codes and messages.
    """
    if request.max_tokens is not None and request.max_tokens < 1:
        raise InvalidRequest("max_tokens must be at least 1", code="invalid_max_tokens")


def check_prompt_length(prompt_tokens: int, ctx_per_slot: int) -> None:
    """Refuse an empty prompt, or one that leaves no room in a slot for a reply.

    Codes ``empty_prompt`` and ``context_length_exceeded``; the message of the second
    gives both lengths, so a client can tell how much to cut.
    """
    if prompt_tokens < 1:
        raise InvalidRequest("the prompt is empty", code="empty_prompt")
    if prompt_tokens >= ctx_per_slot:
        raise InvalidRequest(
            f"the prompt is {prompt_tokens} tokens; the context of a stream is "
            f"{ctx_per_slot} tokens, with room for at least one generated token",
            code="context_length_exceeded",
        )


async def collect(stream: GenerationStream) -> tuple[str, Result]:
    """Read a whole stream; return its text and result (for non-streaming responses)."""
    parts = [delta.text async for delta in stream]
    result = stream.result
    assert result is not None
    return "".join(parts), result


__all__ = [
    "ChatMessage",
    "Delta",
    "Engine",
    "EngineError",
    "EngineState",
    "EngineStatistics",
    "FinishReason",
    "GenerationRequest",
    "GenerationStream",
    "InvalidRequest",
    "NotReady",
    "Overloaded",
    "Result",
    "Timings",
    "TokenLogprob",
    "Usage",
    "check_max_tokens",
    "check_prompt_length",
]
