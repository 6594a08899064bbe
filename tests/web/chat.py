"""Drive the chat page in Debian's chromium through playwright, against an in-process App.

The browser is the system ``/usr/bin/chromium`` (never ``playwright install``); the
server is a real :class:`~rawstream.app.application.App` on a loopback port in the
test's own event loop, so a test can reach into it (abort a connection, read the
engine's statistics) while the page runs.

Every wait is on a condition in the page (``wait_for_function``) or on an
``expect`` assertion, each with a timeout: no sleeps.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, Request, async_playwright, expect

from rawstream.app.application import App
from rawstream.config import Config
from rawstream.engine import Engine

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}

#: Milliseconds; generous because CI machines are shared.
TIMEOUT = 20_000
expect.set_options(timeout=TIMEOUT)


@contextlib.asynccontextmanager
async def launch_browser() -> AsyncIterator[Browser]:
    """Debian's chromium, headless."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def running_app(instance: Engine | None = None, **overrides: Any) -> AsyncIterator[App]:
    """An App on a free loopback port: the fake engine unless ``engine="llama"``, or
    the engine ``instance`` given (a test-only engine)."""
    settings: dict[str, Any] = {
        "port": 0,
        "access_log": False,
        "engine": "fake",
        "graceful_timeout": 2.0,
        **overrides,
    }
    app = App(Config(**settings), engine=instance)
    await app.start()
    try:
        yield app
    finally:
        await app.server.shutdown()
        await app.close()


def url(app: App, path: str = "/") -> str:
    return f"http://127.0.0.1:{app.server.port}{path}"


class ChatPage:
    """The chat page and the few gestures the tests need."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.requests: list[Request] = []
        page.on("request", lambda request: self.requests.append(request))

    @classmethod
    async def open(cls, browser: Browser, app: App, viewport: dict[str, int] = DESKTOP) -> ChatPage:
        context = await browser.new_context(viewport=viewport)  # type: ignore[arg-type]
        page = await context.new_page()
        page.set_default_timeout(TIMEOUT)
        chat = cls(page)
        await page.goto(url(app))
        return chat

    # --------------------------------------------------------------- settings
    async def settings(
        self,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        system: str | None = None,
    ) -> None:
        panel = self.page.locator("#settings-panel")
        if not await panel.evaluate("el => el.open"):  # folded on phones
            await panel.locator("summary").click()
        if max_tokens is not None:
            await self.page.get_by_label("Max tokens").fill(str(max_tokens))
        if temperature is not None:
            await self.page.get_by_label("Temperature").fill(str(temperature))
        if seed is not None:
            await self.page.get_by_label("Seed").fill(str(seed))
        if system is not None:
            await self.page.get_by_label("System prompt").fill(system)

    async def use_websocket(self) -> None:
        await self.choose_websocket()
        await self.wait_conn("WebSocket open")

    async def choose_websocket(self) -> None:
        await self.page.locator("label[for=transport-ws]").click()

    async def enter_key(self, key: str) -> None:
        field = self.page.get_by_label("API key")
        await field.fill(key)
        await field.dispatch_event("change")

    # --------------------------------------------------------------- chatting
    async def send(self, text: str) -> None:
        """Type ``text`` and press Enter (the keyboard path, not the button)."""
        replies = self.page.locator("#transcript .msg.assistant")
        before = await replies.count()
        box = self.page.get_by_label("Message", exact=True)
        await box.fill(text)
        await box.press("Enter")
        await expect(replies).to_have_count(before + 1)

    async def wait_words(self, n: int) -> None:
        """Wait until the last reply holds at least ``n`` words."""
        await self.page.wait_for_function(
            """n => {
                const el = document.querySelector('#transcript .msg.assistant:last-child .text');
                return el && el.textContent.trim().split(/\\s+/).filter(Boolean).length >= n;
            }""",
            arg=n,
        )

    async def wait_reply_state(self, *states: str) -> str:
        """Wait until the last reply ended in one of ``states``; return it."""
        handle = await self.page.wait_for_function(
            """states => {
                const el = document.querySelector('#transcript .msg.assistant:last-child');
                return el && states.includes(el.dataset.state) ? el.dataset.state : null;
            }""",
            arg=list(states),
        )
        return str(await handle.json_value())

    async def wait_conn(self, text: str) -> None:
        """Wait until the connection pill says ``text``."""
        await self.page.wait_for_function(
            "t => document.getElementById('conn-text').textContent === t", arg=text
        )

    async def reply_text(self) -> str:
        return (
            await self.page.locator("#transcript .msg.assistant")
            .last.locator(".text")
            .text_content()
            or ""
        )

    async def reply_meta(self) -> str:
        return (
            await self.page.locator("#transcript .msg.assistant")
            .last.locator(".meta")
            .text_content()
            or ""
        )

    async def reply_notice(self) -> str:
        return (
            await self.page.locator("#transcript .msg.assistant")
            .last.locator(".notice")
            .text_content()
            or ""
        )

    # --------------------------------------------------------------- traffic
    def posted_bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of every ``POST /v1/generations`` the page sent."""
        return [
            json.loads(r.post_data or "{}")
            for r in self.requests
            if r.method == "POST" and r.url.endswith("/v1/generations")
        ]

    def event_requests(self) -> list[Request]:
        """Every request for a generation's event stream (first and reconnections)."""
        return [r for r in self.requests if "/events" in r.url]

    async def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(SCREENSHOTS / name))
