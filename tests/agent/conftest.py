"""Fixtures for the LLM access tests.

* ``llama_server`` (``tests/conftest.py``): the real embedded llama.cpp server with the
  bundled SmolLM2-135M GGUF, started once per session and always stopped.
* ``fake_llm``: a loopback OpenAI-compatible chat endpoint (stdlib ``http.server`` in a
  thread on 127.0.0.1:0) that answers from a script: 429 with Retry-After, 500, slow
  replies, unparseable content. Only the remote endpoint is faked, at the HTTP boundary.
* ``store``: the project's store on SQLite in ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest



@pytest.fixture
def store(tmp_path: Path) -> Iterator[Any]:
    """The project's store on SQLite in ``tmp_path``."""
    from facsynth.db import Store

    db = Store(f"sqlite:///{tmp_path / 'facsynth.db'}")
    try:
        yield db
    finally:
        db.close()
