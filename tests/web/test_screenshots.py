"""A real conversation with the bundled model, photographed for the README.

Saves docs/screenshots/chat-streaming.png (desktop, mid-reply),
chat-finished.png (desktop, replies with their stats) and chat-phone.png (375 px).
"""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from tests.web.chat import PHONE, ChatPage, running_app

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]

#: The real model on a shared 2-core machine can be slow: wait up to this long (ms).
MODEL_TIMEOUT = 240_000

SYSTEM = "You are a concise, friendly assistant."


async def test_real_model_conversation_screenshots(browser: Browser) -> None:
    async with running_app(engine="llama", parallel=2) as app:
        chat = await ChatPage.open(browser, app)
        chat.page.set_default_timeout(MODEL_TIMEOUT)
        await chat.wait_conn("Ready")
        await chat.settings(system=SYSTEM, max_tokens=100, temperature=0.2, seed=7)
        await chat.send("What is Server-Sent Events, in two sentences?")
        assert await chat.wait_reply_state("done") == "done"
        assert (await chat.reply_text()).strip()
        assert "tokens/s" in await chat.reply_meta()

        await chat.send("And how is a WebSocket different?")
        await chat.wait_words(12)
        await chat.screenshot("chat-streaming.png")
        assert await chat.wait_reply_state("done") == "done"
        conn = chat.page.locator("#conn")
        await expect(conn).to_have_attribute("data-state", "ready", timeout=MODEL_TIMEOUT)
        await chat.screenshot("chat-finished.png")

        phone = await ChatPage.open(browser, app, viewport=PHONE)
        phone.page.set_default_timeout(MODEL_TIMEOUT)
        await phone.wait_conn("Ready")
        await phone.settings(max_tokens=60, temperature=0.2, seed=7)
        await phone.page.locator("#settings-panel summary").click()  # fold them again
        await phone.send("Write a haiku about streaming tokens.")
        assert await phone.wait_reply_state("done") == "done"
        await phone.screenshot("chat-phone.png")
