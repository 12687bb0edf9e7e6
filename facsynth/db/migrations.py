"""Ordered, recorded schema migrations (after simonw/llm's ``migrations.py``).

Each migration is a function ``mNNN_what(conn)`` registered with :func:`migration`, in
the order it must run. :func:`migrate` creates the ``_migrations`` table (``name``,
``applied_at``) if needed, then applies, inside one transaction, every migration whose
name is not recorded there, recording each. Running it again applies nothing.

Rules for adding one:

* append a new function at the end; never edit, rename or reorder a released one;
* a migration describes its tables itself (its own :class:`~sqlalchemy.MetaData`),
  never through :mod:`facsynth.db.models`, whose classes show the *latest* schema;
* update :mod:`facsynth.db.models` to match (a test compares both).

On SQLite, DDL is transactional only when the engine emits ``BEGIN`` itself; the
:class:`~facsynth.db.store.Store` prepares its engine that way before migrating.
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

from facsynth.db.models import NAMING_CONVENTION
from facsynth.errors import StoreError

log = logging.getLogger(__name__)

Migration = Callable[[Connection], None]

SQLITE_BEGIN_OPTION = "facsynth_sqlite_begin"
"""Connection execution option read by the store's SQLite ``begin`` hook: the
transaction mode (``"IMMEDIATE"`` takes the write lock up front)."""

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
