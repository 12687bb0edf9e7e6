"""What a run has spent, whether it must stop, and whether retries pay for their calls."""

from __future__ import annotations

from dataclasses import dataclass

from facsynth.db.runs import Summary
from facsynth.db.store import Store
from facsynth.graph.config import RunConfig


@dataclass(frozen=True)
class Spent:
    calls: int
    """Generator calls issued to the endpoint (cache hits excluded)."""
    tokens: int
    seconds: float


def spent(store: Store, run_name: str, elapsed_s: float) -> Spent:
    totals = store.llm_totals(run_name)
    issued = totals["calls"] - totals["by_outcome"]["cached"]
    return Spent(issued, totals["tokens_in"] + totals["tokens_out"], elapsed_s)


def stop_reason(summary: Summary, cfg: RunConfig, used: Spent) -> str | None:
    """Why the run must stop now, or None."""
    if summary.fac >= cfg.target_fac:
        return f"target reached: FAC {summary.fac:.1%} >= {cfg.target_fac:.1%}"
    b = cfg.budget
    if b.calls is not None and used.calls >= b.calls:
        return f"budget spent: {used.calls} generator calls (budget {b.calls})"
    if b.tokens is not None and used.tokens >= b.tokens:
        return f"budget spent: {used.tokens} tokens (budget {b.tokens})"
    if b.seconds is not None and used.seconds >= b.seconds:
        return f"budget spent: {used.seconds:.0f} s (budget {b.seconds:.0f} s)"
    return None


def batch_size(cfg: RunConfig, used: Spent) -> int:
    """Features to target next: the batch, cut to the generator calls the budget has left
    (each costs one call), so that a run stops at its call budget, not a batch past it."""
    if cfg.budget.calls is None:
        return cfg.batch
    return max(1, min(cfg.batch, cfg.budget.calls - used.calls))


def retries_pay(first: int, first_ok: int, retries: int, retries_ok: int) -> bool:
    """Whether a retry with feedback has been at least as likely to be accepted as a first
    attempt on a fresh feature, in this run so far (Laplace-smoothed rates; ties retry)."""
    return (retries_ok + 1) / (retries + 2) >= (first_ok + 1) / (first + 2)
