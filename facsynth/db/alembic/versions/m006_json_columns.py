"""JSON documents as JSON columns (``sqlalchemy.JSON``) instead of text.

On PostgreSQL the columns become ``json``. JSON has no NaN or Infinity, which the old code
wrote as bare tokens (a quality check's loss, for one): before the cast, such values are
rewritten as ``{"$float": "NaN"}`` (``Infinity``, ``-Infinity``), which
:class:`facsynth.db.models.Json` reads back as floats. On SQLite a JSON column is text
whatever its declared type: nothing changes, and the rows written so far read as they are.

Revision ID: m006_json_columns
Revises: m005_workers
"""

from __future__ import annotations

import json
import math
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "m006_json_columns"
down_revision = "m005_workers"
branch_labels = None
depends_on = None

COLUMNS = [  # (table, column, nullable)
    ("samples", "payload", False),
    ("feature_stats", "quantiles", False),
    ("feature_spans", "tokens", False),
    ("feature_spans", "acts", False),
    ("explanations", "words", True),
    ("tasks", "format", True),
    ("runs", "config", False),
    ("run_candidates", "payload", False),
    ("run_candidates", "span", True),
    ("run_candidates", "checks", True),
    ("run_samples", "covered", False),
    ("run_directives", "args", False),
]


def _tag(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tag(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tag(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    return value


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table, column, nullable in COLUMNS:
        found = bind.execute(
            sa.text(f'SELECT id, "{column}" FROM {table} WHERE "{column}" ~ \'NaN|Infinity\'')
        ).all()
        for row_id, raw in found:
            fixed = json.dumps(_tag(json.loads(raw)), ensure_ascii=False, separators=(",", ":"))
            bind.execute(sa.text(f'UPDATE {table} SET "{column}" = :v WHERE id = :i'), {"v": fixed, "i": row_id})
        op.alter_column(
            table, column, type_=sa.JSON(), existing_type=sa.Text(), existing_nullable=nullable,
            postgresql_using=f'"{column}"::json',
        )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table, column, nullable in COLUMNS:
        op.alter_column(
            table, column, type_=sa.Text(), existing_type=sa.JSON(), existing_nullable=nullable,
            postgresql_using=f'"{column}"::text',
        )
