"""``POST /v1/messages``: the Anthropic Messages API, JSON or SSE.

The body is validated by :mod:`rawstream.sansio.anthropic`, and every error this
endpoint answers is in Anthropic's shape ``{"type": "error", "error": {...}}``
(which the ``anthropic`` SDK turns into its typed exceptions): a bad request is
``400 invalid_request_error``, a full queue ``529 overloaded_error`` with
``Retry-After``, a model still loading ``503``. What the app answers before this
endpoint runs keeps rawstream's common OpenAI shape: ``401`` for a missing key
(the SDK sends it as ``x-api-key``, which the server accepts like a Bearer token),
``404``/``405`` and ``413``; the SDK raises its exception for the status all the
same.

With ``"stream": true`` the answer is SSE: ``message_start``,
``content_block_start`` and ``ping`` at once, one ``content_block_delta`` per delta,
then ``content_block_stop``, ``message_delta`` and ``message_stop``. Endings that are
not ``message_stop``, as for chat completions:

* the client leaves: the handler is cancelled, :class:`Generation` cancels the
  engine stream, nothing more is written;
* the server shuts down: the connection writes :data:`SHUTDOWN_ERROR`
  (``event: error``, ``overloaded_error``), ``retry:`` and the chunked terminator;
* the engine fails or cancels the stream: the last event is ``event: error``.

The ``stop_sequence`` of a stop is reported as ``null`` with ``end_turn``: the
engine cuts the text before the stop string that matched but does not say which
one, or whether it stopped at the end-of-generation token instead.
"""

from __future__ import annotations

import os

from rawstream.app.generation import Generation
from rawstream.app.openai_api import retry_after_header, submit_or_refuse
from rawstream.app.services import Services
from rawstream.sansio.anthropic import (
    MessageEncoder,
    MessagesRequest,
    error_body,
    error_event,
    error_status,
    message_body,
    message_id,
    parse_messages_request,
)
from rawstream.sansio.openai import APIError, error_for_result
from rawstream.server.exchange import Exchange

#: The last event of a stream cut by shutdown.
SHUTDOWN_ERROR = error_event(
    APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
)


async def respond_error(
    exchange: Exchange, error: APIError, retry_after: float | None = None
) -> None:
    """Answer with Anthropic's error body and status (``Retry-After`` when given)."""
    await exchange.respond(error_status(error), error_body(error), retry_after_header(retry_after))


async def messages(app: Services, exchange: Exchange) -> None:
    """``POST /v1/messages``."""
    try:
        limit = app.config.max_messages
        request = await app.bodies.parse(
            exchange, lambda body: parse_messages_request(body, max_messages=limit)
        )
    except APIError as refused:
        await respond_error(exchange, refused)
        return
    gen = await submit_or_refuse(app, exchange, request.generation, respond_error)
    if gen is None:
        return
    async with gen:
        if request.stream:
            await _stream(app, exchange, request, gen)
        else:
            await _whole(app, exchange, request, gen)


async def _whole(
    app: Services, exchange: Exchange, request: MessagesRequest, gen: Generation
) -> None:
    text = "".join([delta.text async for delta in gen])
    result = gen.result
    assert result is not None
    exchange.log_extra["tokens"] = result.usage.completion_tokens
    error = error_for_result(result)
    if error is not None:
        await respond_error(exchange, error)
        return
    body = message_body(
        id=message_id(os.urandom(12)),
        model=app.engine.model_name,
        text=text,
        result=result,
        max_tokens=request.max_tokens,
    )
    await exchange.respond(200, body)


async def _stream(
    app: Services, exchange: Exchange, request: MessagesRequest, gen: Generation
) -> None:
    encoder = MessageEncoder(
        id=message_id(os.urandom(12)),
        model=app.engine.model_name,
        input_tokens=gen.stream.prompt_tokens,
    )
    sse = await exchange.start_sse(shutdown_event=SHUTDOWN_ERROR)
    await sse.send(encoder.start())
    tokens = 0
    async for delta in gen:
        tokens += delta.tokens
        await sse.send(encoder.delta(delta.text))
    exchange.log_extra["tokens"] = tokens
    result = gen.result
    assert result is not None
    await sse.end(encoder.finish(result, max_tokens=request.max_tokens))
