"""The verifier node: reads every new candidate through the SAE and settles each attempt.

A candidate with too few words, or one that only repeats the reply format, is rejected
whatever it fires. A positive (or a paper-strategy sample) is accepted when the target's
activation exceeds the run's threshold and it is neither an exact nor a near duplicate of
the seed or of an accepted sample; it becomes a sample of the run and covers every missing
feature it fires (:meth:`facsynth.db.runs.Runs.settle`, one transaction). A negative is
accepted when the target stays at or below the threshold; it joins the samples too when it
fires at least ``negative_min_new`` missing features nothing covers yet (a natural sample
on the target's topic, and the contrast to its positive). A feature that is still missing goes back to the generator
with feedback until its attempt cap (agent), or after its two steps (paper); then it is
marked exhausted with the reason.

In review mode (``facsynth run --review``) the node stops before settling a batch that would
accept anything (a LangGraph interrupt, kept in the run's checkpoint) until the user has
approved, denied or edited each of those candidates from ``facsynth chat``.
"""

from __future__ import annotations

import logging

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from facsynth.db.runs import Candidate, Runs, Verdict
from facsynth.graph import directives
from facsynth.graph.budget import spent, stop_reason
from facsynth.graph.config import RunConfig
from facsynth.graph.planner import retries_pay
from facsynth.graph.context import Resources, RunContext, resources
from facsynth.graph.state import SynthState
from facsynth.tools.datasets import Sample
from facsynth.graph.prompts import REPLY_ECHOES
from facsynth.tools.verifier import Reading, quality_problem

log = logging.getLogger(__name__)


def judge(
    c: Candidate, r: Reading, *, threshold: float, delta: float, adds: bool, duplicate: str | None,
    problem: str | None = None, negative_min_new: int = 3,
) -> Verdict:
    """The verdict on one candidate (pure). ``problem``: why it is no usable sample at all;
    ``negative_min_new``: missing features an accepted negative must cover to join the data
    (0: negatives never join)."""
    act = r.target_act
    common = {
        "candidate_id": c.id, "target_act": act, "span": r.span, "feature_ids": r.features.feature_ids,
        "max_acts": r.features.max_acts, "fires": [int(f) for f in r.fires(delta)],
    }
    if problem is not None:
        return Verdict(**common, verdict="rejected", reason=f"quality: {problem}")
    if c.role == "negative":
        if act > threshold:
            return Verdict(**common, verdict="rejected", reason=f"negative fires the target: {act:.2f} > {threshold:g}")
        return Verdict(**common, verdict="accepted", reason=f"negative stays below: {act:.2f} <= {threshold:g}",
                       accept=adds and duplicate is None and negative_min_new > 0, min_new=max(negative_min_new, 1))
    if act <= threshold:
        return Verdict(**common, verdict="rejected", reason=f"target reached {act:.2f}, needs > {threshold:g}")
    if duplicate is not None:
        return Verdict(**common, verdict="duplicate", reason=duplicate)
    return Verdict(**common, verdict="accepted", reason=f"target fires: {act:.2f} > {threshold:g}", accept=adds)


def _judge_all(res: Resources, cfg: RunConfig, pairs: list[tuple[Candidate, Reading]]) -> list[Verdict]:
    dups = res.duplicates()
    verdicts = []
    for c, r in pairs:
        problem = quality_problem(Sample(**c.payload), min_words=cfg.min_words, echoes=REPLY_ECHOES)
        dup = dups.check(c.text_hash, r.features) if problem is None else None
        adds = cfg.strategy == "agent" or c.step == 2
        verdicts.append(judge(c, r, threshold=res.threshold, delta=res.delta, adds=adds, duplicate=dup, problem=problem,
                              negative_min_new=cfg.negative_min_new))
    return verdicts


def _settle_feature(
    res: Resources, cfg: RunConfig, feature: int, attempt: int, pairs: list[tuple[Candidate, Reading]],
    verdicts: list[Verdict],
) -> None:
    runs = Runs(res.store)
    if cfg.strategy == "paper":
        exhausted = "the paper pipeline's two steps did not cover it" if attempt >= 2 else None
    elif attempt >= cfg.max_attempts:
        fs = runs.feature(res.run.id, feature)
        best = max([v.target_act for v, (c, _) in zip(verdicts, pairs) if c.role != "negative"] + [fs.best_act or 0.0 if fs else 0.0])
        exhausted = f"{attempt} attempt(s) reached at most {best:.2f}, needs > {res.threshold:g}"
    else:
        exhausted = None
    runs.settle(res.run.id, feature, verdicts, exhausted_reason=exhausted)
    # only what joined the data guards against duplicates (an accepted negative that
    # credited too few features did not), as the index rebuilt on resume has it
    joined = runs.sample_ids(res.run.id, [v.candidate_id for v in verdicts if v.accept])
    dups = res.duplicates()
    for c, r in pairs:
        if c.id in joined:
            dups.add(f"accepted sample {joined[c.id]}", c.text_hash, r.features)


def _review(runs: Runs, run_id: int, run_name: str, plans: list[tuple[int, int, list, list[Verdict]]]) -> None:
    """Review mode: stop the graph (a LangGraph interrupt) until the user has decided on every
    candidate the verifier would accept; then apply the decisions stored by the chat.

    On resume the node runs again from its start, so the candidates (an edited one with its
    new text) are read again and judged again before the decisions apply.
    """
    proposed = [v.candidate_id for *_, verdicts in plans for v in verdicts if v.accept]
    if not proposed:
        return
    runs.propose(run_id, proposed)
    interrupt({"run": run_name, "review": proposed})
    decided = {c.id: c.review for c in runs.pending_review(run_id)}
    for *_, verdicts in plans:
        for v in verdicts:
            if v.accept and decided.get(v.candidate_id) == "deny":
                v.verdict, v.reason, v.accept = "rejected", "rejected in review", False


def verifier(state: SynthState, runtime: Runtime[RunContext]) -> SynthState:
    res = resources(runtime.context)
    runs = Runs(res.store)
    run, steer = directives.current(runs, res.run.name)
    cfg = steer.cfg
    batch = list(state.get("batch", []))
    work: list[tuple[int, int, list[Candidate]]] = []
    for feature in batch:
        fs = runs.feature(run.id, feature)
        if fs is None or fs.attempts == 0:
            continue
        work.append((feature, fs.attempts, runs.candidates(run.id, feature, attempt=fs.attempts, unverified=True)))
    flat = [c for _, _, cands in work for c in cands]
    readings = res.verifier.read([Sample(**c.payload) for c in flat], [c.feature for c in flat]) if flat else []
    by_id = {c.id: r for c, r in zip(flat, readings)}
    plans = []
    for feature, attempt, cands in work:
        fs = runs.feature(run.id, feature)
        if fs is not None and (cands or (fs.status == "in_progress" and _no_reply(runs, run.id, feature, attempt))):
            pairs = [(c, by_id[c.id]) for c in cands]
            plans.append((feature, attempt, pairs, _judge_all(res, cfg, pairs)))
    if cfg.review:
        _review(runs, run.id, run.name, plans)
    for feature, attempt, pairs, verdicts in plans:
        _settle_feature(res, cfg, feature, attempt, pairs, verdicts)
    used = spent(res.store, run.name, res.elapsed_s())
    runs.add_progress(run.id, llm_calls=used.calls, tokens=used.tokens, elapsed_s=used.seconds)
    retry = [f for f in batch if (fs := runs.feature(run.id, f)) is not None and fs.status == "in_progress"]
    if retry and (stop_reason(runs.summary(run.id), cfg, used) is not None or _queue_first(runs, run.id, cfg)):
        runs.set_feature_status(run.id, retry, "pending", only_from=("in_progress",))
        retry = []
    return {"batch": retry}


def _queue_first(runs: Runs, run_id: int, cfg: RunConfig) -> bool:
    """Agent: send rejected features back to the planner's queue (not straight to the
    generator) while retries pay less than fresh features and fresh ones are left."""
    if cfg.strategy != "agent" or retries_pay(*runs.yields(run_id)):
        return False
    return any(f.attempts == 0 for f in runs.features(run_id, ["pending"]))


def _no_reply(runs: Runs, run_id: int, feature: int, attempt: int) -> bool:
    """True when ``attempt`` stored no candidate at all (its reply did not parse)."""
    return not runs.candidates(run_id, feature, attempt=attempt)

