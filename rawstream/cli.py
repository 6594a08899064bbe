"""Command line: ``rawstream serve [flags]`` (also ``python -m rawstream serve``).

Every flag comes from a field of :class:`rawstream.config.Config`, with its default
and help text, so the CLI and the configuration cannot drift apart.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from rawstream import __version__
from rawstream.config import Config, flag_name, options
from rawstream.server.server import Server


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, generated from :class:`Config`."""
    parser = argparse.ArgumentParser(
        prog="rawstream", description="A streaming server for local AI models."
    )
    parser.add_argument("--version", action="version", version=f"rawstream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="Serve the model over HTTP, SSE and WebSocket.")
    for f in options():
        meta = f.metadata
        help_text = meta["help"]
        unit = f" ({meta['unit']})" if meta["unit"] else ""
        default = f.default
        if meta["repeat"]:
            serve.add_argument(
                flag_name(f.name),
                dest=f.name,
                action="append",
                default=None,
                help=help_text + unit,
            )
        elif isinstance(default, bool):
            serve.add_argument(
                flag_name(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=f"{help_text}{unit} Default: {'on' if default else 'off'}.",
            )
        else:
            kind: Any = _field_type(f)
            serve.add_argument(
                flag_name(f.name),
                dest=f.name,
                type=kind,
                default=default,
                help=f"{help_text}{unit} Default: {default}.",
            )
    return parser


def _field_type(f: dataclasses.Field[Any]) -> type:
    default = f.default
    if isinstance(default, float):
        return float
    if isinstance(default, int):
        return int
    return str


def config_from_args(args: argparse.Namespace) -> Config:
    """Build a :class:`Config` from parsed arguments."""
    values = {f.name: getattr(args, f.name) for f in options()}
    values["api_key"] = tuple(values["api_key"] or ())
    return Config(**values)


def _new_loop(choice: str) -> asyncio.AbstractEventLoop:
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("--loop uvloop: uvloop is not installed") from None
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    elif choice != "asyncio":
        raise SystemExit(f"--loop must be auto, uvloop or asyncio, not {choice!r}")
    return asyncio.new_event_loop()


class Runnable(Protocol):
    """What :func:`run` serves: an object with a server, started and closed."""

    @property
    def server(self) -> Server: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def run(config: Config, app_factory: Callable[[Config], Runnable] | None = None) -> int:
    """Serve until SIGINT/SIGTERM (graceful; a second signal aborts); return 0."""
    if app_factory is None:
        from rawstream.app import create_app

        app_factory = create_app
    loop = _new_loop(config.loop)
    try:
        return loop.run_until_complete(_serve(config, app_factory))
    finally:
        loop.close()


async def _serve(config: Config, app_factory: Callable[[Config], Runnable]) -> int:
    app = app_factory(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, app.server.request_shutdown)
    try:
        await app.start()
    except Exception as exc:  # a missing model, a broken file: say so and exit
        logging.getLogger("rawstream").error("%s", exc)
        app.server.abort()
        await app.close()
        return 1
    await app.server.wait_shutdown()
    await app.close()
    return 0


def setup_logging(config: Config) -> None:
    """Log to stderr: the banner, the access log, and the trace with ``--trace``."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    if not config.access_log:
        logging.getLogger("rawstream.access").setLevel(logging.WARNING)


def main(
    argv: Sequence[str] | None = None,
    app_factory: Callable[[Config], Runnable] | None = None,
) -> int:
    """Entry point of the ``rawstream`` command (``app_factory`` serves tests)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:  # a flag out of its range: say which, exit 2
        parser.error(str(exc))
    setup_logging(config)
    return run(config, app_factory)


__all__ = ["Runnable", "build_parser", "config_from_args", "main", "run", "setup_logging"]
