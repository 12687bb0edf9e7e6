"""Readers, datasets and samples, sample feature hits, features, LLM calls and cache.

Revision ID: m001_initial
Revises: None
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'm001_initial'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('readers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('model_name', sa.String(length=512), nullable=False),
    sa.Column('model_fingerprint', sa.String(length=64), nullable=False),
    sa.Column('layer', sa.Integer(), nullable=False),
    sa.Column('sae_name', sa.String(length=512), nullable=False),
    sa.Column('sae_hash', sa.String(length=64), nullable=False),
    sa.Column('activation_mode', sa.String(length=32), nullable=False),
    sa.Column('template_mode', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_readers')),
    sa.UniqueConstraint('key', name=op.f('uq_readers_key')),
    sa.UniqueConstraint('model_name', 'model_fingerprint', 'layer', 'sae_name', 'sae_hash', 'activation_mode', 'template_mode', name='uq_readers_identity')
    )
    op.create_table('datasets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('n_samples', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_datasets')),
    sa.UniqueConstraint('content_hash', name=op.f('uq_datasets_content_hash'))
    )
    op.create_table('samples',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sample_hash', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_samples')),
    sa.UniqueConstraint('sample_hash', name=op.f('uq_samples_sample_hash'))
    )
    op.create_table('dataset_samples',
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('sample_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dataset_samples_dataset_id_datasets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['sample_id'], ['samples.id'], name=op.f('fk_dataset_samples_sample_id_samples')),
    sa.PrimaryKeyConstraint('dataset_id', 'position', name=op.f('pk_dataset_samples'))
    )
    op.create_index('ix_dataset_samples_sample_id', 'dataset_samples', ['sample_id'], unique=False)
    op.create_table('sample_features',
    sa.Column('reader_id', sa.Integer(), nullable=False),
    sa.Column('sample_id', sa.Integer(), nullable=False),
    sa.Column('n_tokens', sa.Integer(), nullable=False),
    sa.Column('feature_ids', sa.LargeBinary(), nullable=False),
    sa.Column('max_acts', sa.LargeBinary(), nullable=False),
    sa.Column('pooled', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['reader_id'], ['readers.id'], name=op.f('fk_sample_features_reader_id_readers'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['sample_id'], ['samples.id'], name=op.f('fk_sample_features_sample_id_samples'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('reader_id', 'sample_id', name=op.f('pk_sample_features'))
    )
    op.create_table('features',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('reader_id', sa.Integer(), nullable=False),
    sa.Column('feature_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['reader_id'], ['readers.id'], name=op.f('fk_features_reader_id_readers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_features')),
    sa.UniqueConstraint('reader_id', 'feature_id', name='uq_features_reader_feature')
    )
    op.create_table('llm_calls',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=True),
    sa.Column('purpose', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('prompt_hash', sa.String(length=64), nullable=False),
    sa.Column('tokens_in', sa.Integer(), nullable=False),
    sa.Column('tokens_out', sa.Integer(), nullable=False),
    sa.Column('latency_s', sa.Float(), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.CheckConstraint("outcome IN ('ok', 'error', 'parse_error', 'cached')", name=op.f('ck_llm_calls_outcome')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_llm_calls'))
    )
    op.create_index('ix_llm_calls_run_id', 'llm_calls', ['run_id'], unique=False)
    op.create_table('llm_cache',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('response', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_llm_cache'))
    )


def downgrade() -> None:
    op.drop_table('llm_cache')
    op.drop_table('llm_calls')
    op.drop_table('features')
    op.drop_table('sample_features')
    op.drop_table('dataset_samples')
    op.drop_table('samples')
    op.drop_table('datasets')
    op.drop_table('readers')
