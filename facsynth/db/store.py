"""The SQL store: one class in front of the database, migrated on construction.

``Store`` receives a SQLAlchemy URL or an :class:`~sqlalchemy.Engine` (SQLite file by
default, PostgreSQL or any other SQLAlchemy database otherwise) and holds:

* readers: the measurement identities (model, layer, SAE, reading modes);
* datasets and their samples (samples are shared between datasets);
* per-sample sparse SAE hits (:class:`~facsynth.records.SampleFeatures`);
* LLM calls (for cost and failure accounting) and the LLM reply cache.

Every public method runs in one transaction. Writes that may race with another
process or repeat after a crash are insert-ignore (``ON CONFLICT DO NOTHING``), so a
re-run never fails on duplicates. Feature hits can be saved only for samples that a
dataset registered first: a hit without its sample text could not be shown or
explained later.

No secret enters the store: error texts pass through :func:`redact_secrets`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import numpy as np
from sqlalchemy import Engine, create_engine, event, func, insert, select
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.orm import Session

from facsynth import paths
from facsynth.db.arrays import (
    decode_acts,
    decode_ids,
    decode_pooled,
    encode_acts,
    encode_ids,
    encode_pooled,
)
from facsynth.db.migrations import SQLITE_BEGIN_OPTION, applied_migrations, migrate
from facsynth.db.models import (
    OUTCOMES,
    Base,
    DatasetRow,
    DatasetSample,
    LLMCacheEntry,
    LLMCall,
    ReaderRow,
    SampleRow,
    SampleFeatureRow,
)
from facsynth.errors import StoreError
from facsynth.records import SampleFeatures

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

Outcome = Literal["ok", "error", "parse_error", "cached"]
"""The outcomes of an LLM call (same values as :data:`facsynth.db.models.OUTCOMES`)."""

IN_CHUNK = 500
"""Most values bound in one ``IN (...)`` clause."""
ERROR_MAX_CHARS = 4000
"""Longer error texts are truncated before they are stored."""


class LLMTotals(TypedDict):
    """What :meth:`Store.llm_totals` returns."""

    calls: int
    by_outcome: dict[str, int]
    """Every outcome in ``ok``, ``error``, ``parse_error``, ``cached``, zero when absent."""
    tokens_in: int
    tokens_out: int
    latency_s: float


# --------------------------------------------------------------------------- hashing


def reader_key(
    model_name: str,
    model_fingerprint: str,
    layer: int,
    sae_name: str,
    sae_hash: str,
    activation_mode: str,
    template_mode: str,
) -> str:
    """sha256 hex of a reader's identity (canonical JSON of the seven fields, in order)."""
    fields = [model_name, model_fingerprint, int(layer), sae_name, sae_hash, activation_mode, template_mode]
    return hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()


def dataset_hash(sample_hashes: Iterable[str]) -> str:
    """sha256 hex over the sample hashes in order (joined by newlines)."""
    return hashlib.sha256("\n".join(sample_hashes).encode()).hexdigest()


# --------------------------------------------------------------------------- secrets

_SECRET_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # provider keys: OpenAI / Anthropic style (sk-..., sk-proj-..., sk-ant-...), Hugging Face
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"), "sk-***"),
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}"), "hf_***"),
    # HTTP auth headers
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}"), r"\1 ***"),
    # key=value / "key": "value" pairs with a secret-looking name
    (
        re.compile(
            r"(?i)\b((?:api[_-]?key|access[_-]?token|auth[_-]?token|token|secret|password|passwd)"
            r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+"
        ),
        r"\1***",
    ),
    # credentials inside URLs: scheme://user:password@host
    (re.compile(r"(://[^/\s:@]+):[^@\s/]+@"), r"\1:***@"),
]


def redact_secrets(text: str) -> str:
    """``text`` with API keys, bearer tokens, ``key=value`` secrets and URL passwords masked."""
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


# --------------------------------------------------------------------------- engines


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (the driver's, when wrapped)."""
    inner = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    return lines[0] if lines else type(inner).__name__


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy emit BEGIN (see _sqlite_on_begin): with the driver's legacy
    # transaction control, DDL would autocommit and migrations would not be atomic.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA foreign_keys=ON")
        _enable_wal(cur)
    finally:
        cur.close()


def _enable_wal(cur: Any, patience_s: float = 10.0) -> None:
    """Switch the file to WAL (persistent), waiting while another connection holds a lock.

    Switching needs a moment of exclusive access, and SQLite answers "database is
    locked" at once, without its busy timeout, when several processes open a new file
    together. WAL only speeds up concurrent readers, so failing to switch is a warning.
    """
    deadline = time.monotonic() + patience_s
    delay = 0.005
    while True:
        try:
            mode = str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            if mode in ("wal", "memory"):
                return
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                log.warning("SQLite store stays in its current journal mode: %s", exc)
                return
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def _sqlite_on_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "")
    conn.exec_driver_sql(f"BEGIN {mode}".strip())


def prepare_sqlite(engine: Engine) -> None:
    """Install the SQLite hooks on ``engine`` (idempotent): WAL, foreign keys, real BEGIN.

    They apply to connections opened from now on; an engine whose pool already holds a
    connection (e.g. a ``StaticPool``) keeps that one as it was.
    """
    if not event.contains(engine, "connect", _sqlite_on_connect):
        event.listen(engine, "connect", _sqlite_on_connect)
    if not event.contains(engine, "begin", _sqlite_on_begin):
        event.listen(engine, "begin", _sqlite_on_begin)


def _mask_raw_url(url: str) -> str:
    """Mask a password in a URL that SQLAlchemy could not parse."""
    return re.sub(r"(://[^/\s:@]*):[^@\s]*@", r"\1:***@", url)


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for memory / URI databases."""
    db = url.database
    if not db or db == ":memory:" or str(url.query.get("uri", "")).lower() in ("true", "1"):
        return None
    return Path(db)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their folder created and the SQLite hooks."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(
            f"cannot parse database URL {_mask_raw_url(url)!r}: expected "
            "dialect[+driver]://user:password@host[:port]/database or sqlite:///path/to/file.db"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        file = _sqlite_file(parsed)
        if file is not None:
            try:
                file.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the folder of the store {shown}: {exc}") from exc
        if "timeout" not in parsed.query:
            connect_args["timeout"] = 30.0  # seconds to wait for another writer's lock
    elif backend == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = 10
    try:
        engine = create_engine(parsed, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise StoreError(f"cannot use database URL {shown}: {_first_line(exc)}") from exc
    if backend == "sqlite":
        prepare_sqlite(engine)
    return engine


# --------------------------------------------------------------------------- helpers


def _chunks(items: Sequence[str], size: int = IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- store


class Store:
    """The facsynth database. Construct it with a URL or an engine; it migrates at once.

    >>> store = Store("sqlite://")          # in memory
    >>> store.schema_version()[:2]
    ['m001_initial', 'm002_catalog']
    """

    def __init__(self, url_or_engine: str | Engine) -> None:
        owns = not isinstance(url_or_engine, Engine)
        self.engine: Engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        self.url: str = self.engine.url.render_as_string(hide_password=True)
        """The database URL with its password masked (safe to log or print)."""
        self._sqlite = self.engine.dialect.name == "sqlite"
        if self._sqlite:
            prepare_sqlite(self.engine)
        try:
            applied = migrate(self.engine)
        except (DBAPIError, StoreError) as exc:
            if owns:
                self.engine.dispose()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open the store at {self.url}: {self._clean(exc)}") from exc
        self._owns_engine = owns
        if applied:
            log.info("store %s: applied %s", self.url, ", ".join(applied))

    def _clean(self, exc: BaseException) -> str:
        msg = _first_line(exc)
        password = self.engine.url.password
        if password:
            msg = msg.replace(str(password), "***")
        return redact_secrets(msg)

    def close(self) -> None:
        """Release pooled connections (only when the store created the engine)."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[Session]:
        """One transaction as an ORM session: committed on exit, rolled back on an exception.

        ``write=True`` on SQLite takes the write lock up front (``BEGIN IMMEDIATE``), so two
        writers queue instead of failing on a lock upgrade. A lost connection or a lock
        timeout becomes :class:`StoreError`. The repositories (:class:`~facsynth.db.runs.Runs`,
        :class:`~facsynth.db.catalog.Catalog`, :class:`~facsynth.db.claims.Claims`) run every
        method in one of these.
        """
        try:
            with self.engine.connect() as conn:
                if write and self._sqlite:
                    conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
                with Session(bind=conn) as session, session.begin():
                    yield session
        except OperationalError as exc:
            raise StoreError(f"store {self.url}: {self._clean(exc)}") from exc

    def insert_ignore(self, session: Session, model: type[Base], rows: list[dict[str, Any]], keys: list[str]) -> None:
        """Insert ``rows``, silently skipping those that collide on the unique ``keys``."""
        if not rows:
            return
        table = model.__table__
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            session.execute(pg_insert(table).on_conflict_do_nothing(index_elements=keys), rows)
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            session.execute(sqlite_insert(table).on_conflict_do_nothing(index_elements=keys), rows)
        elif dialect in ("mysql", "mariadb"):
            session.execute(insert(table).prefix_with("IGNORE"), rows)
        else:  # portable fallback: one savepoint per row
            for row in rows:
                try:
                    with session.begin_nested():
                        session.execute(insert(table), row)
                except IntegrityError:
                    pass

    def sample_ids(self, session: Session, hashes: Sequence[str]) -> dict[str, int]:
        """Sample hash -> ``samples.id`` for the registered ones among ``hashes``."""
        ids: dict[str, int] = {}
        for chunk in _chunks(hashes):
            rows = session.execute(select(SampleRow.sample_hash, SampleRow.id).where(SampleRow.sample_hash.in_(chunk)))
            ids.update({h: i for h, i in rows})
        return ids

    # ------------------------------------------------------------------ schema

    def schema_version(self) -> list[str]:
        """Ids of the applied migrations (Alembic revisions), oldest first."""
        with self.transaction() as session:
            return applied_migrations(session.connection())

    # ------------------------------------------------------------------ readers

    def reader(
        self,
        model_name: str,
        model_fingerprint: str,
        layer: int,
        sae_name: str,
        sae_hash: str,
        activation_mode: str,
        template_mode: str,
    ) -> int:
        """Id of the reader with this identity, created if new."""
        key = reader_key(model_name, model_fingerprint, layer, sae_name, sae_hash, activation_mode, template_mode)
        row = {
            "key": key,
            "model_name": model_name,
            "model_fingerprint": model_fingerprint,
            "layer": int(layer),
            "sae_name": sae_name,
            "sae_hash": sae_hash,
            "activation_mode": activation_mode,
            "template_mode": template_mode,
        }
        with self.transaction(write=True) as session:
            self.insert_ignore(session, ReaderRow, [row], ["key"])
            return session.execute(select(ReaderRow.id).where(ReaderRow.key == key)).scalar_one()

    # ------------------------------------------------------------------ datasets

    def register_dataset(self, name: str, source: str, samples: list[tuple[str, dict[str, Any]]]) -> int:
        """Id of the dataset with these samples in this order, registering it if new.

        ``samples`` holds ``(sample_hash, payload)`` pairs; the payload is stored as
        JSON. Samples already stored (by hash) are reused as they are. A
        dataset with the same content under another name returns the existing id.
        """
        hashes = [h for h, _ in samples]
        content = dataset_hash(hashes)
        with self.transaction(write=True) as session:
            existing = session.execute(select(DatasetRow.id, DatasetRow.name).where(DatasetRow.content_hash == content)).first()
            if existing is not None:
                if existing.name != name:
                    log.info("dataset %r has the content of dataset %r (id %d)", name, existing.name, existing.id)
                return int(existing.id)
            payloads: dict[str, dict[str, Any]] = {}
            for sample_hash, payload in samples:
                payloads.setdefault(sample_hash, payload)
            self.insert_ignore(
                session,
                SampleRow,
                [{"sample_hash": h, "payload": p} for h, p in payloads.items()],
                ["sample_hash"],
            )
            ids = self.sample_ids(session, list(payloads))
            self.insert_ignore(
                session,
                DatasetRow,
                [{"name": name, "source": source, "content_hash": content, "n_samples": len(hashes)}],
                ["content_hash"],
            )
            dataset_id = session.execute(select(DatasetRow.id).where(DatasetRow.content_hash == content)).scalar_one()
            self.insert_ignore(
                session,
                DatasetSample,
                [{"dataset_id": dataset_id, "position": i, "sample_id": ids[h]} for i, h in enumerate(hashes)],
                ["dataset_id", "position"],
            )
        log.info("registered dataset %r (id %d, %d samples)", name, dataset_id, len(hashes))
        return int(dataset_id)

    def dataset_samples(self, dataset_id: int) -> list[tuple[str, dict[str, Any]]]:
        """The ``(sample_hash, payload)`` pairs of a dataset, in order."""
        with self.transaction() as session:
            if session.get(DatasetRow, dataset_id) is None:
                raise StoreError(f"no dataset with id {dataset_id} in {self.url}")
            rows = session.execute(
                select(SampleRow.sample_hash, SampleRow.payload)
                .join(DatasetSample, DatasetSample.sample_id == SampleRow.id)
                .where(DatasetSample.dataset_id == dataset_id)
                .order_by(DatasetSample.position)
            )
            return [(h, p) for h, p in rows]

    # ------------------------------------------------------------------ feature hits

    def stored_features(self, reader_id: int, sample_hashes: Iterable[str]) -> dict[str, SampleFeatures]:
        """The stored readings of those samples under ``reader_id``; absent ones are left out.

        ``pooled`` comes back as float32 (stored as float16).
        """
        hashes = list(dict.fromkeys(sample_hashes))
        found: dict[str, SampleFeatures] = {}
        with self.transaction() as session:
            for chunk in _chunks(hashes):
                rows = session.execute(
                    select(
                        SampleRow.sample_hash,
                        SampleFeatureRow.n_tokens,
                        SampleFeatureRow.feature_ids,
                        SampleFeatureRow.max_acts,
                        SampleFeatureRow.pooled,
                    )
                    .join(SampleFeatureRow, SampleFeatureRow.sample_id == SampleRow.id)
                    .where(SampleFeatureRow.reader_id == reader_id, SampleRow.sample_hash.in_(chunk))
                )
                for h, n_tokens, ids, acts, pooled in rows:
                    found[h] = SampleFeatures(
                        sample_hash=h,
                        n_tokens=int(n_tokens),
                        feature_ids=decode_ids(ids),
                        max_acts=decode_acts(acts),
                        pooled=None if pooled is None else decode_pooled(pooled),
                    )
        return found

    def save_features(self, reader_id: int, items: Sequence[SampleFeatures]) -> None:
        """Store readings under ``reader_id``; readings already stored are kept as they are.

        Every sample must have been registered through :meth:`register_dataset`
        (else :class:`StoreError`, and nothing is saved). Blobs: ``feature_ids``
        int32, ``max_acts`` float32, ``pooled`` float16, all little-endian.
        """
        unique: dict[str, SampleFeatures] = {}
        for item in items:
            unique.setdefault(item.sample_hash, item)
        if not unique:
            return
        rows: list[dict[str, Any]] = []
        for item in unique.values():
            if np.shape(item.feature_ids) != np.shape(item.max_acts):
                raise ValueError(
                    f"sample {item.sample_hash[:12]}: feature_ids {np.shape(item.feature_ids)} "
                    f"and max_acts {np.shape(item.max_acts)} differ in shape"
                )
            if item.n_tokens < 0:
                raise ValueError(f"sample {item.sample_hash[:12]}: n_tokens must be >= 0")
            rows.append(
                {
                    "reader_id": reader_id,
                    "sample_hash": item.sample_hash,
                    "n_tokens": int(item.n_tokens),
                    "feature_ids": encode_ids(item.feature_ids),
                    "max_acts": encode_acts(item.max_acts),
                    "pooled": encode_pooled(item.pooled),
                }
            )
        with self.transaction(write=True) as session:
            ids = self.sample_ids(session, list(unique))
            missing = [h for h in unique if h not in ids]
            if missing:
                raise StoreError(
                    f"{len(missing)} sample(s) are not registered (first {missing[0][:12]}); "
                    "register their dataset before saving their features"
                )
            for row in rows:
                row["sample_id"] = ids[row.pop("sample_hash")]
            self.insert_ignore(session, SampleFeatureRow, rows, ["reader_id", "sample_id"])
        log.debug("saved features of %d sample(s) under reader %d", len(rows), reader_id)

    # ------------------------------------------------------------------ LLM calls and cache

    def record_llm_call(
        self,
        *,
        purpose: str,
        model: str,
        prompt_hash: str,
        tokens_in: int,
        tokens_out: int,
        latency_s: float,
        outcome: Outcome,
        error: str | None = None,
        run_id: str | None = None,
    ) -> int:
        """Record one LLM call; return its id. ``error`` is redacted and truncated first."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}; got {outcome!r}")
        if error is not None:
            error = redact_secrets(error)
            if len(error) > ERROR_MAX_CHARS:
                error = error[: ERROR_MAX_CHARS - 1] + "…"
        call = LLMCall(
            run_id=run_id,
            purpose=purpose,
            model=model,
            prompt_hash=prompt_hash,
            tokens_in=int(tokens_in),
            tokens_out=int(tokens_out),
            latency_s=float(latency_s),
            outcome=outcome,
            error=error,
        )
        with self.transaction(write=True) as session:
            session.add(call)
            session.flush()
            return int(call.id)

    def llm_cache_get(self, key: str) -> str | None:
        """The cached reply under ``key``, or None."""
        with self.transaction() as session:
            return session.execute(select(LLMCacheEntry.response).where(LLMCacheEntry.key == key)).scalar_one_or_none()

    def llm_cache_put(self, key: str, model: str, response: str) -> None:
        """Cache a reply; an entry already under ``key`` is kept."""
        with self.transaction(write=True) as session:
            self.insert_ignore(session, LLMCacheEntry, [{"key": key, "model": model, "response": response}], ["key"])

    def llm_totals(self, run_id: str | None = None) -> LLMTotals:
        """Call counts (overall and by outcome), token and latency sums; one run or all."""
        query = select(
            LLMCall.outcome,
            func.count(),
            func.coalesce(func.sum(LLMCall.tokens_in), 0),
            func.coalesce(func.sum(LLMCall.tokens_out), 0),
            func.coalesce(func.sum(LLMCall.latency_s), 0.0),
        ).group_by(LLMCall.outcome)
        if run_id is not None:
            query = query.where(LLMCall.run_id == run_id)
        totals = LLMTotals(
            calls=0, by_outcome={o: 0 for o in OUTCOMES}, tokens_in=0, tokens_out=0, latency_s=0.0
        )
        with self.transaction() as session:
            for outcome, n, t_in, t_out, latency in session.execute(query):
                totals["by_outcome"][outcome] = int(n)
                totals["calls"] += int(n)
                totals["tokens_in"] += int(t_in)
                totals["tokens_out"] += int(t_out)
                totals["latency_s"] += float(latency)
        return totals


def open_store(url: str | None = None) -> Store:
    """The store at ``url``, or at :func:`facsynth.paths.default_db_url` when None."""
    return Store(url if url is not None else paths.default_db_url())
