"""The framework peer: rawstream's endpoints on FastAPI + uvicorn + sse-starlette.

This server exists only to be measured against rawstream. It serves the same
endpoints from the same engine (``create_engine(config)``, fake or llama), parses
requests with the same :mod:`rawstream.sansio.openai` functions and encodes chunks
with the same :class:`~rawstream.sansio.openai.ChunkEncoder` and
:class:`~rawstream.sansio.wsmux.StreamTable`, so that the only difference between
the two servers is the protocol stack: ASGI, Starlette, sse-starlette and uvicorn's
h11 or httptools HTTP and websockets WebSocket, against rawstream's own h11/wsproto
protocol classes.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``
(streaming and not), and ``GET /v1/ws`` with the ``generate``/``delta``/``done``
subset of docs/ws-protocol.md (plus ``cancel`` and ``ping``, since the shared
StreamTable parses them anyway).

The engine is configured with rawstream's own flags, passed in the environment
variable ``RAWSTREAM_PEER_ARGS`` (for example ``--engine fake --fake-tokens-per-s 20
--parallel 6000``), so both servers run with the same engine settings. Run it with::

    RAWSTREAM_PEER_ARGS="--engine fake" uvicorn --factory \\
        benchmarks.peers.fastapi_server:create_app --http h11 --ws websockets
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse

from rawstream.cli import build_parser, config_from_args
from rawstream.config import Config
from rawstream.engine.base import Engine, EngineError, EngineState, GenerationStream
from rawstream.engine.factory import create_engine
from rawstream.sansio.openai import (
    APIError,
    ChunkEncoder,
    Kind,
    chat_completion_body,
    completion_id,
    error_for_result,
    models_body,
    parse_chat_completion,
)
from rawstream.sansio.wsmux import Cancel, Generate, StreamTable, Violation, choose_subprotocol

ENV_ARGS = "RAWSTREAM_PEER_ARGS"


def peer_config(argv: str | None = None) -> Config:
    """The engine configuration from rawstream's flags (default: ``$RAWSTREAM_PEER_ARGS``)."""
    text = os.environ.get(ENV_ARGS, "") if argv is None else argv
    args = build_parser().parse_args(["serve", *shlex.split(text)])
    return config_from_args(args)


def _error_response(error: APIError) -> Response:
    return Response(error.body(), status_code=error.status, media_type="application/json")


def create_app(config: Config | None = None) -> FastAPI:
    """The FastAPI application, with its engine started in the lifespan."""
    config = config if config is not None else peer_config()
    engine: Engine = create_engine(config)
    started_at = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        yield
        await engine.close()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> Response:
        ready = engine.state is EngineState.READY
        body = {"status": "ok" if ready else str(engine.state), "model": engine.model_name}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/v1/models")
    async def models() -> Response:
        body = models_body([engine.model_name], created=started_at)
        return Response(body, media_type="application/json")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        try:
            parsed = parse_chat_completion(await request.body())
            stream = await engine.submit(parsed.generation)
        except APIError as error:
            return _error_response(error)
        except EngineError as exc:
            return _error_response(APIError.from_engine_error(exc))
        encoder = ChunkEncoder(
            Kind.CHAT,
            id=completion_id(Kind.CHAT, os.urandom(12)),
            created=int(time.time()),
            model=engine.model_name,
            include_usage=parsed.include_usage,
        )
        if not parsed.stream:
            return await _whole(stream, encoder)
        return EventSourceResponse(_events(stream, encoder))

    async def _whole(stream: GenerationStream, encoder: ChunkEncoder) -> Response:
        try:
            text = "".join([delta.text async for delta in stream])
        finally:
            stream.cancel()  # a no-op once the stream has ended
        result = stream.result
        assert result is not None
        error = error_for_result(result)
        if error is not None:
            return _error_response(error)
        body = chat_completion_body(
            id=completion_id(Kind.CHAT, os.urandom(12)),
            created=int(time.time()),
            model=engine.model_name,
            text=text,
            result=result,
        )
        return Response(body, media_type="application/json")

    async def _events(
        stream: GenerationStream, encoder: ChunkEncoder
    ) -> AsyncIterator[dict[str, str]]:
        # sse-starlette does the SSE framing, so hand it the JSON of each chunk only.
        try:
            yield {"data": _json_of(encoder.start())}
            async for delta in stream:
                yield {"data": _json_of(encoder.delta(delta.text))}
            result = stream.result
            assert result is not None
            for event in encoder.finish(result).split(b"\n\n"):
                if event:
                    yield {"data": _json_of(event + b"\n\n")}
        finally:
            stream.cancel()  # the client left (or the stream ended: then a no-op)

    @app.websocket("/v1/ws")
    async def ws(websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols", [])
        await websocket.accept(subprotocol=choose_subprotocol(offered))
        table = StreamTable.from_config(config)
        running: dict[object, tuple[GenerationStream, asyncio.Task[None]]] = {}

        async def pump(stream_id: object, stream: GenerationStream) -> None:
            try:
                async for delta in stream:
                    await websocket.send_text(table.delta(stream_id, delta.text))  # type: ignore[arg-type]
                assert stream.result is not None
                await websocket.send_text(table.finish(stream_id, stream.result))  # type: ignore[arg-type]
            except (WebSocketDisconnect, RuntimeError):
                pass
            finally:
                running.pop(stream_id, None)

        try:
            while True:
                action = table.receive(await websocket.receive_text())
                if isinstance(action, Generate):
                    try:
                        stream = await engine.submit(action.request.generation)
                    except EngineError as exc:
                        error = APIError.from_engine_error(exc)
                        await websocket.send_text(table.fail(action.id, error))
                        continue
                    task = asyncio.get_running_loop().create_task(pump(action.id, stream))
                    running[action.id] = (stream, task)
                elif isinstance(action, Cancel):
                    entry = running.get(action.id)
                    if entry is not None:
                        entry[0].cancel()
                elif isinstance(action, str):
                    await websocket.send_text(action)
                elif isinstance(action, Violation):
                    await websocket.close(int(action.code), action.reason)
                    return
        except WebSocketDisconnect:
            pass
        finally:
            for stream, task in running.values():
                stream.cancel()
                task.cancel()

    return app


def _json_of(event: bytes) -> str:
    """The JSON of one ``data: {...}\\n\\n`` event (what sse-starlette wants to frame)."""
    assert event.startswith(b"data: ") and event.endswith(b"\n\n"), event
    return event[6:-2].decode()


__all__ = ["ENV_ARGS", "create_app", "peer_config"]
