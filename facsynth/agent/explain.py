"""Explaining features and scoring the explanations, with LLM judges.

Four steps, each a small :class:`Step` (after delphi's explainer/scorer split): it asks
the LLM about one feature and returns a typed result; :func:`run_step` runs it over
many features at once (concurrency is bounded by the :class:`LLMClient`) and saves
each result as it arrives.

* :class:`Explainer`: reads a feature's top spans (the first ``n_explain``, each
  trimmed to its last ``trim`` tokens with the peak token marked ``<<like this>>``) and
  writes a one-line explanation, or ``Cannot tell``.
* :class:`ExplanationCheck`: a judge rates the explanation against those spans: Yes /
  Probably / Maybe / No.
* :class:`DetectionScorer` (beyond the paper): the judge sees held-out activating spans
  mixed with random spans from samples where the feature does not fire, shuffled, and
  marks which match the explanation; the score is the balanced accuracy, so weak
  explanations can be filtered by a number.
* :class:`TaskJudge`: labels an explained feature for one task (Yes / Probably / Maybe /
  No) with a short analysis.

Every reply is a pydantic model (structured output through :class:`LLMClient`). A reply
that does not parse, even after the client's repair request, is recorded by the client
as ``parse_error``; here it fails that feature's step (nothing is stored for it) and the
other features go on. Any other error (an unreachable endpoint) stops the run.
"""

from __future__ import annotations

import asyncio
import logging
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field, create_model, field_validator

from facsynth.agent.llm import LLMClient, ReplyParseError
from facsynth.agent.tasks import TaskSpec
from facsynth.db.catalog import CANNOT_TELL, Catalog, Explanation, Relevance, Span

log = logging.getLogger(__name__)

Label = Literal["Yes", "Probably", "Maybe", "No"]
R = TypeVar("R")


# --------------------------------------------------------------------------- replies


class ExplanationReply(BaseModel):
    """The explainer's answer."""

    explanation: str = Field(min_length=1, max_length=300, description=f'One short line, or "{CANNOT_TELL}".')

    @field_validator("explanation")
    @classmethod
    def _one_line(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("the explanation is empty")
        return value


class CheckReply(BaseModel):
    """The explanation check judge's answer."""

    label: Label


class TaskJudgeReply(BaseModel):
    """The task judge's answer: reasoning first, then the label."""

    analysis: str = Field(min_length=1, max_length=800, description="One or two sentences.")
    label: Label


@lru_cache(maxsize=64)
def detection_reply(n: int) -> type[BaseModel]:
    """The detection judge's answer for ``n`` snippets: exactly ``n`` 0/1 marks, in order."""
    return create_model(
        "DetectionReply",
        matches=(list[Literal[0, 1]], Field(min_length=n, max_length=n, description="1: the snippet matches; 0: not")),
    )


# --------------------------------------------------------------------------- prompts


def format_span(span: Span, trim: int = 10, *, mark: bool = True) -> str:
    """The last ``trim`` tokens of a span on one line, the final (peak) token marked ``<<...>>``."""
    tokens = span.tokens[-trim:] if trim > 0 else list(span.tokens)
    if not tokens:
        return ""
    text = "".join(tokens[:-1]) + (f"<<{tokens[-1]}>>" if mark else tokens[-1])
    return text.replace("\r", " ").replace("\n", "\\n").strip()


def _numbered(lines: list[str]) -> str:
    return "\n".join(f"{i}. {line}" for i, line in enumerate(lines, 1))


EXPLAIN_SYSTEM = (
    "You study one feature of a language model. You see short text snippets where the feature fires; in each, "
    "the token where it fires most strongly is marked <<like this>>. Say in one short line (at most 15 words) "
    "what the feature detects: the word, concept, topic or pattern the marked tokens and their context share. "
    f'If the snippets share nothing you can name, answer exactly "{CANNOT_TELL}".'
)
CHECK_SYSTEM = (
    "You check explanations of language-model features. You get an explanation and snippets where the feature "
    "fires most strongly (marked <<like this>>). Does the explanation describe what the marked tokens and their "
    "context have in common? Answer Yes, Probably, Maybe or No."
)
DETECT_SYSTEM = (
    "You test an explanation of a language-model feature. You get the explanation and numbered snippets; some "
    "are text the feature fires on, the others are not. For every snippet, in order, answer 1 if it matches the "
    "explanation and 0 if it does not."
)
JUDGE_SYSTEM = (
    "You decide whether a feature of a language model matters for a task. You get the task (definition and "
    "criteria), the feature's explanation and snippets where it fires (marked <<like this>>). Would training data "
    "that activates this feature matter for the task? Write a short analysis (one or two sentences), then a "
    "label: Yes, Probably, Maybe or No."
)


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class ExplainConfig:
    """Settings of the explanation steps."""

    n_explain: int = 10
    """Top spans the explainer and the check judge read."""
    trim: int = 10
    """Tokens kept from the end of each span."""
    n_context: int = 3
    """Top spans shown to the task judge beside the explanation."""
    max_detect: int = 10
    """Held-out activating spans per detection test (as many random ones join them)."""
    seed: int = 0
    force: bool = False
    """Redo features that already have a result for the step."""


@dataclass
class StepContext:
    """What every step needs: the client, the catalog, whose features, which corpus."""

    client: LLMClient
    catalog: Catalog
    reader_id: int
    dataset_id: int | None
    cfg: ExplainConfig = field(default_factory=ExplainConfig)
    run_id: str | None = None

    @property
    def model(self) -> str:
        return self.client.cfg.model

    def top_spans(self, features: list[int]) -> dict[int, list[Span]]:
        if self.dataset_id is None:
            return {}
        found = self.catalog.spans(self.reader_id, self.dataset_id, features, kinds=("top",))
        return {int(f): v[: self.cfg.n_explain] for f, v in found.items() if f is not None}


class Step(ABC, Generic[R]):
    """One LLM step over features: ``prepare`` once, ``run_one`` per feature, ``save`` each result."""

    name: str = "step"

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx

    def prepare(self, features: list[int]) -> dict[int, str]:
        """Load what the step needs; return the features to skip, each with the reason."""
        return {}

    @abstractmethod
    async def run_one(self, feature: int) -> R:
        """Ask the LLM about one feature."""

    @abstractmethod
    def save(self, feature: int, result: R) -> None:
        """Store one result."""

    async def ask(self, system: str, user: str, schema: type[BaseModel]) -> Any:
        return await self.ctx.client.ainvoke(
            [("system", system), ("user", user)], purpose=self.name, schema=schema, run_id=self.ctx.run_id
        )


class Explainer(Step[Explanation]):
    name = "explain"

    def prepare(self, features: list[int]) -> dict[int, str]:
        self.spans = self.ctx.top_spans(features)
        done = set() if self.ctx.cfg.force else set(self.ctx.catalog.explanations(self.ctx.reader_id, features))
        return {f: "already explained" if f in done else "no spans" for f in features if f in done or f not in self.spans}

    async def run_one(self, feature: int) -> Explanation:
        spans = self.spans[feature]
        lines = [format_span(s, self.ctx.cfg.trim) for s in spans]
        reply = await self.ask(EXPLAIN_SYSTEM, f"Snippets:\n{_numbered(lines)}", ExplanationReply)
        text = reply.explanation
        if text.lower().strip(' ."\'').startswith(CANNOT_TELL.lower()):
            text = CANNOT_TELL
        words = [s.tokens[-1].strip() for s in spans if s.tokens]
        return Explanation(feature, text, self.ctx.model, dataset_id=self.ctx.dataset_id, words=words)

    def save(self, feature: int, result: Explanation) -> None:
        self.ctx.catalog.save_explanation(self.ctx.reader_id, result)


class _ScoresExplanations(Step[R]):
    """A step that needs an explanation that is not ``Cannot tell``."""

    done_attr = ""

    def prepare(self, features: list[int]) -> dict[int, str]:
        self.explanations = self.ctx.catalog.explanations(self.ctx.reader_id, features)
        skip: dict[int, str] = {}
        for f in features:
            e = self.explanations.get(f)
            if e is None:
                skip[f] = "no explanation"
            elif e.cannot_tell:
                skip[f] = "explanation is Cannot tell"
            elif self.done_attr and getattr(e, self.done_attr) is not None and not self.ctx.cfg.force:
                skip[f] = "already scored"
        return skip


class ExplanationCheck(_ScoresExplanations[str]):
    name = "check"
    done_attr = "check_label"

    def prepare(self, features: list[int]) -> dict[int, str]:
        skip = super().prepare(features)
        self.spans = self.ctx.top_spans(features)
        for f in features:
            if f not in skip and f not in self.spans:
                skip[f] = "no spans"
        return skip

    async def run_one(self, feature: int) -> str:
        lines = [format_span(s, self.ctx.cfg.trim) for s in self.spans[feature]]
        user = f"Explanation: {self.explanations[feature].text}\n\nSnippets:\n{_numbered(lines)}"
        reply = await self.ask(CHECK_SYSTEM, user, CheckReply)
        return str(reply.label)

    def save(self, feature: int, result: str) -> None:
        self.ctx.catalog.set_check(self.ctx.reader_id, feature, result, self.ctx.model)


@dataclass(frozen=True)
class Detection:
    """One detection test: which snippets were activating, what the judge said."""

    truth: list[int]
    said: list[int]

    @property
    def balanced_accuracy(self) -> float:
        pos = [s for t, s in zip(self.truth, self.said) if t]
        neg = [s for t, s in zip(self.truth, self.said) if not t]
        return 0.5 * (sum(pos) / len(pos) + sum(1 - s for s in neg) / len(neg))


class DetectionScorer(_ScoresExplanations[Detection]):
    name = "detect"
    done_attr = "detection_score"

    def prepare(self, features: list[int]) -> dict[int, str]:
        skip = super().prepare(features)
        ctx = self.ctx
        if ctx.dataset_id is None:
            return {f: skip.get(f, "no span collection") for f in features}
        info = next((c for c in ctx.catalog.collections(ctx.reader_id, ctx.dataset_id)), None)
        self.delta = info.delta if info is not None else 0.0
        held = ctx.catalog.spans(ctx.reader_id, ctx.dataset_id, features, kinds=("held_out",))
        self.held = {int(f): v[: ctx.cfg.max_detect] for f, v in held.items() if f is not None}
        self.pool = ctx.catalog.random_spans(ctx.reader_id, ctx.dataset_id)
        readings = ctx.catalog.store.stored_features(ctx.reader_id, [s.sample_hash for s in self.pool])
        self.fires = {  # per random span: the features active on its sample
            h: set(sf.feature_ids[sf.max_acts > self.delta].tolist()) for h, sf in readings.items()
        }
        for f in features:
            if f in skip:
                continue
            if not self.held.get(f):
                skip[f] = "no held-out spans"
            elif not self._negatives(f):
                skip[f] = "no random span without the feature"
        return skip

    def _negatives(self, feature: int) -> list[Span]:
        return [s for s in self.pool if s.sample_hash in self.fires and feature not in self.fires[s.sample_hash]]

    async def run_one(self, feature: int) -> Detection:
        rng = random.Random(self.ctx.cfg.seed * 1_000_003 + feature)
        pos = self.held[feature]
        negatives = self._negatives(feature)
        neg = rng.sample(negatives, min(len(pos), len(negatives)))
        items = [(s, 1) for s in pos] + [(s, 0) for s in neg]
        rng.shuffle(items)
        lines = [format_span(s, self.ctx.cfg.trim, mark=False) for s, _ in items]
        user = f"Explanation: {self.explanations[feature].text}\n\nSnippets:\n{_numbered(lines)}"
        reply = await self.ask(DETECT_SYSTEM, user, detection_reply(len(items)))
        return Detection(truth=[t for _, t in items], said=[int(m) for m in reply.matches])

    def save(self, feature: int, result: Detection) -> None:
        self.ctx.catalog.set_detection(
            self.ctx.reader_id, feature, result.balanced_accuracy, len(result.truth), self.ctx.model
        )


class TaskJudge(_ScoresExplanations[TaskJudgeReply]):
    name = "task_judge"

    def __init__(self, ctx: StepContext, task: TaskSpec) -> None:
        super().__init__(ctx)
        self.task = task

    def prepare(self, features: list[int]) -> dict[int, str]:
        skip = super().prepare(features)
        self.spans = self.ctx.top_spans(features)
        if not self.ctx.cfg.force:
            judged = {r.feature for r in self.ctx.catalog.relevance(self.ctx.reader_id, self.task.name, features, "llm_judge")}
            skip.update({f: "already judged" for f in features if f in judged and f not in skip})
        return skip

    async def run_one(self, feature: int) -> TaskJudgeReply:
        t = self.task
        lines = [format_span(s, self.ctx.cfg.trim) for s in self.spans.get(feature, [])[: self.ctx.cfg.n_context]]
        user = (
            f"Task: {t.name}\nDefinition: {t.definition}\nCriteria:\n{t.criteria}\n\n"
            f"Feature explanation: {self.explanations[feature].text}"
            + (f"\nSnippets where it fires:\n{_numbered(lines)}" if lines else "")
        )
        return await self.ask(JUDGE_SYSTEM, user, TaskJudgeReply)

    def save(self, feature: int, result: TaskJudgeReply) -> None:
        row = Relevance(feature, self.task.name, "llm_judge", str(result.label), " ".join(result.analysis.split()), model=self.ctx.model)
        self.ctx.catalog.save_relevance(self.ctx.reader_id, [row])


# --------------------------------------------------------------------------- running


@dataclass
class StepReport:
    """How one step went over a list of features."""

    step: str
    ok: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    """Features whose reply did not parse (after the client's repair request), with the error."""
    skipped: dict[int, str] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.step}: {len(self.ok)} ok, {len(self.failed)} failed, {len(self.skipped)} skipped"


async def run_step(step: Step[Any], features: list[int]) -> StepReport:
    """Run ``step`` over ``features`` concurrently; unparseable replies fail only their feature."""
    report = StepReport(step.name)
    report.skipped = step.prepare(features)
    todo = [f for f in features if f not in report.skipped]

    async def one(feature: int) -> None:
        try:
            result = await step.run_one(feature)
        except ReplyParseError as exc:
            log.warning("%s: feature %d failed: %s", step.name, feature, exc)
            report.failed[feature] = str(exc)
            return
        step.save(feature, result)
        report.ok.append(feature)

    tasks = [asyncio.ensure_future(one(f)) for f in todo]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
    report.ok.sort()
    return report


async def explain_features(
    ctx: StepContext, features: list[int], steps: tuple[str, ...] = ("explain", "check", "detect")
) -> list[StepReport]:
    """Explain, check and detection-score ``features`` (the steps in ``steps``, in that order)."""
    known = {"explain": Explainer, "check": ExplanationCheck, "detect": DetectionScorer}
    unknown = [s for s in steps if s not in known]
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; choose from {', '.join(known)}")
    return [await run_step(known[name](ctx), features) for name in known if name in steps]


async def judge_features(ctx: StepContext, task: TaskSpec, features: list[int]) -> StepReport:
    """Label ``features`` for ``task`` with the task judge (explained features only)."""
    return await run_step(TaskJudge(ctx, task), features)
