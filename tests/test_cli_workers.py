"""``facsynth run --workers N`` and ``facsynth worker`` as a user runs them, on PostgreSQL.

The workers are real processes with the real model and SAE; only the remote LLM is faked
(a loopback endpoint that echoes the prompt's snippet, so samples get accepted through
the SAE, and answers after a delay like a remote model, so the workers overlap). What is
checked is read from the store afterwards: no feature ever held by two workers at once,
no accepted sample lost or stored twice, no LLM reply paid twice, the budget overspent by
at most one batch per worker, and a SIGKILLed worker's features and paid replies taken
over by the others and by a resume with another number of workers. Skipped (with the
reason) when PostgreSQL is not reachable; SQLite refuses workers with one line.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_process import env_for, facsynth, one_line_error
from endpoints import FakeOpenAI, echo_snippet
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.slow


def _args(fake: FakeOpenAI, seed: Path, anchor: Path, tmp_path: Path, run: str, *more: str) -> list[str]:
    return ["run", "--task", "instruction-following", "--seed", str(seed), "--anchor", str(anchor), "--run", run,
            "--base-url", fake.url, "--llm-model", "fake-model", "--report-dir", str(tmp_path / "reports"), *more]


def _slow(delay_s: float):
    return lambda body: dataclasses.replace(echo_snippet(body), delay_s=delay_s)


class DB:
    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)

    def rows(self, sql: str, **args: object) -> list[tuple]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), args)]

    def one(self, sql: str, **args: object) -> object:
        rows = self.rows(sql, **args)
        return rows[0][0] if rows else None


def _check_invariants(db: DB, run: str, *, budget: int, workers: int, batch: int = 2) -> None:
    """What must hold after any multi-worker run, read from the store."""
    run_id = db.one("SELECT id FROM runs WHERE name = :n", n=run)
    # a feature is never held by two workers at once: each claim ends before the next begins
    claims = db.rows("SELECT feature_id, worker, claimed_at, released_at FROM run_claims WHERE run_id = :r "
                     "ORDER BY feature_id, claimed_at, id", r=run_id)
    assert claims and all(c[3] is not None for c in claims), "a claim was left open"
    for prev, nxt in zip(claims, claims[1:]):
        if prev[0] == nxt[0]:
            assert prev[3] <= nxt[2], f"feature {prev[0]} held by {prev[1]} and {nxt[1]} at once"
    # no sample lost or stored twice: exactly the candidates that joined have a sample, each once
    joined = {c for (c,) in db.rows("SELECT id FROM run_candidates WHERE run_id = :r AND reason_code = 'joined'", r=run_id)}
    samples = db.rows("SELECT candidate_id, text_hash FROM run_samples WHERE run_id = :r", r=run_id)
    assert samples, "no sample was accepted: the workers did not synthesize"
    assert {c for c, _ in samples} == joined and len(samples) == len(joined)
    assert len({h for _, h in samples}) == len(samples)
    assert db.rows("SELECT feature_id, attempt, idx FROM run_candidates WHERE run_id = :r GROUP BY 1, 2, 3 "
                   "HAVING count(*) > 1", r=run_id) == []
    covered = db.rows("SELECT f.feature_id FROM run_features f LEFT JOIN run_samples s ON s.id = f.covered_by "
                      "WHERE f.run_id = :r AND f.covered_by IS NOT NULL AND s.id IS NULL", r=run_id)
    assert covered == [], "a feature is credited to a sample that is not there"
    # every paid reply was used: it became candidates (no reply paid twice, none paid for nothing)
    paid = db.rows("SELECT prompt_hash FROM llm_calls WHERE run_id = :n AND outcome = 'ok'", n=run)
    assert len(paid) == len({h for (h,) in paid}), "an LLM reply was paid twice"
    used = {h for (h,) in db.rows("SELECT DISTINCT prompt_hash FROM run_candidates WHERE run_id = :r", r=run_id)}
    assert {h for (h,) in paid} <= used, "a paid LLM reply never reached the store's candidates"
    issued = len(paid) + db.one("SELECT count(*) FROM llm_calls WHERE run_id = :n AND outcome IN ('error', 'parse_error')", n=run)
    assert issued <= budget + workers * batch, f"{issued} calls for a budget of {budget}"


@pytest.mark.postgres
def test_two_workers_share_a_run_without_holding_a_feature_twice(tmp_path, demo_data, fake_llm, pg_url) -> None:
    seed, anchor = demo_data
    fake_llm.default = _slow(1.5)
    proc = facsynth(*_args(fake_llm, seed, anchor, tmp_path, "w2", "--max-features", "12", "--max-attempts", "2",
                           "--budget-calls", "30", "--workers", "2", "--db", pg_url), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "starting 2 workers" in proc.stdout
    db = DB(pg_url)
    try:
        status, reason = db.rows("SELECT status, stop_reason FROM runs WHERE name = 'w2'")[0]
        assert status == "done" and reason.startswith(("budget spent", "nothing left", "target reached")), reason
        workers = db.rows("SELECT name, stopped_at FROM run_workers ORDER BY name")
        assert [w for w, _ in workers] == ["w0", "w1"] and all(s is not None for _, s in workers)
        by_worker = dict(db.rows("SELECT worker, count(DISTINCT feature_id) FROM run_claims GROUP BY worker"))
        assert by_worker.keys() == {"w0", "w1"}, by_worker  # both worked
        threads = {t for (t,) in db.rows("SELECT DISTINCT thread_id FROM checkpoints")}
        assert threads == {"w2:w0", "w2:w1"}  # one LangGraph thread each, in the Postgres saver
        _check_invariants(db, "w2", budget=30, workers=2)
        # the calls overlapped: two workers' batches were in flight at once
        assert fake_llm.max_in_flight > 2
    finally:
        db.engine.dispose()


@pytest.mark.postgres
def test_a_sigkilled_worker_is_recovered_by_the_others_and_by_a_resume_with_another_number(
    tmp_path, demo_data, fake_llm, pg_url
) -> None:
    seed, anchor = demo_data
    fake_llm.default = _slow(1.5)
    cmd = [sys.executable, "-m", "facsynth", *_args(fake_llm, seed, anchor, tmp_path, "k3", "--max-features", "14",
                                                    "--max-attempts", "2", "--budget-calls", "24", "--workers", "3",
                                                    "--db", pg_url)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    db = DB(pg_url)
    try:
        victim = held = None
        shown = False
        deadline = time.monotonic() + 420
        while victim is None:
            assert proc.poll() is None, f"the run ended before a worker could be killed:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "no worker held a claim after a sample was accepted in 7 minutes"
            rows = []
            try:
                ready = db.one("SELECT count(*) FROM run_samples") and db.one("SELECT count(*) FROM run_workers") == 3
                if ready:  # a worker holding features, with replies paid: kill it mid-batch
                    rows = db.rows("SELECT w.pid, w.name, c.feature_id FROM run_claims c JOIN run_workers w "
                                   "ON w.name = c.worker AND w.stopped_at IS NULL WHERE c.released_at IS NULL")
            except Exception:  # the tables are not there yet
                pass
            if rows and not shown:  # `facsynth status` lists the live workers, one holding claims among them
                status = facsynth("status", "k3", "--db", pg_url, cwd=tmp_path)
                assert status.returncode == 0 and "live worker(s)" in status.stdout, status.stderr + status.stdout
                assert f" {rows[0][1]} " in status.stdout and f" {rows[0][0]} " in status.stdout, status.stdout
                shown = True
                continue  # its batch may have moved on meanwhile: pick the victim afresh
            if rows:
                victim, name = rows[0][0], rows[0][1]
                held = {f for p, _, f in rows if p == victim}
            else:
                time.sleep(0.3)
        os.kill(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=420)
        assert proc.returncode == 0, out  # the others finished the run
        assert "killed by signal 9" in out
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        assert db.one("SELECT status FROM runs WHERE name = 'k3'") == "done"
        paid = db.one("SELECT count(*) FROM llm_calls WHERE run_id = 'k3' AND outcome != 'cached'")
        assert paid <= 24 + 3 * 2, f"{paid} calls for a budget of 24 with 3 workers"
        # resume with one worker (started with three) and a larger budget: it finishes what is left
        again = facsynth("resume", "k3", "--budget-calls", "200", "--db", pg_url, "--report-dir",
                         str(tmp_path / "reports"), cwd=tmp_path)
        assert again.returncode == 0, again.stderr + again.stdout
        status, reason = db.rows("SELECT status, stop_reason FROM runs WHERE name = 'k3'")[0]
        assert status == "done" and reason.startswith(("nothing left", "target reached")), reason
        # the dead worker's claims were closed by whoever took its features over, the others or the resume
        recovered = db.rows("SELECT feature_id, released_at FROM run_claims WHERE worker = :w AND outcome = 'recovered'",
                            w=name)
        assert {f for f, _ in recovered} & held, "the killed worker's features were not taken over"
        for f, at in recovered:  # worked on again after its worker died, unless another sample covered it meanwhile
            again_claimed = db.one("SELECT count(*) FROM run_claims WHERE feature_id = :f AND claimed_at >= :at", f=f, at=at)
            assert again_claimed or db.one("SELECT status FROM run_features WHERE feature_id = :f", f=f) == "covered", f
        assert db.one("SELECT count(*) FROM run_claims WHERE released_at IS NULL") == 0
        left = db.rows("SELECT feature_id, status FROM run_features WHERE status IN ('pending', 'in_progress')")
        assert left == [], "a feature was left behind"
        _check_invariants(db, "k3", budget=200, workers=3)
    finally:
        db.engine.dispose()


@pytest.mark.postgres
def test_the_python_api_runs_workers_and_resumes_with_another_number(
    tmp_path, demo_data, fake_llm, pg_url, subject, default_sae
) -> None:
    """``synthesize(workers=2)`` stops on its budget; ``resume(workers=3)`` finishes the run."""
    import facsynth
    from facsynth.db import Store
    from facsynth.tools.reader import Reader

    seed, anchor = demo_data
    fake_llm.default = _slow(1.0)
    llm = {"base_url": fake_llm.url, "model": "fake-model", "temperature": 0.8, "max_concurrency": 2}
    polled: list[str] = []
    db = DB(pg_url)
    try:
        with Store(pg_url) as store:
            reader = Reader(subject, default_sae, store=store)  # measures here; each worker loads its own
            first = facsynth.synthesize(seed, task="instruction-following", anchor=anchor, run="api", store=store,
                                        reader=reader, llm=llm, max_features=16, max_attempts=2, budget={"calls": 6}, quality=False,
                                        workers=2, on_step=lambda node, s: polled.append(node))
            # 16 targets cannot all be covered in 6 calls (a reply credits its own target and, at
            # times, a few others by chance: with 8 targets the run once finished before its budget)
            assert first.stop_reason.startswith("budget spent"), first.stop_reason
            assert set(polled) == {"workers"}
            assert db.one("SELECT count(*) FROM run_workers WHERE stopped_at IS NOT NULL") == 2  # two sessions, both ended
            _check_invariants(db, "api", budget=6, workers=2)
            before = db.one("SELECT max(id) FROM run_workers")
            again = facsynth.resume("api", store=store, budget={"calls": 200}, workers=3)
        assert again.status == "done" and again.stop_reason.startswith(("nothing left", "target reached")), again.stop_reason
        assert db.one("SELECT count(*) FROM run_workers WHERE id > :b AND stopped_at IS NOT NULL", b=before) == 3
        assert db.one("SELECT count(*) FROM run_features WHERE status IN ('pending', 'in_progress')") == 0
        _check_invariants(db, "api", budget=200, workers=3)
    finally:
        db.engine.dispose()


def test_workers_on_sqlite_are_one_clear_error(tmp_path, demo_data) -> None:
    seed, anchor = demo_data
    proc = facsynth("run", "--task", "instruction-following", "--seed", str(seed), "--anchor", str(anchor),
                    "--run", "nope", "--workers", "2", cwd=tmp_path)
    line = one_line_error(proc)
    assert "--workers 2 needs a PostgreSQL store" in line and "drop --workers" in line
    assert not (tmp_path / "store.db").exists() or "nope" not in facsynth("runs", cwd=tmp_path).stdout
    worker = facsynth("worker", "nope", cwd=tmp_path)
    assert "facsynth worker needs a PostgreSQL store" in one_line_error(worker)


def test_workers_in_the_python_api_on_sqlite_are_the_same_error_before_any_measuring(tmp_path, demo_data) -> None:
    import facsynth
    from facsynth.errors import StoreError

    seed, anchor = demo_data
    with pytest.raises(StoreError, match=r"--workers 2 needs a PostgreSQL store .* drop --workers"):
        facsynth.synthesize(seed, task="instruction-following", anchor=anchor, run="nope",
                            store=f"sqlite:///{tmp_path / 's.db'}", workers=2)
