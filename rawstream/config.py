"""Every tunable of rawstream in one place.

Each field of :class:`Config` is one command-line flag (``max_header_bytes`` is
``--max-header-bytes``). The field's metadata holds its help text and unit; the CLI,
the reference documentation and the tests that keep them in step are all generated
from this table, so a limit cannot exist without a flag and a documented default.

Defaults are chosen for a server on loopback or behind a reverse proxy, streaming
tokens to a few hundred to a few thousand clients. Where a default follows another
server's precedent, the comment says which.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def _opt(
    default: Any,
    help: str,
    *,
    unit: str = "",
    repeat: bool = False,
    minimum: float | None = None,
    above: float | None = None,
    secret: bool = False,
) -> Any:
    """A field of :class:`Config`: its default, help text, unit and allowed range.

    ``minimum`` is the smallest value allowed, ``above`` a bound the value must
    exceed; :meth:`Config.__post_init__` refuses anything else, so a nonsensical
    flag (``--ws-max-streams 0``) fails at start-up with a clear message. A
    ``secret`` field is left out of the ``repr``, so a logged ``Config`` shows no key.
    """
    metadata = {"help": help, "unit": unit, "repeat": repeat, "minimum": minimum, "above": above}
    return field(default=default, metadata=metadata, repr=not secret)


@dataclass(frozen=True, slots=True)
class Config:
    """Server, engine and protocol settings. Immutable; build a new one to change it."""

    # --- where and what ---------------------------------------------------------
    host: str = _opt("127.0.0.1", "Address to listen on.")
    port: int = _opt(8000, "TCP port to listen on (0 picks a free port).", minimum=0)
    model: str | None = _opt(
        None, "Path to a GGUF model. Default: the bundled SmolLM2-135M-Instruct."
    )
    engine: str = _opt("llama", "Generation engine: 'llama' (the model) or 'fake'.")
    fake_tokens_per_s: float = _opt(
        50.0, "Token rate of the fake engine, per stream.", unit="tokens/s", above=0
    )
    parallel: int = _opt(4, "Streams decoded together in one batch (engine slots).", minimum=1)
    threads: int = _opt(0, "CPU threads for llama.cpp (0: all cores).", minimum=0)
    ctx_per_slot: int = _opt(2048, "Context length of each slot.", unit="tokens", minimum=16)
    prefix_cache: bool = _opt(
        True,
        "Keep each slot's KV after a stream and reuse the longest shared prompt prefix.",
    )
    max_queue: int = _opt(
        16, "Requests that may wait for a free slot; beyond it, 503 + Retry-After.", minimum=0
    )
    stream_buffer_tokens: int = _opt(
        32,
        "Tokens buffered per stream before the engine pauses that stream.",
        unit="tokens",
        minimum=1,
    )
    api_key: tuple[str, ...] = _opt(
        (),
        "Require this Bearer key (repeatable). Default: no authentication.",
        repeat=True,
        secret=True,
    )
    api_key_file: str | None = _opt(
        None,
        "Read Bearer keys from this file, one per line ('#' starts a comment); added to "
        "--api-key and RAWSTREAM_API_KEYS, and kept out of the process list.",
    )
    allow_origin: tuple[str, ...] = _opt(
        (),
        "Also allow browser requests and WebSocket upgrades from this Origin "
        "(repeatable; '*' allows any). Always allowed: the server's own origins "
        "(http://127.0.0.1:PORT, http://localhost:PORT, the bound address).",
        repeat=True,
    )
    allow_host: tuple[str, ...] = _opt(
        (),
        "Also accept requests whose Host is this name, port ignored (repeatable; '*' "
        "allows any). Always accepted: 127.0.0.1, localhost, ::1 and the bound address; "
        "bound to 0.0.0.0 or ::, any IP address.",
        repeat=True,
    )
    loop: str = _opt("auto", "Event loop: 'auto' (uvloop when installed), 'uvloop' or 'asyncio'.")
    trace: bool = _opt(False, "Log every h11/wsproto event and state change per connection.")
    access_log: bool = _opt(True, "Log one line per request or stream.")

    # --- HTTP limits --------------------------------------------------------------
    # h11's own default is 16 KiB; nginx uses 8 KiB buffers (up to 4 of them), Node.js 16 KiB.
    max_header_bytes: int = _opt(
        16384, "Largest request head (line + headers).", unit="bytes", minimum=256
    )
    max_body_bytes: int = _opt(1048576, "Largest request body.", unit="bytes", minimum=0)
    max_connections: int = _opt(
        4096, "Open connections; past it, new ones get 503 and are closed.", minimum=1
    )
    read_high_water: int = _opt(
        65536, "Buffered inbound bytes above which reading pauses.", unit="bytes", minimum=1024
    )
    write_high_water: int = _opt(
        16384, "Transport write buffer above which producers wait.", unit="bytes", minimum=1024
    )
    max_messages: int = _opt(
        1024, "Most messages in one chat request; more gets 400 before any work.", minimum=1
    )

    # --- timeouts -----------------------------------------------------------------
    head_timeout: float = _opt(
        10.0,
        "Deadline for a full request head, counted from accept or keep-alive.",
        unit="s",
        above=0,
    )
    body_timeout: float = _opt(
        30.0, "Longest wait for the next piece of a request body.", unit="s", above=0
    )
    body_deadline: float = _opt(
        60.0,
        "Deadline for a whole request body, from the end of its head (however it trickles).",
        unit="s",
        above=0,
    )
    keepalive_timeout: float = _opt(
        5.0, "Idle time between requests before a keep-alive connection closes.", unit="s", above=0
    )
    write_stall_timeout: float = _opt(
        30.0, "Longest a response may wait on a client that reads nothing.", unit="s", above=0
    )
    sse_heartbeat: float = _opt(
        15.0, "Interval of SSE heartbeat comments (0: never).", unit="s", minimum=0
    )
    sse_retry_ms: int = _opt(
        2000,
        "Reconnection delay sent to SSE clients in 'retry:' at shutdown.",
        unit="ms",
        minimum=0,
    )
    ws_handshake_timeout: float = _opt(
        10.0, "Deadline for a WebSocket upgrade request, from accept.", unit="s", above=0
    )
    ws_close_timeout: float = _opt(
        5.0, "Longest wait for the peer's Close frame.", unit="s", above=0
    )
    ws_ping_interval: float = _opt(
        20.0, "Interval of server pings (0: never).", unit="s", minimum=0
    )
    ws_ping_timeout: float = _opt(
        20.0, "Longest wait for a pong before closing 1011.", unit="s", above=0
    )
    ws_max_message_bytes: int = _opt(
        1048576,
        "Largest WebSocket message, in bytes (UTF-8 for text); larger gets close code 1009.",
        unit="bytes",
        minimum=125,
    )
    ws_max_streams: int = _opt(16, "Concurrent logical streams per WebSocket.", minimum=1)
    graceful_timeout: float = _opt(
        10.0, "Grace period for open streams at shutdown before they are cut.", unit="s", minimum=0
    )
    resume_window: float = _opt(
        30.0,
        "How long a generation is kept for Last-Event-ID after its last viewer leaves.",
        unit="s",
        above=0,
    )
    replay_buffer_events: int = _opt(
        4096, "Events a resumable generation keeps for Last-Event-ID replay.", minimum=1
    )
    max_finished_generations: int = _opt(
        1024,
        "Finished resumable generations kept for late viewers; past it the oldest is freed.",
        minimum=1,
    )
    unwatched_timeout: float = _opt(
        10.0,
        "A running resumable generation that nobody watches is cancelled after this.",
        unit="s",
        above=0,
    )
    max_unwatched_generations: int = _opt(
        4,
        "Running resumable generations without a viewer, per caller; more gets 429.",
        minimum=1,
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_range(f, getattr(self, f.name))

    def replace(self, **changes: Any) -> Config:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


def flag_name(field_name: str) -> str:
    """The command-line flag of a :class:`Config` field."""
    return "--" + field_name.replace("_", "-")


def check_range(f: dataclasses.Field[Any], value: Any) -> None:
    """Raise :class:`ValueError`, naming the flag, if ``value`` is out of ``f``'s range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    minimum, above = f.metadata.get("minimum"), f.metadata.get("above")
    if minimum is not None and value < minimum:
        raise ValueError(f"{flag_name(f.name)} must be at least {minimum:g}, got {value:g}")
    if above is not None and not value > above:
        raise ValueError(f"{flag_name(f.name)} must be greater than {above:g}, got {value:g}")


def options() -> list[dataclasses.Field[Any]]:
    """The fields of :class:`Config`, in declaration order."""
    return list(dataclasses.fields(Config))
