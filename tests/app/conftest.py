"""The real :class:`App` on a loopback port, in the test's event loop.

* :func:`fake_app` (a factory) runs the app on a :class:`SpyEngine`: the fake
  engine, plus a record of every stream it admitted and a future per stream that
  resolves with the stream's :class:`Result` the moment the engine frees its slot.
  Tests await those futures to observe cancellation directly, without polling.
* The real bundled model is loaded once per module by the modules that need it
  (see ``tests/app/test_openai_sdk.py``), because loading it takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import pytest

from rawstream.app.application import App
from rawstream.config import Config
from rawstream.engine.base import FinishReason, GenerationRequest, GenerationStream, Result
from rawstream.engine.fake import FakeEngine, _FakeJob

#: Upper bound for anything a test awaits (the machine may be busy).
TIMEOUT = 30.0


class SpyEngine(FakeEngine):
    """A :class:`FakeEngine` that lets tests watch its streams end."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.streams: list[GenerationStream] = []
        self.requests: list[GenerationRequest] = []
        self._ended: dict[int, asyncio.Future[Result]] = {}
        self._submitted: asyncio.Event | None = None

    async def submit(self, request: GenerationRequest) -> GenerationStream:
        stream = await super().submit(request)
        self.streams.append(stream)
        self.requests.append(request)
        self.ended(stream)  # create the future now, in the loop
        if self._submitted is not None:
            self._submitted.set()
        return stream

    def ended(self, stream: GenerationStream) -> asyncio.Future[Result]:
        """A future that resolves with the stream's result when its slot is freed."""
        future = self._ended.get(stream.id)
        if future is None:
            future = self._ended[stream.id] = asyncio.get_running_loop().create_future()
            if stream.result is not None:
                future.set_result(stream.result)
        return future

    async def wait_submitted(self, count: int) -> list[GenerationStream]:
        """Wait until at least ``count`` streams were admitted; return them."""
        async with asyncio.timeout(TIMEOUT):
            while len(self.streams) < count:
                self._submitted = asyncio.Event()
                await self._submitted.wait()
        return self.streams[:count]

    def _end(
        self, job: _FakeJob, reason: FinishReason, now: float, cancel_latency: float | None = None
    ) -> None:
        super()._end(job, reason, now, cancel_latency)
        result = job.stream.result
        assert result is not None
        future = self._ended.get(job.stream.id)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._ended[job.stream.id] = loop.create_future()
        if not future.done():
            future.set_result(result)


@dataclass
class RunningApp:
    """An :class:`App` listening on a loopback port."""

    app: App
    engine: SpyEngine

    @property
    def port(self) -> int:
        return self.app.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"


@contextlib.asynccontextmanager
async def run_app(app: App) -> AsyncIterator[App]:
    """Start ``app`` (listen, load the engine); shut it down gracefully afterwards."""
    await app.start()
    try:
        yield app
    finally:
        await app.server.shutdown()
        await app.close()


FakeAppFactory = Callable[..., AbstractAsyncContextManager[RunningApp]]


@pytest.fixture
def fake_app() -> FakeAppFactory:
    """``async with fake_app(**config_overrides) as running:`` the app on a SpyEngine.

    Defaults: fast tokens (200/s per stream), no access log, a free port.
    """

    @contextlib.asynccontextmanager
    async def make(**overrides: object) -> AsyncIterator[RunningApp]:
        config = Config(port=0, engine="fake", fake_tokens_per_s=200.0, access_log=False).replace(
            **overrides
        )
        engine = SpyEngine(config)
        async with run_app(App(config, engine=engine)) as app:
            yield RunningApp(app, engine)

    return make
