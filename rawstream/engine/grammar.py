"""Grammars for structured output and forced tool calls, with llama.cpp's converter.

What the reply must be comes from :func:`rawstream.sansio.tools.output_schema`: a
JSON Schema (the ``response_format`` schema, any JSON object, a call of one of the
tools, or the arguments of the one function the client named). This module turns it
into a GBNF grammar with the JSON Schema converter llama-cpp-python maintains
(``llama_cpp.llama_grammar.SchemaConverter``, the Python port of llama.cpp's
``json-schema-to-grammar``), checks that llama.cpp parses that grammar, and gives
the backend the model's vocabulary to build each stream's grammar sampler with
(:func:`rawstream.engine.sampling.build_sampler_chain`).

It all runs on the engine's preparation thread, before the request reaches a slot:
a schema the converter cannot express (an unknown type, a ``$ref`` it cannot
resolve, a remote ``$ref``: nothing is ever fetched) or whose grammar llama.cpp
refuses is an :class:`InvalidConstraint`, a 400 naming the request's parameter, and
no decoding is spent on it.

Like :mod:`rawstream.engine.backend`, this module imports ``llama_cpp`` (which loads
its shared libraries): :class:`~rawstream.engine.llama.LlamaEngine` imports it when
it starts, never at import time.

A converter detail: it names the rule of a ``$defs`` entry after the entry's name
alone, so two tools each defining a different ``Location`` would share one rule.
Each tool's references are resolved under a base of its own (``tool0``, ``tool1``)
and their rules are named after base and entry (``tool0-Location``).
"""

from __future__ import annotations

import types
from typing import Any

import llama_cpp.llama_cpp as lib
from llama_cpp.llama_grammar import SchemaConverter

from rawstream.engine.backend import LlamaBackend
from rawstream.engine.base import GenerationRequest
from rawstream.engine.chat import InvalidConstraint
from rawstream.engine.sampling import build_sampler_chain
from rawstream.sansio.tools import (
    MAX_REPETITIONS,
    Reply,
    excess_count,
    output_schema,
    reply_kind,
)

__all__ = [
    "MAX_GRAMMAR_CHARS",
    "GrammarBackend",
    "InvalidConstraint",
    "request_grammar",
    "schema_grammar",
]

#: Longest grammar (in characters) a request may bring: its size is what llama.cpp
#: parses and what the grammar sampler walks.
MAX_GRAMMAR_CHARS = 256 * 1024


def request_grammar(request: GenerationRequest) -> str | None:
    """The GBNF grammar of ``request``'s reply, or ``None`` for free text.

    Raises :class:`InvalidConstraint` (param ``response_format``, ``tools`` or
    ``tool_choice``) when the converter cannot express the schema.
    """
    schema = output_schema(request)
    if schema is None:
        return None
    kind = reply_kind(request)
    param = "response_format" if kind is Reply.TEXT else "tools"
    if kind is not Reply.CALL:
        return schema_grammar(schema, param=param)
    _check_counts(schema, param)
    return _checked_size(_call_grammar(schema["anyOf"], param), param)


def schema_grammar(schema: dict[str, Any], *, param: str = "response_format") -> str:
    """The GBNF grammar (root rule ``root``) of the instances of ``schema``."""
    _check_counts(schema, param)
    converter = _converter()
    try:
        resolved = converter.resolve_refs(schema, "")
        converter.visit(resolved, "")
        grammar = str(converter.format_grammar())
    except Exception as exc:  # the converter signals with asserts, KeyError, ...
        raise _cannot(param, exc) from exc
    return _checked_size(grammar, param)


def _check_counts(schema: Any, param: str) -> None:
    """Refuse a repetition count above ``MAX_REPETITIONS`` (the API refuses it too,
    but the engine is also a library)."""
    excess = excess_count(schema)
    if excess is not None:
        raise InvalidConstraint(
            f"{excess[0]} is {excess[1]} in the JSON schema of {param}; this server "
            f"enforces at most {MAX_REPETITIONS}",
            param,
        )


def _checked_size(grammar: str, param: str) -> str:
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise InvalidConstraint(
            f"the JSON schema of {param} makes a grammar of {len(grammar)} characters; "
            f"this server enforces at most {MAX_GRAMMAR_CHARS}",
            param,
        )
    return grammar


def _call_grammar(alternatives: list[dict[str, Any]], param: str) -> str:
    """The grammar of a call of one of the tools (:func:`~rawstream.sansio.tools.call_schema`):
    each tool's parameters resolve their ``$ref`` under a base of their own."""
    converter = _converter()
    try:
        calls = []
        for i, call in enumerate(alternatives):
            properties = dict(call["properties"])
            properties["arguments"] = converter.resolve_refs(properties["arguments"], f"tool{i}")
            calls.append({**call, "properties": properties})
        converter.visit({"anyOf": calls}, "")
        return str(converter.format_grammar())
    except Exception as exc:
        raise _cannot(param, exc) from exc


def _converter() -> Any:
    converter: Any = SchemaConverter(  # type: ignore[no-untyped-call]
        prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    converter._resolve_ref = types.MethodType(_resolve_ref, converter)
    return converter


def _resolve_ref(converter: Any, ref: str) -> str:
    """``SchemaConverter._resolve_ref``, naming the rule after base and entry."""
    base, _, fragment = ref.partition("#")
    entry = fragment.rsplit("/", 1)[-1]
    name = f"{base}-{entry}" if base else entry
    if name not in converter._rules and ref not in converter._refs_being_resolved:
        converter._refs_being_resolved.add(ref)
        name = converter.visit(converter._refs[ref], name)
        converter._refs_being_resolved.remove(ref)
    return name


def _cannot(param: str, exc: BaseException) -> InvalidConstraint:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, RecursionError):
        detail = "it nests too deeply"
    return InvalidConstraint(
        f"the JSON schema of {param} cannot be enforced by this server: {detail}", param
    )


class GrammarBackend(LlamaBackend):
    """:class:`LlamaBackend` whose samplers honour ``GenerationRequest.grammar``.

    :meth:`new_sampler` gives :func:`build_sampler_chain` the model's vocabulary,
    which a grammar sampler reads; :meth:`prepare_grammar` converts and checks a
    request's grammar on the preparation thread.
    """

    def new_sampler(self, request: GenerationRequest) -> Any:
        """A sampler for ``request``, with its grammar if it has one."""
        if request.grammar is None:
            return super().new_sampler(request)
        return build_sampler_chain(lib, request, self.n_vocab, vocab=self._vocab)

    def prepare_grammar(self, request: GenerationRequest) -> str | None:
        """``request.grammar`` if set, else :func:`request_grammar`; checked (any
        thread: it only reads the vocabulary). Raises :class:`InvalidConstraint`."""
        grammar = request.grammar if request.grammar is not None else request_grammar(request)
        if grammar is None:
            return None
        with self._vocab_lock:
            if self._closed:
                raise RuntimeError("the model is closed")
            sampler = lib.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not sampler:
            param = "response_format" if reply_kind(request) is Reply.TEXT else "tools"
            if request.grammar is not None:
                param = "grammar"
            raise InvalidConstraint(
                f"llama.cpp cannot parse the grammar of {param} "
                f"({len(grammar)} characters; its log says why)",
                param,
            )
        lib.llama_sampler_free(sampler)
        return grammar
