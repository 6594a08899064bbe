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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rawstream.engine.base import ChatMessage, InvalidRequest

__all__ = ["ChatTemplate", "NoChatTemplate"]


class _TemplateError(Exception):
    """Raised by a template through ``raise_exception``."""


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateError(message)


class ChatTemplate:
    """A compiled chat template and the special tokens it may refer to."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
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

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        """The prompt for ``messages``, ending where the assistant's reply begins."""
        try:
            return self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except _TemplateError as exc:
            raise InvalidRequest(f"chat template rejected the messages: {exc}") from exc
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"chat template failed: {exc}") from exc


class NoChatTemplate:
    """Stands in for a model without a chat template: chat requests are refused."""

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        """Always raises :class:`InvalidRequest`; use a plain ``prompt`` instead."""
        raise InvalidRequest(
            "this model has no chat template (tokenizer.chat_template); "
            "send a plain prompt to /v1/completions instead",
            code="no_chat_template",
        )
