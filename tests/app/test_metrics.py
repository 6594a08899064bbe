"""``GET /metrics``: Prometheus text that `promtool check metrics` accepts, with our series."""

from __future__ import annotations

import asyncio
import json
import shutil

import httpx
import httpx_sse
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from tests.app.conftest import TIMEOUT, FakeAppFactory, RunningApp

MESSAGES = [{"role": "user", "content": "count"}]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found[(name, tuple(sorted(labels.items())))]


async def promtool_check(text: str) -> str:
    promtool = shutil.which("promtool")
    assert promtool is not None, "install the Debian package 'prometheus' for promtool"
    proc = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(text.encode()), TIMEOUT)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def traffic(running: RunningApp, client: httpx.AsyncClient) -> None:
    """A complete stream, a plain reply, a client that leaves, a WS cancel and a 1003."""
    body = {"messages": MESSAGES, "max_tokens": 5}
    assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
    async with httpx_sse.aconnect_sse(
        client, "POST", "/v1/chat/completions", json={**body, "stream": True}
    ) as source:
        assert [e.data async for e in source.aiter_sse()][-1] == "[DONE]"
    async with (
        httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as leaving,
        httpx_sse.aconnect_sse(
            leaving,
            "POST",
            "/v1/chat/completions",
            json={"messages": MESSAGES, "max_tokens": 1000, "stream": True},
        ) as source,
    ):
        events = 0
        async for _ in source.aiter_sse():
            events += 1
            if events == 2:  # the role chunk, then the first text
                break
    left = running.engine.streams[-1]
    await asyncio.wait_for(running.engine.ended(left), TIMEOUT)
    async with connect(running.ws_url) as ws:
        await ws.send(json.dumps({"type": "generate", "id": 1, "messages": MESSAGES}))
        await asyncio.wait_for(ws.recv(), TIMEOUT)
        await ws.send(json.dumps({"type": "cancel", "id": 1}))
        while json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] != "done":
            pass
        await ws.send(b"binary")
        try:
            while True:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        except ConnectionClosedError as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1003


async def test_metrics_pass_promtool_and_hold_the_series(fake_app: FakeAppFactory) -> None:
    async with fake_app() as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=TIMEOUT) as client:
            await traffic(running, client)
            response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        await promtool_check(response.text)
        found = samples(response.text)
        for state in ("idle", "active", "streaming", "websocket", "closing"):
            assert ("rawstream_connections", (("state", state),)) in found
        assert value(found, "rawstream_connections", state="active") >= 1  # this scrape
        assert value(found, "rawstream_streams_active") == 0
        assert value(found, "rawstream_streams_queued") == 0
        assert value(found, "rawstream_paused_writers") == 0
        assert value(found, "rawstream_time_to_first_token_seconds_count") == 4
        assert value(found, "rawstream_inter_token_seconds_count") >= 1  # deltas may merge
        assert value(found, "rawstream_tokens_total", kind="completion") >= 10
        assert value(found, "rawstream_tokens_total", kind="prompt") >= 4
        assert value(found, "rawstream_streams_cancelled_total") == 2
        assert value(found, "rawstream_cancel_latency_seconds_count") == 2
        assert value(found, "rawstream_websocket_close_codes_total", code="1003") == 1
        assert (
            value(found, "rawstream_requests_total", endpoint="chat_completions", status="200") == 3
        )
        assert ("rawstream_shutdown_drain_seconds", ()) in found
        assert ("rawstream_overloaded_total", ()) in found

        await running.app.server.shutdown()
        after = running.app.metrics.render().decode()
        await promtool_check(after)
        drain = value(samples(after), "rawstream_shutdown_drain_seconds")
        assert drain == running.app.server.statistics().shutdown_drain_seconds
        assert drain is not None and drain > 0
