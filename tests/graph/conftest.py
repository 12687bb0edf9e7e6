"""A reader on the session's model and SAE with a store of its own, per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from facsynth.db import Store
from facsynth.tools.reader import Reader


@pytest.fixture
def reader(subject, default_sae, tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        yield Reader(subject, default_sae, store=store)
    finally:
        store.close()
