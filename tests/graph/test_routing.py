"""The graph's decisions without an LLM: routing, target choice, verdicts, budgets, directives."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from langgraph.graph import END

from facsynth.db.runs import HELD_BACK, Candidate, Directive, FeatureState, RunRecord, Summary
from facsynth.graph.budget import Spent, stop_reason
from facsynth.graph.config import RunConfig
from facsynth.graph.directives import apply
from facsynth.graph.planner import choose
from facsynth.graph.routing import after_planner, after_verifier

NOW = datetime.now(timezone.utc)


def test_planner_routes_to_the_generator_until_it_gives_a_stop_reason() -> None:
    assert after_planner({"batch": [3], "stop_reason": None}) == "generator"
    assert after_planner({"batch": [], "stop_reason": "budget spent"}) == END
    assert after_planner({"batch": [3], "stop_reason": "target reached"}) == END


def test_verifier_routes_rejections_back_to_the_generator() -> None:
    assert after_verifier({"batch": [7]}) == "generator"
    assert after_verifier({"batch": []}) == "planner"


def fs(feature: int, status: str = "pending", attempts: int = 0, priority: float = 0.0, reason: str | None = None) -> FeatureState:
    return FeatureState(feature, status, attempts, priority, None, reason, None)


def test_agent_picks_left_over_work_then_focus_then_priority_and_skips_the_excluded() -> None:
    features = [fs(1, priority=0.9), fs(2, priority=0.1), fs(3, "in_progress", 1), fs(4, priority=0.5),
                fs(5, "covered"), fs(6, "exhausted", 4), fs(7, priority=5.0)]
    assert choose(features, 3, strategy="agent", focus={2}, exclude={7}) == [3, 2, 1]
    assert choose(features, 10, strategy="agent", focus=set(), exclude=set()) == [3, 7, 1, 4, 2]


def test_paper_walks_the_initial_missing_list_by_priority_even_when_covered_meanwhile() -> None:
    features = [fs(9, priority=0.5), fs(2, "covered", priority=0.1), fs(5, attempts=2, priority=9.0),
                fs(4, "exhausted", 2), fs(1, priority=0.5), fs(3, "excluded", priority=3.0),
                fs(8, "covered", priority=7.0, reason=HELD_BACK)]  # held back, then covered by a sample
    assert choose(features, 5, strategy="paper", focus=set(), exclude=set()) == [1, 9, 2]


def cand(role: str, step: int = 1) -> Candidate:
    return Candidate(feature=1, attempt=1, step=step, idx=0, role=role, payload={"text": "x"}, text_hash="t",
                     prompt_hash="p", model="m", id=11)


def summary(n_relevant: int, seed: int, covered: int) -> Summary:
    run = RunRecord(1, "r", "running", "agent", "t", 1, {}, "", n_relevant, seed, None, 0.0, NOW, NOW)
    return Summary(run, {}, covered, covered, 0, 0, 0)


def cfg(**kw: object) -> RunConfig:
    return RunConfig.model_validate({"task": "toxicity", "seed": "s.jsonl", **kw})


def test_stop_reasons_target_then_each_budget() -> None:
    c = cfg(target_fac=0.5, budget={"calls": 10, "tokens": 1000, "seconds": 60})
    assert stop_reason(summary(10, 4, 0), c, Spent(0, 0, 0)) is None
    assert stop_reason(summary(10, 4, 1), c, Spent(0, 0, 0)).startswith("target reached")
    assert stop_reason(summary(10, 4, 0), c, Spent(10, 0, 0)).startswith("budget spent: 10 generator calls")
    assert "tokens" in stop_reason(summary(10, 4, 0), c, Spent(1, 1000, 0))
    assert "s (budget 60 s)" in stop_reason(summary(10, 4, 0), c, Spent(1, 10, 61))


def directive(i: int, kind: str, **args: object) -> Directive:
    return Directive(i, f"words {i}", kind, dict(args), True, NOW, None)


def test_directives_fold_in_order_into_focus_exclude_style_target_budget_and_pause() -> None:
    s = apply(cfg(budget={"calls": 5}), [
        directive(1, "focus", features=[3, 4]), directive(2, "exclude", features=[4, 9]),
        directive(3, "style", text="short questions"), directive(4, "target", fac=0.7),
        directive(5, "budget", calls=50), directive(6, "pause"),
    ])
    assert (s.focus, s.exclude, s.style, s.paused) == ({3}, {4, 9}, ["short questions"], True)
    assert s.cfg.target_fac == 0.7 and s.cfg.budget.calls == 50


def test_config_rejects_a_threshold_below_delta() -> None:
    with pytest.raises(ValueError, match="threshold"):
        cfg(delta=5.0, threshold=2.0)


def test_every_rejection_reason_goes_back_to_the_generator_with_what_to_change() -> None:
    from facsynth.graph.generator import feedback
    from facsynth.tools.quality import ADVICE

    def seen(role: str, code: str, reason: str, verdict: str = "rejected") -> Candidate:
        c = cand(role)
        c.verdict, c.reason, c.code, c.target_act = verdict, reason, code, 2.0
        return c

    lines = feedback([
        seen("positive", "not_fluent", "quality: not fluent: 10% of it is words, the anchor's range starts at 79%"),
        seen("negative", "not_a_request", "quality: not a request a user would send an assistant"),
    ], 1, 12.0)
    assert lines == [
        "the positive was not a usable sample (not fluent: 10% of it is words, the anchor's range starts at 79%): "
        + ADVICE["not_fluent"],
        "the negative was not a usable sample (not a request a user would send an assistant): " + ADVICE["not_a_request"],
    ]
