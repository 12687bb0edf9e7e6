"""Synthesis workers on PostgreSQL: their sessions, and their claims on target features.

Revision ID: m005_workers
Revises: m004_verdict_reasons
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'm005_workers'
down_revision = 'm004_verdict_reasons'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('run_workers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_workers_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_workers'))
    )
    op.create_index('ix_run_workers_run_id', 'run_workers', ['run_id'], unique=False)
    op.create_table('run_claims',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('feature_id', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=32), nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('released_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_claims_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_claims'))
    )
    op.create_index('ix_run_claims_run_id_feature_id', 'run_claims', ['run_id', 'feature_id'], unique=False)
    op.create_index('uq_run_claims_open', 'run_claims', ['run_id', 'feature_id'], unique=True, postgresql_where=sa.text('released_at IS NULL'), sqlite_where=sa.text('released_at IS NULL'))


def downgrade() -> None:
    op.drop_table('run_claims')
    op.drop_table('run_workers')
