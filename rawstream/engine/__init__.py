"""Generation engines: the in-process llama.cpp model and a deterministic fake.

``create_engine(config)`` builds the one ``config.engine`` names. Importing this
package does not load llama.cpp; :meth:`LlamaEngine.start` does.
"""

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
from rawstream.engine.factory import ENGINES, create_engine
from rawstream.engine.fake import FakeEngine
from rawstream.engine.llama import LlamaEngine
from rawstream.engine.model import ModelNotFoundError, resolve_model
from rawstream.engine.stream import EngineStream, FlowControl

__all__ = [
    "ENGINES",
    "ChatMessage",
    "Delta",
    "Engine",
    "EngineError",
    "EngineState",
    "EngineStatistics",
    "EngineStream",
    "FakeEngine",
    "FinishReason",
    "FlowControl",
    "GenerationRequest",
    "GenerationStream",
    "InvalidRequest",
    "LlamaEngine",
    "ModelNotFoundError",
    "NotReady",
    "Overloaded",
    "Result",
    "Timings",
    "Usage",
    "collect",
    "create_engine",
    "resolve_model",
]
