"""A run's coverage report: FAC before and after, per-feature outcomes, FAC against calls.

Beside FAC it shows what the coverage is made of: the features covered by negatives apart,
the verdicts by reason code (:data:`facsynth.tools.quality.REASONS`), and the quality of
what joined (share passing each check) next to the same figures for the anchor and seed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import BaseModel

from facsynth.db.runs import Runs
from facsynth.db.store import Store
from facsynth.tools.quality import Calibration, Signals, pass_rates


class FeatureOutcome(BaseModel):
    feature: int
    status: str
    attempts: int
    best_act: float | None
    covered_by: int | None
    reason: str | None


class QualityFigures(BaseModel):
    """The run's quality thresholds and the share passing each check (``fluent``, ``finished``,
    ``on_topic``, ``request``, ``all``) for the anchor, the seed and the samples that joined."""

    thresholds: dict[str, float | bool | int | str]
    anchor: dict[str, float]
    seed: dict[str, float]
    joined: dict[str, float]
    judged: dict[str, int]
    """LLM judge outcomes on the run's candidates (``Yes``, ``No``, ``failed``); empty when off."""
    label: dict[str, float | int | str] | None = None
    """The label check of a labelled task (its labels, ``min_prob``, ``cv_accuracy``,
    ``anchor_pass``); None when the run has none."""


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
    covered_by_negatives: int
    """Of ``covered_by_run``, features whose covering sample is a negative."""
    by_status: dict[str, int]
    samples: int
    samples_by_role: dict[str, int]
    candidates: int
    acceptance_rate: float | None
    by_reason: dict[str, dict[str, int]]
    """Verified candidates per reason code, then per role (``{"not_a_request": {"positive": 4}}``)."""
    quality: QualityFigures | None
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
    samples = runs.samples(s.run.id)
    by_role: dict[str, int] = {}
    for smp in samples:
        by_role[smp.candidate.role] = by_role.get(smp.candidate.role, 0) + 1
    by_reason: dict[str, dict[str, int]] = {}
    for role, codes in runs.reasons(s.run.id).items():
        for code, n in codes.items():
            by_reason.setdefault(code, {})[role] = n
    return CoverageReport(
        run=s.run.name, task=s.run.task, strategy=s.run.strategy, status=s.run.status, stop_reason=s.run.stop_reason,
        feature_set=s.run.feature_set, n_relevant=s.run.n_relevant, fac_before=s.fac_before, fac_after=s.fac,
        covered_by_run=s.covered, covered_by_negatives=s.covered_by_negatives, by_status=s.by_status,
        samples=s.samples, samples_by_role=by_role, candidates=s.candidates, acceptance_rate=s.acceptance_rate,
        by_reason=dict(sorted(by_reason.items())), quality=_quality(runs, s.run.id, s.run.config, samples), llm_calls=last.llm_calls if last else 0, tokens=last.tokens if last else 0,
        elapsed_s=s.run.elapsed_s, curve=[(p.llm_calls, p.fac) for p in points],
        features=[
            FeatureOutcome(feature=f.feature, status=f.status, attempts=f.attempts, best_act=f.best_act,
                           covered_by=f.covered_by, reason=f.reason)
            for f in runs.features(s.run.id)
        ],
    )


def _quality(runs: Runs, run_id: int, config: dict, samples: list) -> QualityFigures | None:
    raw = config.get("setup", {}).get("quality")
    if not raw:
        return None
    cal = Calibration.model_validate(raw)
    read = [smp.candidate.checks for smp in samples if smp.candidate.checks and "loss" in smp.candidate.checks]
    signals = [Signals(float(c["loss"]), float(c["distance"]), bool(c["request"]), float(c.get("words", 1.0)),
                       float(c.get("end", "nan"))) for c in read]
    judged: dict[str, int] = {}
    for c in runs.candidates(run_id):
        if c.checks and "judge" in c.checks:
            judged[c.checks["judge"]] = judged.get(c.checks["judge"], 0) + 1
    thresholds = cal.model_dump(exclude={"anchor", "seed", "label"}, exclude_none=True)
    label = None
    if cal.label is not None:
        label = {"labels": ", ".join(cal.label.labels), "min_prob": cal.label.min_prob,
                 "cv_accuracy": cal.label.cv_accuracy, "anchor_pass": cal.label.anchor_pass, "n": cal.label.n}
    return QualityFigures(thresholds=thresholds, anchor=cal.anchor, seed=cal.seed, joined=pass_rates(signals, cal),
                          judged=judged, label=label)


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
