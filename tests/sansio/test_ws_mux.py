"""The /v1/ws multiplexing protocol and its per-connection stream table."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rawstream.config import Config
from rawstream.engine.base import ChatMessage, FinishReason, Overloaded, Result, Usage
from rawstream.sansio.openai import APIError
from rawstream.sansio.wsmux import (
    MAX_ID_CHARS,
    MAX_INT_ID,
    Cancel,
    CloseCode,
    Generate,
    Ping,
    Rejected,
    StreamTable,
    Violation,
    choose_subprotocol,
    encode_delta,
    encode_done,
    encode_error,
    encode_pong,
    parse_message,
)

USER = [{"role": "user", "content": "hi"}]


def generate(id: Any = "a", **fields: Any) -> str:
    return json.dumps({"type": "generate", "id": id, "messages": USER, **fields})


def cancel(id: Any) -> str:
    return json.dumps({"type": "cancel", "id": id})


# --- parsing -----------------------------------------------------------------------------


def test_parse_generate() -> None:
    message = parse_message(generate("s1", max_tokens=4, stream=False, stream_options=None))
    assert isinstance(message, Generate)
    assert message.id == "s1"
    assert message.request.generation.messages == (ChatMessage("user", "hi"),)
    assert message.request.generation.max_tokens == 4
    assert str(message) == "<generate 's1'>"


def test_stream_options_are_ignored_on_a_websocket() -> None:
    # Over HTTP, stream_options without stream is a 400; a WS stream always streams.
    message = parse_message(generate(1, stream_options={"include_usage": True}))
    assert isinstance(message, Generate) and message.id == 1


def test_parse_cancel_and_ping() -> None:
    assert parse_message(cancel("x")) == Cancel("x")
    assert parse_message(cancel(0)) == Cancel(0)
    assert parse_message('{"type":"ping"}') == Ping()
    assert parse_message('{"type":"ping","id":"whatever"}') == Ping()


VIOLATIONS: list[tuple[str, str | bytes, CloseCode]] = [
    ("binary", b'{"type":"ping"}', CloseCode.UNSUPPORTED_DATA),
    ("not JSON", "hello", CloseCode.POLICY_VIOLATION),
    ("truncated JSON", '{"type":', CloseCode.POLICY_VIOLATION),
    ("NaN", '{"type":"ping","x":NaN}', CloseCode.POLICY_VIOLATION),
    ("deep nesting", "[" * 100_000, CloseCode.POLICY_VIOLATION),
    ("array", "[]", CloseCode.POLICY_VIOLATION),
    ("string", '"generate"', CloseCode.POLICY_VIOLATION),
    ("no type", '{"id":"a"}', CloseCode.POLICY_VIOLATION),
    ("type not a string", '{"type":1,"id":"a"}', CloseCode.POLICY_VIOLATION),
    (
        "generate without id",
        json.dumps({"type": "generate", "messages": USER}),
        CloseCode.POLICY_VIOLATION,
    ),
    ("generate null id", generate(None), CloseCode.POLICY_VIOLATION),
    ("generate empty id", generate(""), CloseCode.POLICY_VIOLATION),
    ("generate long id", generate("x" * (MAX_ID_CHARS + 1)), CloseCode.POLICY_VIOLATION),
    ("generate bool id", generate(True), CloseCode.POLICY_VIOLATION),
    ("generate float id", generate(1.5), CloseCode.POLICY_VIOLATION),
    ("generate negative id", generate(-1), CloseCode.POLICY_VIOLATION),
    ("generate huge id", generate(MAX_INT_ID + 1), CloseCode.POLICY_VIOLATION),
    ("generate object id", generate({"a": 1}), CloseCode.POLICY_VIOLATION),
    ("cancel without id", '{"type":"cancel"}', CloseCode.POLICY_VIOLATION),
]


@pytest.mark.parametrize(
    ("data", "code"), [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS]
)
def test_violations(data: str | bytes, code: CloseCode) -> None:
    message = parse_message(data)
    assert isinstance(message, Violation)
    assert message.code == code
    assert message.reason and len(message.reason.encode()) <= 123  # fits a close frame


def test_close_code_values_follow_rfc_6455() -> None:
    assert (CloseCode.UNSUPPORTED_DATA, CloseCode.INVALID_PAYLOAD) == (1003, 1007)
    assert (CloseCode.POLICY_VIOLATION, CloseCode.MESSAGE_TOO_BIG) == (1008, 1009)


def test_valid_id_edges() -> None:
    for id in ("x" * MAX_ID_CHARS, "\u00e9", 0, MAX_INT_ID):
        message = parse_message(generate(id))
        assert isinstance(message, Generate) and message.id == id


#: The parameters schema of a function that takes none.
OBJECT = {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"n": 2}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": None}, "messages"),
        ({"max_tokens": True}, "max_tokens"),
        # Deltas carry text only: what they cannot carry is refused, never dropped.
        ({"logprobs": True}, "logprobs"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": OBJECT}}]},
            "tools",
        ),
    ],
)
def test_bad_generate_parameters_are_rejected_per_stream(
    fields: dict[str, Any], param: str
) -> None:
    message = parse_message(generate("s", **fields))
    assert isinstance(message, Rejected)
    assert message.id == "s" and message.param == param
    assert message.type == "invalid_request_error"
    decoded = json.loads(message.encode())
    assert decoded["type"] == "error" and decoded["id"] == "s"
    assert decoded["error"]["param"] == param


def test_unknown_type_is_rejected_not_fatal() -> None:
    message = parse_message('{"type":"doc.sync","id":"d1"}')
    assert isinstance(message, Rejected)
    assert (message.id, message.code) == ("d1", "unknown_message_type")
    message = parse_message('{"type":"presence"}')
    assert isinstance(message, Rejected) and message.id is None
    assert json.loads(message.encode())["id"] is None


def test_choose_subprotocol_never_echoes_a_key() -> None:
    assert choose_subprotocol(["bearer.sk-123", "rawstream"]) == "rawstream"
    assert choose_subprotocol(["bearer.sk-123"]) is None
    assert choose_subprotocol([]) is None


# --- encoders ----------------------------------------------------------------------------

DONE_RESULT = Result(FinishReason.STOP, Usage(prompt_tokens=4, completion_tokens=2))


@pytest.mark.parametrize("id", ["a", 'q"uote', "\u65e5", 0, 2**53 - 1])
@pytest.mark.parametrize("text", ["", "hi", "a\nb", '"\\', "\x00", "\U0001f600", "\ud800"])
def test_encode_delta_equals_json_dumps(id: str | int, text: str) -> None:
    expected = json.dumps(
        {"type": "delta", "id": id, "seq": 7, "text": text}, separators=(",", ":")
    )
    assert encode_delta(id, 7, text) == expected
    table = StreamTable(4)
    table.receive(generate(id))
    for _ in range(7):
        table.delta(id, "skip")
    assert table.delta(id, text) == expected


def test_encode_done_and_error_and_pong() -> None:
    assert json.loads(encode_done("a", DONE_RESULT)) == {
        "type": "done",
        "id": "a",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }
    assert json.loads(encode_error(3, "boom", code="engine_error")) == {
        "type": "error",
        "id": 3,
        "error": {"message": "boom", "type": "server_error", "param": None, "code": "engine_error"},
    }
    assert json.loads(encode_pong()) == {"type": "pong"}


# --- the stream table --------------------------------------------------------------------


def messages(texts: list[str]) -> list[dict[str, Any]]:
    return [json.loads(t) for t in texts]


def test_lifecycle_and_seq() -> None:
    table = StreamTable.from_config(Config())
    assert table.max_streams == Config().ws_max_streams
    start = table.receive(generate("a"))
    assert isinstance(start, Generate)
    assert "a" in table and len(table) == 1
    sent = [table.delta("a", t) for t in ("x", "y", "z")]
    sent.append(table.finish("a", DONE_RESULT))
    decoded = messages(sent)
    assert [m.get("seq") for m in decoded[:3]] == [0, 1, 2]
    assert decoded[3]["type"] == "done" and decoded[3]["finish_reason"] == "stop"
    with pytest.raises(KeyError):
        table.delta("a", "late")
    with pytest.raises(KeyError):
        table.finish("a", DONE_RESULT)
    # The id is held until the caller has sent the end and releases it.
    assert "a" in table
    table.release("a")
    assert "a" not in table and len(table) == 0
    with pytest.raises(KeyError):
        table.delta("a", "late")
    # The id is free again, and seq starts over.
    assert isinstance(table.receive(generate("a")), Generate)
    assert json.loads(table.delta("a", "x"))["seq"] == 0


def test_streams_are_independent() -> None:
    table = StreamTable(4)
    table.receive(generate("a"))
    table.receive(generate(1))
    table.receive(generate("1"))
    assert table.ids == ("a", 1, "1")
    table.delta("a", "x")
    assert json.loads(table.delta(1, "y"))["seq"] == 0
    assert json.loads(table.delta("1", "y"))["id"] == "1"
    assert json.loads(table.delta("a", "z"))["seq"] == 1


def test_duplicate_id_is_rejected_and_the_live_stream_carries_on() -> None:
    table = StreamTable(4)
    table.receive(generate("a"))
    table.delta("a", "x")
    reply = table.receive(generate("a"))
    assert isinstance(reply, str)
    error = json.loads(reply)
    assert error["type"] == "error" and error["id"] == "a"
    assert error["error"]["code"] == "duplicate_id"
    assert json.loads(table.delta("a", "y"))["seq"] == 1


def test_stream_limit() -> None:
    table = StreamTable(2)
    table.receive(generate("a"))
    table.receive(generate("b"))
    reply = table.receive(generate("c"))
    assert isinstance(reply, str)
    assert json.loads(reply)["error"]["code"] == "too_many_streams"
    assert "c" not in table
    table.finish("a", DONE_RESULT)
    reply = table.receive(generate("c"))  # a's end is not sent yet: it still counts
    assert isinstance(reply, str) and "too_many_streams" in reply
    table.release("a")
    assert isinstance(table.receive(generate("c")), Generate)


def test_client_cancel_ends_with_done_cancelled() -> None:
    table = StreamTable(4)
    table.receive(generate("a"))
    assert table.receive(cancel("a")) == Cancel("a")
    assert table.receive(cancel("a")) is None  # idempotent: nothing more to do
    in_flight = table.delta("a", "late token")  # deltas may still come before the end
    assert json.loads(in_flight)["seq"] == 0
    end = json.loads(table.finish("a", Result(FinishReason.CANCELLED, Usage(4, 1))))
    assert end["type"] == "done" and end["finish_reason"] == "cancelled"
    assert end["usage"]["completion_tokens"] == 1


def test_cancel_of_unknown_or_finished_id_is_ignored() -> None:
    table = StreamTable(4)
    assert table.receive(cancel("never")) is None
    table.receive(generate("a"))
    table.finish("a", DONE_RESULT)
    assert table.receive(cancel("a")) is None


def test_cancel_finishing_naturally_still_reports_its_reason() -> None:
    table = StreamTable(4)
    table.receive(generate("a"))
    table.receive(cancel("a"))
    end = json.loads(table.finish("a", Result(FinishReason.LENGTH, Usage(1, 8))))
    assert end["type"] == "done" and end["finish_reason"] == "length"


def test_server_side_endings_are_errors() -> None:
    table = StreamTable(4)
    table.receive(generate("a"))
    table.receive(generate("b"))
    end = json.loads(table.finish("a", Result(FinishReason.CANCELLED, Usage(1, 1))))
    assert end["type"] == "error" and end["error"]["code"] == "cancelled"
    end = json.loads(table.finish("b", Result(FinishReason.ERROR, Usage(1, 1), error="oom")))
    assert end["type"] == "error" and end["error"]["message"] == "oom"
    table.release("a")
    table.release("b")
    assert len(table) == 0


def test_fail_at_submit() -> None:
    table = StreamTable(4)
    table.receive(generate("a"))
    reply = json.loads(table.fail("a", APIError.from_engine_error(Overloaded(1.0))))
    assert reply["type"] == "error" and reply["error"]["code"] == "overloaded"
    with pytest.raises(KeyError):
        table.fail("a", APIError.from_engine_error(Overloaded(1.0)))
    table.release("a")
    assert "a" not in table


def test_replies_from_receive() -> None:
    table = StreamTable(4)
    assert table.receive('{"type":"ping"}') == encode_pong()
    reply = table.receive(generate("a", temperature=-1))
    assert isinstance(reply, str) and json.loads(reply)["id"] == "a"
    assert "a" not in table
    violation = table.receive(b"\x00")
    assert isinstance(violation, Violation) and violation.code == 1003


def test_an_id_reused_before_its_end_is_released_is_a_duplicate() -> None:
    """Until the end is sent (release), the client cannot have seen it: the id is
    still live, a generate reusing it is refused and a cancel is ignored."""
    table = StreamTable(4)
    table.receive(generate("a"))
    end = table.finish("a", DONE_RESULT)
    reply = table.receive(generate("a"))
    assert isinstance(reply, str)
    assert json.loads(reply)["error"]["code"] == "duplicate_id"
    assert table.receive(cancel("a")) is None
    table.release("a")
    assert isinstance(table.receive(generate("a")), Generate)
    assert table.receive(cancel("a")) == Cancel("a")
    assert json.loads(end)["type"] == "done"


def test_end_all_gives_every_stream_its_last_message() -> None:
    table = StreamTable(4)
    table.receive(generate("open"))
    table.receive(generate("ended"))
    done = table.finish("ended", DONE_RESULT)  # encoded, not yet sent
    shutdown = APIError(503, "shutting down", type="server_error", code="cancelled")
    first, second = table.end_all(shutdown)
    assert json.loads(first)["id"] == "open"
    assert json.loads(first)["error"]["code"] == "cancelled"
    assert second == done
    assert table.clear() == ("open", "ended")


def test_release_of_a_free_id_is_harmless() -> None:
    table = StreamTable(4)
    table.release("never")
    table.receive(generate("a"))
    table.clear()
    table.release("a")
    assert len(table) == 0


def test_clear() -> None:
    table = StreamTable(4)
    table.receive(generate("a"))
    table.receive(generate(2))
    assert table.clear() == ("a", 2)
    assert len(table) == 0 and table.clear() == ()


def test_max_streams_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StreamTable(0)


def test_str() -> None:
    assert str(Cancel(1)) == "<cancel 1>"
    assert str(Ping()) == "<ping>"
    assert "1008" in str(Violation(CloseCode.POLICY_VIOLATION, "nope"))
    assert "duplicate_id" in str(Rejected("a", "in use", code="duplicate_id"))
