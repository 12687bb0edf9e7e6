"""Steering directives: what a user asked of a run, applied by the planner and the generator.

A directive is stored with the run (the user's words, a kind and typed arguments) and
stays in force until undone. :func:`apply` folds the active ones, oldest first, into
what the nodes use: the effective config (target, budget), features to focus on or to
leave out, style lines for the generator's prompt, and whether the run is paused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from facsynth.db.runs import Directive, RunRecord, Runs
from facsynth.graph.config import Budget, RunConfig

KINDS = ("focus", "exclude", "style", "target", "budget", "pause", "reject", "review")
"""``reject`` (samples withdrawn) and ``review`` (decisions in review mode) act on the store
when they are made; they are kept for the record and for undo, and fold into nothing here."""


@dataclass
class Steering:
    cfg: RunConfig
    focus: set[int] = field(default_factory=set)
    exclude: set[int] = field(default_factory=set)
    style: list[str] = field(default_factory=list)
    paused: bool = False


def apply(cfg: RunConfig, directives: Sequence[Directive]) -> Steering:
    out = Steering(cfg)
    for d in directives:
        a: dict[str, Any] = d.args
        if d.kind == "focus":
            out.focus |= {int(f) for f in a.get("features", [])}
            out.exclude -= {int(f) for f in a.get("features", [])}
        elif d.kind == "exclude":
            out.exclude |= {int(f) for f in a.get("features", [])}
            out.focus -= {int(f) for f in a.get("features", [])}
        elif d.kind == "style":
            out.style.append(str(a["text"]))
        elif d.kind == "target":
            out.cfg = out.cfg.model_copy(update={"target_fac": float(a["fac"])})
        elif d.kind == "budget":
            merged = out.cfg.budget.model_dump() | {k: v for k, v in a.items() if k in Budget.model_fields}
            out.cfg = out.cfg.model_copy(update={"budget": Budget.model_validate(merged)})
        elif d.kind == "pause":
            out.paused = bool(a.get("paused", True))
    return out


def current(runs: Runs, name: str) -> tuple[RunRecord, Steering]:
    """The run as stored now, and its configuration with every directive in force folded in."""
    run = runs.get(name)
    return run, apply(RunConfig.model_validate(run.config["config"]), runs.directives(run.id))
