"""The acceptance rule: when a candidate joins the run's data, and what it credits.

The whole rule is here, in pure functions; the verifier node gathers their inputs and the
store (:meth:`facsynth.db.runs.Runs.settle`) persists what they decide.

1. **Usable or not** (:func:`judge`'s ``problem``). A candidate that is no usable sample of
   the task is rejected whatever it fires, positive or negative alike. The checks, in order,
   live in :mod:`facsynth.tools.quality`: the text checks; the model checks calibrated on the
   anchor (fluent, on topic, a request); on a labelled task a label the anchor-trained probe
   finds unlikely; then, when the run asks for it, an LLM judge's No (:func:`judge_problem`).
2. **What it shows** (:func:`judge`). A positive (or a paper-strategy sample) is accepted
   when its target's activation exceeds the run's threshold and it is neither an exact nor a
   near duplicate (:class:`facsynth.tools.candidates.DuplicateIndex`) of the seed or of a
   sample that joined. A negative is accepted when the target stays at or below the
   threshold. The unguided baseline has no target: a usable non-duplicate is accepted.
3. **Whether it joins** (:func:`admit`, at settlement, inside the store's transaction). An
   accepted candidate joins the samples unless a sample of the run has the same normalized
   text. One that carries ``min_new`` (a negative, or an agent's usable positive that missed
   its target) joins only when it fires at least that many features no sample covers yet
   (a natural sample on the target's topic, and the contrast to its positive). With
   ``label_pairs``, the contrast sample of a pair written across the label boundary (its label
   is not the one its target marks) carries none: a usable sample of the other label joins as
   it is, so the minimal pair reaches the data whole. What joins credits every missing feature
   it fires.

:func:`verdict_rule` says which of these knobs a run's strategy and config turn on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from facsynth.db.runs import Admission, Candidate, Verdict
from facsynth.graph.config import RunConfig
from facsynth.tools.candidates import Reading
from facsynth.tools.quality import JudgeReply, Problem
from facsynth.tools.sides import covers


@dataclass(frozen=True)
class VerdictRule:
    """The strategy-dependent knobs of :func:`judge` for one run."""

    negative_min_new: int
    """Missing features an accepted negative must cover to join the data (0: never joins)."""
    needs_target: bool
    """False for the unguided baseline, whose samples target no feature."""
    miss_min_new: int
    """A usable positive that misses its target still joins with this many new features (0: never)."""
    paper: bool
    """Paper strategy: only step-2 samples join the data (step 1 writes examples)."""
    pair_joins: bool = False
    """Agent with ``label_pairs``: a usable contrast sample written with the other label joins
    the data without covering anything new (the label pair's second half)."""

    def adds(self, candidate: Candidate) -> bool:
        """Whether an accepted ``candidate`` may join the data at all."""
        return not self.paper or candidate.step == 2


def verdict_rule(cfg: RunConfig) -> VerdictRule:
    """The rule a run's config asks for: the agent lets a usable positive that missed its
    target join on a negative's terms; paper and unguided do not."""
    return VerdictRule(
        negative_min_new=cfg.negative_min_new,
        needs_target=cfg.strategy != "unguided",
        miss_min_new=cfg.negative_min_new if cfg.strategy == "agent" else 0,
        paper=cfg.strategy == "paper",
        pair_joins=cfg.strategy == "agent" and cfg.label_pairs,
    )


def judge(
    c: Candidate, r: Reading, *, threshold: float, delta: float, adds: bool, duplicate: str | None,
    problem: Problem | None = None, negative_min_new: int = 3, checks: dict[str, Any] | None = None,
    needs_target: bool = True, miss_min_new: int = 0, other_label: bool = False, sides: dict[int, str] | None = None,
) -> Verdict:
    """The verdict on one candidate (pure). ``problem``: why it is no usable sample at all
    (text, model or LLM-judge check, :mod:`facsynth.tools.quality`), for positives and
    negatives alike; ``negative_min_new``: missing features an accepted negative must cover
    to join the data (0: negatives never join); ``checks``: the signals, stored with it;
    ``needs_target``: False for the unguided baseline, whose samples target no feature;
    ``miss_min_new``: a usable positive that misses its target still joins the data when it
    covers this many missing features (0: never; the agent uses ``negative_min_new``), while
    its target goes back to the generator as rejected; ``other_label``: a negative that is the
    other-label half of a label pair, which joins when usable whatever it covers; ``sides``
    (``fac_by_label``): the label each feature marks, so that the candidate credits only the
    features its own label covers (:func:`covers`), and a positive written with another label
    than its target marks misses the target."""
    act = r.target_act
    common = {
        "candidate_id": c.id, "target_act": act, "span": r.span, "feature_ids": r.features.feature_ids,
        "max_acts": r.features.max_acts, "fires": [int(f) for f in r.fires(delta) if covers(int(f), c.label, sides)],
        "checks": checks,
    }
    if problem is not None:
        return Verdict(**common, verdict="rejected", reason=f"quality: {problem.message}", code=problem.code)
    if c.role == "negative":
        if act > threshold:
            return Verdict(**common, verdict="rejected", reason=f"negative fires the target: {act:.2f} > {threshold:g}",
                           code="fires_target")
        if other_label:  # a label pair's contrast: a usable sample of the other label joins as it is
            joins = adds and duplicate is None
            return Verdict(**common, verdict="accepted", reason=f"negative stays below: {act:.2f} <= {threshold:g} "
                           "(the other label's half of a label pair)", accept=joins, code="joined" if joins else "example")
        joins = adds and duplicate is None and negative_min_new > 0
        return Verdict(**common, verdict="accepted", reason=f"negative stays below: {act:.2f} <= {threshold:g}",
                       accept=joins, min_new=max(negative_min_new, 1), code="joined" if joins else "example")
    if not needs_target:
        if duplicate is not None:
            return Verdict(**common, verdict="duplicate", reason=duplicate, code="duplicate")
        return Verdict(**common, verdict="accepted", reason="unguided sample: a usable sample of the task", accept=adds,
                       code="joined" if adds else "example")
    if act > threshold and not covers(c.feature, c.label, sides):
        joins = miss_min_new > 0 and adds and duplicate is None
        return Verdict(**common, verdict="rejected", reason=f"target fires ({act:.2f}) but marks the label "
                       f"{sides[c.feature]!r} (sides: by label), not {c.label!r}"  # type: ignore[index]
                       + (f" (joins if it covers {miss_min_new}+ missing features)" if joins else ""),
                       code="other_label", accept=joins, min_new=max(miss_min_new, 1))
    if act <= threshold:
        joins = miss_min_new > 0 and adds and duplicate is None
        return Verdict(**common, verdict="rejected", reason=f"target reached {act:.2f}, needs > {threshold:g}"
                       + (f" (joins if it covers {miss_min_new}+ missing features)" if joins else ""),
                       code="target_not_fired", accept=joins, min_new=max(miss_min_new, 1))
    if duplicate is not None:
        return Verdict(**common, verdict="duplicate", reason=duplicate, code="duplicate")
    return Verdict(**common, verdict="accepted", reason=f"target fires: {act:.2f} > {threshold:g}", accept=adds,
                   code="joined" if adds else "example")


def judge_with(
    rule: VerdictRule, c: Candidate, r: Reading, *, threshold: float, delta: float, duplicate: str | None,
    problem: Problem | None, checks: dict[str, Any] | None, marks: str | None = None, sides: dict[int, str] | None = None,
) -> Verdict:
    """:func:`judge` with a run's :class:`VerdictRule`; ``marks``: the label the candidate's
    target marks, where the run writes label pairs and the anchor shows one; ``sides``: the
    run's labels by feature when it counts coverage by label (``fac_by_label``)."""
    other = rule.pair_joins and c.role == "negative" and marks is not None and c.label is not None \
        and c.label.strip().lower() != marks.strip().lower()
    return judge(c, r, threshold=threshold, delta=delta, adds=rule.adds(c), duplicate=duplicate, problem=problem,
                 negative_min_new=rule.negative_min_new, checks=checks, needs_target=rule.needs_target,
                 miss_min_new=rule.miss_min_new, other_label=other, sides=sides)


def judge_problem(reply: JudgeReply | None) -> Problem | None:
    """The LLM judge's No as a :class:`Problem` (pure); a Yes, or no usable reply, is none."""
    if reply is None or reply.verdict == "Yes":
        return None
    return Problem("judge_no", f"the LLM judge said No: {reply.reason}")


def admit(v: Verdict, *, role: str, same_text_as: int | None, credits: Sequence[int]) -> Admission:
    """Whether an accepted candidate joins the data (pure), given ``same_text_as`` (the id of
    a sample of the run with the same normalized text, or None) and ``credits`` (the missing
    features it fires that no sample covers yet, read in the settling transaction)."""
    if same_text_as is not None:
        if not v.min_new:
            return Admission(False, code="duplicate", verdict="duplicate", reason=f"same text as accepted sample {same_text_as}")
        return Admission(False, code="example" if role == "negative" else None)
    if len(credits) < v.min_new:  # a valid negative (or missed positive) that adds too little: contrast only
        return Admission(False, code="example" if role == "negative" else None)
    return Admission(True, code="joined")
