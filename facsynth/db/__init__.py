"""The SQL store (SQLAlchemy 2.0): ``Store`` and ``open_store``.

``open_store()`` opens ``$FACSYNTH_DB`` (any SQLAlchemy URL) or ``sqlite:///facsynth.db``;
``Store(url_or_engine)`` opens a given database. Both apply the missing migrations.
"""

from __future__ import annotations

from facsynth.db.store import LLMTotals, Outcome, Store, open_store, redact_secrets

__all__ = ["LLMTotals", "Outcome", "Store", "open_store", "redact_secrets"]
