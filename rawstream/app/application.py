"""The application: rawstream's endpoints on one server, with one engine.

:class:`App` owns the :class:`~rawstream.server.server.Server`, the engine, the
metrics and the resumable generations, and routes every request:

=======  ==================================  ======================================
Method   Path                                Endpoint
=======  ==================================  ======================================
GET      /                                   the chat page (public)
GET      /static/{name}                      the page's CSS and JS (public)
GET      /health                             503 while loading, then 200 (public)
GET      /metrics                            Prometheus text format
GET      /v1/models                          the loaded model
POST     /v1/chat/completions                chat completion, JSON or SSE
POST     /v1/completions                     text completion, JSON or SSE
POST     /v1/generations                     start a resumable generation
GET      /v1/generations/{id}/events         follow it as SSE, resumable
DELETE   /v1/generations/{id}                cancel it
GET      /v1/ws                              WebSocket, many streams at once
POST     /v1/responses                       OpenAI Responses API, JSON or SSE
POST     /v1/messages                        Anthropic Messages API, JSON or SSE
=======  ==================================  ======================================

Before anything else, every request passes the browser policy of
:mod:`rawstream.sansio.origin` (``--allow-origin``, ``--allow-host``): a web page
from another site, or one reaching the server by DNS rebinding, is refused before
its body is read, before authentication and before a WebSocket's ``101``; pages of
allowed origins get CORS headers on every response, and their preflights an answer.

Authentication happens here, at the connection level, before any endpoint runs:
with ``--api-key`` set, every route but the public ones needs a key (see
:mod:`rawstream.sansio.auth`), and a WebSocket without one is refused before the
upgrade with a plain 401.

A key passed as ``?api_key=`` (the one way ``EventSource`` can send one) is
removed from the request the server logs: after authentication the exchange's
request carries the target and query with the key's value replaced by
:data:`REDACTED`, so the access log never holds a key. The names are read as the
authenticator reads them (``?api%5Fkey=`` too); :mod:`rawstream.sansio.redact`
holds the rules, which ``--trace`` applies to headers and subprotocols as well.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import time
from collections.abc import Awaitable, Callable

from rawstream.app import anthropic_api, openai_api, responses_api, ws_api
from rawstream.app.bodies import BodyParser
from rawstream.app.generations import Generations
from rawstream.app.metrics import CONTENT_TYPE, Metrics
from rawstream.config import Config
from rawstream.engine import Engine, EngineState
from rawstream.engine.factory import create_engine
from rawstream.sansio.auth import (
    ANONYMOUS,
    CHALLENGE,
    Authenticator,
    Identity,
    unauthorized_body,
)
from rawstream.sansio.http import Request
from rawstream.sansio.openai import APIError
from rawstream.sansio.origin import OriginPolicy, Preflight, Refused
from rawstream.sansio.redact import REDACTED as REDACTED  # what the access log shows
from rawstream.sansio.redact import redact_query, redact_target
from rawstream.sansio.routing import Match, Route, Router
from rawstream.server.exchange import Exchange
from rawstream.server.server import Server

log = logging.getLogger("rawstream")

#: The files ``GET /static/{name}`` serves from ``rawstream/app/static/``, and their
#: types. An allow-list, not a directory listing: any other name is a 404, so no
#: path (``..``, encoded slashes) can reach outside these files.
STATIC_FILES: dict[str, bytes] = {
    "app.css": b"text/css; charset=utf-8",
    "app.js": b"text/javascript; charset=utf-8",
}

#: Headers of the page and its files. The Content-Security-Policy allows scripts,
#: styles and connections from this origin only (CSP Level 3: ``'self'`` covers
#: ``ws:`` to the same host), so even text that slipped into the DOM as markup could
#: neither run inline script nor load anything from elsewhere.
PAGE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]

#: An endpoint: the exchange, the path's parameters and who is calling.
Endpoint = Callable[[Exchange, dict[str, str], Identity], Awaitable[None]]


def redact_query_key(request: Request) -> Request:
    """``request`` with every key in its target and query hidden, for logging.

    Parameter names are decoded as the authenticator decodes them (see
    :mod:`rawstream.sansio.redact`), so ``?api%5Fkey=`` is hidden like ``?api_key=``.
    """
    target = redact_target(request.target)
    if target == request.target:
        return request
    return dataclasses.replace(request, target=target, query=redact_query(request.query))


ROUTES = (
    Route("GET", "/", "page", public=True),
    Route("GET", "/static/{name}", "static", public=True),
    Route("GET", "/health", "health", public=True),
    Route("GET", "/metrics", "metrics"),
    Route("GET", "/v1/models", "models"),
    Route("POST", "/v1/chat/completions", "chat_completions"),
    Route("POST", "/v1/completions", "completions"),
    Route("POST", "/v1/generations", "generations_create"),
    Route("GET", "/v1/generations/{id}/events", "generations_events"),
    Route("DELETE", "/v1/generations/{id}", "generations_cancel"),
    Route("GET", "/v1/ws", "ws"),
    Route("POST", "/v1/responses", "responses"),
    Route("POST", "/v1/messages", "messages"),
)


class StartupError(RuntimeError):
    """The server cannot serve (e.g. the model is missing); the message says why."""


class App:
    """rawstream's endpoints on one :class:`Server` (see the module docstring)."""

    def __init__(self, config: Config, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine if engine is not None else create_engine(config)
        self.server = Server(config, self.handle)
        self.metrics = Metrics(self.server, self.engine)
        self.auth = Authenticator.from_config(config)
        self.router = Router(ROUTES)
        #: Request bodies, read and parsed (large ones one per turn of the loop).
        self.bodies = BodyParser()
        #: The browser policy; it names the bound port, so :meth:`start` builds it.
        self.origins: OriginPolicy | None = None
        self.generations = Generations(self)
        self.started_at = int(time.time())
        # Route name -> what runs it, called with the exchange and the path parameters.
        self._endpoints: dict[str, Endpoint] = {
            "page": lambda ex, p, who: self._page(ex),
            "static": lambda ex, p, who: self._static(ex, p["name"]),
            "health": lambda ex, p, who: self._health(ex),
            "metrics": lambda ex, p, who: ex.respond(
                200, self.metrics.render(), content_type=CONTENT_TYPE
            ),
            "models": lambda ex, p, who: openai_api.models(self, ex),
            "chat_completions": lambda ex, p, who: openai_api.chat_completions(self, ex),
            "completions": lambda ex, p, who: openai_api.completions(self, ex),
            "generations_create": lambda ex, p, who: self.generations.create(ex, who),
            "generations_events": lambda ex, p, who: self.generations.events(ex, p["id"], who),
            "generations_cancel": lambda ex, p, who: self.generations.cancel(ex, p["id"], who),
            "ws": lambda ex, p, who: ws_api.websocket(self, ex),
            "responses": lambda ex, p, who: responses_api.responses(self, ex),
            "messages": lambda ex, p, who: anthropic_api.messages(self, ex),
        }

    async def start(self) -> None:
        """Listen at once (health says loading), then load the model.

        Raises :class:`StartupError` if an ``--allow-origin`` or ``--allow-host``
        entry is not one (before listening), or if the engine fails to start.
        """
        c = self.config
        try:
            OriginPolicy.from_config(c, c.port)  # a bad entry stops us before listening
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        await self.server.start()
        self.origins = OriginPolicy.from_config(c, self.server.port)
        log.info(
            "rawstream listening on http://%s:%d  engine=%s parallel=%d auth=%s",
            c.host, self.server.port, c.engine, c.parallel,
            "api-key" if self.auth.required else "off",
        )  # fmt: skip
        await self.engine.start()
        if self.engine.state is EngineState.READY:
            log.info("model ready: %s", self.engine.model_name)
        else:
            error = getattr(self.engine, "error", None)
            raise StartupError(f"the engine failed to start: {error or 'no detail'}")

    async def close(self) -> None:
        """After the server drained: stop generations and release the engine."""
        await self.generations.close()
        await self.engine.close()

    async def handle(self, exchange: Exchange) -> None:
        """Check the browser policy, then route, authenticate and run one request.

        The policy answers first, on every route (``/`` and ``/health`` too), from
        the request head alone:

        * a disallowed ``Origin`` gets **403** (RFC 6455 section 10.2 asks for it on
          a WebSocket handshake; for HTTP it is the plain "understood, and refused");
        * a disallowed ``Host`` gets **421 Misdirected Request**. RFC 9110 section
          15.5.20: "The 421 (Misdirected Request) status code indicates that the
          request was directed at a server that is unable or unwilling to produce an
          authoritative response for the target URI. An origin server [...] sends
          421 to reject a target URI that does not match an origin for which the
          server has been configured". That is exactly a rebinding page's request:
          nothing is wrong with it but the name, which this server does not serve
          (400 would say the request is malformed, 403 that its sender lacks a
          right, and 404 that the path is missing);
        * a CORS preflight from an allowed origin gets **204** with the CORS headers,
          before authentication, since a browser never sends a key with one.

        Every other response of an allowed request carries the policy's CORS headers
        (``exchange.extra_headers``).
        """
        request = exchange.request
        match = self.router.match(request.method, request.path)
        name = match.route.name if isinstance(match, Match) else "none"
        exchange.request = redact_query_key(request)  # authenticate with the original
        try:
            assert self.origins is not None, "App.start() builds the policy"
            decision = self.origins.check(request.method, request.headers, request.target)
            if isinstance(decision, Refused):
                exchange.log_extra["refused"] = decision.code
                error = APIError(decision.status, decision.message, code=decision.code)
                await exchange.respond(decision.status, error.body())
                return
            exchange.extra_headers = decision.headers
            if isinstance(decision, Preflight):
                name = "preflight"
                await exchange.respond(decision.status)
                return
            if not isinstance(match, Match):
                headers = [(b"allow", ", ".join(match.allow).encode())] if match.allow else []
                message = "not found" if match.status == 404 else "method not allowed"
                error = APIError(match.status, f"{message}: {request.method} {request.path}")
                await exchange.respond(match.status, error.body(), headers)
                return
            identity = self.auth.authenticate(request.headers, request.query)
            if identity is None and not match.route.public:
                await exchange.respond(401, unauthorized_body(), [CHALLENGE])
                return
            await self._endpoints[name](exchange, match.params, identity or ANONYMOUS)
        except APIError as error:
            if exchange.response_started:
                raise
            await openai_api.respond_error(exchange, error)
        finally:
            if exchange.status is not None:
                self.metrics.requests.labels(name, str(exchange.status)).inc()

    async def _health(self, exchange: Exchange) -> None:
        state = self.engine.state
        status = 200 if state is EngineState.READY else 503
        body = {"status": "ok" if status == 200 else str(state), "model": self.engine.model_name}
        await exchange.respond(status, json.dumps(body).encode())

    async def _page(self, exchange: Exchange) -> None:
        page = importlib.resources.files("rawstream.app").joinpath("static/index.html")
        await exchange.respond(
            200, page.read_bytes(), PAGE_HEADERS, content_type=b"text/html; charset=utf-8"
        )

    async def _static(self, exchange: Exchange, name: str) -> None:
        content_type = STATIC_FILES.get(name)
        if content_type is None:
            raise APIError(404, f"not found: {exchange.request.path}", code="not_found")
        data = importlib.resources.files("rawstream.app").joinpath(f"static/{name}").read_bytes()
        await exchange.respond(200, data, PAGE_HEADERS, content_type=content_type)


def create_app(config: Config) -> App:
    """Build the application for ``config``."""
    return App(config)
