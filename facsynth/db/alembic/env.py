"""Alembic environment of the facsynth store.

The store runs it on its own connection, inside the transaction it opened
(:func:`facsynth.db.migrations.migrate` passes it as ``config.attributes["connection"]``).
From the ``alembic`` command line (developers writing a revision) it opens
``-x url=URL`` (default: ``$FACSYNTH_DB`` or ``sqlite:///facsynth.db``) itself.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from facsynth.db import migrations


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=migrations.target_metadata(),
        compare_type=migrations.compare_type,
        include_object=migrations.include_object,
    )
    with context.begin_transaction():  # a no-op inside the store's transaction
        context.run_migrations()


def _run_from_command_line() -> None:
    from facsynth import paths
    from facsynth.db.store import make_engine

    url = context.get_x_argument(as_dictionary=True).get("url") or paths.default_db_url()
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            connection.execution_options(**{migrations.SQLITE_BEGIN_OPTION: "IMMEDIATE"})
            with connection.begin():
                _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("facsynth's migrations run on a live database; offline (--sql) mode is not supported")
connection = context.config.attributes.get("connection")
if connection is None:
    _run_from_command_line()
else:
    _run(connection)
