"""API keys never reach the logs, and need not appear in the process list.

Each test runs a real ``python -m rawstream serve`` process (fake engine) and reads
everything it wrote to stderr: the banner, the access log and, with ``--trace``,
every protocol event. A key sent in any of the places the server reads one from
must authenticate the request and still appear nowhere in that output.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from tests.app.conftest import TIMEOUT
from tests.support import ServerProcess, open_raw, read_until_close

#: A key that cannot appear in a log by coincidence.
KEY = "sk-live-3f9a2c71e4b8d605"
#: The same key with its dashes percent-encoded, as a client may send it.
KEY_ENCODED = KEY.replace("-", "%2D")

#: Each way a request may carry the key, as (name, target, extra headers).
HTTP_SPOTS: list[tuple[str, str, dict[str, str]]] = [
    ("Authorization: Bearer", "/v1/models", {"Authorization": f"Bearer {KEY}"}),
    ("x-api-key", "/v1/models", {"x-api-key": KEY}),
    ("?api_key=", f"/v1/models?api_key={KEY}", {}),
    ("?api_key= percent-encoded value", f"/v1/models?x=1&api_key={KEY_ENCODED}", {}),
    ("?api%5Fkey=", f"/v1/models?api%5Fkey={KEY}", {}),
    ("?%61pi_key=", f"/v1/models?%61pi_key={KEY}&y=2", {}),
]


async def _stopped_log(server: ServerProcess) -> str:
    """Stop ``server`` with SIGTERM and return everything it logged."""
    server.signal(signal.SIGTERM)
    assert await server.wait(TIMEOUT) == 0
    return "".join(server.log)


def _cmdline(server: ServerProcess) -> str:
    assert server.proc is not None
    return Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


async def test_a_key_never_reaches_the_trace_or_the_access_log() -> None:
    server = await ServerProcess("--engine", "fake", "--trace", "--api-key", KEY).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
            assert (await http.get("/v1/models")).status_code == 401  # auth is on
            for name, target, headers in HTTP_SPOTS:
                response = await http.get(target, headers=headers)
                assert response.status_code == 200, name
        async with connect(
            server.url.replace("http", "ws") + "/v1/ws",
            subprotocols=["rawstream", f"bearer.{KEY}"],  # type: ignore[list-item]
            open_timeout=TIMEOUT,
        ) as ws:
            assert ws.response is not None and ws.response.status_code == 101
            assert ws.subprotocol == "rawstream"
        log = await _stopped_log(server)
    finally:
        await server.stop()

    assert KEY not in log and KEY_ENCODED not in log
    trace = [line for line in log.splitlines() if " rawstream.trace " in line]
    access = [line for line in log.splitlines() if " rawstream.access " in line]
    # Every request was traced and logged, with REDACTED where its key was.
    assert any("(b'authorization', b'Bearer REDACTED')" in line for line in trace)
    assert any("(b'x-api-key', b'REDACTED')" in line for line in trace)
    assert any("b'rawstream, bearer.REDACTED'" in line for line in trace)
    for query in ("api_key=REDACTED", "x=1&api_key=REDACTED", "api%5Fkey=REDACTED"):
        assert any(f"target=b'/v1/models?{query}'" in line for line in trace), query
        assert any(f'"GET /v1/models?{query}" 200' in line for line in access), query
    assert any('"GET /v1/models?%61pi_key=REDACTED&y=2" 200' in line for line in access)
    assert any('"GET /v1/ws" 101' in line for line in access)


async def test_a_malformed_head_does_not_put_its_key_in_the_trace() -> None:
    """h11's error for a bad header line quotes the line; the trace must not."""
    server = await ServerProcess("--engine", "fake", "--trace", "--api-key", KEY).start()
    try:
        for head in (
            f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization : Bearer {KEY}\r\n\r\n",
            f"GET /v1/models?api_key={KEY} HTTP/1.1 \r\nHost: x\r\n\r\n",
        ):
            reader, writer = await open_raw(server.port)
            writer.write(head.encode())
            answer = await read_until_close(reader, TIMEOUT)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 400 "), answer
        log = await _stopped_log(server)
    finally:
        await server.stop()
    assert "RemoteProtocolError" in log
    assert KEY not in log


async def test_keys_from_a_file_stay_out_of_the_process_list(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# rawstream keys\n\nsk-other-key\n  {KEY}  \n")
    server = await ServerProcess("--engine", "fake", "--api-key-file", str(path)).start()
    try:
        assert KEY not in _cmdline(server) and str(path) in _cmdline(server)
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
            assert (await http.get("/v1/models")).status_code == 401
            bad = {"Authorization": "Bearer # rawstream keys"}
            assert (await http.get("/v1/models", headers=bad)).status_code == 401
            for key in (KEY, "sk-other-key"):
                ok = {"Authorization": f"Bearer {key}"}
                assert (await http.get("/v1/models", headers=ok)).status_code == 200, key
        log = await _stopped_log(server)
    finally:
        await server.stop()
    assert KEY not in log


async def test_keys_from_the_environment_add_to_api_key() -> None:
    env = {"RAWSTREAM_API_KEYS": f" {KEY},sk-env-two\n sk-env-three "}
    server = await ServerProcess(
        "--engine", "fake", "--api-key", "sk-flag-key", env=env
    ).start()  # fmt: skip
    try:
        assert KEY not in _cmdline(server)
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
            assert (await http.get("/v1/models")).status_code == 401
            for key in (KEY, "sk-env-two", "sk-env-three", "sk-flag-key"):
                ok = {"Authorization": f"Bearer {key}"}
                assert (await http.get("/v1/models", headers=ok)).status_code == 200, key
        log = await _stopped_log(server)
    finally:
        await server.stop()
    assert KEY not in log


async def test_an_unreadable_key_file_stops_the_start_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file"
    proc = await asyncio.create_subprocess_exec(
        *ServerProcess("--engine", "fake", "--api-key-file", str(missing)).args,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 2
    assert f"--api-key-file {missing}" in stderr.decode()
