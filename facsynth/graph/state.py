"""The graph's state: ids and small values only.

LangGraph checkpoints the state after every step, so it stays small: the run's name,
the features being worked on, a step counter and why the run stopped. Candidates,
verdicts, activations and samples live in the store (:mod:`facsynth.db.runs`).
"""

from __future__ import annotations

from typing import TypedDict


class SynthState(TypedDict, total=False):
    run: str
    """The run's name."""
    batch: list[int]
    """Target features the generator works on next (retries keep theirs)."""
    loop_step: int
    """Planner steps taken in this thread."""
    stop_reason: str | None
    """Set by the planner when the run must stop."""
