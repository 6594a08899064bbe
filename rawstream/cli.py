"""Command line: ``rawstream serve [flags]`` (also ``python -m rawstream serve``).

Every flag comes from a field of :class:`rawstream.config.Config`, with its default
and help text, so the CLI and the configuration cannot drift apart.

API keys come from three places, all added together into ``Config.api_key`` (in
this order, duplicates dropped): ``--api-key KEY`` (repeatable; visible to every
user in ``ps``), ``--api-key-file PATH`` (one key a line; blank lines and lines
starting with ``#`` are skipped) and the environment variable
``RAWSTREAM_API_KEYS`` (keys separated by commas and/or whitespace). A key file
that is missing, unreadable or holds no key stops the start with a message naming
the path, never its content.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from rawstream import __version__
from rawstream.config import Config, flag_name, options
from rawstream.server.server import Server

#: The environment variable that adds API keys (separated by commas and/or whitespace).
API_KEYS_ENV = "RAWSTREAM_API_KEYS"
#: The largest ``--api-key-file`` read: a key file is a few lines, more is a mistake.
MAX_KEY_FILE_BYTES = 1 << 20

_EPILOG = (
    f"Environment: {API_KEYS_ENV} adds API keys (separated by commas and/or whitespace) "
    "to --api-key and --api-key-file; unlike --api-key, neither shows in the process list."
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, generated from :class:`Config`."""
    parser = argparse.ArgumentParser(
        prog="rawstream", description="A streaming server for local AI models."
    )
    parser.add_argument("--version", action="version", version=f"rawstream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="Serve the model over HTTP, SSE and WebSocket.", epilog=_EPILOG
    )
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


def read_key_file(path: str) -> tuple[str, ...]:
    """The API keys in the file at ``path``, one a line.

    Surrounding whitespace is stripped; blank lines and lines starting with ``#`` are
    skipped. Raises :class:`ValueError` naming the path, and never quoting the file,
    if it cannot be read, is not UTF-8, holds a line with inner whitespace (no
    Bearer token has any: RFC 6750 section 2.1) or holds no key at all.
    """
    where = f"{flag_name('api_key_file')} {path}"
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"{where}: cannot read it ({reason})") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"{where}: larger than {MAX_KEY_FILE_BYTES} bytes, not a key file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{where}: not UTF-8 text") from None
    keys: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if any(c.isspace() for c in key):
            raise ValueError(f"{where}, line {number}: a key cannot contain whitespace")
        keys.append(key)
    if not keys:
        raise ValueError(f"{where}: no key in it (one a line; '#' starts a comment)")
    return tuple(keys)


def env_keys(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The API keys in :data:`API_KEYS_ENV`, or none if it is unset.

    Raises :class:`ValueError` if it is set but holds no key: running without
    authentication because a variable came out empty must not happen silently.
    """
    value = environ.get(API_KEYS_ENV)
    if value is None:
        return ()
    keys = tuple(key for key in re.split(r"[,\s]+", value) if key)
    if not keys:
        raise ValueError(f"{API_KEYS_ENV} is set but holds no key (unset it for no keys)")
    return keys


def api_keys(
    flags: Iterable[str], key_file: str | None, environ: Mapping[str, str]
) -> tuple[str, ...]:
    """Every configured key: ``--api-key``, then the key file, then the environment."""
    keys = list(flags)
    if any(not key for key in keys):
        raise ValueError(f"{flag_name('api_key')} must not be empty")
    if key_file is not None:
        keys.extend(read_key_file(key_file))
    keys.extend(env_keys(environ))
    return tuple(dict.fromkeys(keys))


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """Build a :class:`Config` from parsed arguments and ``environ`` (``os.environ``).

    Raises :class:`ValueError` for a flag out of its range or a key source that
    cannot be used (see :func:`read_key_file` and :func:`env_keys`).
    """
    values = {f.name: getattr(args, f.name) for f in options()}
    values["api_key"] = api_keys(
        values["api_key"] or (),
        values["api_key_file"],
        os.environ if environ is None else environ,
    )
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
    # What start-up made (the model's metadata and vocabulary, the chat template, the
    # routes) lives as long as the process: move it out of the cyclic garbage
    # collector's sight, so a collection under load scans only the objects of
    # requests. A full collection over the start-up heap was the longest pause of
    # the event loop while huge chat requests arrived.
    gc.freeze()
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
    except ValueError as exc:  # a flag out of range, an unusable key file: say so, exit 2
        parser.error(str(exc))
    setup_logging(config)
    return run(config, app_factory)


__all__ = [
    "API_KEYS_ENV",
    "Runnable",
    "api_keys",
    "build_parser",
    "config_from_args",
    "env_keys",
    "main",
    "read_key_file",
    "run",
    "setup_logging",
]
