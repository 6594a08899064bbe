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
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rawstream.engine.base import ChatMessage, InvalidRequest

__all__ = [
    "ChatTemplate",
    "NoChatTemplate",
    "PromptPart",
    "placeholder",
    "split_at_placeholders",
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

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        """The prompt for ``messages``, ending where the assistant's reply begins.

        Rendering is pure Python and holds the GIL. The engine renders on its own
        thread, and the interpreter would hand the GIL to a waiting event loop only
        every switch interval (5 ms), so every wake-up of the loop would wait that
        long: rendering gives the GIL up every :data:`_PIECES_PER_TURN` pieces
        instead (``time.sleep(0)``), and a loop that waits gets it at once.
        """
        return self._render([(m.role, m.content) for m in messages], add_generation_prompt)

    def render_parts(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> list[PromptPart]:
        """:meth:`render`, cut into template text and message content.

        Raises :class:`InvalidRequest` when the template alters message content and
        some content or role holds a control token's text, which could then not be
        kept literal.
        """
        # Roles are rendered as template text. The API accepts a fixed set of names,
        # but the engine is also a library: refuse a role that could smuggle a token.
        for role in {message.role for message in messages}:
            self._refuse_special(role)
        text = self.render(messages, add_generation_prompt=add_generation_prompt)
        nonce = secrets.token_hex(16)
        while nonce in text or nonce in self.source:  # never in practice: 128 random bits
            nonce = secrets.token_hex(16)
        contents = [message.content for message in messages]
        # Empty content has nothing to inject, and stays falsy for the template.
        stand_ins = [
            (message.role, placeholder(nonce, i) if message.content else "")
            for i, message in enumerate(messages)
        ]
        try:
            stand_in = self._render(stand_ins, add_generation_prompt)
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

    def _render(self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool) -> str:
        pieces: list[str] = []
        try:
            rendering = self._template.generate(
                messages=[{"role": role, "content": content} for role, content in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
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

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        """Always raises :class:`InvalidRequest`; use a plain ``prompt`` instead."""
        raise InvalidRequest(
            "this model has no chat template (tokenizer.chat_template); "
            "send a plain prompt to /v1/completions instead",
            code="no_chat_template",
        )

    def render_parts(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True
    ) -> list[PromptPart]:
        """Always raises :class:`InvalidRequest`, like :meth:`render`."""
        return [PromptPart(self.render(messages), content=False)]
