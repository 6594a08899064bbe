"""SIGTERM while streams are open: each ends with an error event, never ``[DONE]``.

A real ``python -m rawstream serve`` process (fake engine), so the signal handler
and the process exit are the ones users get.
"""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import openai
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.app.conftest import TIMEOUT
from tests.support import ServerProcess

MESSAGES = [{"role": "user", "content": "go on forever"}]


async def test_sigterm_ends_every_stream_with_an_error_event() -> None:
    server = await ServerProcess(
        "--engine", "fake", "--fake-tokens-per-s", "20", "--graceful-timeout", "10"
    ).start()  # fmt: skip
    try:
        client = openai.AsyncOpenAI(
            base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT
        )
        sdk_stream = await client.chat.completions.create(
            model="fake",
            messages=MESSAGES,
            max_tokens=1000,
            stream=True,  # type: ignore[arg-type]
        )
        sdk_chunks = 0
        async for _chunk in sdk_stream:
            sdk_chunks += 1
            if sdk_chunks == 2:
                break

        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
            raw = await http.send(
                http.build_request(
                    "POST",
                    "/v1/chat/completions",
                    json={"messages": MESSAGES, "max_tokens": 1000, "stream": True},
                ),
                stream=True,
            )
            raw_chunks = raw.aiter_bytes()
            first_raw = await anext(raw_chunks)
            gen = (await http.post("/v1/generations", json={"messages": MESSAGES})).json()
            viewer = await http.send(http.build_request("GET", gen["events_url"]), stream=True)
            viewer_chunks = viewer.aiter_bytes()
            first_viewer = await anext(viewer_chunks)

            async with connect(server.url.replace("http", "ws") + "/v1/ws") as ws:
                await ws.send(json.dumps({"type": "generate", "id": 1, "messages": MESSAGES}))
                assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] == "delta"

                server.signal(signal.SIGTERM)

                # The SDK raises on the error event (not a connection error).
                with pytest.raises(openai.APIError) as caught:
                    async for _chunk in sdk_stream:
                        pass
                assert type(caught.value) is openai.APIError
                assert "shutting down" in caught.value.message

                # The raw stream ends cleanly (chunked terminator): no read error.
                rest = b"".join([chunk async for chunk in raw_chunks])
                body = first_raw + rest
                assert b"[DONE]" not in body
                events = [e for e in body.decode().split("\n\n") if e]
                assert events[-1].startswith("retry: ")
                error = json.loads(events[-2].removeprefix("data: "))["error"]
                assert error["code"] == "shutting_down"
                assert all(
                    json.loads(e.removeprefix("data: "))["choices"][0]["finish_reason"] is None
                    for e in events[:-2]
                )

                viewed = first_viewer + b"".join([chunk async for chunk in viewer_chunks])
                assert b"event: error\n" in viewed and b"shutting_down" in viewed
                assert b"event: done" not in viewed

                # Each open stream is told why it ends, then the socket closes 1001.
                last: dict[str, object] = {}
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        last = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                assert last["type"] == "error" and last["id"] == 1
                assert last["error"]["code"] == "cancelled"  # type: ignore[index]
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1001

        assert await server.wait(TIMEOUT) == 0
        log = "".join(server.log)
        assert "shutdown complete" in log
    finally:
        await server.stop()
