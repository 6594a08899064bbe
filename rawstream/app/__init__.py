"""The application: rawstream's endpoints, composed from the server and the engine."""

from rawstream.app.application import App, create_app

__all__ = ["App", "create_app"]
