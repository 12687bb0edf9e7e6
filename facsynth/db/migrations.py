"""Schema migrations: Alembic revisions shipped in the package, applied when a store opens.

The models in :mod:`facsynth.db.models` are the schema; the revisions under
``facsynth/db/alembic/versions/`` bring a database there, one recorded step at a time
(Alembic's ``alembic_version`` table). :func:`migrate` applies the missing ones on the
store's own connection, inside one transaction: on PostgreSQL under an advisory lock,
on SQLite under ``BEGIN IMMEDIATE``, so concurrent first opens apply them once. Running
it again applies nothing. A test compares the migrated schema with the models.

Stores written before Alembic recorded their steps in a ``_migrations`` table
(``m001_initial`` .. ``m005_workers``); the first five revisions carry those names, so
such a store is stamped at its last step, then upgraded like any other.

Adding a revision: change the models, then, on a scratch database migrated to head,
``alembic -c facsynth/db/alembic/alembic.ini -x url=sqlite:///scratch.db revision
--autogenerate --rev-id m00N_what -m "what"``; review the script (it is released code:
never edit one that shipped). A revision's id is its file name and ids sort in history
order (``mNNN_what``), so an up-to-date store opens without importing Alembic.
``alembic ... check`` says whether models and revisions agree.

On SQLite, DDL is transactional only when the engine emits ``BEGIN`` itself; the
:class:`~facsynth.db.store.Store` prepares its engine that way before migrating.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Engine, MetaData, Text, TypeDecorator, text
from sqlalchemy.engine import Connection

from facsynth.errors import StoreError

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

log = logging.getLogger(__name__)

SCRIPT_DIR = Path(__file__).with_name("alembic")
"""The Alembic script directory (``env.py``, ``versions/``) shipped in the package."""

SQLITE_BEGIN_OPTION = "facsynth_sqlite_begin"
"""Connection execution option read by the store's SQLite ``begin`` hook: the
transaction mode (``"IMMEDIATE"`` takes the write lock up front)."""

_PG_LOCK_ID = 0x66616373  # "facs": serializes concurrent migrations on PostgreSQL

LEGACY_TABLE = "_migrations"
"""Where stores written before Alembic recorded their migrations (names = revision ids)."""
VERSION_TABLE = "alembic_version"


def revisions(script_dir: Path | None = None) -> list[str]:
    """Every revision id, oldest first: the names of ``versions/mNNN_*.py``.

    Each revision's id is its file name, and ids sort in history order (a test checks it
    against Alembic's own view), so opening a store that is up to date needs no Alembic.
    """
    return sorted(p.stem for p in ((script_dir or SCRIPT_DIR) / "versions").glob("m[0-9][0-9][0-9]_*.py"))


def _current(conn: Connection) -> str | None:
    if not conn.dialect.has_table(conn, VERSION_TABLE):
        return None
    heads = list(conn.scalars(text(f"SELECT version_num FROM {VERSION_TABLE}")))
    if len(heads) > 1:
        raise StoreError(f"the store records several schema heads ({', '.join(heads)}); it was not written by facsynth")
    return heads[0] if heads else None


def _refuse_unknown(names: list[str]) -> None:
    raise StoreError(
        f"the store has migrations this facsynth does not know ({', '.join(sorted(names))}); "
        "upgrade facsynth or use another database"
    )


def applied_migrations(conn: Connection, script_dir: Path | None = None) -> list[str]:
    """Revision ids the database is at and before, oldest first (empty for a new database)."""
    current = _current(conn)
    chain = revisions(script_dir)
    if current is None:
        return []
    if current not in chain:
        _refuse_unknown([current])
    return chain[: chain.index(current) + 1]


def _bridge_legacy(conn: Connection, script: ScriptDirectory, chain: list[str]) -> None:
    """Stamp a store written before Alembic at the revision its ``_migrations`` table names,
    then drop that table (``alembic_version`` records the schema from here on)."""
    from alembic.runtime.migration import MigrationContext

    names = sorted(conn.scalars(text(f"SELECT name FROM {LEGACY_TABLE}")))
    unknown = [n for n in names if n not in chain]
    if unknown:
        _refuse_unknown(unknown)
    if names != chain[: len(names)]:
        raise StoreError(f"the store's {LEGACY_TABLE} table lists {', '.join(names)}: not a sequence facsynth wrote")
    if names:
        MigrationContext.configure(conn).stamp(script, names[-1])
        log.info("store written before Alembic: stamped at %s", names[-1])
    conn.execute(text(f"DROP TABLE {LEGACY_TABLE}"))


def migrate(engine: Engine, script_dir: Path | None = None) -> list[str]:
    """Apply the missing revisions in order, in one transaction; return their ids.

    Raises :class:`StoreError` when the database records a revision this version of
    facsynth does not know (it was written by a newer version).
    """
    location = script_dir or SCRIPT_DIR
    chain = revisions(location)
    with engine.connect() as conn:
        conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_ID})
            before = _current(conn)
            if before == chain[-1]:
                return []  # up to date: Alembic is not even imported
            if before is not None and before not in chain:
                _refuse_unknown([before])
            from alembic import command
            from alembic.config import Config
            from alembic.script import ScriptDirectory
            from alembic.util import CommandError

            script = ScriptDirectory(str(location))
            if before is None and conn.dialect.has_table(conn, LEGACY_TABLE):
                _bridge_legacy(conn, script, chain)
                before = _current(conn)
            cfg = Config()
            cfg.set_main_option("script_location", str(location))
            cfg.attributes["connection"] = conn
            try:
                command.upgrade(cfg, "head")
            except CommandError as exc:
                raise StoreError(f"cannot migrate the store: {exc}") from exc
            done = chain[chain.index(before) + 1 :] if before is not None else chain
    for name in done:
        log.info("applied migration %s", name)
    return done


def compare_type(
    context: Any, inspected_column: Any, metadata_column: Any, inspected_type: Any, metadata_type: Any
) -> bool | None:
    """Alembic's type comparison, except that a JSON column declared ``TEXT`` on SQLite matches
    (SQLite stores JSON as text whatever the declared type; m006 converts PostgreSQL only)."""
    declared = metadata_type.impl if isinstance(metadata_type, TypeDecorator) else metadata_type
    if context.dialect.name == "sqlite" and isinstance(declared, JSON) and isinstance(inspected_type, (Text, JSON)):
        return False
    return None


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """What autogenerate compares: everything but Alembic's and the legacy version tables."""
    return not (type_ == "table" and name in (LEGACY_TABLE, VERSION_TABLE))


def target_metadata() -> MetaData:
    from facsynth.db.models import Base

    return Base.metadata
