"""Build the engine that a :class:`~rawstream.config.Config` asks for."""

from __future__ import annotations

from rawstream.config import Config
from rawstream.engine.base import Engine

__all__ = ["ENGINES", "create_engine"]

#: Values accepted by ``--engine``.
ENGINES = ("llama", "fake")


def create_engine(config: Config) -> Engine:
    """A new, not yet started engine: ``config.engine`` is ``"llama"`` or ``"fake"``.

    The llama engine imports llama-cpp-python only when started, so choosing the
    fake engine never loads the native library.
    """
    if config.engine == "llama":
        from rawstream.engine.llama import LlamaEngine

        return LlamaEngine(config)
    if config.engine == "fake":
        from rawstream.engine.fake import FakeEngine

        return FakeEngine(config)
    raise ValueError(f"unknown engine {config.engine!r}; choose one of {', '.join(ENGINES)}")
