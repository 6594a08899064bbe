"""Raw-socket fuzzing of a live rawstream server.

Valid requests (request lines, headers, JSON and chunked bodies, pipelines,
WebSocket handshakes followed by frames) are mutated, at the level of their
structure and of their bytes, and sent over plain TCP connections. For every case
the server must:

* never answer ``5xx`` and never close a WebSocket with ``1011`` (internal error):
  whatever the bytes, a mistake is the client's, and it gets a ``4xx`` or a close
  code that says so. Two ``5xx`` are about the request, not the server, and are
  the answers RFC 9110 asks for: ``501`` for a method or transfer coding the server
  does not implement (section 15.6.2) and ``505`` for a major version other than 1
  (section 15.6.6). ``503`` is not allowed: the fake engine has more slots and queue
  than a run can fill (see :data:`FUZZ_CONFIG`), so overload cannot explain one;
* never hang: with the short timeouts of :data:`FUZZ_CONFIG`, every connection is
  closed by the server (or answered and closed) within :data:`BOUND` seconds;
* never log an error or raise out of a protocol callback (in-process runs only);
* answer an unmutated seed exactly as expected (a sanity check that the seeds, and
  the server, are right);

and after each batch a normal client is served: ``GET /health``, a small streamed
chat completion and a WebSocket generation.

Every case is derived from the run's seed and its index alone, so one case can be
replayed and shrunk on its own::

    python -m tests.fuzz --count 20000 --seed 1234
    python -m tests.fuzz --seed 1234 --case 517 --minimize

``tests/server/test_fuzz_live.py`` runs a bounded number of cases in CI with a
random seed (printed; ``RAWSTREAM_FUZZ_SEED`` and ``RAWSTREAM_FUZZ_CASES`` override).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import random
import struct
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import websockets
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

#: Seconds within which the server must close every fuzzed connection. Its own
#: deadlines (:data:`FUZZ_CONFIG`) are at most 2 s, and a refused request is closed
#: at once; the rest is room for a busy machine.
BOUND = 8.0
#: Cases in flight at once, and cases between two checks with a normal client.
CONCURRENCY = 48
BATCH = 250

#: The server's settings for a fuzz run: short deadlines, so that every connection
#: ends quickly; enough engine slots and queue that the fake engine never refuses
#: with 503 (a case holds at most one HTTP generation at a time, or a WebSocket's
#: ``ws_max_streams`` (16), and 48 x 16 < parallel + max_queue); no WebSocket
#: keepalive pings, so that a close with 1011 can only be an internal error.
FUZZ_CONFIG: dict[str, Any] = {
    "engine": "fake",
    "fake_tokens_per_s": 5000.0,
    "access_log": False,
    "parallel": 64,
    "max_queue": 1024,
    "head_timeout": 1.0,
    "body_timeout": 1.0,
    "body_deadline": 2.0,
    "keepalive_timeout": 0.5,
    "ws_handshake_timeout": 1.0,
    "ws_close_timeout": 1.0,
    "ws_ping_interval": 0.0,
    "max_header_bytes": 8192,
    "max_body_bytes": 65536,
    "ws_max_message_bytes": 65536,
    "max_unwatched_generations": 1000,
}

#: Stands for the id of a live resumable generation; replaced when the case is sent
#: (same length as a real id, so a Content-Length around it stays right).
GEN_ID = b"gen-" + b"X" * 24
#: Stands for the server's port in ``Host``, so that a case's bytes, and every
#: mutation of them, depend on the seed and the index alone.
PORT = b"<PORT>"


# --- seeds ------------------------------------------------------------------------------


class Raw:
    """JSON text to splice into a body verbatim (what ``json.dumps`` cannot write)."""

    def __init__(self, text: str) -> None:
        self.text = text


@dataclass
class Req:
    """One HTTP request of a case; ``body`` is JSON (a Python value) or bytes."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: object = b""
    chunked: bool = False
    version: bytes = b"1.1"
    #: The status of the unmutated request (``None``: any that is not a 5xx).
    expected: int | None = 200
    #: Set when a mutation wrote its own framing headers: render them as they are.
    raw_framing: bool = False


@dataclass
class Frame:
    """One client WebSocket frame; ``payload`` is JSON (a Python value) or bytes."""

    opcode: int
    payload: object
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    #: Overrides the length field (a lie about the payload).
    length: int | None = None


@dataclass
class Draft:
    """A case before it is rendered to bytes."""

    name: str
    requests: list[Req]
    frames: list[Frame] | None = None  #: a WebSocket case: requests[0] is the handshake
    prefix: bytes = b""
    #: Statuses an unmutated draft gets (default: each request's ``expected``).
    expected: tuple[int | None, ...] | None = None


USER = [{"role": "user", "content": "Say hi"}]


def chat(**fields: object) -> dict[str, object]:
    return {"messages": USER, "max_tokens": 4, **fields}


HOST = (b"Host", b"127.0.0.1:" + PORT)


def seed_drafts(rng: random.Random) -> list[Draft]:
    """Every valid seed, freshly built (mutations change them in place)."""
    h = HOST
    js = (b"Content-Type", b"application/json")
    ws_key = base64.b64encode(rng.randbytes(16))
    handshake = Req(
        b"GET",
        b"/v1/ws",
        [h, (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
         (b"Sec-WebSocket-Key", ws_key), (b"Sec-WebSocket-Version", b"13"),
         (b"Sec-WebSocket-Protocol", b"rawstream")],
        expected=101,
    )  # fmt: skip
    ws_messages = [
        Frame(0x1, {"type": "generate", "id": "a", **chat()}),
        Frame(0x1, {"type": "ping"}),
        Frame(0x1, {"type": "generate", "id": 7, **chat(max_tokens=2, stop=["x"])}),
        Frame(0x1, {"type": "cancel", "id": "a"}),
        Frame(0x9, b"hi"),
    ]

    def get(target: bytes, *extra: tuple[bytes, bytes]) -> Req:
        return Req(b"GET", target, [h, *extra])

    drafts = [
        Draft("health", [get(b"/health")]),
        Draft("models", [get(b"/v1/models")]),
        Draft("metrics", [get(b"/metrics")]),
        Draft("page", [get(b"/")]),
        Draft("static", [get(b"/static/app.js")]),
        Draft("head", [Req(b"HEAD", b"/health", [h])]),
        Draft("options", [Req(b"OPTIONS", b"*", [h], expected=None)]),
        Draft("chat", [Req(b"POST", b"/v1/chat/completions", [h, js], chat())]),
        Draft("chat-stream", [Req(b"POST", b"/v1/chat/completions", [h, js],
                                  chat(stream=True, stream_options={"include_usage": True}))]),
        Draft("chat-chunked", [Req(b"POST", b"/v1/chat/completions", [h, js],
                                   chat(stream=True, temperature=0.5), chunked=True)]),
        Draft("completion", [Req(b"POST", b"/v1/completions", [h, js],
                                 {"prompt": "Once", "max_tokens": 3, "stream": True})]),
        Draft("generation", [Req(b"POST", b"/v1/generations", [h, js], chat(), expected=201)]),
        Draft("events", [get(b"/v1/generations/" + GEN_ID + b"/events",
                             (b"Last-Event-ID", b"0"))]),
        Draft("events-query", [get(b"/v1/generations/" + GEN_ID + b"/events?last_event_id=0")]),
        Draft("cancel", [Req(b"DELETE", b"/v1/generations/" + GEN_ID, [h])]),
        Draft("expect-100", [Req(b"POST", b"/v1/chat/completions",
                                 [h, js, (b"Expect", b"100-continue")], chat())],
              expected=(200,)),
        Draft("pipeline", [get(b"/health"), Req(b"POST", b"/v1/completions", [h, js],
                                                {"prompt": "a", "max_tokens": 2}),
                           get(b"/v1/models")]),
        # RFC 9112 section 9.6: "Connection: close" ends the connection after this
        # response; what follows it is never answered, but this one is.
        Draft("close-with-trailing", [get(b"/health", (b"Connection", b"close")),
                                      get(b"/v1/models")], expected=(200,)),
        # RFC 9112 section 2.2: a server "SHOULD ignore at least one empty line
        # (CRLF) received prior to the request-line".
        Draft("empty-line-first", [get(b"/health")], prefix=b"\r\n"),
        Draft("http10", [Req(b"GET", b"/health", [], version=b"1.0")]),
        Draft("ws", [handshake], ws_messages),
        Draft("ws-ping-flood", [replace(handshake)], [Frame(0x9, b"p") for _ in range(300)]),
        Draft("ws-fragmented", [replace(handshake)],
              [Frame(0x1, b'{"type":', fin=False), Frame(0x9, b""),
               Frame(0x0, b'"ping"}')]),
    ]  # fmt: skip
    return drafts


# --- mutations --------------------------------------------------------------------------

#: JSON values that have broken (or could break) parsers: too large, too deep, not
#: JSON at all, lone surrogates.
RAW_JSON = [
    "1" + "0" * 400, "-1" + "0" * 400, "9" * 5000, "1e999", "-1e999", "1e-400", "-0",
    "NaN", "Infinity", "-Infinity", "[" * 3000 + "]" * 3000, '{"a":' * 3000 + "1" + "}" * 3000,
    '"\\ud800"', '"\\udfff"', '"a\\ud800b"', '"\\udbff\\udfff"', '"\\udfff\\ud800"',
    '"\\u0000"', '"\\x41"', '"\\', "tru", "nul", '"' + "a" * 70000 + '"', "18446744073709551616",
    "9007199254740993", "0.1e1", "01", "1.", ".5", '""', "[]", "{}", '{"":1}',
]  # fmt: skip
#: JSON strings that decode to text no encoder takes (lone surrogates), and others
#: that are fine but unusual.
RAW_STRINGS = [
    '"\\ud800"', '"Say \\udfff hi"', '"\\udbff"', '"\\ud83d\\ude00"', '"\\ud800\\ud800"',
    '"\\u0000"', '"\\ufffe\\uffff"', '"\\u2028\\u2029"', '"\\\\"', '"\\"x"', '"a\\/b"', '""',
]  # fmt: skip
PY_VALUES: list[object] = [
    None, True, False, 0, -1, 1, 2, 3, 2**53, 2**63, 2**64, -(2**63) - 1, 0.0, 2.5, -2.5, 1e308,
    "", "x", "\x00", "é", "😀" * 10, "\u2028", "\r\n", "<script>", [], [None], {}, {"x": 1},
    ["a", "b", "c", "d", "e"], [{"type": "text", "text": "hi"}], [{"type": "image_url"}],
]  # fmt: skip
FIELDS = [
    "messages", "prompt", "model", "stream", "stream_options", "n", "max_tokens",
    "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty",
    "presence_penalty", "frequency_penalty", "seed", "stop", "type", "id", "user",
]  # fmt: skip
SPECIAL_BYTES = [b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"\x00", b"\xff", b"\x80", b"\xc3",
                 b" ", b"\t", b":", b",", b";", b"%", b"\x7f", b"\xed\xa0\x80"]  # fmt: skip
CONTENT_LENGTHS = [b"-1", b"1" * 30, b"0x10", b"3, 4", b"5, 5", b" 5", b"", b"+5", b"1e3",
                   b"18446744073709551616", b"99999999", b"0"]  # fmt: skip
TRANSFER_CODINGS = [b"chunked", b"xchunked", b"chunked, identity", b"gzip, chunked", b" chunked",
                    b"identity", b"CHUNKED"]  # fmt: skip
HEADERS = [
    (b"Connection", b"close"), (b"Connection", b"keep-alive"), (b"Connection", b"Upgrade"),
    (b"Upgrade", b"websocket"), (b"Upgrade", b"h2c"), (b"Expect", b"100-continue"),
    (b"Expect", b"nothing"), (b"Authorization", b"Bearer x"), (b"Last-Event-ID", b"9" * 5000),
    (b"Last-Event-ID", b"-3"), (b"Last-Event-ID", b"\xff\xfe"), (b"Host", b"evil.example"),
    (b"Origin", b"http://evil.example"), (b"X-Big", b"a" * 9000), (b"X-Nul", b"a\x00b"),
    (b"X-High", b"\xc3\xa9\xff"), (b"Sec-WebSocket-Version", b"8"), (b"Transfer-Encoding", b"x"),
    (b"Content-Type", b"text/plain"), (b" Leading", b"space"), (b"Bad Name", b"x"),
    (b"X-Fold", b"a\r\n b"), (b"", b"empty-name"),
]  # fmt: skip
METHODS = [b"GET", b"POST", b"HEAD", b"DELETE", b"PUT", b"OPTIONS", b"PATCH", b"get", b"CONNECT",
           b"TRACE", b"PRI", b"BREW", b"G\xe9T", b"", b"GET GET"]  # fmt: skip
TARGETS = [
    b"*", b"/", b"/health", b"/health/", b"//health", b"/v1/../health", b"/%2e%2e/health",
    b"/static/..%2Fapp.js", b"/static/", b"/v1/generations//events", b"/v1/generations/%00/events",
    b"http://127.0.0.1/health", b"HTTPS://x/v1/models?x=1", b"ftp://x/", b"health",
    b"/" + b"a" * 9000, b"/?api_key=" + b"k" * 50, b"/v1/generations/" + GEN_ID + b"/events/",
    b"/v1/ws?x=%ff", b"/\xff", b"/a b",
]  # fmt: skip
VERSIONS = [b"1.0", b"1.1", b"1.2", b"2.0", b"0.9", b"3", b"1", b"11", b"1.1 ", b"1.x"]
#: Close codes a client sends; not 1011, which the server echoes (RFC 6455 section
#: 5.5.1) and which would then hide a 1011 of its own.
CLOSE_CODES = [0, 999, 1000, 1001, 1002, 1004, 1005, 1006, 1015, 2999, 3000, 4999, 5000, 65535]


def mutate_json(rng: random.Random, value: object) -> object:
    """A changed JSON body (or message): a field set to something odd, or all of it."""
    choice = rng.random()
    if not isinstance(value, dict) or choice < 0.1:
        return Raw(rng.choice(RAW_JSON)) if rng.random() < 0.5 else rng.choice(PY_VALUES)
    obj = dict(value)
    name = rng.choice(FIELDS)
    if choice < 0.2:
        obj.pop(name, None)
    elif choice < 0.45:
        # Text the client chose: the strings that reach the engine.
        text = Raw(rng.choice(RAW_STRINGS))
        where = rng.choice(["content", "part", "prompt", "stop", "model"])
        if where in ("content", "part") and isinstance(obj.get("messages"), list):
            content: object = [{"type": "text", "text": text}] if where == "part" else text
            obj["messages"] = [*obj["messages"], {"role": "user", "content": content}]
        else:
            obj[where] = [text] if where == "stop" and rng.random() < 0.5 else text
    elif choice < 0.55 and isinstance(obj.get("messages"), list):
        message = {"role": rng.choice(["user", "system", "developer", "tool", "robot", "", 1]),
                   "content": rng.choice([*PY_VALUES, Raw(rng.choice(RAW_JSON))])}  # fmt: skip
        obj["messages"] = [*obj["messages"], message] * rng.choice([1, 1, 2, 600])
    elif choice < 0.75:
        obj[name] = Raw(rng.choice(RAW_JSON))
    else:
        obj[name] = rng.choice(PY_VALUES)
    return obj


def mutate_request(rng: random.Random, req: Req) -> str:
    """Change one part of a request's head or framing; return what was done."""
    kind = rng.choice(["method", "target", "version", "add", "drop", "dup", "cl", "te",
                       "chunked", "json"])  # fmt: skip
    if kind == "method":
        req.method = rng.choice(METHODS)
    elif kind == "target":
        req.target = rng.choice(TARGETS)
    elif kind == "version":
        req.version = rng.choice(VERSIONS)
    elif kind == "add":
        req.headers.insert(rng.randrange(len(req.headers) + 1), rng.choice(HEADERS))
    elif kind == "drop" and req.headers:
        req.headers.pop(rng.randrange(len(req.headers)))
    elif kind == "dup" and req.headers:
        req.headers.append(rng.choice(req.headers))
    elif kind == "cl":
        req.raw_framing = True
        req.headers.append((b"Content-Length", rng.choice(CONTENT_LENGTHS)))
    elif kind == "te":
        req.raw_framing = rng.random() < 0.5
        req.headers.append((b"Transfer-Encoding", rng.choice(TRANSFER_CODINGS)))
    elif kind == "chunked":
        req.chunked = not req.chunked
    else:
        req.body = mutate_json(rng, req.body)
    return f"{kind}"


def mutate_frames(rng: random.Random, frames: list[Frame]) -> str:
    """Change the frames of a WebSocket case; return what was done."""
    kind = rng.choice(["opcode", "rsv", "fin", "unmasked", "length", "payload", "utf8",
                       "control", "close", "many", "drop"])  # fmt: skip
    if not frames:
        frames.append(Frame(0x1, {"type": "ping"}))
    frame = rng.choice(frames)
    if kind == "opcode":
        frame.opcode = rng.randrange(16)
    elif kind == "rsv":
        frame.rsv = rng.randrange(1, 8)
    elif kind == "fin":
        frame.fin = not frame.fin
    elif kind == "unmasked":
        frame.masked = False
    elif kind == "length":
        frame.length = rng.choice([0, 1, 125, 126, 65535, 65536, 2**32, 2**63 - 1])
    elif kind == "payload":
        frame.payload = mutate_json(rng, frame.payload)
    elif kind == "utf8":
        frame.opcode, frame.payload = 0x1, rng.choice([b"\xff", b"\xed\xa0\x80", b'{"a":"\xc3"}'])
    elif kind == "control":
        frames.insert(rng.randrange(len(frames) + 1),
                      Frame(rng.choice([0x8, 0x9, 0xA]), b"x" * rng.choice([0, 125, 126, 200]),
                            fin=rng.random() < 0.7))  # fmt: skip
    elif kind == "close":
        code = rng.choice(CLOSE_CODES)
        reason = rng.choice([b"", b"bye", b"\xff\xfe", b"x" * 123, b"x" * 124])
        frames.insert(
            rng.randrange(len(frames) + 1),
            Frame(0x8, struct.pack("!H", code) + reason if code else b""),
        )
    elif kind == "many":
        message = {"type": "generate", "id": rng.randrange(40), **chat(max_tokens=2)}
        frames.extend(Frame(0x1, dict(message, id=i)) for i in range(rng.choice([3, 8, 20])))
    elif kind == "drop" and len(frames) > 1:
        frames.remove(frame)
    return f"frame-{kind}"


def mutate_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One byte-level change anywhere in the case."""
    if not data:
        return rng.choice(SPECIAL_BYTES), "insert"
    kind = rng.choice(["flip", "set", "insert", "delete", "dup", "truncate", "swap"])
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.choice([1, 2, 4, 16, 256]))
    if kind == "flip":
        data = data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]
    elif kind == "set":
        data = data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]
    elif kind == "insert":
        data = data[:i] + rng.choice(SPECIAL_BYTES) * rng.choice([1, 1, 2, 100]) + data[i:]
    elif kind == "delete":
        data = data[:i] + data[j:]
    elif kind == "dup":
        data = data[:j] + data[i:j] + data[j:]
    elif kind == "truncate":
        data = data[:i]
    else:
        k = rng.randrange(len(data))
        a, b = sorted((i, k))
        data = (
            data[:a]
            + data[b : b + (j - i)]
            + data[a + (j - i) : b]
            + data[a : a + (j - i)]
            + (data[b + (j - i) :])
        )
    return data, kind


# --- rendering --------------------------------------------------------------------------


def render_json(value: object) -> bytes:
    """``value`` as JSON text, with :class:`Raw` parts spliced in verbatim."""
    raws: list[str] = []

    def encode(v: object) -> object:
        if isinstance(v, Raw):
            raws.append(v.text)
            return f"\x00raw{len(raws) - 1}\x00"
        if isinstance(v, dict):
            return {k: encode(x) for k, x in v.items()}
        if isinstance(v, list):
            return [encode(x) for x in v]
        return v

    text = json.dumps(encode(value))
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00raw{i}\x00"), raw, 1)
    return text.encode("utf-8", "surrogatepass")


def body_bytes(body: object) -> bytes:
    return body if isinstance(body, bytes) else render_json(body)


def render_request(rng: random.Random, req: Req) -> bytes:
    body = body_bytes(req.body)
    headers = list(req.headers)
    if not req.raw_framing:
        if req.chunked:
            headers.append((b"Transfer-Encoding", b"chunked"))
        elif body or req.method in (b"POST", b"PUT", b"PATCH"):
            headers.append((b"Content-Length", str(len(body)).encode()))
    if req.chunked:
        pieces, rest = [], body
        while rest:
            n = rng.randint(1, max(1, len(rest)))
            ext = rng.choice([b"", b"", b";x=1"])
            pieces.append(b"%x%b\r\n%b\r\n" % (n, ext, rest[:n]))
            rest = rest[n:]
        body = b"".join(pieces) + b"0\r\n\r\n"
    head = b"%b %b HTTP/%b\r\n" % (req.method, req.target, req.version)
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return head + b"\r\n" + body


def render_frame(rng: random.Random, frame: Frame) -> bytes:
    payload = body_bytes(frame.payload)
    n = len(payload) if frame.length is None else frame.length
    first = (0x80 if frame.fin else 0) | (frame.rsv << 4) | frame.opcode
    mask_bit = 0x80 if frame.masked else 0
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not frame.masked:
        return head + payload
    key = rng.randbytes(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


#: A client Close frame (1000), masked with a zero key: it ends every WebSocket case.
CLOSE_FRAME = b"\x88\x82\x00\x00\x00\x00\x03\xe8"


# --- cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One fuzz case: bytes to send (in several writes) and what is known about them."""

    index: int
    name: str
    mutations: tuple[str, ...]
    segments: tuple[bytes, ...]
    websocket: bool
    #: The statuses to expect, for an unmutated seed; ``None`` once mutated.
    expected: tuple[int | None, ...] | None

    @property
    def data(self) -> bytes:
        return b"".join(self.segments)

    def describe(self, limit: int = 600) -> str:
        data = self.data
        shown = repr(data[:limit]) + (f" ... ({len(data)} bytes)" if len(data) > limit else "")
        mutations = "+".join(self.mutations) or "unmutated"
        return f"case {self.index} [{self.name}: {mutations}] {shown}"


def make_case(seed: int, index: int) -> Case:
    """Case ``index`` of the run with ``seed``: a seed, mutated 0 to 4 times."""
    rng = random.Random(f"{seed}:{index}")
    draft = rng.choice(seed_drafts(rng))
    mutations: list[str] = []
    rounds = rng.choice([0, 1, 1, 1, 2, 2, 3, 4])
    for _ in range(rounds):
        layer = rng.random()
        if draft.frames is not None and layer < 0.5:
            mutations.append(mutate_frames(rng, draft.frames))
        elif layer < 0.8:
            req = rng.choice(draft.requests)
            mutations.append(mutate_request(rng, req))
        else:
            mutations.append("bytes")  # applied after rendering
    data = draft.prefix + b"".join(render_request(rng, r) for r in draft.requests)
    if draft.frames is not None:
        data += b"".join(render_frame(rng, f) for f in draft.frames)
    for i, step in enumerate(mutations):
        if step == "bytes":
            data, kind = mutate_bytes(rng, data)
            mutations[i] = f"bytes-{kind}"
    if rng.random() < 0.2 and draft.frames is None:
        # Pipelined behind it: a request that must be answered or never read.
        data += render_request(rng, Req(b"GET", b"/health", [HOST]))
        mutations.append("pipelined")
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.choice([0, 0, 1, 3])))
    segments = tuple(data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True))
    expected = draft.expected or tuple(r.expected for r in draft.requests)
    return Case(
        index=index,
        name=draft.name,
        mutations=tuple(mutations),
        segments=tuple(s for s in segments if s),
        websocket=draft.frames is not None,
        expected=None if mutations else expected,
    )


# --- running a case ---------------------------------------------------------------------


@dataclass
class Outcome:
    """What the server did with one case."""

    received: bytes = b""
    closed: bool = False  #: the server closed (EOF or reset) within the bound
    statuses: list[int] = field(default_factory=list)
    ws_messages: list[str] = field(default_factory=list)
    ws_close: int | None = None
    problems: list[str] = field(default_factory=list)


async def send_case(port: int, case: Case, gen_id: bytes, bound: float = BOUND) -> Outcome:
    """Send ``case`` on a new connection and read until the server closes it."""
    outcome = Outcome()
    segments = substitute(case.segments, {GEN_ID: gen_id, PORT: str(port).encode()})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        outcome.problems.append(f"could not connect: {exc!r}")
        return outcome
    chunks: list[bytes] = []
    try:
        async with asyncio.timeout(bound):
            with contextlib.suppress(OSError):
                for segment in segments:
                    writer.write(segment)
                    await writer.drain()
                    await asyncio.sleep(0)  # let the server read this part on its own
                if case.websocket:
                    writer.write(CLOSE_FRAME)
                    await writer.drain()
                    writer.write_eof()
            with contextlib.suppress(OSError):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
            outcome.closed = True
    except TimeoutError:
        pass
    finally:
        writer.transport.abort()
    outcome.received = b"".join(chunks)
    judge(case, outcome, bound)
    return outcome


def substitute(segments: tuple[bytes, ...], values: dict[bytes, bytes]) -> list[bytes]:
    """``segments`` with each placeholder replaced, even one cut by a segment bound."""
    data = b"".join(segments)
    bounds, at = [], 0
    for segment in segments:
        at += len(segment)
        bounds.append(at)
    for old, new in values.items():
        start = 0
        while (found := data.find(old, start)) >= 0:
            data = data[:found] + new + data[found + len(old) :]
            shift = len(new) - len(old)
            bounds = [b + shift if b > found else b for b in bounds]
            start = found + len(new)
    return [data[a:b] for a, b in itertools.pairwise([0, *bounds])]


def judge(case: Case, outcome: Outcome, bound: float = BOUND) -> None:
    """Fill ``outcome.problems`` with every rule the server broke."""
    statuses, rest, error = parse_responses(outcome.received)
    outcome.statuses = statuses
    if error:
        outcome.problems.append(error)
    if not outcome.closed:
        got = f"statuses {statuses}" if statuses else f"{len(outcome.received)} bytes"
        outcome.problems.append(f"connection still open after {bound:g} s ({got})")
    if any(s >= 500 and s not in CLIENT_5XX for s in statuses):
        outcome.problems.append(f"5xx answered: statuses {statuses}")
    if rest is not None:
        parse_websocket(rest, outcome)
        if outcome.ws_close == 1011:
            outcome.problems.append("WebSocket closed with 1011 (internal error)")
    final = tuple(s for s in statuses if not 100 <= s < 200 or s == 101)  # 100 is optional
    if case.expected is not None and (
        len(final) != len(case.expected)
        or any(want not in (None, got) for want, got in zip(case.expected, final, strict=True))
    ):
        outcome.problems.append(f"unmutated seed: expected {case.expected}, got {statuses}")


#: 5xx statuses that describe the request (see the module docstring).
CLIENT_5XX = frozenset({501, 505})
_HEAD_END = b"\r\n\r\n"


def parse_responses(data: bytes) -> tuple[list[int], bytes | None, str | None]:
    """The statuses of the responses in ``data``; the bytes after a 101; an error."""
    statuses: list[int] = []
    pos = 0
    while pos < len(data):
        if not data.startswith(b"HTTP/1.1 ", pos):
            return (
                statuses,
                None,
                f"not an HTTP/1.1 response at byte {pos}: {data[pos : pos + 40]!r}",
            )
        end = data.find(_HEAD_END, pos)
        if end < 0:
            return statuses, None, None  # cut short by an abort: allowed
        head = data[pos:end].decode("latin-1")
        status = int(head[9:12])
        statuses.append(status)
        pos = end + len(_HEAD_END)
        if status == 101:
            return statuses, data[pos:], None
        if 100 <= status < 200 or status in (204, 304):
            continue
        fields = {k.strip().lower(): v.strip() for k, _, v in
                  (line.partition(":") for line in head.split("\r\n")[1:])}  # fmt: skip
        if fields.get("transfer-encoding") == "chunked":
            if data.startswith(b"HTTP/1.", pos):
                continue  # the answer to a HEAD: no body
            try:
                pos = skip_chunked(data, pos)
            except ValueError:
                return statuses, None, f"invalid chunked body at byte {pos}"
            if pos < 0:
                return statuses, None, None
        elif "content-length" in fields:
            length = int(fields["content-length"])
            at_next = data.startswith(b"HTTP/1.", pos)
            if length and at_next and not data.startswith(b"HTTP/1.", pos + length):
                continue  # the answer to a HEAD: no body
            pos += length
        else:
            break  # a body until the close
    return statuses, None, None


def skip_chunked(data: bytes, pos: int) -> int:
    """The end of the chunked body starting at ``pos``, or -1 if it is incomplete."""
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return -1
        size = int(data[pos:line_end].split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            return pos + 2 if data.startswith(b"\r\n", pos) else -1
        pos += size + 2
        if pos > len(data):
            return -1


def parse_websocket(data: bytes, outcome: Outcome) -> None:
    """Parse the server's frames as a client would; note any invalid one."""
    client = Connection(ConnectionType.CLIENT)
    parts: list[str] = []
    try:
        client.receive_data(data)
        for event in client.events():
            if isinstance(event, TextMessage):
                parts.append(event.data)
                if event.message_finished:
                    text = "".join(parts)
                    parts = []
                    outcome.ws_messages.append(text)
                    check_ws_message(text, outcome)
            elif isinstance(event, BytesMessage):
                outcome.problems.append("server sent a binary message")
            elif isinstance(event, CloseConnection):
                if client.state is ConnectionState.OPEN:
                    outcome.problems.append(f"server sent an invalid frame: {event.reason}")
                outcome.ws_close = event.code
                return
            elif not isinstance(event, Ping | Pong):
                outcome.problems.append(f"unexpected WebSocket event {event!r}")
    except Exception as exc:  # a parse failure of the server's bytes
        outcome.problems.append(f"server frames do not parse: {exc!r}")


def check_ws_message(text: str, outcome: Outcome) -> None:
    try:
        message = json.loads(text)
    except ValueError:
        outcome.problems.append(f"server message is not JSON: {text[:80]!r}")
        return
    if not isinstance(message, dict) or message.get("type") not in (
        "delta", "done", "error", "pong",
    ):  # fmt: skip
        outcome.problems.append(f"server message of unknown shape: {text[:80]!r}")


# --- the server's side: errors it logs, exceptions of its callbacks ---------------------


class ServerErrors(logging.Handler):
    """Collects what the server logs at ERROR and what escapes its loop callbacks.

    Each record notes the cases in flight when it happened, to find the culprit.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[tuple[str, frozenset[int]]] = []
        self.in_flight: set[int] = set()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += ": " + where(record.exc_info[1])
        self.records.append((text, frozenset(self.in_flight)))

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        text = str(context.get("message"))
        if isinstance(exc, BaseException):
            text += ": " + where(exc)
        self.records.append((text, frozenset(self.in_flight)))

    @contextlib.contextmanager
    def watching(self) -> Any:
        loop = asyncio.get_running_loop()
        logger = logging.getLogger("rawstream")
        previous, level = loop.get_exception_handler(), logger.level
        logger.addHandler(self)
        if logger.getEffectiveLevel() > logging.ERROR:
            logger.setLevel(logging.ERROR)
        loop.set_exception_handler(self.loop_exception)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)
            loop.set_exception_handler(previous)


def where(exc: BaseException) -> str:
    """``exc`` and the innermost frames it was raised through, on one line."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    path = " <- ".join(
        f"{os.path.relpath(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames)
    )
    return f"{exc!r} at {path}"


# --- a run ------------------------------------------------------------------------------


@dataclass
class Failure:
    case: Case
    problems: list[str]

    def __str__(self) -> str:
        return f"{self.case.describe()}\n    " + "\n    ".join(self.problems)


@dataclass
class Report:
    seed: int
    count: int
    failures: list[Failure] = field(default_factory=list)
    batch_checks: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        common = sorted(self.statuses.items(), key=lambda kv: -kv[1])[:10]
        return (
            f"fuzz: {self.count} cases, seed {self.seed}: {len(self.failures)} failed, "
            f"{self.batch_checks} normal-client checks, {self.seconds:.1f} s; statuses {common}"
        )

    def explain(self, limit: int = 10) -> str:
        lines = [self.summary(), f"replay one: python -m tests.fuzz --seed {self.seed} --case N"]
        lines += [str(f) for f in self.failures[:limit]]
        if len(self.failures) > limit:
            lines.append(f"... and {len(self.failures) - limit} more")
        return "\n".join(lines)


async def normal_client_is_served(port: int) -> str:
    """A normal client's requests (health, a streamed completion, a WebSocket); a live id."""
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=BOUND) as client:
        health = await client.get("/health")
        assert health.status_code == 200, f"GET /health: {health.status_code}"
        body = {"messages": USER, "max_tokens": 3, "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200, f"streamed completion: {response.status_code}"
            text = (await response.aread()).decode()
        assert text.endswith("data: [DONE]\n\n"), f"streamed completion ended {text[-80:]!r}"
        created = await client.post("/v1/generations", json={"messages": USER, "max_tokens": 3})
        assert created.status_code == 201, f"POST /v1/generations: {created.status_code}"
        gen_id = str(created.json()["id"])
    async with asyncio.timeout(BOUND):
        async with websockets.connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
            await ws.send(json.dumps({"type": "generate", "id": 1, **chat(max_tokens=2)}))
            while (message := json.loads(await ws.recv()))["type"] == "delta":
                pass
        assert message["type"] == "done", f"WebSocket generation ended with {message}"
    return gen_id


async def run_fuzz(
    port: int,
    seed: int,
    count: int,
    *,
    concurrency: int = CONCURRENCY,
    batch: int = BATCH,
    first: int = 0,
    bound: float = BOUND,
    check: Callable[[int], Awaitable[str]] = normal_client_is_served,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Run cases ``first`` .. ``first + count - 1`` of ``seed`` against ``port``.

    ``check`` is the normal client run before and after each batch; it returns the id
    of a live resumable generation for the cases that need one.
    """
    report = Report(seed, count)
    started = time.perf_counter()
    errors = ServerErrors()
    with errors.watching():
        gen_id = (await check(port)).encode()
        for start in range(first, first + count, batch):
            indices = range(start, min(start + batch, first + count))
            outcomes = await run_batch(port, seed, indices, gen_id, errors, concurrency, bound)
            for case, outcome in outcomes:
                for status in outcome.statuses:
                    report.statuses[status] = report.statuses.get(status, 0) + 1
                if outcome.problems:
                    report.failures.append(Failure(case, outcome.problems))
            if errors.records:
                report.failures += await blame(port, seed, errors, gen_id, bound)
            try:
                gen_id = (await check(port)).encode()
            except Exception as exc:  # whatever the normal client met, the run failed
                report.failures.append(
                    Failure(Case(-1, "normal client", (), (), False, None), [repr(exc)])
                )
                break
            report.batch_checks += 1
            if progress is not None:
                progress(f"{indices[-1] + 1 - first}/{count} cases, {len(report.failures)} failed")
    report.seconds = time.perf_counter() - started
    return report


async def run_batch(
    port: int,
    seed: int,
    indices: range,
    gen_id: bytes,
    errors: ServerErrors,
    concurrency: int,
    bound: float,
) -> list[tuple[Case, Outcome]]:
    limit = asyncio.Semaphore(concurrency)

    async def one(index: int) -> tuple[Case, Outcome]:
        case = make_case(seed, index)
        async with limit:
            errors.in_flight.add(index)
            try:
                return case, await send_case(port, case, gen_id, bound)
            finally:
                errors.in_flight.discard(index)

    return list(await asyncio.gather(*(one(i) for i in indices)))


async def blame(
    port: int, seed: int, errors: ServerErrors, gen_id: bytes, bound: float
) -> list[Failure]:
    """Replay, one at a time, the cases in flight when the server logged an error."""
    records, errors.records = errors.records, []
    suspects = sorted(set().union(*(flight for _, flight in records)))
    failures: list[Failure] = []
    for index in suspects:
        case = make_case(seed, index)
        await send_case(port, case, gen_id, bound)
        if errors.records:
            logged = [text for text, _ in errors.records]
            failures.append(Failure(case, [f"server logged: {t}" for t in logged]))
            errors.records = []
    if not failures:
        texts = sorted({text for text, _ in records})
        failures.append(
            Failure(Case(-1, "unattributed", (), (), False, None), [f"logged: {t}" for t in texts])
        )
    return failures


# --- shrinking a failure ----------------------------------------------------------------


async def fails(port: int, case: Case, gen_id: bytes, errors: ServerErrors) -> list[str]:
    """The problems ``case`` shows when sent alone (server errors included)."""
    errors.records = []
    outcome = await send_case(port, case, gen_id)
    problems = outcome.problems + [f"server logged: {t}" for t, _ in errors.records]
    errors.records = []
    return problems


async def minimize(port: int, case: Case, gen_id: bytes, errors: ServerErrors) -> Case:
    """Delete as many bytes as possible while the case keeps failing the same way."""
    wanted = {p.split(":")[0] for p in await fails(port, case, gen_id, errors)}
    if not wanted:
        return case
    data = case.data
    size = max(1, len(data) // 2)
    while size >= 1:
        i = 0
        while i < len(data):
            candidate = replace(case, segments=(data[:i] + data[i + size :],), expected=None)
            got = {p.split(":")[0] for p in await fails(port, candidate, gen_id, errors)}
            if wanted & got:
                data = candidate.data
            else:
                i += size
        size //= 2
    return replace(case, segments=(data,), mutations=(*case.mutations, "minimized"))


# --- the command line -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fuzz_server(**overrides: Any) -> AsyncIterator[int]:
    """The app on the fake engine with :data:`FUZZ_CONFIG`, in this loop; its port."""
    from rawstream.app.application import App
    from rawstream.config import Config

    config = Config(port=0).replace(**{**FUZZ_CONFIG, **overrides})
    app = App(config)
    await app.start()
    try:
        yield app.server.port
    finally:
        await app.server.shutdown()
        await app.close()


async def main_async(args: argparse.Namespace) -> int:
    async with fuzz_server() as port:
        if args.case is not None:
            case = make_case(args.seed, args.case)
            errors = ServerErrors()
            with errors.watching():
                gen_id = (await normal_client_is_served(port)).encode()
                problems = await fails(port, case, gen_id, errors)
                print(case.describe(limit=4000))
                print("\n".join(problems) or "passes")
                if problems and args.minimize:
                    print("minimal:", (await minimize(port, case, gen_id, errors)).describe(4000))
            return 1 if problems else 0
        print(f"fuzz: {args.count} cases, seed {args.seed}", flush=True)
        report = await run_fuzz(
            port,
            args.seed,
            args.count,
            concurrency=args.concurrency,
            progress=lambda text: print(text, file=sys.stderr, flush=True),
        )
        print(report.explain(limit=args.show))
        return 1 if report.failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="cases to run")
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(2**32))
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--case", type=int, help="replay this one case alone")
    parser.add_argument("--minimize", action="store_true", help="shrink a failing --case")
    parser.add_argument("--show", type=int, default=20, help="failures to print")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "BOUND",
    "FUZZ_CONFIG",
    "Case",
    "Outcome",
    "Report",
    "make_case",
    "normal_client_is_served",
    "run_fuzz",
    "send_case",
]
