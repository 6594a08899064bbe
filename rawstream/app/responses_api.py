"""``POST /v1/responses``: the OpenAI Responses API, JSON or SSE.

The body is validated by :mod:`rawstream.sansio.responses`; errors are OpenAI's
error shape with their status, as for chat completions (the request goes through
the same :class:`~rawstream.app.generation.Generation` path). With ``"stream":
true`` the answer is SSE: the four opening events at once, one
``response.output_text.delta`` per delta, then the ``.done`` events and
``response.completed`` (or ``response.incomplete`` at ``max_output_tokens``).

Endings that are not ``response.completed``:

* the client leaves: the handler is cancelled, :class:`Generation` cancels the
  engine stream, nothing more is written;
* the engine fails or cancels the stream: the last event is ``response.failed``;
* the server shuts down: the handler, cancelled, writes ``response.failed`` itself
  before the connection ends the response. Every event carries the next
  ``sequence_number`` and the failed response carries the text so far, which a
  fixed shutdown event written by the connection could not know.

Overload is answered ``503`` with ``Retry-After`` before any stream starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from rawstream.app.generation import Generation
from rawstream.app.openai_api import respond_error, submit_or_refuse
from rawstream.app.services import Services
from rawstream.sansio.openai import APIError, error_for_result
from rawstream.sansio.responses import (
    ResponseEncoder,
    ResponseObject,
    ResponsesRequest,
    message_item_id,
    parse_response_request,
    response_body,
    response_id,
)
from rawstream.server.exchange import Exchange
from rawstream.server.sse import SSEStream

#: Why a stream cut by shutdown failed.
SHUTTING_DOWN = APIError(
    503, "the server is shutting down", type="server_error", code="shutting_down"
)


async def responses(app: Services, exchange: Exchange) -> None:
    """``POST /v1/responses``."""
    limit = app.config.max_messages
    request = await app.bodies.parse(
        exchange, lambda body: parse_response_request(body, max_messages=limit)
    )  # APIError -> 400, in App.handle
    gen = await submit_or_refuse(app, exchange, request.generation)
    if gen is None:
        return
    response = ResponseObject(
        id=response_id(os.urandom(12)),
        created_at=int(time.time()),
        model=app.engine.model_name,
        request=request,
    )
    item_id = message_item_id(os.urandom(12))
    if request.stream:
        await _stream(exchange, gen, ResponseEncoder(response, item_id=item_id))
        return
    async with gen:
        await _whole(exchange, request, gen, response, item_id)


async def _whole(
    exchange: Exchange,
    request: ResponsesRequest,
    gen: Generation,
    response: ResponseObject,
    item_id: str,
) -> None:
    text = "".join([delta.text async for delta in gen])
    result = gen.result
    assert result is not None
    exchange.log_extra["tokens"] = result.usage.completion_tokens
    error = error_for_result(result)
    if error is not None:
        await respond_error(exchange, error)
        return
    body = response_body(
        response, item_id=item_id, text=text, result=result, completed_at=int(time.time())
    )
    await exchange.respond(200, body)


async def _stream(exchange: Exchange, gen: Generation, encoder: ResponseEncoder) -> None:
    sse = await exchange.start_sse()
    # The bytes of a send() that has not returned: if shutdown cancels it while the
    # client is not reading, they were not written, and must come first.
    unsent = b""
    try:
        async with gen:
            unsent = encoder.start()
            await sse.send(unsent)
            unsent = b""
            tokens = 0
            async for delta in gen:
                tokens += delta.tokens
                unsent = encoder.delta(delta.text)
                await sse.send(unsent)
                unsent = b""
            exchange.log_extra["tokens"] = tokens
        assert gen.result is not None
        unsent = encoder.finish(gen.result, completed_at=int(time.time()))
        await sse.end(unsent)
    except asyncio.CancelledError:
        if exchange.shutting_down and not sse.closed:
            # A generation that ended says so (its last events were only waiting for
            # the client to read); one cut short says why it failed.
            tail = unsent if encoder.ended else unsent + encoder.fail(SHUTTING_DOWN)
            await _end_for_shutdown(sse, tail)
        raise


async def _end_for_shutdown(sse: SSEStream, final: bytes) -> None:
    """Write the last events of a stream that shutdown cancelled, if the client is there.

    The connection ends the stream of a cancelled handler only if the handler did
    not: once this returns, the response is complete and the connection closes, as
    after any response during shutdown.
    """
    with contextlib.suppress(ConnectionError):
        await sse.end(final)
