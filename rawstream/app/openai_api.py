"""OpenAI-compatible endpoints: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

Request bodies are validated by :mod:`rawstream.sansio.openai` (chat bodies with
:mod:`rawstream.sansio.tools`, which adds ``response_format`` and tools; replies
that are tool calls are written by :mod:`rawstream.sansio.tool_calls`); errors become
OpenAI's error shape with their status. With ``"stream": true`` the response is
SSE: the role chunk at once, one chunk per delta (several tokens merged when the
client reads slower than the model writes), then the finish chunk, the usage chunk
when ``stream_options.include_usage`` is set, and ``data: [DONE]``.

Three endings that are not ``[DONE]``:

* the client leaves: the handler is cancelled, :class:`Generation` cancels the
  engine stream, nothing more is written;
* the server shuts down: the connection writes :data:`SHUTDOWN_ERROR` (an error
  event the ``openai`` SDK raises on), ``retry:``, and the chunked terminator;
* the engine fails: the stream's last event is an error event.

Overload (the engine's wait queue is full) is answered ``503`` with ``Retry-After``
before any header of a stream is sent: the engine refuses at submit, which
happens before ``start_sse``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Awaitable, Callable

from rawstream.app.generation import Generation
from rawstream.app.services import Services
from rawstream.engine.base import EngineError, GenerationRequest, Overloaded
from rawstream.sansio import tool_calls, tools
from rawstream.sansio.openai import (
    APIError,
    CompletionRequest,
    Kind,
    chat_completion_body,
    completion_id,
    error_for_result,
    models_body,
    parse_completion,
    text_completion_body,
)
from rawstream.server.exchange import Exchange

#: The last event of a stream cut by shutdown.
SHUTDOWN_ERROR = APIError(
    503, "the server is shutting down", type="server_error", code="shutting_down"
).sse()


#: How an API answers an error: the exchange, the error, the Retry-After (seconds).
Refuse = Callable[[Exchange, APIError, float | None], Awaitable[None]]


def retry_after_header(retry_after: float | None) -> list[tuple[bytes, bytes]]:
    """``Retry-After`` in whole seconds, at least 1 (RFC 9110 section 10.2.3), or none."""
    if retry_after is None:
        return []
    return [(b"retry-after", str(max(1, math.ceil(retry_after))).encode())]


async def respond_error(
    exchange: Exchange, error: APIError, retry_after: float | None = None
) -> None:
    """Answer with OpenAI's error body (and ``Retry-After`` for 503s that have one)."""
    await exchange.respond(error.status, error.body(), retry_after_header(retry_after))


async def submit_or_refuse(
    app: Services, exchange: Exchange, request: GenerationRequest, refuse: Refuse = respond_error
) -> Generation | None:
    """Admit ``request`` to the engine, or answer its refusal and return ``None``.

    The engine refuses before any work (overloaded: 503 with ``Retry-After``; a
    prompt that does not fit: 400), so no response has started yet. ``refuse``
    writes the error in the caller's API shape.
    """
    try:
        return await Generation.submit(app.engine, app.metrics, request)
    except EngineError as exc:
        error, retry = engine_error(exc)
        await refuse(exchange, error, retry)
        return None


def engine_error(exc: EngineError) -> tuple[APIError, float | None]:
    """The API error and Retry-After for an error the engine raised at submit."""
    retry = exc.retry_after if isinstance(exc, Overloaded) else None
    if exc.status == 503 and retry is None:
        retry = 1.0
    return APIError.from_engine_error(exc), retry


async def models(app: Services, exchange: Exchange) -> None:
    """``GET /v1/models``: the loaded model."""
    await exchange.respond(200, models_body([app.engine.model_name], created=app.started_at))


async def chat_completions(app: Services, exchange: Exchange) -> None:
    """``POST /v1/chat/completions``."""
    limit = app.config.max_messages
    await _completion(
        app, exchange, lambda body: tools.parse_chat_completion(body, max_messages=limit)
    )


async def completions(app: Services, exchange: Exchange) -> None:
    """``POST /v1/completions``."""
    await _completion(app, exchange, parse_completion)


async def _completion(
    app: Services, exchange: Exchange, parse: Callable[[bytes], CompletionRequest]
) -> None:
    request = await app.bodies.parse(exchange, parse)  # APIError -> 400, in App.handle
    gen = await submit_or_refuse(app, exchange, request.generation)
    if gen is None:
        return
    async with gen:
        if request.stream:
            await _stream(app, exchange, request, gen)
        else:
            await _whole(app, exchange, request, gen)


async def _whole(
    app: Services, exchange: Exchange, request: CompletionRequest, gen: Generation
) -> None:
    deltas = [delta async for delta in gen]
    result = gen.result
    assert result is not None
    exchange.log_extra["tokens"] = result.usage.completion_tokens
    error = error_for_result(result)
    if error is not None:
        await respond_error(exchange, error)
        return
    body_of = chat_completion_body if request.kind is Kind.CHAT else text_completion_body
    body_of = tool_calls.body_of(request.generation, body_of)  # a reply that may be a call
    body = body_of(
        id=completion_id(request.kind, os.urandom(12)),
        created=int(time.time()),
        model=app.engine.model_name,
        text="".join([delta.text for delta in deltas]),
        result=result,
        logprobs=None
        if request.generation.logprobs is None
        else [token for delta in deltas for token in delta.logprobs],
    )
    await exchange.respond(200, body)


async def _stream(
    app: Services, exchange: Exchange, request: CompletionRequest, gen: Generation
) -> None:
    encoder = tool_calls.chunk_encoder(  # ChunkEncoder, or one for calls
        request,
        id=completion_id(request.kind, os.urandom(12)),
        created=int(time.time()),
        model=app.engine.model_name,
        include_usage=request.include_usage,
    )
    sse = await exchange.start_sse(shutdown_event=SHUTDOWN_ERROR)
    first = encoder.start()
    if first:
        await sse.send(first)
    tokens = 0
    async for delta in gen:
        tokens += delta.tokens
        data = encoder.delta(delta.text, delta.logprobs)
        if data:  # a tool call's encoder holds text back until the call's name is whole
            await sse.send(data)
    exchange.log_extra["tokens"] = tokens
    result = gen.result
    assert result is not None
    await sse.end(encoder.finish(result))
