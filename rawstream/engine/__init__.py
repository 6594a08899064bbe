"""Generation engines: the in-process llama.cpp model and a deterministic fake."""

from rawstream.engine.base import (
    ChatMessage,
    Delta,
    Engine,
    EngineError,
    EngineState,
    EngineStatistics,
    FinishReason,
    GenerationRequest,
    GenerationStream,
    InvalidRequest,
    NotReady,
    Overloaded,
    Result,
    Timings,
    Usage,
    collect,
)

__all__ = [
    "ChatMessage",
    "Delta",
    "Engine",
    "EngineError",
    "EngineState",
    "EngineStatistics",
    "FinishReason",
    "GenerationRequest",
    "GenerationStream",
    "InvalidRequest",
    "NotReady",
    "Overloaded",
    "Result",
    "Timings",
    "Usage",
    "collect",
]
