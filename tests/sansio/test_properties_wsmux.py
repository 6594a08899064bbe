"""Properties of the ``/v1/ws`` protocol (rawstream.sansio.wsmux).

* :func:`parse_message` takes any text, any bytes and any JSON without raising, and
  every answer it makes can be sent: JSON text for an ``error``, a close reason that
  fits a Close frame.
* :class:`StreamTable` is driven by random sequences of client messages and server
  events and checked against a model of the protocol's rules after every step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from rawstream.engine.base import FinishReason, Result, Usage
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
    parse_message,
)

#: RFC 6455 section 5.5: a control frame's payload is at most 125 bytes, two of
#: them the close code.
MAX_CLOSE_REASON_BYTES = 123
USER = [{"role": "user", "content": "hi"}]

# Strings include lone surrogates: JSON escapes such as "\ud800" decode to them.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["role", "content", "type", "text", "x"]) | any_text, inner,
                      max_size=4),
    max_leaves=20,
)  # fmt: skip
ids = st.one_of(
    st.integers(-5, 5),
    st.integers(MAX_INT_ID - 2, MAX_INT_ID + 2),
    st.text(max_size=MAX_ID_CHARS + 2),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)
FIELDS = ["messages", "max_tokens", "temperature", "stop", "seed", "stream", "top_k", "n"]


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """A message shaped like the protocol's, with any of its fields arbitrary."""
    obj: dict[str, Any] = {"type": draw(st.sampled_from(["generate", "cancel", "ping", "nope"]))}
    if draw(st.booleans()):
        obj["id"] = draw(ids)
    if draw(st.booleans()):
        obj["messages"] = USER
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        obj[name] = draw(json_values)
    return obj


def check_answer(answer: object) -> None:
    """An answer to a client message is something the server can send."""
    assert isinstance(answer, Generate | Cancel | Ping | Rejected | Violation), answer
    if isinstance(answer, Rejected):
        sent = json.loads(answer.encode())
        answer.encode().encode("utf-8")
        assert sent["type"] == "error" and sent["id"] == answer.id
        assert set(sent["error"]) == {"message", "type", "param", "code"}
    if isinstance(answer, Violation):
        assert answer.code in (CloseCode.UNSUPPORTED_DATA, CloseCode.POLICY_VIOLATION)
        assert len(answer.reason.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES


@given(st.text())
def test_any_text_is_parsed_without_raising(text: str) -> None:
    check_answer(parse_message(text))


@given(st.binary())
def test_a_binary_message_is_unsupported_data(data: bytes) -> None:
    answer = parse_message(data)
    assert isinstance(answer, Violation) and answer.code is CloseCode.UNSUPPORTED_DATA


@given(json_values)
def test_any_json_is_parsed_without_raising(value: object) -> None:
    answer = parse_message(json.dumps(value))
    check_answer(answer)
    if not isinstance(value, dict):
        assert isinstance(answer, Violation) and answer.code is CloseCode.POLICY_VIOLATION


@given(messages())
def test_messages_with_arbitrary_fields_are_parsed_without_raising(obj: dict[str, Any]) -> None:
    answer = parse_message(json.dumps(obj))
    check_answer(answer)
    valid_id = "id" in obj and (
        (isinstance(obj["id"], str) and 0 < len(obj["id"]) <= MAX_ID_CHARS)
        or (type(obj["id"]) is int and 0 <= obj["id"] <= MAX_INT_ID)
    )
    if obj["type"] == "ping":
        assert isinstance(answer, Ping)
    elif obj["type"] == "nope":
        assert isinstance(answer, Rejected) and answer.code == "unknown_message_type"
    elif not valid_id:
        assert isinstance(answer, Violation) and answer.code is CloseCode.POLICY_VIOLATION
    elif obj["type"] == "cancel":
        assert answer == Cancel(obj["id"])
    else:
        assert isinstance(answer, Generate | Rejected) and answer.id == obj["id"]


@given(st.integers(1, 50_000), st.sampled_from(["[", '{"a":']))
def test_deep_nesting_is_a_violation_not_a_crash(depth: int, opener: str) -> None:
    check_answer(parse_message(opener * depth))


@given(st.lists(st.text(max_size=12), max_size=5))
def test_only_rawstream_is_ever_selected(offered: list[str]) -> None:
    chosen = choose_subprotocol(offered)
    assert chosen == ("rawstream" if "rawstream" in offered else None)


# --- the stream table as a state machine ------------------------------------------------

stream_ids = st.sampled_from(["a", "b", "1", 1, 2, 0, MAX_INT_ID])
finish_reasons = st.sampled_from(list(FinishReason))


def generate(id: object, **fields: object) -> str:
    return json.dumps({"type": "generate", "id": id, "messages": USER, **fields})


@dataclass
class Modelled:
    """What the model knows of one stream holding an id."""

    seq: int = 0  #: the next delta's seq
    cancelled: bool = False  #: the client sent cancel
    end: str | None = None  #: its done or error, once encoded (then: until released)


class StreamTableMachine(RuleBasedStateMachine):
    """Random client messages and stream events against a model of the rules.

    An id is taken by an accepted generate and stays taken until the server has
    sent the stream's last message (``release``): until then a generate reusing it
    is a ``duplicate_id`` and a cancel of it does nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.table = StreamTable(1)
        self.model: dict[object, Modelled] = {}  # in admission order

    @initialize(limit=st.integers(1, 4))
    def start(self, limit: int) -> None:
        self.table = StreamTable(limit)

    def reply(self, data: str | bytes) -> object:
        answer = self.table.receive(data)
        if isinstance(answer, str):
            answer.encode("utf-8")
            sent = json.loads(answer)
            assert sent["type"] in ("error", "pong"), sent
        return answer

    def open_ids(self) -> list[object]:
        return [id for id, m in self.model.items() if m.end is None]

    @rule(id=stream_ids)
    def send_generate(self, id: Any) -> None:
        answer = self.reply(generate(id))
        if id in self.model:
            assert isinstance(answer, str)
            assert json.loads(answer)["error"]["code"] == "duplicate_id"
        elif len(self.model) >= self.table.max_streams:
            assert isinstance(answer, str)
            assert json.loads(answer)["error"]["code"] == "too_many_streams"
        else:
            assert isinstance(answer, Generate) and answer.id == id
            self.model[id] = Modelled()

    @rule(id=stream_ids, temperature=st.sampled_from([-1, 3, "hot", True]))
    def send_bad_generate(self, id: Any, temperature: object) -> None:
        # Refused alone: an error with its id, and a live stream with that id carries on.
        answer = self.reply(generate(id, temperature=temperature))
        assert isinstance(answer, str)
        sent = json.loads(answer)
        assert sent["type"] == "error" and sent["id"] == id

    @rule(id=stream_ids)
    def send_cancel(self, id: Any) -> None:
        answer = self.reply(json.dumps({"type": "cancel", "id": id}))
        entry = self.model.get(id)
        if entry is not None and entry.end is None and not entry.cancelled:
            assert answer == Cancel(id)
            entry.cancelled = True
        else:
            assert answer is None

    @rule()
    def send_ping(self) -> None:
        assert self.reply('{"type":"ping"}') == '{"type":"pong"}'

    @rule(data=st.binary(max_size=8) | st.text(max_size=8).map(lambda t: "#" + t))
    def send_garbage(self, data: str | bytes) -> None:
        assert isinstance(self.reply(data), Violation)

    @rule(id=stream_ids, text=st.text(max_size=10))
    def engine_delta(self, id: Any, text: str) -> None:
        entry = self.model.get(id)
        try:
            message = self.table.delta(id, text)
        except KeyError:
            assert entry is None or entry.end is not None
            return
        assert entry is not None and entry.end is None
        assert message == encode_delta(id, entry.seq, text)
        assert json.loads(message) == {"type": "delta", "id": id, "seq": entry.seq, "text": text}
        entry.seq += 1

    @precondition(lambda self: bool(self.open_ids()))
    @rule(data=st.data(), reason=finish_reasons)
    def engine_finish(self, data: st.DataObject, reason: FinishReason) -> None:
        id = data.draw(st.sampled_from(self.open_ids()))
        entry = self.model[id]
        result = Result(reason, Usage(3, 4), error="boom" if reason is FinishReason.ERROR else None)
        entry.end = self.table.finish(id, result)
        sent = json.loads(entry.end)
        assert sent["id"] == id
        done = reason in (FinishReason.STOP, FinishReason.LENGTH) or (
            reason is FinishReason.CANCELLED and entry.cancelled
        )
        assert sent["type"] == ("done" if done else "error")
        if done:
            assert sent["finish_reason"] == str(reason)
            assert sent["usage"]["total_tokens"] == 7

    @precondition(lambda self: bool(self.open_ids()))
    @rule(data=st.data())
    def engine_refuses(self, data: st.DataObject) -> None:
        id = data.draw(st.sampled_from(self.open_ids()))
        error = APIError(503, "busy", type="server_error", code="overloaded")
        self.model[id].end = self.table.fail(id, error)
        sent = json.loads(self.model[id].end or "")
        assert sent["type"] == "error" and sent["error"]["code"] == "overloaded"

    @precondition(lambda self: any(m.end is not None for m in self.model.values()))
    @rule(data=st.data())
    def last_message_sent(self, data: st.DataObject) -> None:
        ended = [id for id, m in self.model.items() if m.end is not None]
        id = data.draw(st.sampled_from(ended))
        self.table.release(id)
        del self.model[id]

    @rule()
    def shutdown(self) -> None:
        # Every id's last message: the end already encoded, or the shutdown error.
        error = APIError(503, "shutting down", type="server_error", code="cancelled")
        ends = self.table.end_all(error)
        assert len(ends) == len(self.model)
        for (id, entry), end in zip(self.model.items(), ends, strict=True):
            if entry.end is not None:
                assert end == entry.end
            else:
                assert json.loads(end)["error"]["code"] == "cancelled"
                assert json.loads(end)["id"] == id
                entry.end = end

    @rule()
    def connection_closes(self) -> None:
        assert self.table.clear() == tuple(self.model)
        self.model.clear()

    @invariant()
    def the_table_is_the_model(self) -> None:
        assert self.table.ids == tuple(self.model)
        assert len(self.table) <= self.table.max_streams
        assert all(id in self.table for id in self.model)


TestStreamTable = StreamTableMachine.TestCase
