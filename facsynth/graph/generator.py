"""The generator node: one LLM call per target feature, written from the store.

For each feature of the batch it reads what the store knows (explanation, anchor spans,
earlier candidates with their activations and verdicts, the user's style directives),
renders the step-1 or step-2 prompt (:mod:`facsynth.graph.prompts`), and asks for a
structured reply. The calls of a batch run concurrently on the run's event loop and its one LLM client
(bounded by the client).
The candidates are stored with the attempt they belong to; an attempt whose candidates
are stored but not verified yet (a stop came between) is not generated again, and a
prompt answered before is served from the client's cache, so a resumed run never pays
twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from langgraph.runtime import Runtime
from pydantic import BaseModel

from facsynth.agent.llm import LLMClient, ReplyParseError, request_key, to_messages
from facsynth.db.runs import Candidate, Runs
from facsynth.errors import LLMError
from facsynth.graph import directives
from facsynth.graph.config import RunConfig
from facsynth.graph.context import Resources, RunContext, resources
from facsynth.graph.prompts import GenerationRequest, Shown, render, reply_examples, reply_model
from facsynth.graph.state import SynthState
from facsynth.tools.datasets import Sample
from facsynth.tools.quality import ADVICE, unmark
from facsynth.tools.candidates import span_text, text_hash

log = logging.getLogger(__name__)

AGENT_EXAMPLES = 2
"""Seed samples each agent prompt shows, for the task's format and register."""


@dataclass
class _Job:
    feature: int
    attempt: int
    step: int
    messages: list[tuple[str, str]]
    schema: type[BaseModel]


def _shown(c: Candidate) -> Shown:
    return Shown(Sample(**c.payload).plain_text, float(c.target_act or 0.0), span_text(c.span))


def build_request(res: Resources, cfg: RunConfig, feature: int, attempt: int, style: list[str]) -> GenerationRequest:
    """The prompt inputs of ``attempt`` for ``feature`` (all read from the store)."""
    requests = res.calibration is not None and cfg.quality and res.calibration.request_check
    if cfg.strategy == "unguided":  # the feature is only a call slot: seed examples, nothing about features
        return GenerationRequest(
            feature=feature, step=1, strategy="unguided", task=res.task, explanation=None, spans=[],
            threshold=res.threshold, style=list(style), examples=res.seed_examples(feature), request=requests,
        )
    runs = Runs(res.store)
    history = [c for c in runs.candidates(res.run.id, feature) if c.verdict is not None and c.attempt < attempt]
    anchor = res.anchor_spans(feature)
    spans = [text for text, _ in anchor]
    if cfg.strategy == "paper":
        step = 1 if attempt == 1 else 2
    else:
        step = 2 if history else 1
    req = GenerationRequest(
        feature=feature, step=step, strategy=cfg.strategy, task=res.task, explanation=res.explanation(feature),
        spans=spans, threshold=res.threshold, style=list(style), request=requests,
        examples=res.seed_examples(feature, n=AGENT_EXAMPLES) if cfg.strategy == "agent" else [],
        side=res.label_side(feature) if cfg.strategy == "agent" and (cfg.label_pairs or cfg.fac_by_label) else None,
    )
    if step == 2:
        usable = [c for c in history if not (c.reason or "").startswith("quality:")]  # no echo or stub as an example
        writers = [c for c in usable if c.role != "negative"]
        ranked = sorted(writers, key=lambda c: float(c.target_act or 0.0), reverse=True)
        strong = ranked[0] if ranked else None
        from_data = None
        if anchor:
            text, act = anchor[0]
            from_data = Shown(text.replace("<<", "").replace(">>", ""), act, text, source="the data")
        best_act = float(strong.target_act or 0.0) if strong is not None else 0.0
        if cfg.strategy == "agent" and from_data is not None and from_data.activation > best_act:
            req.strong = from_data  # the agent shows the strongest example it has, whoever wrote it
        elif strong is not None and best_act > 0:
            req.strong = _shown(strong)
        elif from_data is not None:  # the paper's fallback: the best anchor span is the strong example
            req.strong = from_data
        weak_pool = [c for c in usable if c.role == "negative"] or ranked[1:]
        if weak_pool:
            req.weak = _shown(min(weak_pool, key=lambda c: float(c.target_act or 0.0)))
    if cfg.strategy == "agent" and history:
        req.feedback = feedback(history, attempt - 1, res.threshold)
    return req


def feedback(history: list[Candidate], attempt: int, threshold: float) -> list[str]:
    """What the verifier said about ``attempt``, for the next prompt: every rejection's reason
    (a failed quality check with what to change, :data:`facsynth.tools.quality.ADVICE`)."""
    last = [c for c in history if c.attempt == attempt]
    if not last:
        return ["your last reply could not be read as the requested JSON; follow the format exactly"]
    lines = []
    for c in last:
        act = float(c.target_act or 0.0)
        where = f"; it fired most at: {span_text(c.span)}" if c.span else ""
        if c.verdict == "rejected" and (c.reason or "").startswith("quality:"):
            advice = ADVICE.get(c.code or "", "write a full, natural one")
            lines.append(f"the {c.role} was not a usable sample ({c.reason.removeprefix('quality: ')}): {advice}")
        elif c.code == "denied_in_review":
            lines.append(f"the user rejected the {c.role} in review: write a different one")
        elif c.role == "negative":
            if c.verdict == "rejected":
                lines.append(f"the negative fired the feature too ({act:.1f} > {threshold:.1f}){where}: leave that out of it")
        elif c.verdict == "duplicate":
            lines.append(f"the positive repeated existing data ({c.reason}): write something new")
        elif c.code == "other_label":
            lines.append(f"the positive fired the feature ({act:.1f}) but was labelled {c.label!r}: write it with "
                         "the label this feature marks, with a text that fits that label")
        elif c.verdict == "rejected":
            lines.append(
                f"the positive reached only {act:.1f} (needs more than {threshold:.1f}){where}; "
                "make the theme central and use its key words verbatim, as a natural part of the sample"
            )
    return lines or ["try a different wording"]


async def _call_all(llm: LLMClient, jobs: list[_Job], run: str) -> list[BaseModel | None]:
    async def one(job: _Job) -> BaseModel | None:
        try:
            return await llm.ainvoke(
                job.messages, purpose=f"generate.step{job.step}", schema=job.schema, run_id=run, variant=job.attempt
            )
        except ReplyParseError as exc:
            log.info("feature %d attempt %d: reply did not parse: %s", job.feature, job.attempt, exc)
            return None

    return list(await asyncio.gather(*(one(j) for j in jobs)))


async def generator(state: SynthState, runtime: Runtime[RunContext]) -> SynthState:
    res = resources(runtime.context)
    if res.llm is None:
        raise LLMError("this run has no LLM client")
    runs = Runs(res.store)
    run, steer = directives.current(runs, res.run.name)
    cfg = steer.cfg
    jobs: list[_Job] = []
    for feature in state.get("batch", []):
        fs = runs.feature(run.id, feature)
        if fs is None:
            continue
        if fs.attempts and runs.candidates(run.id, feature, attempt=fs.attempts, unverified=True):
            continue  # generated before a stop; the verifier reads them next
        attempt = fs.attempts + 1
        req = build_request(res, cfg, feature, attempt, steer.style)
        jobs.append(_Job(feature, attempt, req.step, render(req), reply_model(cfg.strategy, res.task)))
    replies = await _call_all(res.llm, jobs, run.name) if jobs else []
    for job, reply in zip(jobs, replies):
        key = request_key(res.llm.cfg, to_messages(job.messages), job.schema, job.attempt)
        cands = []
        if reply is not None:
            for idx, (role, text, label) in enumerate(reply_examples(cfg.strategy, reply)):
                sample = Sample(text=unmark(text))  # the prompt's <<key word>> marks, copied inline
                cands.append(
                    Candidate(
                        feature=job.feature, attempt=job.attempt, step=job.step, idx=idx, role=role,
                        payload=sample.payload, text_hash=text_hash(sample), prompt_hash=key, model=res.llm.cfg.model,
                        label=label,
                    )
                )
        runs.add_candidates(run.id, job.feature, job.attempt, cands)
    return {}
