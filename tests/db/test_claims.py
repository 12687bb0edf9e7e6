"""Workers' claims on a run's features (m005_workers): PostgreSQL only, skipped without it.

What several worker processes rely on: two workers never hold one feature at once, even
when they claim at the same instant; a worker that dies (SIGKILL, no handler runs) gives
its slot and its features back at once, to whoever claims next; SQLite refuses workers
with one clear message.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from facsynth.db import Store
from facsynth.db.claims import Claims, live_workers
from facsynth.db.models import RunClaim, RunWorker, utcnow
from facsynth.db.runs import Runs
from facsynth.errors import StoreError
from facsynth.graph.acceptance import admit

READER = ("smollm2-135m-instruct", "0123456789abcdef", 15, "sae-test", "f" * 64, "relu", "chat")
ROOT = Path(__file__).resolve().parents[2]



def _run(store: Store, n: int = 6) -> int:
    rid = store.reader(*READER)
    run = Runs(store).create(
        "r1", strategy="agent", task="toxicity", reader_id=rid, config={"config": {}, "setup": {}},
        feature_set="test", n_relevant=n + 2, n_seed_covered=2, missing={f: float(n - f) for f in range(n)},
    )
    return run.id


def _claims(store: Store, run_id: int) -> list[RunClaim]:
    with store.transaction() as session:
        rows = list(session.scalars(select(RunClaim).where(RunClaim.run_id == run_id).order_by(RunClaim.id)))
        session.expunge_all()
        return rows


def test_sqlite_has_no_workers(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        run_id = _run(store)
        with pytest.raises(StoreError, match=r"needs a PostgreSQL store .* drop --workers"):
            Claims(store, run_id)


@pytest.mark.postgres
def test_live_workers_hold_disjoint_slots_and_features(pg_engine) -> None:
    store = Store(pg_engine)
    run_id = _run(store)
    runs = Runs(store)
    with Claims(store, run_id) as a, Claims(store, run_id) as b:
        assert (a.name, b.name) == ("w0", "w1") and a.live() == {"w0", "w1"}
        assert a.claim([0, 1, 2, 3, 4, 5], 2) == [0, 1]
        assert b.claim([0, 1, 2, 3, 4, 5], 2) == [2, 3]  # a's are skipped, not waited for
        assert {f.feature for f in runs.features(run_id, ["in_progress"])} == {0, 1, 2, 3}
        assert b.held_by_others() == {0, 1} and a.mine() == {0, 1}
        listed = live_workers(store, run_id)  # what `facsynth status` shows
        assert [(w.name, w.pid, w.claims) for w in listed] == [("w0", os.getpid(), 2), ("w1", os.getpid(), 2)]
        assert all(w.last_claim_at is not None and w.last_claim_at >= w.started_at for w in listed)
        assert not b.reclaim([1, 2])  # all or none: 1 is a's
        assert b.mine() == {2, 3}
        a.release(keep=[1])
        assert b.claim([0, 1], 2) == [0]
        assert a.mine() == {1}
    # stopping releases everything; the record stays
    rows = _claims(store, run_id)
    assert all(r.released_at is not None and r.outcome == "released" for r in rows)
    with store.transaction() as session:
        workers = list(session.scalars(select(RunWorker).where(RunWorker.run_id == run_id)))
        assert sorted(w.name for w in workers) == ["w0", "w1"] and all(w.stopped_at is not None for w in workers)
    assert live_workers(store, run_id) == []
    with Claims(store, run_id) as again:
        assert again.name == "w0"  # slots are reused once free
        assert [(w.name, w.claims, w.last_claim_at) for w in live_workers(store, run_id)] == [("w0", 0, None)]
    store.close()


@pytest.mark.postgres
def test_workers_claiming_at_once_never_share_a_feature(pg_engine) -> None:
    store = Store(pg_engine)
    run_id = _run(store, n=60)
    order = list(range(60))
    workers = [Claims(store, run_id).start() for _ in range(4)]
    got: dict[str, list[int]] = {}
    barrier = threading.Barrier(len(workers))

    def grab(w: Claims) -> None:
        barrier.wait()
        mine: list[int] = []
        for _ in range(10):
            mine += w.claim(order, 2)
        got[w.name] = mine

    threads = [threading.Thread(target=grab, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        claimed = [f for fs in got.values() for f in fs]
        assert len(claimed) == len(set(claimed)) == 60  # every feature once, none twice
        assert all(got.values())  # nobody starved: SKIP LOCKED lets each pass the others' rows
    finally:
        for w in workers:
            w.stop()
        store.close()


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[3])
    from facsynth.db import Store
    from facsynth.db.claims import Claims, live_workers
    store = Store(sys.argv[1])
    w = Claims(store, int(sys.argv[2])).start()
    print(w.name, w.claim([0, 1, 2, 3], 2), flush=True)
    time.sleep(600)
""")


@pytest.mark.postgres
def test_a_sigkilled_worker_gives_its_slot_and_features_back_at_once(pg_url) -> None:
    store = Store(pg_url)
    run_id = _run(store)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, pg_url, str(run_id), str(ROOT)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().split(None, 1) == ["w0", "[0, 1]\n"]
        with Claims(store, run_id) as me:
            assert me.name == "w1" and me.live() == {"w0", "w1"}
            assert me.claim([0, 1, 2, 3], 2) == [2, 3]
            me.release()
            holder.kill()
            assert holder.wait(30) < 0
            # the server drops the dead connection's lock: no lease to wait out
            for _ in range(50):
                if me.live() == {"w1"}:
                    break
                threading.Event().wait(0.1)
            assert me.live() == {"w1"}
            assert me.claim([0, 1, 2, 3], 2) == [0, 1]
            # a dead session's claim found by the next worker in its slot: closed when that one starts
            with store.transaction(write=True) as session:
                session.add(RunClaim(run_id=run_id, feature_id=4, worker="w0", claimed_at=utcnow()))
            with Claims(store, run_id) as next_w0:
                assert next_w0.name == "w0" and next_w0.mine() == set()
                assert me.held_by_others() == set()
            # a dead worker's claim on a feature nobody takes over (covered meanwhile): closed when a worker ends
            with store.transaction(write=True) as session:
                session.add(RunClaim(run_id=run_id, feature_id=5, worker="w7", claimed_at=utcnow()))
        rows = _claims(store, run_id)
        assert all(r.released_at is not None for r in rows), [(r.worker, r.feature_id) for r in rows if not r.released_at]
        assert [(r.feature_id, r.outcome) for r in rows if r.worker == "w7"] == [(5, "recovered")]
        dead = [r for r in rows if r.worker == "w0"]
        assert [(r.feature_id, r.outcome) for r in dead] == [(0, "recovered"), (1, "recovered"), (4, "recovered")]
        taken = [r for r in rows if r.worker == "w1" and r.feature_id in (0, 1)]
        assert all(t.claimed_at >= d.released_at for t, d in zip(taken, dead))
    finally:
        if holder.poll() is None:
            holder.kill()
        store.close()


@pytest.mark.postgres
def test_a_settlement_and_a_claim_on_the_same_feature_never_deadlock(pg_engine) -> None:
    """A settlement locks the run, then its features; a claim locks a feature, then writes a claim
    row whose foreign key share-locks the run. The run lock must leave key-share alone."""
    import numpy as np

    from facsynth.db.models import RunFeature
    from facsynth.db.runs import Candidate, Verdict

    store = Store(pg_engine)
    run_id = _run(store)
    runs = Runs(store)
    cand = runs.add_candidates(run_id, 0, 1, [Candidate(feature=0, attempt=1, step=1, idx=0, role="positive",
                                                        payload={"text": "t"}, text_hash="h", prompt_hash="p", model="m")])[0]
    verdict = Verdict(candidate_id=cand.id, target_act=0.5, span=None, feature_ids=np.array([0], dtype=np.int32),
                      max_acts=np.array([0.5], dtype=np.float32), verdict="rejected", reason="r")
    errors: list[Exception] = []
    with store.transaction(write=True) as session:  # the claim: feature 0's row first
        session.execute(select(RunFeature.id).where(RunFeature.run_id == run_id, RunFeature.feature_id == 0)
                        .with_for_update())

        def settle() -> None:
            try:
                runs.settle(run_id, 0, [verdict], admit=admit)
            except Exception as exc:  # noqa: BLE001 (reported below)
                errors.append(exc)

        t = threading.Thread(target=settle)
        t.start()
        threading.Event().wait(1.0)  # the settlement holds the run and waits for feature 0
        session.add(RunClaim(run_id=run_id, feature_id=0, worker="w0", claimed_at=utcnow()))
        session.flush()  # the claim row's foreign key: must not wait for the settlement
    t.join(30)
    assert not t.is_alive() and errors == []
    assert runs.feature(run_id, 0).best_act == pytest.approx(0.5)
    store.close()


@pytest.mark.postgres
def test_workers_starting_at_once_all_get_through_the_checkpointer_set_up(pg_url) -> None:
    """LangGraph's Postgres saver creates its indexes CONCURRENTLY, which waits for every open
    transaction of the database: a worker waiting for the set-up must not wait inside one."""
    from facsynth.graph.runner import setup_checkpoints

    stores = [Store(pg_url) for _ in range(3)]
    through: list[int] = []

    def start(s: Store) -> None:
        setup_checkpoints(s)
        through.append(1)

    threads = [threading.Thread(target=start, args=(s,), daemon=True) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert len(through) == 3, "a worker hung in the checkpointer's set-up"
    finally:
        for s in stores:
            s.close()
