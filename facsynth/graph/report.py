"""A run's coverage report: FAC before and after, per-feature outcomes, FAC against calls."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import BaseModel

from facsynth.db.runs import Runs
from facsynth.db.store import Store


class FeatureOutcome(BaseModel):
    feature: int
    status: str
    attempts: int
    best_act: float | None
    covered_by: int | None
    reason: str | None


class CoverageReport(BaseModel):
    run: str
    task: str
    strategy: str
    status: str
    stop_reason: str | None
    feature_set: str
    n_relevant: int
    fac_before: float
    fac_after: float
    covered_by_run: int
    by_status: dict[str, int]
    samples: int
    candidates: int
    acceptance_rate: float | None
    llm_calls: int
    tokens: int
    elapsed_s: float
    curve: list[tuple[int, float]]
    """(generator calls, FAC) after each verifier step."""
    features: list[FeatureOutcome]


def coverage_report(store: Store, run_name: str) -> CoverageReport:
    runs = Runs(store)
    s = runs.summary(run_name)
    points = runs.progress(s.run.id)
    last = points[-1] if points else None
    return CoverageReport(
        run=s.run.name, task=s.run.task, strategy=s.run.strategy, status=s.run.status, stop_reason=s.run.stop_reason,
        feature_set=s.run.feature_set, n_relevant=s.run.n_relevant, fac_before=s.fac_before, fac_after=s.fac,
        covered_by_run=s.covered, by_status=s.by_status, samples=s.samples, candidates=s.candidates,
        acceptance_rate=s.acceptance_rate, llm_calls=last.llm_calls if last else 0, tokens=last.tokens if last else 0,
        elapsed_s=s.run.elapsed_s, curve=[(p.llm_calls, p.fac) for p in points],
        features=[
            FeatureOutcome(feature=f.feature, status=f.status, attempts=f.attempts, best_act=f.best_act,
                           covered_by=f.covered_by, reason=f.reason)
            for f in runs.features(s.run.id)
        ],
    )


def plot_curve(report: CoverageReport, out: str | Path, target: float | None = None) -> Path:
    """Write FAC against generator calls as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    calls = [c for c, _ in report.curve] or [0]
    facs = [100 * f for _, f in report.curve] or [100 * report.fac_before]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.step(calls, facs, where="post", label=f"{report.strategy} strategy")
    ax.axhline(100 * report.fac_before, color="grey", linestyle=":", label="seed")
    if target is not None:
        ax.axhline(100 * target, color="tab:red", linestyle="--", label="target")
    ax.set_xlabel("generator LLM calls")
    ax.set_ylabel("FAC (%)")
    ax.set_title(f"run {report.run}: task {report.task}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
