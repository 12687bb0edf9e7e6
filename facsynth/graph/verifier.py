"""The verifier node: reads every new candidate through the SAE and settles each attempt.

Per batch it reads the candidates (one forward pass), runs the quality checks of
:mod:`facsynth.tools.quality` (then the LLM judge, when the run asks for it), looks up
duplicates, and lets :mod:`facsynth.graph.acceptance` (the whole acceptance rule) decide;
the store settles each attempt in one transaction (:meth:`facsynth.db.runs.Runs.settle`).
A feature that is still missing goes back to the generator
with feedback until its attempt cap (agent), or after its two steps (paper); then it is
marked exhausted with the reason.

In review mode (``facsynth run --review``) the node stops before settling a batch that would
accept anything (a LangGraph interrupt, kept in the run's checkpoint) until the user has
approved, denied or edited each of those candidates from ``facsynth chat``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from facsynth.agent.llm import LLMClient, ReplyParseError
from facsynth.db.runs import Candidate, Runs, Verdict
from facsynth.graph import directives
from facsynth.graph.acceptance import admit, judge_problem, judge_with, verdict_rule
from facsynth.graph.budget import batch_size, retries_pay, spent, stop_reason
from facsynth.graph.config import RunConfig
from facsynth.graph.context import Resources, RunContext, resources
from facsynth.graph.state import SynthState
from facsynth.graph.prompts import REPLY_ECHOES, task_sample_format
from facsynth.tools.datasets import Sample
from facsynth.tools.quality import (
    JudgeReply,
    Problem,
    judge_messages,
    label_problem,
    model_problem,
    read_signals,
    text_problem,
)
from facsynth.tools.candidates import Reading

log = logging.getLogger(__name__)


async def _judge_all(res: Resources, cfg: RunConfig, pairs: list[tuple[Candidate, Reading]], run_name: str) -> list[Verdict]:
    """Verdicts on one batch: text checks (copies of the seed's or the anchor's text included),
    then the model checks (one forward for the batch), duplicates and the target; the LLM
    judge (``quality_judge``) last, on those still accepted."""
    dups = res.duplicates()
    samples = [Sample(**c.payload) for c, _ in pairs]
    problems: list[Problem | None] = [text_problem(s, min_words=cfg.min_words, echoes=REPLY_ECHOES) for s in samples]
    copies = res.copies()
    for i, ((c, _), s) in enumerate(zip(pairs, samples)):
        if problems[i] is None and c.text_hash not in dups.hashes:  # the same text as a seed sample: a duplicate
            problems[i] = copies.problem(s.plain_text)
    checks: list[dict[str, Any] | None] = [None] * len(pairs)
    cal, index = res.quality()
    todo = [i for i, p in enumerate(problems) if p is None]
    if cal is not None and index is not None and todo:
        signals = read_signals(res.reader.encoder, [samples[i] for i in todo],
                               [pairs[i][1].features.pooled for i in todo], index)
        for i, sig in zip(todo, signals):
            checks[i] = sig.as_dict()
            problems[i] = model_problem(sig, cal)
            if problems[i] is None and cal.label is not None:  # a labelled task: the label must fit the text
                problems[i], prob = label_problem(pairs[i][1].features.pooled, pairs[i][0].label, cal.label)
                checks[i]["label_prob"] = round(prob, 4)
    rule = verdict_rule(cfg)
    dup = [dups.check(c.text_hash, r.features, text=s.plain_text) if p is None else None
           for (c, r), p, s in zip(pairs, problems, samples)]
    sides = {c.feature: res.label_side(c.feature) for c, _ in pairs} if rule.pair_joins else {}
    marks = {f: s.label for f, s in sides.items() if s is not None}
    sides_by_label = res.sides  # fac_by_label: a candidate credits only what its own label covers

    def decide() -> list[Verdict]:
        return [
            judge_with(rule, c, r, threshold=res.threshold, delta=res.delta, duplicate=d, problem=p, checks=k,
                       marks=marks.get(c.feature), sides=sides_by_label)
            for (c, r), d, p, k in zip(pairs, dup, problems, checks)
        ]

    verdicts = decide()
    asked = [i for i, v in enumerate(verdicts) if v.verdict == "accepted"]
    if cfg.quality_judge and res.llm is not None and asked:
        replies = await _ask_judge(res, [samples[i] for i in asked], run_name)
        for i, reply in zip(asked, replies):
            checks[i] = dict(checks[i] or {})
            checks[i]["judge"] = "failed" if reply is None else reply.verdict
            if reply is not None:
                checks[i]["judge_reason"] = reply.reason
            problems[i] = judge_problem(reply)  # a reply that did not parse: the cheap signals decide
        verdicts = decide()
    return verdicts


async def _ask_judge(res: Resources, samples: list[Sample], run_name: str) -> list[JudgeReply | None]:
    """The LLM judge on each sample (recorded by the client as ``verify.judge``); None where
    the reply did not parse even after the repair request (recorded as ``parse_error``)."""
    llm: LLMClient = res.llm  # type: ignore[assignment]
    fmt = task_sample_format(res.task)

    async def one(sample: Sample) -> JudgeReply | None:
        try:
            return await llm.ainvoke(judge_messages(sample.plain_text, definition=res.task.definition, sample_format=fmt),
                                     purpose="verify.judge", schema=JudgeReply, run_id=run_name)
        except ReplyParseError as exc:
            log.info("quality judge reply did not parse: %s", exc)
            return None

    return list(await asyncio.gather(*(one(s) for s in samples)))


def _settle_feature(
    res: Resources, cfg: RunConfig, feature: int, attempt: int, pairs: list[tuple[Candidate, Reading]],
    verdicts: list[Verdict],
) -> None:
    runs = Runs(res.store)
    if cfg.strategy == "paper":
        exhausted = "the paper pipeline's two steps did not cover it" if attempt >= 2 else None
    elif cfg.strategy == "unguided":
        exhausted = "unguided: its one call slot is spent"
    elif attempt >= cfg.max_attempts:
        fs = runs.feature(res.run.id, feature)
        best = max([v.target_act for v, (c, _) in zip(verdicts, pairs) if c.role != "negative"] + [fs.best_act or 0.0 if fs else 0.0])
        exhausted = f"{attempt} attempt(s) reached at most {best:.2f}, needs > {res.threshold:g}"
    else:
        exhausted = None
    runs.settle(res.run.id, feature, verdicts, admit=admit, exhausted_reason=exhausted)
    # only what joined the data guards against duplicates (an accepted negative that
    # credited too few features did not), as the index rebuilt on resume has it
    joined = runs.sample_ids(res.run.id, [v.candidate_id for v in verdicts if v.accept])
    for c, r in pairs:
        if c.id in joined:
            res.add_duplicate(joined[c.id], c.text_hash, r.features, text=Sample(**c.payload).plain_text)


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
                v.verdict, v.reason, v.accept, v.code = "rejected", "rejected in review", False, "denied_in_review"


async def verifier(state: SynthState, runtime: Runtime[RunContext]) -> SynthState:
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
            plans.append((feature, attempt, pairs, await _judge_all(res, cfg, pairs, run.name)))
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
    if len(retry) > (n := batch_size(cfg, used)):  # retry only what the call budget has left calls for
        runs.set_feature_status(run.id, retry[n:], "pending", only_from=("in_progress",))
        retry = retry[:n]
    if res.claims is not None:  # settled features are free again; a retry stays this worker's
        res.claims.release(keep=retry)
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

