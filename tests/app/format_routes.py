"""The app with ``POST /v1/responses`` and ``POST /v1/messages`` routed.

:func:`add_format_routes` adds the two routes to an :class:`App`'s routing table
and endpoints where :mod:`rawstream.app.application` does not route them itself
(it leaves an app that already does unchanged), and :func:`format_app` is
``fake_app`` with both routes. The routes are read per request, so adding them to
a running app is enough.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from rawstream.app import anthropic_api, responses_api
from rawstream.app.application import App
from rawstream.sansio.routing import Route, Router
from tests.app.conftest import FakeAppFactory, RunningApp

FORMAT_ROUTES = (
    Route("POST", "/v1/responses", "responses"),
    Route("POST", "/v1/messages", "messages"),
)


def add_format_routes(app: App) -> App:
    """Route the Responses and Messages endpoints on ``app``; return it."""
    routed = {route.name for route in app.router.routes}
    missing = [route for route in FORMAT_ROUTES if route.name not in routed]
    if missing:
        app.router = Router((*app.router.routes, *missing))
    app._endpoints.setdefault("responses", lambda ex, p, who: responses_api.responses(app, ex))
    app._endpoints.setdefault("messages", lambda ex, p, who: anthropic_api.messages(app, ex))
    return app


@pytest.fixture
def format_app(fake_app: FakeAppFactory) -> FakeAppFactory:
    """``fake_app`` with the two routes: ``async with format_app(**config) as running``."""

    @contextlib.asynccontextmanager
    async def make(**overrides: object) -> AsyncIterator[RunningApp]:
        async with fake_app(**overrides) as running:
            add_format_routes(running.app)
            yield running

    return make
