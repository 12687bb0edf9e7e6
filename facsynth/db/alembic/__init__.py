"""Alembic's script directory for the store (``env.py``, ``versions/``); see :mod:`facsynth.db.migrations`."""
