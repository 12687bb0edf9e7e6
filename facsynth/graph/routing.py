"""Pure routing functions: where the graph goes after the planner and the verifier."""

from __future__ import annotations

from typing import Literal

from langgraph.graph import END

from facsynth.graph.state import SynthState


def after_planner(state: SynthState) -> Literal["generator", "__end__"]:
    """Stop when the planner gave a reason (target, budget, nothing left); else generate."""
    if state.get("stop_reason") or not state.get("batch"):
        return END
    return "generator"


def after_verifier(state: SynthState) -> Literal["generator", "planner"]:
    """Rejected features still under their attempt cap go back to the generator with feedback."""
    return "generator" if state.get("batch") else "planner"
