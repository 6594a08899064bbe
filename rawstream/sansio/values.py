"""The values of a generation that the engine and the protocols share.

A leaf module: it imports nothing of rawstream (and nothing beyond the standard
library's ``enum`` and ``dataclasses``), so the pure protocol code in
:mod:`rawstream.sansio` can build and read requests and results without loading
the engine, its threads or llama.cpp. :mod:`rawstream.engine.base` re-exports
every name here as part of the engine interface.

- :class:`GenerationRequest`: what to generate (chat messages or a prompt) and how
  to sample it; :class:`ChatMessage` one message of a chat.
- What the output must be (docs/structured-output.md): :class:`JsonFormat` (one
  JSON object, of a schema or any), the :class:`Tool` functions a model may call
  and the :class:`ToolChoice`; :class:`ToolCall` is one call, in an assistant
  message of the chat or as the reply.
- :class:`Delta`: new text of a stream; :class:`Result`: how it ended, with its
  :class:`FinishReason`, :class:`Usage` and :class:`Timings`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "ChatMessage",
    "Delta",
    "FinishReason",
    "GenerationRequest",
    "JsonFormat",
    "Result",
    "Timings",
    "TokenLogprob",
    "Tool",
    "ToolCall",
    "ToolChoice",
    "ToolMode",
    "Usage",
]


class FinishReason(enum.StrEnum):
    """Why a stream ended. The first two are OpenAI's values."""

    STOP = "stop"  #: end-of-generation token or a stop string
    LENGTH = "length"  #: max_tokens reached, or the context is full
    CANCELLED = "cancelled"  #: the consumer (or shutdown) cancelled it
    ERROR = "error"  #: the engine failed; see :attr:`Result.error`


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call of a function: its ``id``, the function's ``name`` and its
    ``arguments`` as JSON text (an object), the way OpenAI carries them."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a chat; ``role`` is system, user, assistant or tool.

    An assistant message may carry the ``tool_calls`` it made; a tool message
    answers the call ``tool_call_id`` with its result as ``content``.
    """

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class JsonFormat:
    """The reply must be one JSON object: an instance of ``schema`` (JSON Schema,
    as JSON text, whose root is an object), or any object when ``schema`` is None.
    ``name`` is the schema's name (OpenAI's ``json_schema.name``)."""

    schema: str | None = None
    name: str = ""


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call: ``parameters`` is the JSON Schema of its
    arguments (JSON text, an object schema)."""

    name: str
    parameters: str = '{"type":"object","properties":{}}'
    description: str = ""


class ToolMode(enum.StrEnum):
    """Whether the model calls a tool (OpenAI's ``tool_choice`` values)."""

    NONE = "none"  #: never: the tools are ignored, the reply is text
    AUTO = "auto"  #: the model decides
    REQUIRED = "required"  #: it calls one of the tools
    FUNCTION = "function"  #: it calls the function :attr:`ToolChoice.name`


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """OpenAI's ``tool_choice``: a :class:`ToolMode`, and the function's name for
    :attr:`ToolMode.FUNCTION`."""

    mode: ToolMode = ToolMode.AUTO
    name: str | None = None
    #: Whether a reply may hold several calls (OpenAI's ``parallel_tool_calls``).
    #: A forced call is always one: its grammar writes one.
    parallel: bool = True

    def __post_init__(self) -> None:
        if (self.mode is ToolMode.FUNCTION) != (self.name is not None):
            raise ValueError("a name goes with mode FUNCTION, and only with it")

    @property
    def forced(self) -> bool:
        """Whether the reply must be a call (``required`` or a named function)."""
        return self.mode in (ToolMode.REQUIRED, ToolMode.FUNCTION)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What to generate and how to sample it.

    Exactly one of ``messages`` (rendered with the model's chat template) and
    ``prompt`` (used verbatim) is set. ``max_tokens=None`` means until the end of
    generation or the slot's context is full.
    """

    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  #: 0 disables top-k
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    #: Log-probabilities: ``None`` for none; ``N`` (0 to 20) for the chosen token's
    #: and those of the ``N`` most likely tokens at each position.
    logprobs: int | None = None
    #: The reply must be JSON (OpenAI's ``response_format``); ``None``: free text.
    json_format: JsonFormat | None = None
    #: Functions the model may call; the engine describes them in the prompt.
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    #: A GBNF grammar (root rule ``root``) the reply must match, from its first
    #: token to its end. The llama engine sets it from ``json_format`` and the tool
    #: choice while it prepares the prompt; a caller of the engine may set it too.
    grammar: str | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("set exactly one of messages and prompt")
        if self.tool_choice.forced and not self.tools:
            raise ValueError("a forced tool choice needs tools")


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token with its log-probability (natural log, <= 0).

    ``text`` is the token's piece decoded as UTF-8 with replacement (a token may
    hold part of a character); ``piece`` is its exact bytes. ``top`` holds the most
    likely tokens at that position, most likely first, when they were asked for.
    """

    text: str
    piece: bytes
    logprob: float
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Delta:
    """New text of a stream, the number of tokens it came from, and their
    log-probabilities when the request asked for them (one per token)."""

    text: str
    tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts in OpenAI's sense."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Timings:
    """Where the time of one stream went, in seconds."""

    queued: float = 0.0  #: submit -> slot assigned
    prompt: float = 0.0  #: slot assigned -> first token sampled
    generation: float = 0.0  #: first token -> end
    cancel_latency: float | None = None  #: cancel() -> slot freed, when cancelled


@dataclass(frozen=True, slots=True)
class Result:
    """How a stream ended."""

    finish_reason: FinishReason
    usage: Usage
    timings: Timings = field(default_factory=Timings)
    error: str | None = None
