"""``facsynth run|resume|status|runs|export`` as a user runs them: subprocesses on shipped data.

The resume test kills a running ``facsynth run`` with SIGKILL (no handler runs, the
embedded server dies with its parent) and checks that ``facsynth resume`` keeps every
accepted sample, adds no duplicate, and pays no LLM call twice.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_process import env_for, facsynth, one_line_error
from endpoints import llama_server_pids

pytestmark = pytest.mark.slow


def _query(db: Path, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return list(conn.execute(sql, args))


def _scalar(db: Path, sql: str, *args: object) -> int:
    try:
        return int(_query(db, sql, *args)[0][0] or 0)
    except sqlite3.OperationalError:  # the store is not created yet
        return 0


def test_resume_after_sigkill_keeps_every_sample_and_pays_no_call_twice(tmp_path: Path, demo_data) -> None:
    seed, anchor = demo_data
    db = tmp_path / "store.db"
    args = ["run", "--task", "instruction-following", "--seed", str(seed), "--anchor", str(anchor), "--run", "k1",
            "--max-features", "10", "--budget-calls", "30", "--report-dir", str(tmp_path / "reports")]
    proc = subprocess.Popen([sys.executable, "-m", "facsynth", *args], cwd=tmp_path, env=env_for(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 420
    try:
        while _scalar(db, "SELECT count(*) FROM run_samples") < 1:
            assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "no sample accepted in 7 minutes"
            time.sleep(0.5)
        servers = llama_server_pids(started_by=proc.pid)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    for _ in range(100):  # the embedded server follows its parent (PR_SET_PDEATHSIG)
        if not set(servers) & set(llama_server_pids()):
            break
        time.sleep(0.1)
    assert not set(servers) & set(llama_server_pids()), "the embedded server outlived a SIGKILLed run"

    samples_before = dict(_query(db, "SELECT id, text_hash FROM run_samples"))
    paid_before = {h for (h,) in _query(db, "SELECT prompt_hash FROM llm_calls WHERE outcome = 'ok'")}
    assert _query(db, "SELECT status FROM runs WHERE name = 'k1'") == [("running",)]

    resumed = facsynth("resume", "k1", "--report-dir", str(tmp_path / "reports"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    status, reason = _query(db, "SELECT status, stop_reason FROM runs WHERE name = 'k1'")[0]
    assert status == "done" and reason.startswith(("budget spent", "nothing left")), reason

    samples_after = dict(_query(db, "SELECT id, text_hash FROM run_samples"))
    assert samples_before.items() <= samples_after.items()
    assert len(set(samples_after.values())) == len(samples_after)
    twice = _query(db, "SELECT prompt_hash FROM llm_calls WHERE outcome = 'ok' GROUP BY prompt_hash HAVING count(*) > 1")
    assert twice == [], "an LLM call whose reply was stored was paid again"
    repaid = {h for (h,) in _query(db, "SELECT prompt_hash FROM llm_calls WHERE outcome = 'ok'")} & paid_before
    assert repaid == paid_before  # still one ok record each: the resumed run read them from the cache
    # every attempt of a feature is stored once, and each verified candidate has one verdict
    dup_attempts = _query(db, "SELECT feature_id, attempt, idx FROM run_candidates GROUP BY 1, 2, 3 HAVING count(*) > 1")
    assert dup_attempts == []
    assert _scalar(db, "SELECT count(*) FROM run_candidates WHERE verdict IS NULL") == 0
    report = json.loads((tmp_path / "reports" / "k1" / "report.json").read_text())
    assert report["samples"] == len(samples_after) and report["fac_after"] > report["fac_before"]
    assert (tmp_path / "reports" / "k1" / "fac_curve.png").stat().st_size > 0

    status_out = facsynth("status", "k1", cwd=tmp_path)
    assert status_out.returncode == 0 and "FAC after" in status_out.stdout
    listed = facsynth("runs", cwd=tmp_path)
    assert listed.returncode == 0 and "k1" in listed.stdout and "done" in listed.stdout
    out = tmp_path / "k1.jsonl"
    exported = facsynth("export", "k1", "--out", str(out), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(samples_after) and all(r["provenance"]["run"] == "k1" for r in rows)


def test_run_errors_are_one_clear_line_and_store_nothing(tmp_path: Path, demo_data) -> None:
    seed, anchor = demo_data
    base = ["run", "--seed", str(seed), "--anchor", str(anchor)]
    assert "unknown task 'nope'" in one_line_error(facsynth(*base, "--task", "nope", cwd=tmp_path))
    missing = facsynth("run", "--task", "toxicity", "--seed", str(tmp_path / "none.jsonl"), cwd=tmp_path)
    assert "no such file" in one_line_error(missing)
    assert "bad option target_fac" in one_line_error(facsynth(*base, "--task", "toxicity", "--target-fac", "1.5", cwd=tmp_path))
    assert "strategy" in one_line_error(facsynth(*base, "--task", "toxicity", "--strategy", "magic", cwd=tmp_path))
    assert "unknown writer 'gpt9'; choose one of: qwen2.5-coder-1.5b" in one_line_error(
        facsynth(*base, "--task", "toxicity", "--writer", "gpt9", cwd=tmp_path))
    assert "cannot go with --base-url" in one_line_error(
        facsynth(*base, "--task", "toxicity", "--writer", "qwen2.5-coder-1.5b", "--base-url", "http://127.0.0.1:9/v1", cwd=tmp_path))
    assert _scalar(tmp_path / "store.db", "SELECT count(*) FROM runs") == 0
    assert "no run named 'ghost'" in one_line_error(facsynth("resume", "ghost", cwd=tmp_path))
    assert "no run named 'ghost'" in one_line_error(facsynth("export", "ghost", cwd=tmp_path))


def test_an_embedded_server_that_cannot_generate_fails_with_one_line_and_stores_no_run(tmp_path: Path, demo_data) -> None:
    seed, anchor = demo_data
    tests = Path(__file__).resolve().parent
    env = {**env_for(tmp_path), "FACSYNTH_SERVER_MODULE": "crashing_server",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tests), os.environ.get("PYTHONPATH")]))}
    args = [sys.executable, "-m", "facsynth", "run", "--task", "instruction-following", "--seed", str(seed),
            "--anchor", str(anchor), "--run", "c1", "--max-features", "2"]
    child = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = child.communicate(timeout=600)
    line = one_line_error(subprocess.CompletedProcess(args, child.returncode, stdout, stderr))
    assert "crashed with SIGSEGV at its first completion" in line and "-DGGML_NATIVE=OFF" in line, line
    assert line.endswith('--force-reinstall --no-deps "llama-cpp-python[server]>=0.3,<0.4"'), line  # copied as printed
    assert _scalar(tmp_path / "store.db", "SELECT count(*) FROM runs") == 0
    assert llama_server_pids(started_by=child.pid) == []


def test_an_unreachable_endpoint_stops_the_run_with_one_line_and_how_to_resume(tmp_path: Path, demo_data) -> None:
    seed, anchor = demo_data
    proc = facsynth("run", "--task", "instruction-following", "--seed", str(seed), "--anchor", str(anchor), "--run", "u1",
                    "--max-features", "2", "--base-url", "http://127.0.0.1:9/v1", cwd=tmp_path)
    line = one_line_error(proc)
    assert "cannot reach LLM endpoint http://127.0.0.1:9/v1" in line and "facsynth resume u1" in line
    assert _query(tmp_path / "store.db", "SELECT status FROM runs WHERE name = 'u1'") == [("stopped",)]
    assert _scalar(tmp_path / "store.db", "SELECT count(*) FROM run_samples") == 0
