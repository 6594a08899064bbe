"""What an endpoint may use of the application: the narrow view handlers take.

The endpoint modules (``openai_api``, ``responses_api``, ``anthropic_api``,
``ws_api``, ``generations``) need the configuration, the engine, the metrics and
the body parser, not the whole :class:`~rawstream.app.application.App` that routes
to them. Typing them against this protocol instead of ``App`` keeps the import
graph one-way: ``application`` imports the endpoints, and no endpoint imports
``application``, not even for a type.
"""

from __future__ import annotations

from typing import Protocol

from rawstream.app.bodies import BodyParser
from rawstream.app.metrics import Metrics
from rawstream.config import Config
from rawstream.engine.base import Engine

__all__ = ["Services"]


class Services(Protocol):
    """The application's services an endpoint uses (``App`` provides them)."""

    config: Config
    engine: Engine
    metrics: Metrics
    bodies: BodyParser
    #: When the server started (Unix time), the ``created`` of ``/v1/models``.
    started_at: int
