"""Synthesis runs: target features, candidates and verdicts, accepted samples, progress, directives.

Revision ID: m003_runs
Revises: m002_catalog
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'm003_runs'
down_revision = 'm002_catalog'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('strategy', sa.String(length=16), nullable=False),
    sa.Column('task', sa.String(length=128), nullable=False),
    sa.Column('reader_id', sa.Integer(), nullable=False),
    sa.Column('config', sa.Text(), nullable=False),
    sa.Column('feature_set', sa.Text(), nullable=False),
    sa.Column('n_relevant', sa.Integer(), nullable=False),
    sa.Column('n_seed_covered', sa.Integer(), nullable=False),
    sa.Column('stop_reason', sa.Text(), nullable=True),
    sa.Column('elapsed_s', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('created', 'running', 'reviewing', 'stopped', 'paused', 'done', 'failed')", name=op.f('ck_runs_status')),
    sa.ForeignKeyConstraint(['reader_id'], ['readers.id'], name=op.f('fk_runs_reader_id_readers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs')),
    sa.UniqueConstraint('name', name=op.f('uq_runs_name'))
    )
    op.create_table('run_features',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('feature_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('priority', sa.Float(), nullable=False),
    sa.Column('best_act', sa.Float(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('covered_by', sa.Integer(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('pending', 'in_progress', 'covered', 'exhausted', 'excluded')", name=op.f('ck_run_features_status')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_features_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_features')),
    sa.UniqueConstraint('run_id', 'feature_id', name='uq_run_features_run_feature')
    )
    op.create_table('run_candidates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('feature_id', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=True),
    sa.Column('text_hash', sa.String(length=64), nullable=False),
    sa.Column('prompt_hash', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('target_act', sa.Float(), nullable=True),
    sa.Column('span', sa.Text(), nullable=True),
    sa.Column('feature_ids', sa.LargeBinary(), nullable=True),
    sa.Column('max_acts', sa.LargeBinary(), nullable=True),
    sa.Column('verdict', sa.String(length=16), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('proposed', sa.String(length=16), nullable=True),
    sa.Column('review', sa.String(length=16), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_candidates_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_candidates')),
    sa.UniqueConstraint('run_id', 'feature_id', 'attempt', 'idx', name='uq_run_candidates_run_feature_attempt_idx')
    )
    op.create_table('run_samples',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('candidate_id', sa.Integer(), nullable=False),
    sa.Column('feature_id', sa.Integer(), nullable=False),
    sa.Column('text_hash', sa.String(length=64), nullable=False),
    sa.Column('activation', sa.Float(), nullable=False),
    sa.Column('covered', sa.Text(), nullable=False),
    sa.Column('withdrawn_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['candidate_id'], ['run_candidates.id'], name=op.f('fk_run_samples_candidate_id_run_candidates'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_samples_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_samples')),
    sa.UniqueConstraint('run_id', 'text_hash', name='uq_run_samples_run_text_hash')
    )
    op.create_table('run_progress',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('llm_calls', sa.Integer(), nullable=False),
    sa.Column('tokens', sa.Integer(), nullable=False),
    sa.Column('covered', sa.Integer(), nullable=False),
    sa.Column('fac', sa.Float(), nullable=False),
    sa.Column('elapsed_s', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_progress_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_progress')),
    sa.UniqueConstraint('run_id', 'seq', name='uq_run_progress_run_seq')
    )
    op.create_table('run_directives',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('words', sa.Text(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('args', sa.Text(), nullable=False),
    sa.Column('active', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reverted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_run_directives_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_directives'))
    )
    op.create_index('ix_run_directives_run_id', 'run_directives', ['run_id'], unique=False)


def downgrade() -> None:
    op.drop_table('run_directives')
    op.drop_table('run_progress')
    op.drop_table('run_samples')
    op.drop_table('run_candidates')
    op.drop_table('run_features')
    op.drop_table('runs')
