"""The store on each backend: SQLite in ``tmp_path`` and, when it is reachable, PostgreSQL
(a fresh schema per test, dropped afterwards; see ``pg_engine`` in ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from facsynth.db import Store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'store.db'}") if request.param == "sqlite" else Store(request.getfixturevalue("pg_engine"))
    try:
        yield s
    finally:
        s.close()
