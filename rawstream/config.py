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


def _opt(default: Any, help: str, *, unit: str = "", repeat: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "unit": unit, "repeat": repeat})


@dataclass(frozen=True, slots=True)
class Config:
    """Server, engine and protocol settings. Immutable; build a new one to change it."""

    # --- where and what ---------------------------------------------------------
    host: str = _opt("127.0.0.1", "Address to listen on.")
    port: int = _opt(8000, "TCP port to listen on (0 picks a free port).")
    model: str | None = _opt(
        None, "Path to a GGUF model. Default: the bundled SmolLM2-135M-Instruct."
    )
    engine: str = _opt("llama", "Generation engine: 'llama' (the model) or 'fake'.")
    fake_tokens_per_s: float = _opt(
        50.0, "Token rate of the fake engine, per stream.", unit="tokens/s"
    )
    parallel: int = _opt(4, "Streams decoded together in one batch (engine slots).")
    threads: int = _opt(0, "CPU threads for llama.cpp (0: all cores).")
    ctx_per_slot: int = _opt(2048, "Context length of each slot.", unit="tokens")
    prefix_cache: bool = _opt(
        True,
        "Keep each slot's KV after a stream and reuse the longest shared prompt prefix.",
    )
    max_queue: int = _opt(
        16, "Requests that may wait for a free slot; beyond it, 503 + Retry-After."
    )
    stream_buffer_tokens: int = _opt(
        32, "Tokens buffered per stream before the engine pauses that stream.", unit="tokens"
    )
    api_key: tuple[str, ...] = _opt(
        (), "Require this Bearer key (repeatable). Default: no authentication.", repeat=True
    )
    loop: str = _opt("auto", "Event loop: 'auto' (uvloop when installed), 'uvloop' or 'asyncio'.")
    trace: bool = _opt(False, "Log every h11/wsproto event and state change per connection.")
    access_log: bool = _opt(True, "Log one line per request or stream.")

    # --- HTTP limits --------------------------------------------------------------
    # h11's own default is 16 KiB; nginx uses 8 KiB buffers (up to 4 of them), Node.js 16 KiB.
    max_header_bytes: int = _opt(16384, "Largest request head (line + headers).", unit="bytes")
    max_body_bytes: int = _opt(1048576, "Largest request body.", unit="bytes")
    max_connections: int = _opt(4096, "Open connections; past it, new ones get 503 and are closed.")
    read_high_water: int = _opt(
        65536, "Buffered inbound bytes above which reading pauses.", unit="bytes"
    )
    write_high_water: int = _opt(
        16384, "Transport write buffer above which producers wait.", unit="bytes"
    )

    # --- timeouts -----------------------------------------------------------------
    head_timeout: float = _opt(
        10.0, "Deadline for a full request head, counted from accept or keep-alive.", unit="s"
    )
    body_timeout: float = _opt(30.0, "Longest wait for the next piece of a request body.", unit="s")
    keepalive_timeout: float = _opt(
        5.0, "Idle time between requests before a keep-alive connection closes.", unit="s"
    )
    write_stall_timeout: float = _opt(
        30.0, "Longest a response may wait on a client that reads nothing.", unit="s"
    )
    sse_heartbeat: float = _opt(15.0, "Interval of SSE heartbeat comments.", unit="s")
    sse_retry_ms: int = _opt(
        2000, "Reconnection delay sent to SSE clients in 'retry:' at shutdown.", unit="ms"
    )
    ws_handshake_timeout: float = _opt(
        10.0, "Deadline for a WebSocket upgrade request, from accept.", unit="s"
    )
    ws_close_timeout: float = _opt(5.0, "Longest wait for the peer's Close frame.", unit="s")
    ws_ping_interval: float = _opt(20.0, "Interval of server pings (0: never).", unit="s")
    ws_ping_timeout: float = _opt(20.0, "Longest wait for a pong before closing 1011.", unit="s")
    ws_max_message_bytes: int = _opt(
        1048576, "Largest WebSocket message; larger gets close code 1009.", unit="bytes"
    )
    ws_max_streams: int = _opt(16, "Concurrent logical streams per WebSocket.")
    graceful_timeout: float = _opt(
        10.0, "Grace period for open streams at shutdown before they are cut.", unit="s"
    )
    resume_window: float = _opt(
        30.0, "How long a generation lives on after its last viewer leaves.", unit="s"
    )
    replay_buffer_events: int = _opt(
        4096, "Events a resumable generation keeps for Last-Event-ID replay."
    )

    def replace(self, **changes: Any) -> Config:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


def flag_name(field_name: str) -> str:
    """The command-line flag of a :class:`Config` field."""
    return "--" + field_name.replace("_", "-")


def options() -> list[dataclasses.Field[Any]]:
    """The fields of :class:`Config`, in declaration order."""
    return list(dataclasses.fields(Config))
