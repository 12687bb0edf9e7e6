"""A frozen copy of the store's migrations before Alembic (facsynth 0.1.0, m001..m005).

Used only to build stores the way earlier versions wrote them, so that tests can open
them with the current code (the ``_migrations`` bridge in :mod:`facsynth.db.migrations`).
Never edit it: it stands for databases that exist.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection

from facsynth.errors import StoreError

log = logging.getLogger(__name__)

Migration = Callable[[Connection], None]

SQLITE_BEGIN_OPTION = "facsynth_sqlite_begin"

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_PG_LOCK_ID = 0x66616373  # "facs": serializes concurrent migrations on PostgreSQL

MIGRATIONS: list[Migration] = []

_meta = MetaData()
migrations_table = Table(
    "_migrations",
    _meta,
    Column("name", String(255), primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


def migration(fn: Migration) -> Migration:
    """Register ``fn`` as the next migration; names must sort in registration order."""
    if MIGRATIONS and fn.__name__ <= MIGRATIONS[-1].__name__:
        raise ValueError(f"migration {fn.__name__} must sort after {MIGRATIONS[-1].__name__}")
    MIGRATIONS.append(fn)
    return fn


def applied_migrations(conn: Connection) -> list[str]:
    """Names recorded in ``_migrations``, in order (empty if the table does not exist)."""
    if not conn.dialect.has_table(conn, migrations_table.name):
        return []
    return list(conn.scalars(select(migrations_table.c.name).order_by(migrations_table.c.name)))


def migrate(engine: Engine) -> list[str]:
    """Apply the missing migrations in order, in one transaction; return their names.

    Raises :class:`StoreError` when the database records a migration this version of
    facsynth does not know (it was written by a newer version).
    """
    known = [fn.__name__ for fn in MIGRATIONS]
    with engine.connect() as conn:
        conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_ID})
            migrations_table.create(conn, checkfirst=True)
            applied = set(applied_migrations(conn))
            unknown = sorted(applied - set(known))
            if unknown:
                raise StoreError(
                    f"the store has migrations this facsynth does not know ({', '.join(unknown)}); "
                    "upgrade facsynth or use another database"
                )
            done: list[str] = []
            for fn in MIGRATIONS:
                if fn.__name__ in applied:
                    continue
                log.info("applying migration %s", fn.__name__)
                fn(conn)
                conn.execute(
                    insert(migrations_table),
                    {"name": fn.__name__, "applied_at": datetime.now(timezone.utc)},
                )
                done.append(fn.__name__)
    return done


@migration
def m001_initial(conn: Connection) -> None:
    """Readers, datasets and samples, sample feature hits, features, LLM calls and cache."""
    md = MetaData(naming_convention=NAMING_CONVENTION)

    def created() -> Column[datetime]:
        return Column("created_at", DateTime(timezone=True), nullable=False)

    Table(
        "readers",
        md,
        Column("id", Integer, primary_key=True),
        Column("key", String(64), nullable=False, unique=True),
        Column("model_name", String(512), nullable=False),
        Column("model_fingerprint", String(64), nullable=False),
        Column("layer", Integer, nullable=False),
        Column("sae_name", String(512), nullable=False),
        Column("sae_hash", String(64), nullable=False),
        Column("activation_mode", String(32), nullable=False),
        Column("template_mode", String(32), nullable=False),
        created(),
        UniqueConstraint(
            "model_name",
            "model_fingerprint",
            "layer",
            "sae_name",
            "sae_hash",
            "activation_mode",
            "template_mode",
            name="uq_readers_identity",
        ),
    )
    Table(
        "datasets",
        md,
        Column("id", Integer, primary_key=True),
        Column("name", String(255), nullable=False),
        Column("source", Text, nullable=False),
        Column("content_hash", String(64), nullable=False, unique=True),
        Column("n_samples", Integer, nullable=False),
        created(),
    )
    Table(
        "samples",
        md,
        Column("id", Integer, primary_key=True),
        Column("sample_hash", String(64), nullable=False, unique=True),
        Column("payload", Text, nullable=False),
        created(),
    )
    Table(
        "dataset_samples",
        md,
        Column("dataset_id", Integer, ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True),
        Column("position", Integer, primary_key=True),
        Column("sample_id", Integer, ForeignKey("samples.id"), nullable=False),
        Index("ix_dataset_samples_sample_id", "sample_id"),
    )
    Table(
        "sample_features",
        md,
        Column("reader_id", Integer, ForeignKey("readers.id", ondelete="CASCADE"), primary_key=True),
        Column("sample_id", Integer, ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True),
        Column("n_tokens", Integer, nullable=False),
        Column("feature_ids", LargeBinary, nullable=False),
        Column("max_acts", LargeBinary, nullable=False),
        Column("pooled", LargeBinary, nullable=True),
        created(),
    )
    Table(
        "features",
        md,
        Column("id", Integer, primary_key=True),
        Column("reader_id", Integer, ForeignKey("readers.id", ondelete="CASCADE"), nullable=False),
        Column("feature_id", Integer, nullable=False),
        created(),
        UniqueConstraint("reader_id", "feature_id", name="uq_features_reader_feature"),
    )
    Table(
        "llm_calls",
        md,
        Column("id", Integer, primary_key=True),
        created(),
        Column("run_id", String(64), nullable=True),
        Column("purpose", String(64), nullable=False),
        Column("model", String(255), nullable=False),
        Column("prompt_hash", String(64), nullable=False),
        Column("tokens_in", Integer, nullable=False),
        Column("tokens_out", Integer, nullable=False),
        Column("latency_s", Float, nullable=False),
        Column("outcome", String(16), nullable=False),
        Column("error", Text, nullable=True),
        CheckConstraint("outcome IN ('ok', 'error', 'parse_error', 'cached')", name="outcome"),
        Index("ix_llm_calls_run_id", "run_id"),
    )
    Table(
        "llm_cache",
        md,
        Column("key", String(64), primary_key=True),
        Column("model", String(255), nullable=False),
        Column("response", Text, nullable=False),
        created(),
    )
    md.create_all(conn)


@migration
def m002_catalog(conn: Connection) -> None:
    """The feature catalog: span collections, feature stats and spans, explanations, tasks, relevance."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    # the tables m002 points at, described only to resolve the foreign keys (not created here)
    Table("readers", md, Column("id", Integer, primary_key=True))
    Table("datasets", md, Column("id", Integer, primary_key=True))
    Table("samples", md, Column("id", Integer, primary_key=True))

    def created() -> Column[datetime]:
        return Column("created_at", DateTime(timezone=True), nullable=False)

    def reader_fk() -> Column[int]:
        return Column("reader_id", Integer, ForeignKey("readers.id", ondelete="CASCADE"), nullable=False)

    def dataset_fk() -> Column[int]:
        return Column("dataset_id", Integer, ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False)

    new = [
        Table(
            "span_collections",
            md,
            Column("id", Integer, primary_key=True),
            reader_fk(),
            dataset_fk(),
            Column("top_n", Integer, nullable=False),
            Column("window", Integer, nullable=False),
            Column("held_out", Integer, nullable=False),
            Column("n_random", Integer, nullable=False),
            Column("delta", Float, nullable=False),
            Column("seed", Integer, nullable=False),
            Column("n_samples", Integer, nullable=False),
            Column("n_features", Integer, nullable=False),
            created(),
            UniqueConstraint("reader_id", "dataset_id", name="uq_span_collections_reader_dataset"),
        ),
        Table(
            "feature_stats",
            md,
            Column("id", Integer, primary_key=True),
            reader_fk(),
            dataset_fk(),
            Column("feature_id", Integer, nullable=False),
            Column("n_samples", Integer, nullable=False),
            Column("active_count", Integer, nullable=False),
            Column("frequency", Float, nullable=False),
            Column("max_act", Float, nullable=False),
            Column("quantiles", Text, nullable=False),
            created(),
            UniqueConstraint("reader_id", "dataset_id", "feature_id", name="uq_feature_stats_reader_dataset_feature"),
        ),
        Table(
            "feature_spans",
            md,
            Column("id", Integer, primary_key=True),
            reader_fk(),
            dataset_fk(),
            Column("feature_id", Integer, nullable=True),
            Column("kind", String(16), nullable=False),
            Column("rank", Integer, nullable=False),
            Column("sample_id", Integer, ForeignKey("samples.id", ondelete="CASCADE"), nullable=False),
            Column("activation", Float, nullable=False),
            Column("peak_token", Integer, nullable=False),
            Column("tokens", Text, nullable=False),
            Column("acts", Text, nullable=False),
            Column("text", Text, nullable=False),
            CheckConstraint("kind IN ('top', 'held_out', 'random')", name="kind"),
            Index("ix_feature_spans_reader_id_dataset_id_feature_id", "reader_id", "dataset_id", "feature_id"),
        ),
        Table(
            "explanations",
            md,
            Column("id", Integer, primary_key=True),
            reader_fk(),
            Column("feature_id", Integer, nullable=False),
            Column("dataset_id", Integer, ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True),
            Column("text", Text, nullable=False),
            Column("words", Text, nullable=True),
            Column("explainer_model", String(255), nullable=False),
            Column("check_label", String(16), nullable=True),
            Column("check_model", String(255), nullable=True),
            Column("detection_score", Float, nullable=True),
            Column("detection_n", Integer, nullable=True),
            Column("detection_model", String(255), nullable=True),
            created(),
            UniqueConstraint("reader_id", "feature_id", name="uq_explanations_reader_feature"),
            CheckConstraint(
                "check_label IS NULL OR check_label IN ('Yes', 'Probably', 'Maybe', 'No')", name="check_label"
            ),
        ),
        Table(
            "tasks",
            md,
            Column("id", Integer, primary_key=True),
            Column("name", String(128), nullable=False, unique=True),
            Column("definition", Text, nullable=False),
            Column("criteria", Text, nullable=False),
            Column("format", Text, nullable=True),
            Column("source", String(512), nullable=False),
            created(),
        ),
        Table(
            "relevance",
            md,
            Column("id", Integer, primary_key=True),
            reader_fk(),
            Column("feature_id", Integer, nullable=False),
            Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
            Column("method", String(16), nullable=False),
            Column("label", String(16), nullable=False),
            Column("analysis", Text, nullable=False),
            Column("score", Float, nullable=True),
            Column("model", String(255), nullable=True),
            created(),
            UniqueConstraint("reader_id", "feature_id", "task_id", "method", name="uq_relevance_reader_feature_task_method"),
            CheckConstraint("label IN ('Yes', 'Probably', 'Maybe', 'No')", name="label"),
            CheckConstraint("method IN ('llm_judge', 'contrast', 'import')", name="method"),
        ),
    ]
    for table in new:
        table.create(conn)


RUN_STATUSES = ("created", "running", "reviewing", "stopped", "paused", "done", "failed")
FEATURE_STATUSES = ("pending", "in_progress", "covered", "exhausted", "excluded")


@migration
def m003_runs(conn: Connection) -> None:
    """Synthesis runs: target features, candidates and verdicts, accepted samples, progress, directives."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table("readers", md, Column("id", Integer, primary_key=True))

    def created() -> Column[datetime]:
        return Column("created_at", DateTime(timezone=True), nullable=False)

    def run_fk() -> Column[int]:
        return Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False)

    statuses = ", ".join(f"'{s}'" for s in RUN_STATUSES)
    feature_statuses = ", ".join(f"'{s}'" for s in FEATURE_STATUSES)
    new = [
        Table(
            "runs",
            md,
            Column("id", Integer, primary_key=True),
            Column("name", String(64), nullable=False, unique=True),
            Column("status", String(16), nullable=False),
            Column("strategy", String(16), nullable=False),
            Column("task", String(128), nullable=False),
            Column("reader_id", Integer, ForeignKey("readers.id", ondelete="CASCADE"), nullable=False),
            Column("config", Text, nullable=False),
            Column("feature_set", Text, nullable=False),
            Column("n_relevant", Integer, nullable=False),
            Column("n_seed_covered", Integer, nullable=False),
            Column("stop_reason", Text, nullable=True),
            Column("elapsed_s", Float, nullable=False),
            created(),
            Column("updated_at", DateTime(timezone=True), nullable=False),
            CheckConstraint(f"status IN ({statuses})", name="status"),
        ),
        Table(
            "run_features",
            md,
            Column("id", Integer, primary_key=True),
            run_fk(),
            Column("feature_id", Integer, nullable=False),
            Column("status", String(16), nullable=False),
            Column("attempts", Integer, nullable=False),
            Column("priority", Float, nullable=False),
            Column("best_act", Float, nullable=True),
            Column("reason", Text, nullable=True),
            Column("covered_by", Integer, nullable=True),
            Column("updated_at", DateTime(timezone=True), nullable=False),
            UniqueConstraint("run_id", "feature_id", name="uq_run_features_run_feature"),
            CheckConstraint(f"status IN ({feature_statuses})", name="status"),
        ),
        Table(
            "run_candidates",
            md,
            Column("id", Integer, primary_key=True),
            run_fk(),
            Column("feature_id", Integer, nullable=False),
            Column("attempt", Integer, nullable=False),
            Column("step", Integer, nullable=False),
            Column("idx", Integer, nullable=False),
            Column("role", String(16), nullable=False),
            Column("payload", Text, nullable=False),
            Column("label", String(64), nullable=True),
            Column("text_hash", String(64), nullable=False),
            Column("prompt_hash", String(64), nullable=False),
            Column("model", String(255), nullable=False),
            Column("target_act", Float, nullable=True),
            Column("span", Text, nullable=True),
            Column("feature_ids", LargeBinary, nullable=True),
            Column("max_acts", LargeBinary, nullable=True),
            Column("verdict", String(16), nullable=True),
            Column("reason", Text, nullable=True),
            Column("proposed", String(16), nullable=True),
            Column("review", String(16), nullable=True),
            created(),
            UniqueConstraint("run_id", "feature_id", "attempt", "idx", name="uq_run_candidates_run_feature_attempt_idx"),
        ),
        Table(
            "run_samples",
            md,
            Column("id", Integer, primary_key=True),
            run_fk(),
            Column("candidate_id", Integer, ForeignKey("run_candidates.id", ondelete="CASCADE"), nullable=False),
            Column("feature_id", Integer, nullable=False),
            Column("text_hash", String(64), nullable=False),
            Column("activation", Float, nullable=False),
            Column("covered", Text, nullable=False),
            Column("withdrawn_at", DateTime(timezone=True), nullable=True),
            created(),
            UniqueConstraint("run_id", "text_hash", name="uq_run_samples_run_text_hash"),
        ),
        Table(
            "run_progress",
            md,
            Column("id", Integer, primary_key=True),
            run_fk(),
            Column("seq", Integer, nullable=False),
            Column("llm_calls", Integer, nullable=False),
            Column("tokens", Integer, nullable=False),
            Column("covered", Integer, nullable=False),
            Column("fac", Float, nullable=False),
            Column("elapsed_s", Float, nullable=False),
            created(),
            UniqueConstraint("run_id", "seq", name="uq_run_progress_run_seq"),
        ),
        Table(
            "run_directives",
            md,
            Column("id", Integer, primary_key=True),
            run_fk(),
            Column("words", Text, nullable=False),
            Column("kind", String(32), nullable=False),
            Column("args", Text, nullable=False),
            Column("active", Integer, nullable=False),
            created(),
            Column("reverted_at", DateTime(timezone=True), nullable=True),
            Index("ix_run_directives_run_id", "run_id"),
        ),
    ]
    for table in new:
        table.create(conn)


@migration
def m004_verdict_reasons(conn: Connection) -> None:
    """Each verdict's reason code (a fixed vocabulary) and the quality signals it was read with."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    table = Table("run_candidates", md, Column("id", Integer, primary_key=True))
    for column in (Column("reason_code", String(32), nullable=True), Column("checks", Text, nullable=True)):
        kind = column.type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))


@migration
def m005_workers(conn: Connection) -> None:
    """Synthesis workers on PostgreSQL: their sessions, and their claims on target features."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    Table("runs", md, Column("id", Integer, primary_key=True))

    def run_fk() -> Column[int]:
        return Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False)

    workers = Table(
        "run_workers",
        md,
        Column("id", Integer, primary_key=True),
        run_fk(),
        Column("name", String(32), nullable=False),
        Column("host", String(255), nullable=False),
        Column("pid", Integer, nullable=False),
        Column("started_at", DateTime(timezone=True), nullable=False),
        Column("stopped_at", DateTime(timezone=True), nullable=True),
        Index("ix_run_workers_run_id", "run_id"),
    )
    claims = Table(
        "run_claims",
        md,
        Column("id", Integer, primary_key=True),
        run_fk(),
        Column("feature_id", Integer, nullable=False),
        Column("worker", String(32), nullable=False),
        Column("claimed_at", DateTime(timezone=True), nullable=False),
        Column("released_at", DateTime(timezone=True), nullable=True),
        Column("outcome", String(16), nullable=True),
        Index("ix_run_claims_run_id_feature_id", "run_id", "feature_id"),
        Index(
            "uq_run_claims_open", "run_id", "feature_id", unique=True,
            postgresql_where=text("released_at IS NULL"), sqlite_where=text("released_at IS NULL"),
        ),
    )
    workers.create(conn)
    claims.create(conn)
