"""Every route has an endpoint and every endpoint a route."""

from __future__ import annotations

from rawstream.app.application import ROUTES, App
from rawstream.config import Config


def test_routes_and_endpoints_match() -> None:
    app = App(Config(engine="fake", port=0))
    assert {route.name for route in ROUTES} == set(app._endpoints)
