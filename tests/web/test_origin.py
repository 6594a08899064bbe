"""A page from another origin, and a DNS-rebinding page, in a real browser.

The hostile page is served by a second server on another loopback port (another
origin: same host, another port), or, for DNS rebinding, by playwright in place of
the attacker's server, under a name that chromium resolves to ``127.0.0.1``
(``--host-resolver-rules``), as the attacker's DNS would once rebound. What the
page's script gets back is what a user's browser would give it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from playwright.async_api import Browser, Page, Route, async_playwright

from rawstream.app.application import App
from rawstream.config import Config
from rawstream.server.exchange import Exchange
from tests.app.conftest import SpyEngine
from tests.support import Running, serve
from tests.web.chat import CHROMIUM, CHROMIUM_ARGS, TIMEOUT, running_app

#: The attacker's script: a "simple" cross-origin POST (text/plain, no preflight),
#: a WebSocket, and a read of /v1/models; each outcome lands in ``window.results``.
ATTACK = """
const target = %(target)s;
const results = window.results = {};
const body = JSON.stringify({messages: [{role: "user", content: "hi"}], max_tokens: 2});
fetch(target + "/v1/generations", {method: "POST", body})
  .then(r => r.text().then(t => { results.post = r.status + " " + t; }))
  .catch(e => { results.post = "blocked: " + e.name; });
fetch(target + "/v1/models")
  .then(r => r.text().then(t => { results.models = r.status + " " + t; }))
  .catch(e => { results.models = "blocked: " + e.name; });
const ws = new WebSocket(target.replace("http", "ws") + "/v1/ws", ["rawstream"]);
ws.onopen = () => { results.ws = "open"; ws.close(); };
ws.onclose = (e) => { if (!results.ws) results.ws = "closed " + e.code; };
"""


def attack_page(target: str) -> bytes:
    script = ATTACK % {"target": json.dumps(target)}
    return f"<!doctype html><title>elsewhere</title><script>{script}</script>".encode()


@contextlib.asynccontextmanager
async def other_origin(target: str) -> AsyncIterator[Running]:
    """A second server, on another port of 127.0.0.1, serving the attacker's page."""

    async def handler(exchange: Exchange) -> None:
        await exchange.respond(200, attack_page(target), content_type=b"text/html; charset=utf-8")

    async with serve(handler) as running:
        yield running


async def results(page: Page) -> dict[str, Any]:
    handle = await page.wait_for_function(
        "() => window.results && results.post && results.models && results.ws ? results : null",
        timeout=TIMEOUT,
    )
    value = await handle.json_value()
    assert isinstance(value, dict)
    return value


def served(app: App, endpoint: str, status: int) -> int:
    """How many ``endpoint`` requests the app answered with ``status``."""
    line = f'rawstream_requests_total{{endpoint="{endpoint}",status="{status}"}} '
    for row in app.metrics.render().decode().splitlines():
        if row.startswith(line):
            return int(float(row[len(line) :]))
    return 0


def spy() -> SpyEngine:
    return SpyEngine(Config(engine="fake", fake_tokens_per_s=200.0))


async def test_a_page_on_another_origin_is_refused(browser: Browser) -> None:
    engine = spy()
    async with running_app(engine) as app:
        target = f"http://127.0.0.1:{app.server.port}"
        async with other_origin(target) as elsewhere:
            page = await browser.new_page()
            await page.goto(elsewhere.url + "/")
            seen = await results(page)
        assert seen["post"] == "blocked: TypeError"
        assert seen["models"] == "blocked: TypeError"
        assert seen["ws"] == "closed 1006"
        # The server refused them before any work: 403s, and the engine got nothing.
        assert served(app, "generations_create", 403) == 1
        assert served(app, "ws", 403) == 1
        assert engine.requests == []


async def test_a_page_on_an_allowed_origin_works(browser: Browser) -> None:
    """The same page, with its origin given to --allow-origin: CORS lets it read."""
    engine = spy()
    async with contextlib.AsyncExitStack() as stack:
        # The page's port must be known before the server starts: serve it first,
        # pointing at a target whose port is filled in once the app listens.
        target: dict[str, str] = {}

        async def handler(exchange: Exchange) -> None:
            page = attack_page(target["url"])
            await exchange.respond(200, page, content_type=b"text/html; charset=utf-8")

        elsewhere = await stack.enter_async_context(serve(handler))
        app = await stack.enter_async_context(running_app(engine, allow_origin=(elsewhere.url,)))
        target["url"] = f"http://127.0.0.1:{app.server.port}"
        page = await browser.new_page()
        await page.goto(elsewhere.url + "/")
        seen = await results(page)
        assert seen["post"].startswith("201 "), seen
        assert seen["models"].startswith('200 {"object":"list"'), seen
        assert seen["ws"] == "open"
        assert len(engine.requests) == 1


@contextlib.asynccontextmanager
async def rebinding_browser(name: str) -> AsyncIterator[Browser]:
    """Chromium resolving ``name`` to 127.0.0.1, as after the attacker's DNS rebound.

    Chromium's own Local Network Access checks would block the page before the
    server sees it (a page from a public address may not reach loopback without
    the user's permission); Firefox and Safari have no such check, and a user may
    grant it. They are turned off, so that what is tested is the server's defence.
    """
    args = [
        *CHROMIUM_ARGS,
        f"--host-resolver-rules=MAP {name} 127.0.0.1",
        "--disable-features=LocalNetworkAccessChecks",
    ]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield browser
        finally:
            await browser.close()


async def test_a_dns_rebinding_page_cannot_read_the_api() -> None:
    """The page is same-origin with its own name, so the browser lets it read every
    answer; only the Host the server sees gives it away."""
    engine = spy()
    async with running_app(engine) as app, rebinding_browser("evil.example") as browser:
        origin = f"http://evil.example:{app.server.port}"
        page = await browser.new_page()

        async def attacker(route: Route) -> None:
            # The first load came from the attacker's own server, before the rebind.
            await route.fulfill(body=attack_page(origin), content_type="text/html")

        await page.route(origin + "/", attacker)
        await page.goto(origin + "/")
        seen = await results(page)
        assert seen["post"].startswith("421 "), seen
        assert seen["models"].startswith("421 "), seen
        assert "host_not_allowed" in seen["models"]
        assert seen["ws"] == "closed 1006"
        # Chromium retries a 421 once on a new connection (RFC 9110 allows it): refused again.
        assert served(app, "generations_create", 421) >= 1
        assert served(app, "ws", 421) == 1
        assert engine.requests == []
