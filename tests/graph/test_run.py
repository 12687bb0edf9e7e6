"""Synthesis runs end to end: the real llama.cpp server, the real model and SAE.

A run's claims are checked from outside the graph: every accepted sample is read again
through the SAE, and FAC is recomputed with the measuring code over seed + samples.
The paper strategy's exact call pattern and the agent's retry loop are checked against
the fake endpoint, where the replies are fixed.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
from pathlib import Path

import pytest
from endpoints import FakeOpenAI, Reply

from facsynth.agent.transport import AttemptTransport
from facsynth.agent.llm import LLMClient
from facsynth.tools.export import export_run
from facsynth.db.runs import Runs
from facsynth.graph.config import RunConfig
from facsynth.graph.prompts import FIRST, NEGATIVE, NEW_FIRST, NEW_SECOND, POSITIVE, SECOND
from facsynth.graph.report import coverage_report, plot_curve
from facsynth.graph.runner import execute, prepare_run
from facsynth.tools.datasets import Sample, load_dataset
from facsynth.tools.fac import coverage

pytestmark = pytest.mark.slow


def _cfg(seed: Path, anchor: Path, **kw: object) -> RunConfig:
    return RunConfig.model_validate({"task": "instruction-following", "seed": str(seed), "anchor": str(anchor), **kw})


def test_agent_run_gains_fac_that_holds_when_read_again(reader, encoder, llama_server, demo_data, tmp_path) -> None:
    seed, anchor = demo_data
    store = reader.store
    cfg = _cfg(seed, anchor, max_features=6, max_attempts=3, budget={"calls": 16})
    run, _ = prepare_run(cfg, "e2e", store, reader)
    assert run.n_seed_covered < run.n_relevant
    client = LLMClient(cfg.llm, store=store, endpoints=llama_server.base_urls, llama_cpp=True)
    summary = execute(store, "e2e", llm=client, reader=reader)
    runs = Runs(store)

    assert summary.run.status == "done"
    assert summary.run.stop_reason.startswith(("budget spent", "nothing left", "target reached"))
    samples = runs.samples(run.id)
    assert samples, "no candidate was accepted: the generator or the verifier is broken"
    assert summary.fac > summary.fac_before

    # every accepted sample fires its target above the threshold, and every feature it was
    # credited with above delta, when read again outside the graph
    delta = threshold = reader.default_delta
    again = list(encoder.encode([Sample(**s.candidate.payload) for s in samples]))
    for s, sf in zip(samples, again):
        acts = dict(zip(sf.feature_ids.tolist(), sf.max_acts.tolist()))
        target = acts.get(s.candidate.feature, 0.0)
        assert s.activation == pytest.approx(target, rel=1e-4, abs=1e-3)
        if s.candidate.role == "positive" and s.candidate.verdict == "accepted":
            assert target > threshold and s.candidate.feature in s.covered
        else:  # a negative, or a positive that missed its target, joins only for the missing features it covers
            assert s.candidate.verdict in ("accepted", "rejected") and target <= threshold
            assert len(s.covered) >= cfg.negative_min_new and s.candidate.feature not in s.covered
        assert set(s.covered) <= set(sf.active(delta).tolist())

    # FAC as `facsynth measure` computes it over seed + accepted samples, same F
    f_set = reader.count(load_dataset(anchor), [delta]).counter.active(delta)
    grown = list(load_dataset(seed)) + [Sample(**s.candidate.payload) for s in samples]
    from facsynth.tools.datasets import Dataset

    counted = reader.count(Dataset("grown", "test", grown), [delta])
    assert coverage(counted.counter, f_set, delta).fac == pytest.approx(summary.fac)
    assert f_set.sum() == run.n_relevant

    # attempts are capped; an exhausted feature says why; the budget holds (a reply that does not parse may add its repair)
    for f in runs.features(run.id):
        assert f.attempts <= cfg.max_attempts
        if f.status == "exhausted":
            assert f.attempts == cfg.max_attempts and "needs >" in f.reason
    issued = store.llm_totals("e2e")
    assert issued["calls"] - issued["by_outcome"]["cached"] <= 16 + 2 * cfg.batch

    # the report and its plot
    rep = coverage_report(store, "e2e")
    assert rep.fac_after == summary.fac and rep.samples == len(samples)
    assert rep.curve[0] == (0, pytest.approx(summary.fac_before)) and rep.curve[-1][1] == pytest.approx(summary.fac)
    png = plot_curve(rep, tmp_path / "curve.png", cfg.target_fac)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # export: chat messages and Alpaca records with provenance, in every format
    n = export_run(store, "e2e", tmp_path / "out.jsonl", "jsonl", with_seed=True)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert n == len(rows) == 20 + len(samples)
    assert [r["source"] for r in rows] == ["seed"] * 20 + ["synthetic"] * len(samples)
    prompt_ids = set()
    with sqlite3.connect(tmp_path / "store.db") as db:
        prompt_ids = {h for (h,) in db.execute("SELECT prompt_hash FROM llm_calls WHERE run_id = 'e2e'")}
    for r, s in zip(rows[20:], samples):
        assert r["messages"] == [{"role": "user", "content": s.candidate.payload["text"]}]
        assert r["instruction"] == s.candidate.payload["text"] and r["output"] == ""
        p = r["provenance"]
        assert (p["target_feature"], p["covered_features"], p["attempt"]) == (s.candidate.feature, s.covered, s.candidate.attempt)
        assert p["activation"] == pytest.approx(s.activation, abs=1e-4)
        assert p["model"] == "smollm2-135m-instruct" and p["prompt_id"] in prompt_ids
    pytest.importorskip("pyarrow")
    assert export_run(store, "e2e", tmp_path / "out.parquet", "parquet") == len(samples)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out.parquet")
    assert {"messages", "instruction", "input", "output", "label", "source", "provenance"} <= set(table.column_names)
    datasets = pytest.importorskip("datasets")
    assert export_run(store, "e2e", tmp_path / "out_hf", "hf") == len(samples)
    assert datasets.load_from_disk(str(tmp_path / "out_hf")).num_rows == len(samples)


def _fake_cfg(fake: FakeOpenAI, seed: Path, anchor: Path, **kw: object) -> RunConfig:
    llm = {"base_url": fake.url, "model": "fake-model", "temperature": 0.8, "top_p": 0.9, "max_tokens": 320}
    return _cfg(seed, anchor, llm=llm, **kw)


def _user_prompts(fake: FakeOpenAI) -> list[str]:
    return [next(m["content"] for m in r.body["messages"] if m["role"] == "user") for r in fake.requests]


def test_paper_strategy_makes_exactly_two_calls_per_feature_without_feedback(reader, fake_llm, demo_data) -> None:
    seed, anchor = demo_data
    fake_llm.default = Reply(content=json.dumps({
        FIRST: "Plan a three day trip to the mountains with a tight budget.",
        SECOND: "Write a short poem about the first snow of winter in the city.",
    }))
    cfg = _fake_cfg(fake_llm, seed, anchor, strategy="paper", max_features=3)
    run, _ = prepare_run(cfg, "paper", reader.store, reader)
    execute(reader.store, "paper", llm=LLMClient(cfg.llm, store=reader.store), reader=reader)
    runs = Runs(reader.store)
    targets = [f for f in runs.features(run.id) if f.attempts]
    assert len(targets) == 3 and all(f.attempts == 2 for f in targets)
    assert all(f.status in ("covered", "exhausted") for f in targets)
    calls = reader.store.llm_totals("paper")
    assert len(fake_llm.requests) == 6 and calls["by_outcome"]["ok"] == 6
    prompts = _user_prompts(fake_llm)
    assert sum("Strong example" in p for p in prompts) == 3  # step 2 carries the pair
    assert not any("Feedback" in p for p in prompts)
    cands = runs.candidates(run.id)
    assert {c.role for c in cands} == {"sample"} and len(cands) == 12
    # step-1 samples build the pair; only step-2 samples can join the data
    assert all(s.candidate.step == 2 for s in runs.samples(run.id))


def test_unguided_strategy_writes_from_seed_examples_and_joins_usable_samples_without_a_target(
    reader, fake_llm, demo_data, tmp_path
) -> None:
    seed, anchor = demo_data
    fake_llm.default = Reply(content=json.dumps({
        NEW_FIRST: "Plan a three day trip to the mountains with a tight budget.",
        NEW_SECOND: "Write a short poem about the first snow of winter in the city.",
    }))
    cfg = _fake_cfg(fake_llm, seed, anchor, strategy="unguided", max_features=3)
    run, _ = prepare_run(cfg, "unguided", reader.store, reader)
    execute(reader.store, "unguided", llm=LLMClient(cfg.llm, store=reader.store), reader=reader)
    runs = Runs(reader.store)
    slots = [f for f in runs.features(run.id) if f.attempts]
    assert all(f.attempts == 1 and f.status in ("covered", "exhausted") for f in slots)
    assert len(fake_llm.requests) == len(slots) == 3  # one call per slot, no retry
    prompts = _user_prompts(fake_llm)
    seed_texts = [s.plain_text for s in load_dataset(seed)]
    for p in prompts:  # seed examples, nothing about features
        assert "Examples of the data:" in p and sum(repr(t) in p for t in seed_texts) == 3
        assert "Snippets" not in p and "Theme:" not in p and "marked" not in p
    assert len(set(prompts)) == 3  # each slot draws its own examples
    cands = runs.candidates(run.id)
    assert {c.role for c in cands} == {"sample"} and len(cands) == 6
    # the first call's two samples join whatever they fire; the later calls repeat them
    assert sorted(c.verdict for c in cands) == ["accepted", "accepted"] + ["duplicate"] * 4
    assert len(runs.samples(run.id)) == 2
    export_run(reader.store, "unguided", tmp_path / "u.jsonl", "jsonl")
    rows = [json.loads(line) for line in (tmp_path / "u.jsonl").read_text().splitlines()]
    assert [r["provenance"]["target_feature"] for r in rows] == [None, None]


def test_a_sample_cut_from_an_anchor_text_is_rejected_as_a_copy_and_a_fresh_one_joins(reader, fake_llm, demo_data) -> None:
    """A writer shown examples or snippets copies them: such a text fires the anchor's features
    because it is the anchor's text, and is no new sample."""
    seed, anchor = demo_data
    longest = max((s.plain_text for s in load_dataset(anchor)), key=lambda t: len(t.split()))
    assert len(longest.split()) >= 9
    copied = " ".join(longest.split()[:-1])  # the anchor text, cut short by a word
    fresh = "Write a short poem about the first snow of winter in the city."
    fake_llm.default = Reply(content=json.dumps({NEW_FIRST: copied, NEW_SECOND: fresh}))
    cfg = _fake_cfg(fake_llm, seed, anchor, strategy="unguided", max_features=1)
    run, _ = prepare_run(cfg, "copies", reader.store, reader)
    execute(reader.store, "copies", llm=LLMClient(cfg.llm, store=reader.store), reader=reader)
    runs = Runs(reader.store)
    by_text = {Sample(**c.payload).plain_text: c for c in runs.candidates(run.id)}
    assert by_text[copied].verdict == "rejected" and by_text[copied].code == "copies_task_text"
    assert "anchor sample" in by_text[copied].reason
    assert by_text[fresh].verdict == "accepted"
    assert [Sample(**s.candidate.payload).plain_text for s in runs.samples(run.id)] == [fresh]
    assert coverage_report(reader.store, "copies").by_reason["copies_task_text"] == {"sample": 1}


def test_another_llm_seed_samples_every_request_anew(reader, fake_llm, demo_data) -> None:
    """Same data and prompts: another seed sends every request again with another seed;
    the same seed again is the same requests, answered from the cache."""
    seed, anchor = demo_data
    fake_llm.default = Reply(content=json.dumps({
        FIRST: "Plan a three day trip to the mountains with a tight budget.",
        SECOND: "Write a short poem about the first snow of winter in the city.",
    }))
    sent = {}
    for name, llm_seed in (("a", 0), ("b", 5), ("c", 5)):
        cfg = _fake_cfg(fake_llm, seed, anchor, strategy="paper", max_features=2)
        cfg = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"seed": llm_seed})})
        before = len(fake_llm.requests)
        prepare_run(cfg, name, reader.store, reader)
        execute(reader.store, name, llm=LLMClient(cfg.llm, store=reader.store), reader=reader)
        sent[name] = {
            next(m["content"] for m in r.body["messages"] if m["role"] == "user"): r.body["seed"]
            for r in fake_llm.requests[before:]
        }
    assert len(sent["a"]) == 4 and sent["b"].keys() == sent["a"].keys()  # none came from the cache
    assert all(sent["b"][p] != sent["a"][p] for p in sent["a"])
    assert sent["c"] == {}  # the same seed: the same requests, all cached
    assert Runs(reader.store).summary("c").samples == Runs(reader.store).summary("b").samples


def test_agent_retries_with_feedback_up_to_the_cap(reader, fake_llm, demo_data, monkeypatch) -> None:
    seed, anchor = demo_data
    fake_llm.default = Reply(content=json.dumps({POSITIVE: "Okay then", NEGATIVE: "Fine thanks"}))  # parses, never usable
    cfg = _fake_cfg(fake_llm, seed, anchor, max_features=2, max_attempts=3)
    run, _ = prepare_run(cfg, "agent", reader.store, reader)
    pools = []  # the run's nodes share one client on one event loop: one HTTP pool for the whole run
    built = AttemptTransport.__init__
    monkeypatch.setattr(AttemptTransport, "__init__", lambda self, *a, **kw: (pools.append(self), built(self, *a, **kw))[1])
    summary = execute(reader.store, "agent", llm=LLMClient(cfg.llm, store=reader.store), reader=reader)
    assert len(pools) == 1
    runs = Runs(reader.store)
    targets = [f for f in runs.features(run.id) if f.attempts]
    assert [f.attempts for f in targets] == [3, 3] and {f.status for f in targets} == {"exhausted"}
    assert len(fake_llm.requests) == 6 and summary.samples == 0
    assert summary.run.stop_reason.startswith("nothing left to target")
    prompts = _user_prompts(fake_llm)
    assert sum("Feedback on your last attempt" in p for p in prompts) == 4
    assert all("not a usable sample (too short" in p for p in prompts if "Feedback" in p)
    assert {c.reason for c in runs.candidates(run.id)} == {"quality: too short: 2 word(s), needs at least 4"}


def test_ctrl_c_stops_the_run_which_resumes_where_it_stopped(reader, fake_llm, demo_data) -> None:
    """Ctrl-C while the run's event loop waits for the LLM: the run is stored as stopped, with
    the reason, and a resume makes only the calls the first session did not finish."""
    seed, anchor = demo_data
    fake_llm.default = Reply(content=json.dumps({POSITIVE: "Okay then", NEGATIVE: "Fine thanks"}), delay_s=0.8)
    cfg = _fake_cfg(fake_llm, seed, anchor, max_features=2, max_attempts=3)
    prepare_run(cfg, "ctrl-c", reader.store, reader)
    done = threading.Event()

    def ctrl_c_on_the_first_call() -> None:  # not a fixed timer: under load the run may not be waiting yet
        while not fake_llm.requests and not done.wait(0.01):
            pass
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=ctrl_c_on_the_first_call, daemon=True)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            execute(reader.store, "ctrl-c", llm=LLMClient(cfg.llm, store=reader.store), reader=reader)
    finally:
        done.set()
        watcher.join()
    assert 1 <= len(fake_llm.requests) <= 2  # stopped while the first batch waited for its replies
    runs = Runs(reader.store)
    stopped = runs.summary("ctrl-c").run
    assert (stopped.status, stopped.stop_reason) == ("stopped", "interrupted (Ctrl-C)")
    summary = execute(reader.store, "ctrl-c", llm=LLMClient(cfg.llm, store=reader.store), reader=reader)
    assert summary.run.status == "done"
    assert reader.store.llm_totals("ctrl-c")["by_outcome"]["ok"] == 6  # 2 features x 3 attempts, none paid twice
    assert [f.attempts for f in runs.features(summary.run.id) if f.attempts] == [3, 3]


def test_a_target_already_met_stops_before_any_call(reader, fake_llm, demo_data) -> None:
    seed, anchor = demo_data
    cfg = _fake_cfg(fake_llm, seed, anchor, target_fac=0.05)
    prepare_run(cfg, "met", reader.store, reader)
    summary = execute(reader.store, "met", llm=LLMClient(cfg.llm, store=reader.store), reader=reader)
    assert summary.run.stop_reason.startswith("target reached") and fake_llm.requests == []


def test_python_api_runs_to_the_budget_then_resumes_with_a_larger_one(reader, fake_llm, demo_data) -> None:
    import facsynth

    seed, anchor = demo_data
    fake_llm.default = Reply(content=json.dumps({POSITIVE: "Okay then", NEGATIVE: "Fine thanks"}))
    llm = {"base_url": fake_llm.url, "model": "fake-model", "temperature": 0.8}
    first = facsynth.synthesize(seed, task="instruction-following", anchor=anchor, run="api", store=reader.store,
                                reader=reader, llm=llm, max_features=2, max_attempts=3, budget={"calls": 3})
    # batches of 2: the second is cut to the one call left, so the run stops at its budget, not past it
    assert first.stop_reason == "budget spent: 3 generator calls (budget 3)" and first.llm_calls == 3
    again = facsynth.resume("api", store=reader.store, reader=reader, budget={"calls": 10})
    assert again.llm_calls == 6 and again.stop_reason.startswith("nothing left to target")
    assert len(fake_llm.requests) == 6  # the three calls of the first session were not made again
    assert [f.attempts for f in again.features if f.attempts] == [3, 3]


@pytest.mark.postgres
def test_a_postgresql_run_checkpoints_there_and_resumes(subject, default_sae, fake_llm, demo_data, pg_url) -> None:
    import facsynth
    from sqlalchemy import create_engine, inspect

    from facsynth.db import Store
    from facsynth.tools.reader import Reader

    seed, anchor = demo_data
    fake_llm.default = Reply(content=json.dumps({POSITIVE: "Okay then", NEGATIVE: "Fine thanks"}))
    llm = {"base_url": fake_llm.url, "model": "fake-model", "temperature": 0.8}
    with Store(pg_url) as store:
        reader = Reader(subject, default_sae, store=store)
        first = facsynth.synthesize(seed, task="instruction-following", anchor=anchor, run="pg", store=store,
                                    reader=reader, llm=llm, max_features=2, max_attempts=2, budget={"calls": 2})
        assert first.stop_reason.startswith("budget spent") and first.llm_calls == 2
        again = facsynth.resume("pg", store=store, reader=reader, budget={"calls": 10})
        assert again.llm_calls == 4 and again.stop_reason.startswith("nothing left")
    engine = create_engine(pg_url)
    try:
        assert {"checkpoints", "checkpoint_writes"} <= set(inspect(engine).get_table_names())  # LangGraph's Postgres saver
    finally:
        engine.dispose()
    assert len(fake_llm.requests) == 4
