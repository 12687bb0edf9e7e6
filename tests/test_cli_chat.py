"""``facsynth chat RUN`` with piped input: every slash command, end to end, on a real run
(real model and SAE; the generator is the fake endpoint answering from the prompt)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from cli_process import facsynth
from endpoints import echo_snippet

pytestmark = pytest.mark.slow


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


def test_slash_commands_end_to_end(tmp_path: Path, fake_llm, demo_data) -> None:
    seed, anchor = demo_data
    fake_llm.default = echo_snippet
    made = facsynth("run", "--task", "instruction-following", "--seed", str(seed), "--anchor", str(anchor),
                    "--run", "c1", "--max-features", "40", "--budget-calls", "4", "--base-url", fake_llm.url,
                    "--llm-model", "fake-model", "--report-dir", str(tmp_path / "reports"), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    db = tmp_path / "store.db"
    (sample_id,) = _rows(db, "SELECT min(id) FROM run_samples")[0]
    assert sample_id is not None, "the run accepted nothing to review"
    pending = [f for (f,) in _rows(db, "SELECT feature_id FROM run_features WHERE status = 'pending' ORDER BY priority DESC")]
    f1, f2, f3 = pending[:3]
    script = "\n".join([
        "/help",
        "/status",
        "/missing 3",
        f"/show {f1}",
        f"/test {f1} Pretend you're a local tour guide in Istanbul",
        f"/focus {f1} {f2}",
        f"/exclude {f3}",
        "/style at most 20 words, in a friendly tone",
        "/target 80%",
        "/budget calls=50",
        "/pause",
        "/samples 50",
        f"/reject {sample_id}",
        "/undo",
        "/resume",
        "/directives",
        "/quit",
        "/status",  # after /quit: never read
    ]) + "\n"
    chat = facsynth("chat", "c1", stdin=script, cwd=tmp_path)
    assert chat.returncode == 0, chat.stderr
    out = chat.stdout
    assert "/focus IDS|DESCRIPTION" in out and "/reject ID" in out  # help
    assert "run c1 (agent, task instruction-following): done" in out
    assert "features still to cover" in out and f"feature {f1}:" in out
    assert f"does not fire feature {f1}" in out or f"fires feature {f1}" in out
    assert f"focus on 2 feature(s): {sorted([f1, f2])}" in out and f"leave out 1 feature(s): [{f3}]" in out
    assert "the generator is now asked for: at most 20 words, in a friendly tone" in out
    assert "FAC target 90.0% -> 80.0%" in out and "budget now calls 50" in out
    assert "paused; the run stops before its next batch" in out
    assert f"#{sample_id} feature" in out  # /samples lists it
    assert f"withdrew sample #{sample_id}" in out and "undid #" in out and "the samples count again" in out
    assert "not paused any more; it is done: continue it with `facsynth resume c1`" in out
    assert out.count("> /status") == 1

    kinds = _rows(db, "SELECT kind, words, active FROM run_directives ORDER BY id")
    assert [k for k, _, _ in kinds] == ["focus", "exclude", "style", "target", "budget", "pause", "reject", "pause"]
    assert kinds[0][1] == f"/focus {f1} {f2}" and [a for _, _, a in kinds][6] == 0  # the reject was undone
    assert _rows(db, f"SELECT withdrawn_at FROM run_samples WHERE id = {sample_id}") == [(None,)]

    # status lists the directives; a resumed run follows them: focus first, exclusion kept
    status = facsynth("status", "c1", cwd=tmp_path)
    assert "steering directives" in status.stdout and "at most 20 words" in status.stdout
    resumed = facsynth("resume", "c1", "--budget-calls", "6", "--report-dir", str(tmp_path / "reports"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    tried = {f for (f,) in _rows(db, "SELECT feature_id FROM run_features WHERE attempts > 0")}
    assert f3 not in tried and ({f1, f2} & tried or all(
        s == "covered" for (s,) in _rows(db, f"SELECT status FROM run_features WHERE feature_id IN ({f1}, {f2})")))
    last = fake_llm.requests[-1].body["messages"][-1]["content"]
    assert "The user asks for this style:\n- at most 20 words, in a friendly tone" in last
    report = json.loads((tmp_path / "reports" / "c1" / "report.json").read_text())
    assert report["status"] == "done"
