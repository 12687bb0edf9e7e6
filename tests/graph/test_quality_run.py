"""The quality rule inside a run (real model and SAE; the generator and the judge are the fake
endpoint, scripted only to force a reply): every verdict keeps its reason code, the LLM
judge's verdict is recorded, and a judge reply that does not parse is a recorded failure
that leaves the decision to the cheap checks."""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from endpoints import Reply

from facsynth.agent.llm import LLMClient
from facsynth.db.runs import Runs
from facsynth.graph.config import RunConfig
from facsynth.graph.prompts import NEGATIVE, POSITIVE, REQUEST_RULE
from facsynth.graph.report import coverage_report
from facsynth.graph.runner import execute, prepare_run
from facsynth.paths import shipped
from facsynth.tools.quality import JUDGE_SYSTEM

pytestmark = pytest.mark.slow

NATURAL = [  # natural requests on the anchor's topics: they pass the cheap checks
    "How do I change the oil filter on a 2012 Honda Civic?",
    "Plan a three day trip to the mountains with a tight budget.",
]


def _scripted() -> Any:
    """Generator: a stub positive (too short) and a natural request as the negative (one with the
    prompt's <<marks>> copied around two of its words). Judge: No
    for the oil filter, a reply that never parses for the trip."""
    calls = itertools.count()

    def reply(body: dict[str, Any]) -> Reply:
        text = "\n".join(str(m["content"]) for m in body["messages"])
        if JUDGE_SYSTEM in text:
            if "oil filter" in text:
                return Reply(content=json.dumps({"reason": "It reads like a car manual index.", "verdict": "No"}))
            return Reply(content="Yes, I think so")  # no JSON: the repair request gets the same
        negative = NATURAL[next(calls) % len(NATURAL)].replace("oil filter", "<<oil filter>>")  # marks copied from the prompt
        return Reply(content=json.dumps({POSITIVE: "Okay then", NEGATIVE: negative}))

    return reply


def test_judge_verdicts_are_recorded_and_a_reply_that_does_not_parse_leaves_the_checks_to_decide(
    reader, fake_llm, demo_data, tmp_path: Path
) -> None:
    seed, anchor = demo_data
    fake_llm.default = _scripted()
    llm = {"base_url": fake_llm.url, "model": "fake-model", "temperature": 0.8, "max_tokens": 320}
    cfg = RunConfig.model_validate({
        "task": "instruction-following", "seed": str(seed), "anchor": str(anchor), "llm": llm,
        "max_features": 2, "max_attempts": 1, "quality_judge": True,
    })
    run, _ = prepare_run(cfg, "judged", reader.store, reader)
    cal = run.config["setup"]["quality"]
    assert cal["corpus"] == "anchor" and cal["n"] == 48 and cal["anchor"]["all"] >= 0.95  # stored for resume
    execute(reader.store, "judged", llm=LLMClient(cfg.llm, store=reader.store), reader=reader)
    generated = [r for r in fake_llm.requests if JUDGE_SYSTEM not in json.dumps(r.body["messages"])]
    assert len(generated) == 2 and all(REQUEST_RULE in json.dumps(r.body["messages"]) for r in generated)
    runs = Runs(reader.store)
    cands = runs.candidates(run.id)
    positives = [c for c in cands if c.role == "positive"]
    assert len(positives) == 2 and {c.code for c in positives} == {"too_short"}
    negatives = {c.payload["text"]: c for c in cands if c.role == "negative"}
    assert set(negatives) == set(NATURAL)  # stored without the <<marks>> the writer copied around its words
    for c in negatives.values():  # both passed the cheap checks: loss, words, distance and request read and stored
        assert c.checks is not None and {"loss", "words", "distance", "request"} <= set(c.checks)
        assert c.target_act is not None and c.target_act <= run.config["setup"]["threshold"]

    said_no = negatives[NATURAL[0]]
    assert (said_no.verdict, said_no.code) == ("rejected", "judge_no")
    assert said_no.reason == "quality: the LLM judge said No: It reads like a car manual index."
    assert (said_no.checks["judge"], said_no.checks["judge_reason"]) == ("No", "It reads like a car manual index.")
    failed = negatives[NATURAL[1]]
    assert failed.verdict == "accepted" and failed.code in ("joined", "example") and failed.checks["judge"] == "failed"

    # every judge call is recorded like any LLM call: one answered, one that did not parse (and its repair)
    with sqlite3.connect(tmp_path / "store.db") as db:
        judged = db.execute(
            "SELECT outcome, count(*) FROM llm_calls WHERE run_id = 'judged' AND purpose = 'verify.judge' GROUP BY outcome"
        ).fetchall()
    assert dict(judged) == {"ok": 1, "parse_error": 2}

    rep = coverage_report(reader.store, "judged")
    assert rep.by_reason["too_short"] == {"positive": 2} and rep.by_reason["judge_no"] == {"negative": 1}
    assert rep.quality is not None and rep.quality.judged == {"No": 1, "failed": 1}
    assert rep.quality.thresholds["max_loss"] == cal["max_loss"] and rep.quality.anchor == cal["anchor"]
    assert rep.covered_by_negatives == (rep.covered_by_run if rep.samples_by_role.get("negative") else 0)


def _sms(tmp_path: Path) -> tuple[Path, Path, int]:
    """(seed, anchor, spam samples in the anchor): 6 real SMS to extend, 60 labelled ones read."""
    sms = shipped("sms_spam")
    seed, anchor = tmp_path / "seed.jsonl", tmp_path / "anchor.jsonl"
    seed.write_text("".join((sms / "seed.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:6]), encoding="utf-8")
    rows = (sms / "anchor.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:60]
    anchor.write_text("".join(rows), encoding="utf-8")
    return seed, anchor, sum(json.loads(r)["label"] == "spam" for r in rows)


@pytest.mark.parametrize("pairs", [True, False])
def test_on_a_labelled_task_the_agent_asks_for_pairs_across_the_label_the_target_marks(
    reader, fake_llm, tmp_path: Path, pairs: bool
) -> None:
    seed, anchor, n_spam = _sms(tmp_path)
    assert 5 <= n_spam <= 55
    fake_llm.default = Reply(content=json.dumps({
        POSITIVE: "WINNER! Claim your free prize now, text WIN to 80086", f"{POSITIVE}_label": "spam",
        NEGATIVE: "Are we still meeting for lunch at noon tomorrow?", f"{NEGATIVE}_label": "ham"}))
    llm = {"base_url": fake_llm.url, "model": "fake-model", "temperature": 0.8, "max_tokens": 320}
    cfg = RunConfig.model_validate({
        "task": "sms-spam", "seed": str(seed), "anchor": str(anchor), "llm": llm, "quality": False,
        "max_features": 24, "batch": 24, "max_attempts": 1, "budget": {"calls": 24},
        # the writer picks both labels unless asked for pairs, and, counting by any sample, nothing names a side
        **({"label_pairs": True} if pairs else {"fac_by_label": False}),
    })
    prepare_run(cfg, "pairs", reader.store, reader)
    execute(reader.store, "pairs", llm=LLMClient(cfg.llm, store=reader.store), reader=reader)
    prompts = [str(r.body["messages"][-1]["content"]) for r in fake_llm.requests]
    assert len(prompts) == 24
    marked = re.compile(r"The theme is typical of (spam|ham) samples \(it shows in (\d+) of (\d+) (spam|ham) samples")
    sides = [m for p in prompts if (m := marked.search(p))]
    runs = Runs(reader.store)
    run = runs.get("pairs")
    halves = [c for c in runs.candidates(run.id) if "label pair" in (c.reason or "")]
    joined = {c.payload["text"]: c.label for s in runs.samples(run.id) for c in [s.candidate] if c.role == "negative"}
    if not pairs:  # the writer picks the labels: no prompt names a side
        assert not sides and not any("a spam sample in the sample format" in p or "a ham sample in the sample format" in p for p in prompts)
        assert not halves
        return
    # the ham half of a spam-marked pair joins the data although it covers little: the pair reaches the data whole
    assert halves and all(c.role == "negative" and c.label == "ham" and c.verdict == "accepted" for c in halves)
    assert joined == {"Are we still meeting for lunch at noon tomorrow?": "ham"}
    # SMS features split by label: spam's cues name spam, with the anchor's own counts
    assert any(m[1] == "spam" for m in sides), prompts[0]
    for p, m in ((p, marked.search(p)) for p in prompts):
        if m is None:
            assert "a spam sample in the sample format" not in p and "a ham sample in the sample format" not in p
            continue
        label, hits, total = m[1], int(m[2]), int(m[3])
        assert total == (n_spam if label == "spam" else 60 - n_spam) and 2 <= hits <= total
        other = "ham" if label == "spam" else "spam"
        assert f'"{POSITIVE}": a {label} sample in the sample format' in p and f'"{NEGATIVE}": a {other} sample on the same subject' in p


def test_by_label_the_seed_covers_less_and_every_credit_carries_the_label_its_feature_marks(
    reader, fake_llm, tmp_path: Path
) -> None:
    seed, anchor, _ = _sms(tmp_path)
    fake_llm.default = Reply(content=json.dumps({
        POSITIVE: "WINNER! Claim your free prize now, text WIN to 80086", f"{POSITIVE}_label": "spam",
        NEGATIVE: "Are we still meeting for lunch at noon tomorrow?", f"{NEGATIVE}_label": "ham"}))
    llm = {"base_url": fake_llm.url, "model": "fake-model", "temperature": 0.8, "max_tokens": 320}
    base = {"task": "sms-spam", "seed": str(seed), "anchor": str(anchor), "llm": llm, "quality": False,
            "batch": 12, "max_attempts": 1, "budget": {"calls": 12}, "negative_min_new": 1}
    blind, _ = prepare_run(RunConfig.model_validate({**base, "fac_by_label": False}), "blind", reader.store, reader)
    cfg = RunConfig.model_validate(base)  # by label by default: the task, the seed and the anchor carry labels
    run, _ = prepare_run(cfg, "by-label", reader.store, reader)
    assert run.config["config"]["fac_by_label"] is True and blind.config["config"]["fac_by_label"] is False
    assert "sides" not in blind.config["setup"]
    sides = {int(f): lab for f, lab in run.config["setup"]["sides"].items()}
    assert set(sides.values()) == {"spam", "ham"} and "coverage by label" in run.feature_set
    # same F; a seed sample covers a feature only with the label it marks, so the seed covers less
    assert run.n_relevant == blind.n_relevant and run.n_seed_covered < blind.n_seed_covered
    execute(reader.store, "by-label", llm=LLMClient(cfg.llm, store=reader.store), reader=reader)
    prompts = [str(r.body["messages"][-1]["content"]) for r in fake_llm.requests]
    assert any("The theme is typical of spam samples" in p for p in prompts)  # the prompt names the side to write
    runs = Runs(reader.store)
    joined = runs.samples(run.id)
    assert joined and any(s.covered for s in joined)
    for s in joined:  # nothing was credited by a sample of the other label
        assert all(sides.get(f, s.candidate.label) == s.candidate.label for f in s.covered), (s.candidate.label, s.covered)
    codes = {c.code for c in runs.candidates(run.id) if c.role == "positive"}
    assert "other_label" in codes or all(sides.get(c.feature) in (None, "spam") for c in runs.candidates(run.id))


def test_by_label_on_a_task_without_labels_is_one_clear_error_and_stores_no_run(reader, demo_data) -> None:
    from facsynth.errors import InputError

    seed, anchor = demo_data
    cfg = RunConfig.model_validate({"task": "instruction-following", "seed": str(seed), "anchor": str(anchor),
                                    "fac_by_label": True})
    with pytest.raises(InputError, match="needs a labelled task"):
        prepare_run(cfg, "no-labels", reader.store, reader)
    assert not [r for r in Runs(reader.store).all() if r.name == "no-labels"]
    # by default such a run counts by any sample, and says so in what it stores
    run, _ = prepare_run(cfg.model_copy(update={"fac_by_label": None}), "by-default", reader.store, reader)
    assert run.config["config"]["fac_by_label"] is False and "sides" not in run.config["setup"]
    assert "coverage by label" not in run.feature_set
