"""The application object: owns the server and the engine, routes requests."""

from __future__ import annotations

import asyncio
import json
import logging

from rawstream.config import Config
from rawstream.server.errors import WebSocketClosed
from rawstream.server.exchange import Exchange
from rawstream.server.server import Server

log = logging.getLogger("rawstream")


class App:
    """rawstream's endpoints on one :class:`Server`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.server = Server(config, self.handle)

    async def start(self) -> None:
        """Start listening; print the banner."""
        await self.server.start()
        log.info("rawstream listening on http://%s:%d", self.config.host, self.server.port)

    async def close(self) -> None:
        """Release resources after the server has shut down."""

    async def handle(self, exchange: Exchange) -> None:
        """Route one request."""
        path = exchange.request.path
        if path == "/health":
            await exchange.respond(200, json.dumps({"status": "ok"}).encode())
        elif path == "/demo/ticker":
            params = exchange.request.query_params()
            count = int(params.get("count", "10"))
            interval = float(params.get("interval", "0.1"))
            sse = await exchange.start_sse()
            for i in range(count):
                await sse.send(f"id: {i}\ndata: tick {i}\n\n".encode())
                await asyncio.sleep(interval)
            await sse.end(b"event: end\ndata: done\n\n")
        elif path == "/demo/echo":
            ws = await exchange.accept_websocket()
            try:
                while True:
                    await ws.send(await ws.receive())
            except WebSocketClosed:
                pass
        else:
            await exchange.respond(404, b'{"error":"not found"}')


def create_app(config: Config) -> App:
    """Build the application for ``config``."""
    return App(config)
