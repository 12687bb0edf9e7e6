"""Steering a real run (real model and SAE; the generator is the fake endpoint, whose replies
are written from the prompt so that the SAE accepts some): directives change what the
planner picks and what the generator is told, the chat's tools store them with the user's
words, and a review interrupt survives a restart."""

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
from endpoints import FakeOpenAI, Reply, echo_snippet

from facsynth.chat.session import ChatSession, open_chat
from facsynth.agent.config import LLMConfig
from facsynth.agent.llm import LLMClient, make_chat_model
from facsynth.db import Store
from facsynth.db.runs import EXCLUDED_BY_USER, Runs
from facsynth.graph.config import RunConfig
from facsynth.graph.runner import execute, prepare_run
from facsynth.tools.reader import Reader
from facsynth.chat.steering import RunControl

pytestmark = pytest.mark.slow


def _prepare(reader: Reader, fake: FakeOpenAI, seed: Path, anchor: Path, name: str, **kw: object) -> tuple[RunConfig, int]:
    cfg = RunConfig.model_validate({
        "task": "instruction-following", "seed": str(seed), "anchor": str(anchor),
        "llm": {"base_url": fake.url, "model": "fake-model", "temperature": 0.8}, **kw,
    })
    run, _ = prepare_run(cfg, name, reader.store, reader)
    return cfg, run.id


def _prompts(fake: FakeOpenAI) -> list[str]:
    return [next(m["content"] for m in r.body["messages"] if m["role"] == "user") for r in fake.requests]


def test_directives_change_what_the_planner_picks_and_what_the_generator_is_told(reader, fake_llm, demo_data) -> None:
    seed, anchor = demo_data
    fake_llm.default = echo_snippet
    cfg, run_id = _prepare(reader, fake_llm, seed, anchor, "steer", max_features=8, budget={"calls": 2})
    runs = Runs(reader.store)
    ranked = [f.feature for f in runs.features(run_id) if f.status == "pending"]
    assert len(ranked) == 8
    control = RunControl(reader.store, "steer", reader=reader)
    low = ranked[-1]
    control.focus("work on the last one first", control_args("focus", features=[low]))
    excluded = control.exclude("skip the top one", control_args("exclude", features=[ranked[0]])).directive
    control.style("keep it short", control_args("style", text="Write at most 20 words."))

    execute(reader.store, "steer", llm=LLMClient(cfg.llm, store=reader.store), reader=reader)
    tried = {f.feature for f in runs.features(run_id) if f.attempts}
    assert tried == {low, ranked[1]}  # the focus first, then the best not excluded
    top = runs.feature(run_id, ranked[0])  # never targeted; covered only if another target's sample fires it
    assert top.attempts == 0 and (top.status, top.reason) in {("excluded", EXCLUDED_BY_USER), ("covered", EXCLUDED_BY_USER)}
    prompts = _prompts(fake_llm)
    assert len(prompts) == 2 and all("The user asks for this style:\n- Write at most 20 words." in p for p in prompts)

    # undo the exclusion: the feature is back in the queue at the planner's next step
    undone = control.undo("undo the skip", control_args("undo", directive=excluded))
    assert undone.text.startswith(f"undid #{excluded} exclude")
    control.budget("two more calls", control_args("budget", calls=4))
    execute(reader.store, "steer", llm=LLMClient(cfg.llm, store=reader.store), reader=reader)
    top = runs.feature(run_id, ranked[0])
    assert top.attempts == 1 or (top.status, top.reason) == ("covered", None)
    words = [d.words for d in runs.directives(run_id, active_only=False)]
    assert words == ["work on the last one first", "skip the top one", "keep it short", "two more calls"]


def control_args(op: str, **kw: object):
    from facsynth.chat.session import BY_NAME

    return BY_NAME[op].args(**kw)


def test_the_chat_model_calls_typed_tools_and_says_what_it_changed(reader, fake_llm, demo_data) -> None:
    seed, anchor = demo_data
    _, run_id = _prepare(reader, fake_llm, seed, anchor, "talk", max_features=4)
    runs = Runs(reader.store)
    a, b = [f.feature for f in runs.features(run_id) if f.status == "pending"][:2]
    chat_llm = FakeOpenAI().start()
    try:
        chat_llm.queue(
            Reply(tool_calls=[("focus", {"features": [a, b]}), ("target", {"fac": 0.75})]),
            Reply(content=f"Focusing on {a} and {b}; the target is 75% now."),
            Reply(tool_calls=[("show", {"feature": a})]),
            Reply(content="It is pending."),
        )
        model = make_chat_model(LLMConfig(base_url=chat_llm.url, model="tool-model"))
        session = ChatSession(RunControl(reader.store, "talk", reader=reader), model)
        reply = session.send(f"please focus on {a} and {b}, and aim for 75%")
        assert reply.startswith(f"Focusing on {a} and {b}") and "changed:" in reply and "FAC target" in reply
        ds = runs.directives(run_id)
        said = f"please focus on {a} and {b}, and aim for 75%"
        assert sorted((d.kind, json.dumps(d.args), d.words) for d in ds) == [  # the tool node runs both at once
            ("focus", json.dumps({"features": sorted([a, b])}), said), ("target", json.dumps({"fac": 0.75}), said),
        ]
        # the tools went out with their typed schemas; the tool results came back to the model
        sent = chat_llm.requests[0].body
        assert {t["function"]["name"] for t in sent["tools"]} >= {"focus", "exclude", "style", "reject", "undo", "test"}
        focus_schema = next(t for t in sent["tools"] if t["function"]["name"] == "focus")["function"]["parameters"]
        assert focus_schema["properties"]["features"]["type"] == "array"
        tool_msgs = [m for m in chat_llm.requests[1].body["messages"] if m["role"] == "tool"]
        assert len(tool_msgs) == 2 and "focus on 2 feature(s)" in tool_msgs[0]["content"]
        # a question that changes nothing says so by not listing changes
        answer = session.send(f"what about feature {a}?")
        assert answer == "It is pending."
        assert f"feature {a}" in [m for m in chat_llm.requests[3].body["messages"] if m["role"] == "tool"][-1]["content"]
    finally:
        chat_llm.stop()


def test_plain_questions_without_a_tool_model_and_bad_commands(reader, fake_llm, demo_data) -> None:
    seed, anchor = demo_data
    _, run_id = _prepare(reader, fake_llm, seed, anchor, "plain", max_features=3)
    first = [f.feature for f in Runs(reader.store).features(run_id) if f.status == "pending"][0]
    chat = open_chat("plain", store=reader.store, reader=reader)
    assert chat.send("what is still missing?").startswith("3 features still to cover")
    assert chat.send(f"why was {first} exhausted?").startswith(f"feature {first}:")
    fired = chat.send(f"does this fire {first}: Pretend you're a local tour guide in Istanbul")
    assert f"feature {first}:" in fired and "would cover" in fired
    assert "slash commands" in chat.send("make it better somehow")
    assert chat.send("/target 150%").startswith("error: usage: /target")
    assert chat.send("/nope").startswith("error: unknown command /nope")
    assert chat.send("/reject 99").startswith("error: run")
    assert Runs(reader.store).directives(run_id) == []


def _query(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return list(conn.execute(sql))


def _wait_for_review(db: Path, proc: subprocess.Popen, settled: int) -> None:
    """Until the run waits for review with ``settled`` candidates settled before."""
    deadline = time.monotonic() + 300
    while True:
        try:
            status = _query(db, "SELECT status FROM runs WHERE name = 'rv'")
            done = _query(db, "SELECT count(*) FROM run_candidates WHERE verdict IS NOT NULL")[0][0]
        except sqlite3.OperationalError:
            status, done = [], 0
        if status == [("reviewing",)] and done == settled and _query(db, "SELECT count(*) FROM run_candidates "
                                                                        "WHERE proposed IS NOT NULL AND review IS NULL")[0][0]:
            return
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the run never stopped for review"
        time.sleep(0.3)


def test_review_from_the_chat_while_the_run_waits_and_after_a_restart(tmp_path: Path, fake_llm, demo_data) -> None:
    seed, anchor = demo_data
    fake_llm.default = echo_snippet
    db = tmp_path / "store.db"
    env = {**os.environ, "FACSYNTH_DB": f"sqlite:///{db}", "COLUMNS": "200"}
    common = ["--report-dir", str(tmp_path / "reports")]
    cmd = [sys.executable, "-m", "facsynth", "run", "--task", "instruction-following", "--seed", str(seed), "--anchor",
           str(anchor), "--run", "rv", "--review", "--max-features", "6", "--budget-calls", "4", "--base-url",
           fake_llm.url, "--llm-model", "fake-model", *common]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # batch 1: decided in the chat while the run process waits; it goes on by itself
        _wait_for_review(db, proc, settled=0)
        with Store(f"sqlite:///{db}") as store:
            assert "the batch is decided" in open_chat("rv", store=store).send("/approve")
        first = _query(db, "SELECT count(*) FROM run_candidates")[0][0]
        # batch 2: the run waits again; kill it there
        _wait_for_review(db, proc, settled=first)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _query(db, "SELECT count(*) FROM run_candidates WHERE verdict IS NOT NULL") == [(first,)]  # batch 2 unsettled

    with Store(f"sqlite:///{db}") as store:
        chat = open_chat("rv", store=store)
        listed = chat.send("/review")
        waiting = [c.id for c in Runs(store).pending_review(Runs(store).get("rv").id)]
        assert waiting and all(f"candidate {i}" in listed for i in waiting)
        denied, rest = waiting[0], waiting[1:]
        assert "denied candidate(s)" in chat.send(f"/deny {denied}")
        if rest:
            edited = rest[0]
            assert "edited" in chat.send(f"/edit {edited} Tell me about this: a local tour guide in Istanbul")
            assert "the batch is decided" in chat.send("/approve")
    requests_before = len(fake_llm.requests)
    resumed = subprocess.run([sys.executable, "-m", "facsynth", "resume", "rv", *common], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert len(fake_llm.requests) == requests_before  # the batch's replies came from the store, not the endpoint
    verdicts = dict(_query(db, "SELECT id, verdict || ':' || coalesce(reason, '') FROM run_candidates"))
    assert verdicts[denied] == "rejected:rejected in review"
    samples = {c for (c,) in _query(db, "SELECT candidate_id FROM run_samples")}
    assert denied not in samples
    if rest:
        text = json.loads(_query(db, f"SELECT payload FROM run_candidates WHERE id = {edited}")[0][0])["text"]
        assert text == "Tell me about this: a local tour guide in Istanbul"
    assert _query(db, "SELECT status FROM runs WHERE name = 'rv'") == [("done",)]
