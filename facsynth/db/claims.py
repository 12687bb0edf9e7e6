"""Workers of one run on a PostgreSQL store, and their claims on its target features.

Several processes, on one machine or many, can work on one run (``facsynth run --workers
N``, ``facsynth worker RUN``). Each is a :class:`Claims`: it takes a *slot* by holding the
PostgreSQL session advisory lock ``(run key, slot)`` on a connection of its own for as
long as it lives. Because the lock belongs to that connection, it goes away when the
worker does, however it ends: a SIGKILLed process closes its socket and the server drops
the lock at once. Who is alive is read from ``pg_locks``; no heartbeat, no lease to tune.

A worker claims target features before it works on them (:meth:`Claims.claim`), in one
short transaction that locks the candidate ``run_features`` rows with ``SELECT ... FOR
UPDATE SKIP LOCKED`` (two workers choosing at once get disjoint rows, neither waits), skips
features with an open claim of a live worker, closes the open claims of dead ones (outcome
``recovered``), opens its own and marks the features ``in_progress``. A partial unique
index allows one open claim per feature, so a feature is never claimed twice at once even
by a bug in this module. Claims are released when the worker's batch is settled
(:meth:`Claims.release`); the table keeps every claim as the record of who did what.
"""

from __future__ import annotations

import logging
import os
import socket
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, text, update

from facsynth.db.models import RunClaim, RunFeature, RunWorker, utcnow
from facsynth.db.store import Store
from facsynth.errors import StoreError

log = logging.getLogger(__name__)

MAX_SLOTS = 1024
"""Workers one run can have at once."""
CLAIMABLE = ("pending", "in_progress", "covered")
"""Statuses a feature can be claimed from (``covered``: the paper strategy walks those too)."""


def supports_workers(store: Store) -> bool:
    """Workers need PostgreSQL (row locks, advisory locks); SQLite runs in one process."""
    return store.engine.dialect.name == "postgresql"


def require_workers(store: Store, what: str) -> None:
    """One clear error when ``what`` asks for workers on a store that cannot have them."""
    if not supports_workers(store):
        raise StoreError(
            f"{what} needs a PostgreSQL store (workers claim features through it); {store.url} is "
            f"{store.engine.dialect.name}, which runs one process: drop --workers, or use "
            "--db postgresql+psycopg://USER@HOST/DB"
        )


def _run_key(schema: str, run_id: int) -> int:
    """The advisory lock's first key: the run, within its schema (positive int4)."""
    return zlib.crc32(f"facsynth-run:{schema}:{run_id}".encode()) & 0x7FFFFFFF


_LIVE = text(
    "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
    "AND classid::bigint = :key AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


@dataclass(frozen=True)
class LiveWorker:
    """A worker alive now on a run (its slot's lock is held), as ``facsynth status`` lists it."""

    name: str
    """``w<slot>``."""
    host: str
    pid: int
    started_at: datetime
    claims: int
    """Features it holds an open claim on."""
    last_claim_at: datetime | None
    """When it last claimed or released a feature (None: not yet); a worker waiting on a slow
    LLM call shows an old one while it is perfectly alive (the lock says it is)."""


def live_workers(store: Store, run_id: int) -> list[LiveWorker]:
    """The run's live workers, by slot; empty on a store without workers. Alive means holding
    the slot's advisory lock, so a SIGKILLed worker drops out of the list at once."""
    if not supports_workers(store):
        return []
    with store.transaction() as session:
        schema = session.execute(text("SELECT current_schema()")).scalar_one()
        slots = sorted(int(s) for (s,) in session.execute(_LIVE, {"key": _run_key(str(schema), run_id)}))
        out: list[LiveWorker] = []
        for slot in slots:
            name = f"w{slot}"
            row = session.scalars(  # the slot's newest session is the one holding it
                select(RunWorker).where(RunWorker.run_id == run_id, RunWorker.name == name)
                .order_by(RunWorker.started_at.desc(), RunWorker.id.desc()).limit(1)
            ).first()
            if row is None:  # the lock is taken, the row not yet written
                continue
            mine = (RunClaim.run_id == run_id, RunClaim.worker == name, RunClaim.claimed_at >= row.started_at)
            held = session.scalar(select(func.count()).select_from(RunClaim).where(*mine, RunClaim.released_at.is_(None)))
            last = session.execute(select(func.max(RunClaim.claimed_at), func.max(RunClaim.released_at)).where(*mine)).one()
            stamps = [t for t in last if t is not None]
            out.append(LiveWorker(name=name, host=row.host, pid=row.pid, started_at=row.started_at, claims=int(held or 0),
                                  last_claim_at=max(stamps) if stamps else None))
        return out


class Claims:
    """One worker of a run: its slot (an advisory lock held for its lifetime) and its claims.

    ``with Claims(store, run_id) as me: me.claim(order, n) ... me.release()``.
    """

    def __init__(self, store: Store, run_id: int) -> None:
        require_workers(store, "a synthesis worker")
        self.store = store
        self.run_id = run_id
        self.slot: int | None = None
        self._conn: Connection | None = None
        self._key = 0
        self._row_id: int | None = None
        self.contended = False
        """Set by :meth:`claim`: it passed a feature another worker was claiming at that moment."""

    @property
    def name(self) -> str:
        """``w<slot>``: the worker's name in claims and its LangGraph thread's suffix."""
        if self.slot is None:
            raise StoreError("the worker has no slot yet; start() it first")
        return f"w{self.slot}"

    # ------------------------------------------------------------------ lifetime

    def start(self) -> Claims:
        """Take the lowest free slot of the run and record this worker's session."""
        conn = self.store.engine.connect()
        try:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            self._key = _run_key(str(schema), self.run_id)
            for slot in range(MAX_SLOTS):
                if conn.execute(text("SELECT pg_try_advisory_lock(:k, :s)"), {"k": self._key, "s": slot}).scalar_one():
                    break
            else:
                raise StoreError(f"run {self.run_id} has {MAX_SLOTS} live workers already; no slot is free")
            conn.commit()  # the session lock outlives the transaction; the connection holds it
        except BaseException:
            conn.close()
            raise
        self._conn, self.slot = conn, slot
        with self.store.transaction(write=True) as session:
            # open claims under this slot's name are an earlier session's, which died holding them
            session.execute(
                update(RunClaim)
                .where(RunClaim.run_id == self.run_id, RunClaim.worker == self.name, RunClaim.released_at.is_(None))
                .values(released_at=utcnow(), outcome="recovered")
            )
            row = RunWorker(run_id=self.run_id, name=self.name, host=socket.gethostname()[:255], pid=os.getpid(),
                            started_at=utcnow())
            session.add(row)
            session.flush()
            self._row_id = row.id
        log.info("run %d: worker %s started", self.run_id, self.name)
        return self

    def stop(self) -> None:
        """Release every open claim, record the end of the session and give the slot back."""
        if self._conn is None:
            return
        try:
            self.release()
            with self.store.transaction(write=True) as session:
                session.execute(update(RunWorker).where(RunWorker.id == self._row_id).values(stopped_at=utcnow()))
                self._close_dead(session)
        finally:
            conn, self._conn = self._conn, None
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:k, :s)"), {"k": self._key, "s": self.slot})
                conn.commit()
            finally:
                conn.close()

    def __enter__(self) -> Claims:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _close_dead(self, session: Any) -> None:
        """Close the open claims of workers that died holding them (outcome ``recovered``).

        :meth:`claim` closes such a claim when it takes the feature over; one on a feature
        nobody claims again (another sample covered it meanwhile) would stay open for good,
        so a worker that ends closes what the dead left."""
        live = self.live(session)
        query = update(RunClaim).where(RunClaim.run_id == self.run_id, RunClaim.released_at.is_(None))
        if live:
            query = query.where(RunClaim.worker.not_in(sorted(live)))
        closed = int(session.execute(query.values(released_at=utcnow(), outcome="recovered")).rowcount or 0)
        if closed:
            log.info("run %d: worker %s closed %d claim(s) of workers that died", self.run_id, self.name, closed)

    # ------------------------------------------------------------------ who is alive

    def live(self, conn: Any = None) -> set[str]:
        """Names of the run's workers alive now (this one included while it runs)."""
        if conn is None:
            with self.store.transaction() as session:
                return self.live(session)
        return {f"w{int(s)}" for (s,) in conn.execute(_LIVE, {"key": self._key})}

    def _check_slot(self) -> None:
        """Fail loudly when the connection that holds the slot is gone (the lock went with it)."""
        if self._conn is None:
            raise StoreError("this worker is stopped; it cannot claim")
        try:
            held = self._conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                     "AND classid::bigint = :k AND objid::bigint = :s AND objsubid = 2 AND granted"),
                {"k": self._key, "s": self.slot},
            ).scalar_one()
            self._conn.commit()
        except Exception as exc:  # the server dropped the connection: the slot may be someone else's
            raise StoreError(f"worker {self.name} lost its connection to {self.store.url}: {exc}") from exc
        if not held:
            raise StoreError(f"worker {self.name} no longer holds its slot in {self.store.url}")

    # ------------------------------------------------------------------ claims

    def claim(self, order: Sequence[int], n: int, *, held_too: bool = False) -> list[int]:
        """Claim up to ``n`` of ``order`` (the planner's ranking), first come first: those no live
        worker holds, in a status they can be worked from. They become ``in_progress``. One
        transaction; rows another worker is claiming right now are skipped, not waited for.
        ``held_too``: features this worker holds already count (and stay held); else they are passed."""
        self._check_slot()
        self.contended = False
        if n <= 0 or not order:
            return []
        now = utcnow()
        picked: list[int] = []
        recovered: list[int] = []
        with self.store.transaction(write=True) as session:
            live = self.live(session)

            def open_claim(f: int) -> RunClaim | None:
                return session.scalar(select(RunClaim).where(
                    RunClaim.run_id == self.run_id, RunClaim.feature_id == f, RunClaim.released_at.is_(None)))

            def taken(c: RunClaim | None) -> bool:
                if c is None:
                    return False
                return not held_too if c.worker == self.name else c.worker in live

            seen = {c.feature_id: c for c in session.scalars(
                select(RunClaim).where(RunClaim.run_id == self.run_id, RunClaim.released_at.is_(None)))}
            for f in (int(x) for x in order):
                if taken(seen.get(f)):
                    continue
                row = session.scalar(  # the feature's row, unless another worker is claiming it right now
                    select(RunFeature.id)
                    .where(RunFeature.run_id == self.run_id, RunFeature.feature_id == f, RunFeature.status.in_(CLAIMABLE))
                    .with_for_update(skip_locked=True)
                )
                if row is None:
                    self.contended = True
                    continue
                held = open_claim(f)  # read again under the row lock: every claim is written under it
                if taken(held):
                    continue
                if held is not None and held.worker != self.name:
                    held.released_at, held.outcome = now, "recovered"  # its worker died
                    recovered.append(f)
                    session.flush()
                if held is None or held.worker != self.name:  # this slot's own open claim (its last batch) stays
                    session.add(RunClaim(run_id=self.run_id, feature_id=f, worker=self.name, claimed_at=now))
                picked.append(f)
                if len(picked) == n:
                    break
            if picked:
                session.execute(
                    update(RunFeature)
                    .where(RunFeature.run_id == self.run_id, RunFeature.feature_id.in_(picked))
                    .values(status="in_progress", reason=None, updated_at=now)
                )
        if recovered:
            log.info("run %d: worker %s took over features %s from workers that died", self.run_id, self.name, recovered)
        return picked

    def reclaim(self, features: Iterable[int]) -> bool:
        """Claim exactly ``features`` (the batch this slot's thread was working on when its last
        session died), all or none: True when each is still ``in_progress`` and held by no live
        worker."""
        want = sorted({int(f) for f in features})
        if not want:
            return True
        with self.store.transaction() as session:
            states = dict(session.execute(
                select(RunFeature.feature_id, RunFeature.status)
                .where(RunFeature.run_id == self.run_id, RunFeature.feature_id.in_(want))
            ).all())
        if any(states.get(f) != "in_progress" for f in want):
            return False
        before = self.mine()
        got = self.claim(want, len(want), held_too=True)
        if sorted(got) != want:
            self.release(set(got) - before)
            return False
        return True

    def release(self, features: Iterable[int] | None = None, *, keep: Iterable[int] = ()) -> int:
        """Close this worker's open claims (only on ``features`` when given; never on ``keep``)."""
        query = update(RunClaim).where(
            RunClaim.run_id == self.run_id, RunClaim.worker == self.name, RunClaim.released_at.is_(None)
        )
        if features is not None:
            ids = [int(f) for f in features]
            if not ids:
                return 0
            query = query.where(RunClaim.feature_id.in_(ids))
        kept = [int(f) for f in keep]
        if kept:
            query = query.where(RunClaim.feature_id.not_in(kept))
        with self.store.transaction(write=True) as session:
            return int(session.execute(query.values(released_at=utcnow(), outcome="released")).rowcount or 0)

    def held_by_others(self) -> set[int]:
        """Features with an open claim of another live worker."""
        with self.store.transaction() as session:
            live = self.live(session) - {self.name}
            if not live:
                return set()
            rows = session.execute(
                select(RunClaim.feature_id).where(
                    RunClaim.run_id == self.run_id, RunClaim.released_at.is_(None), RunClaim.worker.in_(sorted(live))
                )
            )
            return {int(f) for (f,) in rows}

    def mine(self) -> set[int]:
        """Features this worker holds an open claim on."""
        with self.store.transaction() as session:
            rows = session.execute(
                select(RunClaim.feature_id).where(
                    RunClaim.run_id == self.run_id, RunClaim.released_at.is_(None), RunClaim.worker == self.name
                )
            )
            return {int(f) for (f,) in rows}
