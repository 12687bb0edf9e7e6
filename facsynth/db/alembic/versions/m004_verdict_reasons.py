"""Each verdict's reason code (a fixed vocabulary) and the quality signals it was read with.

Revision ID: m004_verdict_reasons
Revises: m003_runs
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "m004_verdict_reasons"
down_revision = "m003_runs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("run_candidates", sa.Column("reason_code", sa.String(length=32), nullable=True))
    op.add_column("run_candidates", sa.Column("checks", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("run_candidates", "checks")
    op.drop_column("run_candidates", "reason_code")
