"""The feature catalog: span collections, feature stats and spans, explanations, tasks, relevance.

Revision ID: m002_catalog
Revises: m001_initial
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'm002_catalog'
down_revision = 'm001_initial'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('span_collections',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('reader_id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('top_n', sa.Integer(), nullable=False),
    sa.Column('window', sa.Integer(), nullable=False),
    sa.Column('held_out', sa.Integer(), nullable=False),
    sa.Column('n_random', sa.Integer(), nullable=False),
    sa.Column('delta', sa.Float(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('n_samples', sa.Integer(), nullable=False),
    sa.Column('n_features', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_span_collections_dataset_id_datasets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reader_id'], ['readers.id'], name=op.f('fk_span_collections_reader_id_readers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_span_collections')),
    sa.UniqueConstraint('reader_id', 'dataset_id', name='uq_span_collections_reader_dataset')
    )
    op.create_table('feature_stats',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('reader_id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('feature_id', sa.Integer(), nullable=False),
    sa.Column('n_samples', sa.Integer(), nullable=False),
    sa.Column('active_count', sa.Integer(), nullable=False),
    sa.Column('frequency', sa.Float(), nullable=False),
    sa.Column('max_act', sa.Float(), nullable=False),
    sa.Column('quantiles', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_feature_stats_dataset_id_datasets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reader_id'], ['readers.id'], name=op.f('fk_feature_stats_reader_id_readers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_feature_stats')),
    sa.UniqueConstraint('reader_id', 'dataset_id', 'feature_id', name='uq_feature_stats_reader_dataset_feature')
    )
    op.create_table('feature_spans',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('reader_id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('feature_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('sample_id', sa.Integer(), nullable=False),
    sa.Column('activation', sa.Float(), nullable=False),
    sa.Column('peak_token', sa.Integer(), nullable=False),
    sa.Column('tokens', sa.Text(), nullable=False),
    sa.Column('acts', sa.Text(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.CheckConstraint("kind IN ('top', 'held_out', 'random')", name=op.f('ck_feature_spans_kind')),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_feature_spans_dataset_id_datasets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reader_id'], ['readers.id'], name=op.f('fk_feature_spans_reader_id_readers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['sample_id'], ['samples.id'], name=op.f('fk_feature_spans_sample_id_samples'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_feature_spans'))
    )
    op.create_index('ix_feature_spans_reader_id_dataset_id_feature_id', 'feature_spans', ['reader_id', 'dataset_id', 'feature_id'], unique=False)
    op.create_table('explanations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('reader_id', sa.Integer(), nullable=False),
    sa.Column('feature_id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=True),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('words', sa.Text(), nullable=True),
    sa.Column('explainer_model', sa.String(length=255), nullable=False),
    sa.Column('check_label', sa.String(length=16), nullable=True),
    sa.Column('check_model', sa.String(length=255), nullable=True),
    sa.Column('detection_score', sa.Float(), nullable=True),
    sa.Column('detection_n', sa.Integer(), nullable=True),
    sa.Column('detection_model', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("check_label IS NULL OR check_label IN ('Yes', 'Probably', 'Maybe', 'No')", name=op.f('ck_explanations_check_label')),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_explanations_dataset_id_datasets'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['reader_id'], ['readers.id'], name=op.f('fk_explanations_reader_id_readers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_explanations')),
    sa.UniqueConstraint('reader_id', 'feature_id', name='uq_explanations_reader_feature')
    )
    op.create_table('tasks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('definition', sa.Text(), nullable=False),
    sa.Column('criteria', sa.Text(), nullable=False),
    sa.Column('format', sa.Text(), nullable=True),
    sa.Column('source', sa.String(length=512), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tasks')),
    sa.UniqueConstraint('name', name=op.f('uq_tasks_name'))
    )
    op.create_table('relevance',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('reader_id', sa.Integer(), nullable=False),
    sa.Column('feature_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('method', sa.String(length=16), nullable=False),
    sa.Column('label', sa.String(length=16), nullable=False),
    sa.Column('analysis', sa.Text(), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('model', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("label IN ('Yes', 'Probably', 'Maybe', 'No')", name=op.f('ck_relevance_label')),
    sa.CheckConstraint("method IN ('llm_judge', 'contrast', 'import')", name=op.f('ck_relevance_method')),
    sa.ForeignKeyConstraint(['reader_id'], ['readers.id'], name=op.f('fk_relevance_reader_id_readers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_relevance_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_relevance')),
    sa.UniqueConstraint('reader_id', 'feature_id', 'task_id', 'method', name='uq_relevance_reader_feature_task_method')
    )


def downgrade() -> None:
    op.drop_table('relevance')
    op.drop_table('tasks')
    op.drop_table('explanations')
    op.drop_table('feature_spans')
    op.drop_table('feature_stats')
    op.drop_table('span_collections')
