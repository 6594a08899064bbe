"""docs/reference.md names every flag, endpoint and metric the code has, and no other."""

from __future__ import annotations

import asyncio
import re

import h11

from rawstream.app.application import ROUTES, App
from rawstream.cli import build_parser
from rawstream.config import Config, flag_name, options
from rawstream.engine.fake import FakeEngine
from tests.docs.gen_module import ROOT

REFERENCE = ROOT / "docs" / "reference.md"
FIX = "update docs/reference.md (tables: `.venv/bin/python docs/gen.py`)"


def reference_text() -> str:
    return REFERENCE.read_text()


def serve_flags() -> set[str]:
    """Every option string ``rawstream serve`` accepts (``--trace``, ``--no-trace``, ...)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    serve = sub.choices["serve"]  # type: ignore[index]
    return {s for a in serve._actions for s in a.option_strings if s.startswith("--")} - {"--help"}


def test_every_flag_is_documented_and_every_documented_flag_exists():
    text = reference_text()
    documented = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
    for f in options():
        assert flag_name(f.name) in documented, f"{flag_name(f.name)} is not documented: {FIX}"
    unknown = documented - serve_flags()
    assert not unknown, f"docs/reference.md names flags that do not exist: {sorted(unknown)}"


def test_every_endpoint_is_documented_and_every_documented_endpoint_exists():
    text = reference_text()
    rows = set(re.findall(r"^\| (GET|POST|PUT|PATCH|DELETE|HEAD) \| `([^`]+)` \|", text, re.M))
    routes = {(r.method, r.pattern) for r in ROUTES}
    assert routes - rows == set(), f"endpoints missing from docs/reference.md: {FIX}"
    assert rows - routes == set(), "docs/reference.md lists endpoints that do not exist"


async def scrape_metrics() -> str:
    """``GET /metrics`` of a live app (fake engine), over a real loopback socket."""
    config = Config(port=0, engine="fake", access_log=False)
    app = App(config, engine=FakeEngine(config))
    await app.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        await app.server.shutdown()
        await app.close()
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/metrics", headers=[("host", "docs")]))
    client.send(h11.EndOfMessage())
    client.receive_data(raw)
    client.receive_data(b"")
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            assert event.status_code == 200
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    return body.decode()


def families(exposition: str) -> set[str]:
    """Metric family names from ``# TYPE`` lines, without prometheus_client's ``_created``."""
    names = {_family(n) for n in re.findall(r"^# TYPE (\S+) ", exposition, re.M)}
    return {n for n in names if not (n.endswith("_created") and n[: -len("_created")] in names)}


def _family(name: str) -> str:
    """A series name without the suffix a scrape adds to its family name."""
    for suffix in ("_total", "_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def documented_families(text: str) -> set[str]:
    return {_family(name) for name in re.findall(r"rawstream_[a-z0-9_]+", text)}


async def test_every_metric_is_documented_and_every_documented_metric_exists():
    scraped = families(await scrape_metrics())
    assert len(scraped) > 10
    documented = documented_families(reference_text())
    assert scraped - documented == set(), f"metrics missing from docs/reference.md: {FIX}"
    assert documented - scraped == set(), "docs/reference.md names metrics that do not exist"
