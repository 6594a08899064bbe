"""The chat page in a real browser: streaming, stop, resume, WebSocket, safety, keys, phones."""

from __future__ import annotations

import json

import httpx
from playwright.async_api import Browser, expect

from rawstream.app.application import App
from rawstream.config import Config
from rawstream.engine.fake import FakeEngine
from rawstream.server.connection import HTTPConnection
from tests.web.chat import PHONE, ChatPage, running_app, url


async def uninterrupted(app: App, body: dict[str, object]) -> str:
    """The reply to ``body`` in one piece (the fake engine is deterministic)."""
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(url(app, "/v1/chat/completions"), json=body)
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"])


def streaming_connection(app: App, path_part: str) -> HTTPConnection:
    """The server side of the page's open event stream or WebSocket."""
    for conn in app.server.connections:
        exchange = conn.exchange
        if (
            exchange is not None
            and path_part in exchange.request.path
            and (exchange.sse is not None or conn.websocket is not None)
        ):
            return conn
    raise AssertionError(f"no open {path_part} connection")


async def test_page_and_assets_are_served_with_types_and_policy() -> None:
    async with running_app() as app, httpx.AsyncClient() as client:
        page = await client.get(url(app))
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        css = await client.get(url(app, "/static/app.css"))
        assert css.headers["content-type"] == "text/css; charset=utf-8"
        js = await client.get(url(app, "/static/app.js"))
        assert js.headers["content-type"] == "text/javascript; charset=utf-8"
        for name in ("index.html", "..%2Fapplication.py", "missing.js", "%2e%2e"):
            assert (await client.get(url(app, f"/static/{name}"))).status_code == 404


async def test_reply_grows_over_several_frames(browser: Browser) -> None:
    async with running_app(fake_tokens_per_s=25) as app:
        chat = await ChatPage.open(browser, app)
        await chat.settings(max_tokens=40)
        # Record the reply's length at every DOM mutation of the transcript.
        await chat.page.evaluate(
            """() => {
                window.__lengths = [];
                new MutationObserver(() => {
                    const el = document.querySelector(
                        '#transcript .msg.assistant:last-child .text');
                    const n = el ? el.textContent.length : 0;
                    if (n && window.__lengths.at(-1) !== n) window.__lengths.push(n);
                }).observe(document.getElementById('transcript'),
                           {childList: true, subtree: true, characterData: true});
            }"""
        )
        await chat.send("Tell me about streams.")
        assert await chat.wait_reply_state("done") == "done"
        lengths = await chat.page.evaluate("window.__lengths")
        assert len(lengths) >= 5, lengths
        assert lengths == sorted(lengths)
        text = await chat.reply_text()
        assert len(text.split()) == 40
        assert text == await uninterrupted(app, chat.posted_bodies()[0])
        meta = await chat.reply_meta()
        assert "first token" in meta and "40 tokens" in meta and "tokens/s" in meta


async def test_stop_keeps_partial_text_and_frees_the_slot(browser: Browser) -> None:
    async with running_app(fake_tokens_per_s=20) as app:
        chat = await ChatPage.open(browser, app)
        await chat.settings(max_tokens=400)
        await chat.send("A long answer, please.")
        await chat.wait_words(5)
        assert app.engine.statistics().active_streams == 1
        await chat.page.get_by_role("button", name="Stop").click()
        assert await chat.wait_reply_state("stopped") == "stopped"
        text = await chat.reply_text()
        assert 5 <= len(text.split()) < 400
        assert "Stopped" in await chat.reply_notice()
        assert any(r.method == "DELETE" for r in chat.requests)
        stats = app.engine.statistics()
        assert stats.active_streams == 0 and stats.queued_streams == 0
        assert stats.cancelled_total == 1
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(url(app, "/metrics"))).text
        assert "rawstream_streams_active 0.0" in metrics
        await expect(chat.page.get_by_role("button", name="Send")).to_be_visible()


async def test_dropped_connection_resumes_without_gap_or_repeat(browser: Browser) -> None:
    async with running_app(fake_tokens_per_s=20) as app:
        chat = await ChatPage.open(browser, app)
        await chat.settings(max_tokens=80)
        await chat.send("Keep going through a dropped connection.")
        await chat.wait_words(10)
        # Cut the event stream from the server side, without a goodbye.
        streaming_connection(app, "/events").abort()
        # The reply and the header both say so while EventSource waits to reconnect.
        await chat.page.wait_for_function(
            """() => document.querySelector('#transcript .msg.assistant:last-child')
                         .dataset.phase === 'reconnecting'
                     && document.getElementById('conn-text').textContent === 'Reconnecting…'"""
        )
        assert await chat.wait_reply_state("done") == "done"
        assert "Resumed" in await chat.reply_notice()
        text = await chat.reply_text()
        assert text == await uninterrupted(app, chat.posted_bodies()[0])
        assert len(text.split()) == 80
        # The reconnection told the server where to resume.
        first, *again = chat.event_requests()
        assert "last-event-id" not in await first.all_headers()
        assert again, "EventSource did not reconnect"
        # (an event may carry several words, so the id counts events, not words)
        assert int((await again[0].all_headers())["last-event-id"]) >= 1


async def test_websocket_transport_streams_a_reply(browser: Browser) -> None:
    async with running_app(fake_tokens_per_s=40) as app:
        chat = await ChatPage.open(browser, app)
        sent: list[dict[str, object]] = []
        chat.page.on(
            "websocket", lambda ws: ws.on("framesent", lambda f: sent.append(json.loads(f)))
        )
        await chat.use_websocket()
        await chat.settings(max_tokens=24)
        await chat.send("Over the socket.")
        assert await chat.wait_reply_state("done") == "done"
        generate = next(m for m in sent if m["type"] == "generate")
        body = {k: v for k, v in generate.items() if k not in ("type", "id")}
        assert await chat.reply_text() == await uninterrupted(app, body)
        assert "24 tokens" in await chat.reply_meta()
        assert not chat.posted_bodies()  # nothing went over SSE


async def test_websocket_dropped_mid_reply_is_marked_interrupted(browser: Browser) -> None:
    async with running_app(fake_tokens_per_s=20) as app:
        chat = await ChatPage.open(browser, app)
        await chat.use_websocket()
        await chat.settings(max_tokens=200)
        await chat.send("This socket will break.")
        await chat.wait_words(5)
        streaming_connection(app, "/v1/ws").abort()
        assert await chat.wait_reply_state("interrupted") == "interrupted"
        assert "cannot be resumed" in await chat.reply_notice()
        assert len((await chat.reply_text()).split()) >= 5
        await chat.wait_conn("WebSocket open")  # reopened in the background
        await chat.page.get_by_role("button", name="Retry").click()
        assert await chat.wait_reply_state("done", "interrupted") in ("done", "interrupted")


class MarkupEngine(FakeEngine):
    """A fake model whose reply is HTML that would run script if it were parsed."""

    TOKENS = (
        "Here is some markup: ",
        '<img src=x onerror="window.__pwned=1">',
        "<script>window.__pwned=1</script>",
        " <b>bold?</b>",
    )

    @staticmethod
    def _words(job: object, k: int) -> str:
        done = job.generated  # type: ignore[attr-defined]
        return "".join(MarkupEngine.TOKENS[done : done + k])


async def test_model_output_is_text_never_markup(browser: Browser) -> None:
    config = Config(port=0, engine="fake", fake_tokens_per_s=20)
    async with running_app(MarkupEngine(config), fake_tokens_per_s=20) as app:
        chat = await ChatPage.open(browser, app)
        await chat.settings(max_tokens=len(MarkupEngine.TOKENS))
        await chat.send("Show me some HTML.")
        assert await chat.wait_reply_state("done") == "done"
        assert await chat.reply_text() == "".join(MarkupEngine.TOKENS)
        await expect(
            chat.page.get_by_text('<img src=x onerror="window.__pwned=1">')
        ).to_be_visible()
        assert await chat.page.evaluate("typeof window.__pwned") == "undefined"
        elements = "#transcript img, #transcript script, #transcript b"
        assert await chat.page.locator(elements).count() == 0


async def test_api_key_required(browser: Browser) -> None:
    async with running_app(api_key=("s3cret-key.1",), fake_tokens_per_s=40) as app:
        chat = await ChatPage.open(browser, app)
        await chat.wait_conn("API key required")
        await chat.settings(max_tokens=12)
        await chat.send("Hello without a key.")
        assert await chat.wait_reply_state("error") == "error"
        assert "requires an API key" in await chat.reply_notice()

        await chat.enter_key("s3cret-key.1")
        await chat.wait_conn("Ready")
        await chat.page.get_by_role("button", name="Retry").click()
        assert await chat.wait_reply_state("done") == "done"
        assert len((await chat.reply_text()).split()) == 12
        stored = await chat.page.evaluate("sessionStorage.getItem('rawstream.apiKey')")
        assert stored == "s3cret-key.1"
        assert await chat.page.evaluate("localStorage.length") == 0

        # The same key opens the WebSocket, offered as the subprotocol bearer.<key>.
        await chat.use_websocket()
        await chat.send("Hello over the socket.")
        assert await chat.wait_reply_state("done") == "done"


async def test_wrong_key_on_websocket_is_explained(browser: Browser) -> None:
    async with running_app(api_key=("right-key",)) as app:
        chat = await ChatPage.open(browser, app)
        await chat.enter_key("wrong-key")
        await chat.choose_websocket()
        await chat.wait_conn("API key rejected")
        await chat.send("Anyone there?")
        assert await chat.wait_reply_state("error") == "error"
        assert "rejected the API key" in await chat.reply_notice()


async def test_overloaded_server_says_when_to_retry(browser: Browser) -> None:
    async with running_app(parallel=1, max_queue=0, fake_tokens_per_s=5) as app:
        chat = await ChatPage.open(browser, app)
        async with httpx.AsyncClient() as client:
            body = {"messages": [{"role": "user", "content": "busy"}], "max_tokens": 200}
            taken = await client.post(url(app, "/v1/generations"), json=body)
            assert taken.status_code == 201
            await chat.send("Is there room?")
            assert await chat.wait_reply_state("error") == "error"
            notice = await chat.reply_notice()
            assert "busy" in notice and "Try again in" in notice
            await client.delete(url(app, f"/v1/generations/{taken.json()['id']}"))


async def test_phone_width_has_no_horizontal_scroll(browser: Browser) -> None:
    async with running_app(fake_tokens_per_s=40) as app:
        chat = await ChatPage.open(browser, app, viewport=PHONE)
        await chat.settings(max_tokens=40)
        await chat.send("A_very_long_unbroken_token_" * 8)
        assert await chat.wait_reply_state("done") == "done"
        overflow = await chat.page.evaluate(
            "() => [document.documentElement.scrollWidth, document.body.scrollWidth,"
            " window.innerWidth]"
        )
        assert max(overflow[:2]) <= overflow[2], overflow
        await expect(chat.page.get_by_label("Message", exact=True)).to_be_in_viewport()


async def test_server_gone_is_said_plainly(browser: Browser) -> None:
    app = App(Config(port=0, access_log=False, engine="fake", graceful_timeout=2.0))
    await app.start()
    try:
        chat = await ChatPage.open(browser, app)
        await chat.wait_conn("Ready")
    finally:
        await app.server.shutdown()
        await app.close()
    await chat.send("Hello?")
    assert await chat.wait_reply_state("error") == "error"
    assert "Cannot reach the server" in await chat.reply_notice()
    await chat.wait_conn("Server unreachable")
