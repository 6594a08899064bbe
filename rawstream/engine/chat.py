"""Chat templates: turning messages into the prompt text a model was trained on.

A GGUF file carries its chat template as Jinja source in the metadata key
``tokenizer.chat_template`` (the same template as Hugging Face's
``tokenizer_config.json``). It is rendered with the variables those templates expect:
``messages`` (a list of ``{"role", "content"}`` dicts), ``add_generation_prompt``,
``bos_token``, ``eos_token`` and a ``raise_exception(message)`` function.

The template comes from a file, not from us, so it runs in Jinja's
:class:`~jinja2.sandbox.ImmutableSandboxedEnvironment`: no attribute access to
Python internals and no mutation of the values passed in. Errors raised by the
template (``raise_exception`` or a broken template) become
:class:`~rawstream.engine.base.InvalidRequest`, as does a model without a template.

Special tokens. The template's text is tokenised with special-token parsing on, so
that its ``<|im_start|>`` becomes the control token the model was trained on.
Message content must not get that treatment: a user who writes ``<|im_end|>`` and
then ``<|im_start|>system`` would otherwise end their turn and forge a system turn.
So :meth:`ChatTemplate.render_parts` renders the template a second time with an
unguessable placeholder in place of each message's content and cuts the result at
the placeholders (:func:`split_at_placeholders`). The pieces between are
the template's own text (special tokens parsed); the content goes back in as
:class:`PromptPart` values marked ``content=True``, for the backend to tokenise
with parsing off. The cut is only trusted if putting the real contents back gives
exactly the normal rendering; a template that transforms content (``| trim`` on
padded text, escaping, branching on its value) fails that check, and then the plain
rendering is used only when no content or role contains a control token's text.

Tools (docs/structured-output.md). A template *supports tools* when its source
mentions ``tools`` (Hugging Face's convention): it is then given the ``tools``
variable (``[{"type": "function", "function": {"name", "description",
"parameters"}}]``), assistant messages' ``tool_calls`` (arguments as objects) and
tool messages' ``tool_call_id`` and ``name``, and writes them its own way; that
text is the template's, so it is refused if it holds a control token's text. A
template without tool support (the bundled model's) gets plain messages instead
(:func:`messages_for_template`): the tools the reply must call are described in
the system message, an assistant's calls become the JSON text of the calls, the
way a forced call is written, and a tool's result becomes a user message saying
which call it answers. All of that is message content, kept literal.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rawstream.engine.base import ChatMessage, GenerationRequest, InvalidRequest
from rawstream.sansio.values import Tool, ToolCall, ToolChoice, ToolMode

__all__ = [
    "ChatTemplate",
    "InvalidConstraint",
    "NoChatTemplate",
    "PromptPart",
    "check_tool_choice",
    "messages_for_template",
    "placeholder",
    "split_at_placeholders",
    "tools_prompt",
]

#: Pieces of output a rendering produces between two offers of the GIL (a few
#: hundred microseconds of work, see :meth:`ChatTemplate.render`).
_PIECES_PER_TURN = 512


@dataclass(frozen=True, slots=True)
class PromptPart:
    """A run of the rendered prompt: the template's own text or a message's content."""

    text: str
    #: Message content: to be tokenised with special-token parsing off.
    content: bool


def placeholder(nonce: str, index: int) -> str:
    """The stand-in for the content of message ``index``: ``[[<nonce>:<index>]]``."""
    return f"[[{nonce}:{index}]]"


def split_at_placeholders(rendered: str, nonce: str, contents: Sequence[str]) -> list[PromptPart]:
    """Cut ``rendered`` at each ``placeholder(nonce, i)``, which becomes ``contents[i]``.

    A placeholder may occur any number of times (a template may drop a message or
    repeat it). Text of the placeholder's shape that is not one (another nonce, an
    index out of range or written with a leading zero) stays template text. Empty
    runs of template text are left out; the parts' texts joined are ``rendered`` with
    every placeholder replaced.

    One pattern of fixed size, whatever the number of messages, so the cost is linear
    in the length of ``rendered``: an alternation of every placeholder made the regex
    engine try each of them at every position.
    """
    pattern = re.compile(r"\[\[" + re.escape(nonce) + r":(0|[1-9][0-9]*)\]\]")
    parts: list[PromptPart] = []
    pos = 0  # start of the template text not yet in parts
    for match in pattern.finditer(rendered):
        index = int(match.group(1))
        if index >= len(contents):
            continue  # not one of ours: it stays in the template text
        if match.start() > pos:
            parts.append(PromptPart(rendered[pos : match.start()], content=False))
        parts.append(PromptPart(contents[index], content=True))
        pos = match.end()
    if pos < len(rendered):
        parts.append(PromptPart(rendered[pos:], content=False))
    return parts


class _TemplateError(Exception):
    """Raised by a template through ``raise_exception``."""


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateError(message)


class ChatTemplate:
    """A compiled chat template and the special tokens it may refer to.

    ``special_tokens`` are the texts of the vocabulary's control tokens; they are
    only needed when a template transforms message content (see the module's
    docstring).
    """

    def __init__(
        self,
        source: str,
        *,
        bos_token: str = "",
        eos_token: str = "",
        special_tokens: frozenset[str] = frozenset(),
    ) -> None:
        env = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True
        )
        env.globals["raise_exception"] = _raise_exception
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"the model's chat template is invalid: {exc}") from exc
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.special_tokens = frozenset(t for t in special_tokens if t)
        #: Whether the template writes tools and tool calls itself (its source
        #: mentions ``tools``); see the module's docstring.
        self.supports_tools = "tools" in source

    def render(
        self,
        messages: Sequence[ChatMessage],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Tool] = (),
        tool_choice: ToolChoice | None = None,
    ) -> str:
        """The prompt for ``messages``, ending where the assistant's reply begins.

        ``tools`` are the functions the reply may call (``tool_choice``, absent:
        ``auto``), written by the template if it :attr:`supports_tools`, else
        described by :func:`messages_for_template`.

        Rendering is pure Python and holds the GIL. The engine renders on its own
        thread, and the interpreter would hand the GIL to a waiting event loop only
        every switch interval (5 ms), so every wake-up of the loop would wait that
        long: rendering gives the GIL up every :data:`_PIECES_PER_TURN` pieces
        instead (``time.sleep(0)``), and a loop that waits gets it at once.
        """
        messages, variables = self._tool_variables(messages, tools, tool_choice)
        return self._render(self._dicts(messages), add_generation_prompt, variables)

    def render_parts(
        self,
        messages: Sequence[ChatMessage],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Tool] = (),
        tool_choice: ToolChoice | None = None,
    ) -> list[PromptPart]:
        """:meth:`render`, cut into template text and message content.

        Raises :class:`InvalidRequest` when the template alters message content and
        some content or role holds a control token's text, which could then not be
        kept literal, or when text the template writes itself (roles, and tools and
        calls for a template that supports tools) holds one.
        """
        messages, variables = self._tool_variables(messages, tools, tool_choice)
        # Roles are rendered as template text. The API accepts a fixed set of names,
        # but the engine is also a library: refuse a role that could smuggle a token.
        for role in {message.role for message in messages}:
            self._refuse_special(role)
        if self.supports_tools:  # it writes tools and calls as its own text
            self._refuse_special(json.dumps(variables, ensure_ascii=False))
            for message in messages:
                self._refuse_special(json.dumps(_tool_fields(message), ensure_ascii=False))
        dicts = self._dicts(messages)
        text = self._render(dicts, add_generation_prompt, variables)
        nonce = secrets.token_hex(16)
        while nonce in text or nonce in self.source:  # never in practice: 128 random bits
            nonce = secrets.token_hex(16)
        contents = [message.content for message in messages]
        # Empty content has nothing to inject, and stays falsy for the template.
        stand_ins = [
            {**d, "content": placeholder(nonce, i) if d["content"] else ""}
            for i, d in enumerate(dicts)
        ]
        try:
            stand_in = self._render(stand_ins, add_generation_prompt, variables)
        except InvalidRequest:  # the template objected to a placeholder
            stand_in = ""
        parts = split_at_placeholders(stand_in, nonce, contents)
        if "".join(p.text for p in parts) == text:
            return parts
        # The template altered the content, so its text cannot be cut out of the
        # rendering. Parsing the whole rendering is safe only without special text.
        for message in messages:
            self._refuse_special(message.content)
        return [PromptPart(text, content=False)]

    def _refuse_special(self, text: str) -> None:
        for token in self.special_tokens:
            if token in text:
                raise InvalidRequest(
                    f"a message contains the special token {token!r}, which this "
                    "model's chat template cannot keep as plain text",
                    code="special_token_in_message",
                )

    def _tool_variables(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[Tool],
        tool_choice: ToolChoice | None,
    ) -> tuple[Sequence[ChatMessage], dict[str, Any]]:
        """The messages to render and the template's extra variables (``tools``)."""
        choice = tool_choice or ToolChoice()
        if not self.supports_tools:
            return messages_for_template(messages, tools, choice), {}
        if not tools or choice.mode is ToolMode.NONE:
            return messages, {}
        if choice.mode is ToolMode.FUNCTION:
            tools = [tool for tool in tools if tool.name == choice.name]
        return messages, {"tools": [_tool_json(tool) for tool in tools]}

    def _dicts(self, messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
        called = _call_names(messages)
        return [
            {"role": m.role, "content": m.content, **(_tool_fields(m, called))} for m in messages
        ]

    def _render(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        variables: dict[str, Any] | None = None,
    ) -> str:
        pieces: list[str] = []
        try:
            rendering = self._template.generate(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **(variables or {}),
            )
            for pieces_so_far, piece in enumerate(rendering, 1):
                pieces.append(piece)
                if pieces_so_far % _PIECES_PER_TURN == 0:
                    time.sleep(0)  # let the event loop have the GIL now, if it waits
        except _TemplateError as exc:
            raise InvalidRequest(f"chat template rejected the messages: {exc}") from exc
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"chat template failed: {exc}") from exc
        return "".join(pieces)


class NoChatTemplate:
    """Stands in for a model without a chat template: chat requests are refused."""

    supports_tools = False

    def render(
        self,
        messages: Sequence[ChatMessage],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Tool] = (),
        tool_choice: ToolChoice | None = None,
    ) -> str:
        """Always raises :class:`InvalidRequest`; use a plain ``prompt`` instead."""
        raise InvalidRequest(
            "this model has no chat template (tokenizer.chat_template); "
            "send a plain prompt to /v1/completions instead",
            code="no_chat_template",
        )

    def render_parts(
        self,
        messages: Sequence[ChatMessage],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Tool] = (),
        tool_choice: ToolChoice | None = None,
    ) -> list[PromptPart]:
        """Always raises :class:`InvalidRequest`, like :meth:`render`."""
        return [PromptPart(self.render(messages), content=False)]


# --- tools, for templates that support them and for those that do not ------------------


class InvalidConstraint(InvalidRequest):
    """A constraint on the reply (``response_format``, tools) that the engine cannot
    honour; ``param`` names the request's parameter for the API's error."""

    def __init__(self, message: str, param: str, code: str = "invalid_json_schema") -> None:
        super().__init__(message, code=code)
        self.param = param


def check_tool_choice(request: GenerationRequest, supports_tools: bool) -> None:
    """Refuse ``tool_choice: auto`` with tools unless the template writes tools
    (``supports_tools``): the model would not know how to call, and a grammar
    cannot decide for it whether to. ``required`` and a named function work with
    any template, since a grammar writes their call."""
    if not request.tools or request.tool_choice.mode is not ToolMode.AUTO:
        return
    if request.messages is not None and supports_tools:
        return
    raise InvalidConstraint(
        "tool_choice 'auto' needs a chat template with tool support, and this model's "
        "has none: send tool_choice 'required' or "
        '{"type": "function", "function": {"name": ...}}, whose call a grammar writes, '
        "or 'none'",
        "tool_choice",
        code="tool_choice_unsupported",
    )


def _arguments(call: ToolCall) -> Any:
    """A call's arguments as a JSON value (its text when it is not JSON)."""
    try:
        return json.loads(call.arguments)
    except ValueError:
        return call.arguments


def _tool_json(tool: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": json.loads(tool.parameters),
        },
    }


def _tool_fields(message: ChatMessage, called: dict[str, str] | None = None) -> dict[str, Any]:
    """The tool keys of a message's dict, in Hugging Face's shape (none if none);
    ``called`` maps call ids to their functions (:func:`_call_names`)."""
    fields: dict[str, Any] = {}
    if message.tool_calls:
        fields["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _arguments(call)},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        fields["tool_call_id"] = message.tool_call_id
        name = (called or {}).get(message.tool_call_id)
        if name is not None:
            fields["name"] = name
    return fields


def _call_names(messages: Sequence[ChatMessage]) -> dict[str, str]:
    """The function of every call among ``messages``, by the call's id (one pass, so
    a chat of many results costs no more than one of few)."""
    return {call.id: call.name for message in messages for call in message.tool_calls}


def call_text(call: ToolCall) -> str:
    """A call as the reply of a forced call writes it: ``{"name", "arguments"}``."""
    return json.dumps({"name": call.name, "arguments": _arguments(call)}, ensure_ascii=False)


def tools_prompt(tools: Sequence[Tool], choice: ToolChoice) -> str:
    """What the system message says of the tools, for a forced call (else ``""``).

    The grammar makes the reply a call whatever the model; this tells the model
    which functions there are and what their arguments mean, so it can fill them in.
    """
    if choice.mode is ToolMode.FUNCTION:
        tool = next(t for t in tools if t.name == choice.name)
        return (
            f"Call the function {tool.name}: reply with its arguments only, as a JSON "
            f"object.\n{_describe(tool)}"
        )
    if choice.mode is ToolMode.REQUIRED:
        listed = "\n".join(_describe(tool) for tool in tools)
        return (
            "Call one of these functions: reply with a JSON object "
            '{"name": <the function\'s name>, "arguments": <its arguments>}.\n' + listed
        )
    return ""


def _describe(tool: Tool) -> str:
    about = f": {tool.description}" if tool.description else ""
    return f"- {tool.name}{about}\n  arguments (JSON Schema): {tool.parameters}"


def messages_for_template(
    messages: Sequence[ChatMessage], tools: Sequence[Tool], choice: ToolChoice
) -> list[ChatMessage]:
    """``messages`` for a template without tool support: plain roles and content.

    The tools of a forced call are described at the end of the system message (a
    new first message if there is none); an assistant's calls are appended to its
    content as JSON (:func:`call_text`), one a line; a tool's result becomes a user
    message ``Result of <function> (call <id>):`` and the result.
    """
    out: list[ChatMessage] = []
    called = _call_names(messages)
    for message in messages:
        if message.tool_calls:
            calls = "\n".join(call_text(call) for call in message.tool_calls)
            content = f"{message.content}\n{calls}" if message.content else calls
            message = ChatMessage(message.role, content)
        elif message.role == "tool" or message.tool_call_id is not None:
            name = called.get(message.tool_call_id or "", "a function")
            head = f"Result of {name} (call {message.tool_call_id}):"
            message = ChatMessage("user", f"{head}\n{message.content}")
        out.append(message)
    about = tools_prompt(tools, choice) if tools else ""
    if about:
        if out and out[0].role == "system":
            first = out[0]
            out[0] = replace(
                first, content=f"{first.content}\n\n{about}" if first.content else about
            )
        else:
            out.insert(0, ChatMessage("system", about))
    return out
