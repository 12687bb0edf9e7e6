"""Synthesis runs in the store: features to cover, candidates, verdicts, samples, progress.

:class:`Runs` wraps a :class:`~facsynth.db.store.Store` the way
:class:`~facsynth.db.catalog.Catalog` does. The graph's nodes keep only ids in their
state; everything they produce lands here, and every method is one transaction. The
ones that a crash could interrupt and a resume repeat are idempotent:

* :meth:`Runs.add_candidates` inserts under the unique (run, feature, attempt, idx)
  key and raises the feature's attempt count in the same transaction;
* :meth:`Runs.settle` writes the verdicts of one attempt, the accepted samples
  (unique per normalized text) and the coverage they add, all or nothing.

Several workers may write one run at once (PostgreSQL, :mod:`facsynth.db.claims`): the
transactions that credit coverage or number progress points take the run's row lock first,
so they apply one after another.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np
from sqlalchemy import case, func, select, update

from facsynth.db.arrays import decode_acts, decode_ids, encode_acts, encode_ids
from facsynth.db.models import (
    FEATURE_STATUSES,
    Run,
    RunCandidate,
    RunDirective,
    RunFeature,
    RunProgress,
    RunSample,
    utcnow,
)
from facsynth.db.store import Store
from facsynth.errors import InputError, StoreError

EXCLUDED_BY_USER = "excluded by the user"
"""``run_features.reason`` of a feature a steering directive excluded (undone with the directive)."""
HELD_BACK = "held back: beyond --max-features"
"""``run_features.reason`` of a missing feature outside the run's ``max_features`` (a focus brings it in)."""
_EXCLUSIONS = (EXCLUDED_BY_USER, HELD_BACK)
"""A covered feature keeps the reason it was excluded for: no strategy targets it, and a
withdrawn sample returns it to ``excluded``, not ``pending``."""
_KEEP_EXCLUSION = case((RunFeature.status == "excluded", RunFeature.reason), else_=None)


@dataclass(frozen=True)
class RunRecord:
    """A run as stored."""

    id: int
    name: str
    status: str
    strategy: str
    task: str
    reader_id: int
    config: dict[str, Any]
    feature_set: str
    n_relevant: int
    n_seed_covered: int
    stop_reason: str | None
    elapsed_s: float
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class FeatureState:
    """One target feature of a run."""

    feature: int
    status: str
    attempts: int
    priority: float
    best_act: float | None
    reason: str | None
    covered_by: int | None


@dataclass
class Candidate:
    """A generated example; verdict fields are None until the verifier has seen it."""

    feature: int
    attempt: int
    step: int
    idx: int
    role: str
    payload: dict[str, Any]
    text_hash: str
    prompt_hash: str
    model: str
    label: str | None = None
    id: int | None = None
    target_act: float | None = None
    span: dict[str, Any] | None = None
    feature_ids: np.ndarray | None = None
    max_acts: np.ndarray | None = None
    verdict: str | None = None
    reason: str | None = None
    proposed: str | None = None
    """Review mode: ``accepted`` while the verifier's acceptance waits for the user."""
    review: str | None = None
    """The user's decision: ``approve``, ``deny`` or ``edit``."""
    code: str | None = None
    """The verdict's reason code (:data:`facsynth.tools.quality.REASONS`)."""
    checks: dict[str, Any] | None = None
    """The quality signals the verdict was made with."""


@dataclass(frozen=True)
class AcceptedSample:
    """An accepted sample with its provenance."""

    id: int
    candidate: Candidate
    activation: float
    covered: list[int]
    created_at: datetime


@dataclass
class Verdict:
    """What the verifier decided about one candidate."""

    candidate_id: int
    target_act: float
    span: dict[str, Any] | None
    feature_ids: np.ndarray
    max_acts: np.ndarray
    verdict: str
    reason: str
    accept: bool = False
    """Add the candidate to the run's samples (and credit what it fires)."""
    min_new: int = 0
    """Add it only when it covers at least this many features no sample covers yet (an
    accepted negative); 0: always."""
    fires: list[int] = field(default_factory=list)
    """Features it fires above the measuring delta (credited when accepted)."""
    code: str = ""
    """The reason as a code of :data:`facsynth.tools.quality.REASONS`."""
    checks: dict[str, Any] | None = None
    """The quality signals it was judged with (stored with the verdict)."""


@dataclass(frozen=True)
class Admission:
    """What settlement does with one candidate the verifier wanted to add (``Verdict.accept``):
    decided by :func:`facsynth.graph.acceptance.admit`, applied by :meth:`Runs.settle`."""

    joins: bool
    """It becomes a sample of the run and credits what it fires that is still missing."""
    code: str | None = None
    """Its reason code from now on (None: keep the verifier's)."""
    verdict: str | None = None
    """Its verdict from now on (None: keep the verifier's)."""
    reason: str | None = None
    """Its reason from now on (None: keep the verifier's)."""


class Admits(Protocol):
    """The settlement rule (:func:`facsynth.graph.acceptance.admit`)."""

    def __call__(self, v: Verdict, *, role: str, same_text_as: int | None, credits: Sequence[int]) -> Admission: ...


@dataclass(frozen=True)
class Directive:
    """A steering directive of a run."""

    id: int
    words: str
    kind: str
    args: dict[str, Any]
    active: bool
    created_at: datetime
    reverted_at: datetime | None


@dataclass(frozen=True)
class Summary:
    """Where a run stands, read in one transaction."""

    run: RunRecord
    by_status: dict[str, int]
    covered: int
    """Features of F covered by accepted samples (seed coverage not included)."""
    samples: int
    candidates: int
    verified: int
    accepted: int
    covered_by_negatives: int = 0
    """Of ``covered``, features whose covering sample is a negative (reported apart)."""

    @property
    def fac_before(self) -> float:
        return self.run.n_seed_covered / self.run.n_relevant if self.run.n_relevant else 0.0

    @property
    def fac(self) -> float:
        r = self.run
        return (r.n_seed_covered + self.covered) / r.n_relevant if r.n_relevant else 0.0

    @property
    def acceptance_rate(self) -> float | None:
        """Share of the verified candidates (positives and negatives) that joined the data."""
        return self.accepted / self.verified if self.verified else None


def _record(r: Run) -> RunRecord:
    return RunRecord(
        id=r.id, name=r.name, status=r.status, strategy=r.strategy, task=r.task, reader_id=r.reader_id,
        config=r.config, feature_set=r.feature_set, n_relevant=r.n_relevant,
        n_seed_covered=r.n_seed_covered, stop_reason=r.stop_reason, elapsed_s=r.elapsed_s,
        created_at=r.created_at, updated_at=r.updated_at,
    )


def _feature(r: RunFeature) -> FeatureState:
    return FeatureState(r.feature_id, r.status, r.attempts, r.priority, r.best_act, r.reason, r.covered_by)


def _candidate(r: RunCandidate) -> Candidate:
    return Candidate(
        feature=r.feature_id, attempt=r.attempt, step=r.step, idx=r.idx, role=r.role, payload=r.payload,
        text_hash=r.text_hash, prompt_hash=r.prompt_hash, model=r.model, label=r.label, id=r.id,
        target_act=r.target_act, span=r.span or None,
        feature_ids=None if r.feature_ids is None else decode_ids(r.feature_ids),
        max_acts=None if r.max_acts is None else decode_acts(r.max_acts),
        verdict=r.verdict, reason=r.reason, proposed=r.proposed, review=r.review, code=r.reason_code,
        checks=r.checks or None,
    )


def _lock_run(session: Any, run_id: int) -> None:
    """Take the run's row lock for the transaction (PostgreSQL; SQLite's write lock is the whole
    store already): the settlements of concurrent workers credit coverage one after another,
    so two samples never claim one feature and no two transactions wait on each other's rows.
    ``FOR NO KEY UPDATE``, not ``FOR UPDATE``: rows inserted elsewhere that point at the run
    (a claim, a candidate) take a key-share lock on it for their foreign key, which must not
    wait on a settlement that may itself wait on their feature rows."""
    session.execute(select(Run.id).where(Run.id == run_id).with_for_update(key_share=True))


class Runs:
    """Run reads and writes on a store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ------------------------------------------------------------------ runs

    def create(
        self,
        name: str,
        *,
        strategy: str,
        task: str,
        reader_id: int,
        config: dict[str, Any],
        feature_set: str,
        n_relevant: int,
        n_seed_covered: int,
        missing: dict[int, float],
        held_back: Iterable[int] = (),
    ) -> RunRecord:
        """Create a run and its missing features (feature -> priority), in one transaction.

        ``held_back`` features (beyond ``--max-features``) start ``excluded`` with the reason
        :data:`HELD_BACK`: never targeted unless the user focuses on them, but still
        credited when a sample fires them, so FAC stays measured over the whole set.
        """
        held = {int(f) for f in held_back}
        now = utcnow()
        with self.store.transaction(write=True) as session:
            if session.scalar(select(Run.id).where(Run.name == name)) is not None:
                raise InputError(f"a run named {name!r} exists in {self.store.url}; resume it or pick another --run name")
            run = Run(
                name=name, status="created", strategy=strategy, task=task, reader_id=reader_id, config=config,
                feature_set=feature_set, n_relevant=n_relevant, n_seed_covered=n_seed_covered, elapsed_s=0.0,
                created_at=now, updated_at=now,
            )
            session.add(run)
            session.flush()
            session.add_all(
                RunFeature(
                    run_id=run.id, feature_id=int(f), status="excluded" if int(f) in held else "pending",
                    reason=HELD_BACK if int(f) in held else None, attempts=0, priority=float(p), updated_at=now,
                )
                for f, p in missing.items()
            )
            session.flush()
            session.refresh(run)  # the config as stored (a copy, keys sorted)
            return _record(run)

    def get(self, name: str) -> RunRecord:
        """The run called ``name``; a one-line error listing the runs when there is none."""
        with self.store.transaction() as session:
            run = session.scalar(select(Run).where(Run.name == name))
            if run is None:
                names = list(session.scalars(select(Run.name).order_by(Run.created_at.desc()).limit(5)))
                known = f"; runs here: {', '.join(names)}" if names else "; this store has no runs yet"
                raise InputError(f"no run named {name!r} in {self.store.url}{known}")
            return _record(run)

    def all(self) -> list[RunRecord]:
        """Every run, newest first."""
        with self.store.transaction() as session:
            return [_record(r) for r in session.scalars(select(Run).order_by(Run.created_at.desc(), Run.id.desc()))]

    def latest(self) -> RunRecord | None:
        runs = self.all()
        return runs[0] if runs else None

    def set_status(self, run_id: int, status: str, reason: str | None = None, *, elapsed_s: float | None = None) -> None:
        """Set the run's status (and its stop reason; ``running`` clears it), and its total wall time."""
        with self.store.transaction(write=True) as session:
            values: dict[str, Any] = {"status": status, "updated_at": utcnow()}
            if elapsed_s is not None:
                values["elapsed_s"] = float(elapsed_s)
            if reason is not None or status == "running":
                values["stop_reason"] = reason
            session.execute(update(Run).where(Run.id == run_id).values(**values))

    def update_config(self, run_id: int, config: dict[str, Any]) -> None:
        with self.store.transaction(write=True) as session:
            session.execute(update(Run).where(Run.id == run_id).values(config=config, updated_at=utcnow()))

    # ------------------------------------------------------------------ features

    def features(self, run_id: int, statuses: Iterable[str] | None = None) -> list[FeatureState]:
        """Target features, highest priority first."""
        query = select(RunFeature).where(RunFeature.run_id == run_id)
        if statuses is not None:
            query = query.where(RunFeature.status.in_(list(statuses)))
        with self.store.transaction() as session:
            rows = session.scalars(query.order_by(RunFeature.priority.desc(), RunFeature.feature_id))
            return [_feature(r) for r in rows]

    def feature(self, run_id: int, feature: int) -> FeatureState | None:
        with self.store.transaction() as session:
            row = session.scalar(select(RunFeature).where(RunFeature.run_id == run_id, RunFeature.feature_id == feature))
            return None if row is None else _feature(row)

    def set_feature_status(
        self, run_id: int, features: Iterable[int], status: str, reason: str | None = None,
        *, only_from: Sequence[str] | None = None,
    ) -> int:
        """Set the status of some features (those now in ``only_from``, when given); the count changed."""
        if status not in FEATURE_STATUSES:
            raise ValueError(f"unknown feature status {status!r}; valid: {', '.join(FEATURE_STATUSES)}")
        ids = [int(f) for f in features]
        if not ids:
            return 0
        with self.store.transaction(write=True) as session:
            query = update(RunFeature).where(RunFeature.run_id == run_id, RunFeature.feature_id.in_(ids))
            if only_from is not None:
                query = query.where(RunFeature.status.in_(list(only_from)))
            result = session.execute(query.values(status=status, reason=reason, updated_at=utcnow()))
            return int(result.rowcount or 0)

    # ------------------------------------------------------------------ candidates

    def add_candidates(self, run_id: int, feature: int, attempt: int, candidates: Sequence[Candidate]) -> list[Candidate]:
        """Store one attempt's candidates (again: kept as they are) and count the attempt."""
        now = utcnow()
        with self.store.transaction(write=True) as session:
            rows = [
                {
                    "run_id": run_id, "feature_id": feature, "attempt": attempt, "step": c.step, "idx": c.idx,
                    "role": c.role, "payload": c.payload, "label": c.label, "text_hash": c.text_hash,
                    "prompt_hash": c.prompt_hash, "model": c.model, "created_at": now,
                }
                for c in candidates
            ]
            self.store.insert_ignore(session, RunCandidate, rows, ["run_id", "feature_id", "attempt", "idx"])
            session.execute(
                update(RunFeature)
                .where(RunFeature.run_id == run_id, RunFeature.feature_id == feature, RunFeature.attempts < attempt)
                .values(attempts=attempt, updated_at=now)
            )
            stored = session.scalars(
                select(RunCandidate)
                .where(RunCandidate.run_id == run_id, RunCandidate.feature_id == feature, RunCandidate.attempt == attempt)
                .order_by(RunCandidate.idx)
            )
            return [_candidate(r) for r in stored]

    def candidates(
        self, run_id: int, feature: int | None = None, *, attempt: int | None = None, unverified: bool = False
    ) -> list[Candidate]:
        query = select(RunCandidate).where(RunCandidate.run_id == run_id)
        if feature is not None:
            query = query.where(RunCandidate.feature_id == feature)
        if attempt is not None:
            query = query.where(RunCandidate.attempt == attempt)
        if unverified:
            query = query.where(RunCandidate.verdict.is_(None))
        with self.store.transaction() as session:
            rows = session.scalars(query.order_by(RunCandidate.feature_id, RunCandidate.attempt, RunCandidate.idx))
            return [_candidate(r) for r in rows]

    # ------------------------------------------------------------------ verdicts and samples

    def settle(
        self,
        run_id: int,
        feature: int,
        verdicts: Sequence[Verdict],
        *,
        admit: Admits,
        covered_status: str | None = None,
        exhausted_reason: str | None = None,
        release: bool = False,
    ) -> list[int]:
        """Write one attempt's verdicts, its accepted samples and their coverage, atomically.

        For each verdict that asks to add its candidate (``accept``), ``admit`` (the rule,
        :func:`facsynth.graph.acceptance.admit`) decides from what this transaction reads: a
        sample of the run with the same normalized text, and the features it fires that no
        sample covers yet. One that joins becomes a sample and credits those features. Then the
        target becomes ``covered`` when it is, else ``exhausted`` (with
        ``exhausted_reason``), else stays ``in_progress`` (``pending`` with ``release``).
        Returns the features this call covered.
        """
        now = utcnow()
        newly: list[int] = []
        with self.store.transaction(write=True) as session:
            _lock_run(session, run_id)
            best: float | None = None
            for v in verdicts:
                row = session.get(RunCandidate, v.candidate_id)
                if row is None or row.run_id != run_id:
                    raise StoreError(f"candidate {v.candidate_id} is not part of run {run_id}")
                if row.verdict is not None:  # settled before a crash: keep the first decision
                    continue
                row.target_act = float(v.target_act)
                row.span = v.span or None
                row.feature_ids = encode_ids(v.feature_ids)
                row.max_acts = encode_acts(v.max_acts)
                row.verdict = v.verdict
                row.reason = v.reason
                row.reason_code = v.code or None
                row.checks = v.checks or None
                if row.role != "negative":
                    best = v.target_act if best is None else max(best, v.target_act)
                if not v.accept:
                    continue
                exists = session.scalar(
                    select(RunSample.id).where(RunSample.run_id == run_id, RunSample.text_hash == row.text_hash)
                )
                fires = [int(f) for f in v.fires]
                credited = list(
                    session.scalars(
                        select(RunFeature.feature_id).where(
                            RunFeature.run_id == run_id,
                            RunFeature.feature_id.in_(fires),
                            RunFeature.covered_by.is_(None),
                        )
                    )
                ) if fires and exists is None else []
                decision = admit(v, role=row.role, same_text_as=exists, credits=credited)
                row.verdict = decision.verdict or row.verdict
                row.reason = decision.reason or row.reason
                row.reason_code = decision.code or row.reason_code
                if not decision.joins:
                    continue
                sample = RunSample(
                    run_id=run_id, candidate_id=row.id, feature_id=feature, text_hash=row.text_hash,
                    activation=float(v.target_act), covered=[], created_at=now,
                )
                session.add(sample)
                session.flush()
                if credited:
                    session.execute(
                        update(RunFeature)
                        .where(RunFeature.run_id == run_id, RunFeature.feature_id.in_(credited))
                        .values(covered_by=sample.id, updated_at=now)
                    )
                    session.execute(
                        update(RunFeature)
                        .where(
                            RunFeature.run_id == run_id,
                            RunFeature.feature_id.in_(credited),
                            RunFeature.status.in_(("pending", "in_progress", "exhausted", "excluded")),
                        )
                        .values(status="covered", reason=_KEEP_EXCLUSION)
                    )
                sample.covered = sorted(credited)
                newly.extend(credited)
            target = session.scalar(
                select(RunFeature).where(RunFeature.run_id == run_id, RunFeature.feature_id == feature)
            )
            if target is not None:
                if best is not None and (target.best_act is None or best > target.best_act):
                    target.best_act = best
                if target.status == "in_progress":
                    if target.covered_by is not None:
                        target.status = covered_status or "covered"
                    elif exhausted_reason is not None:
                        target.status, target.reason = "exhausted", exhausted_reason
                    elif release:
                        target.status = "pending"
                target.updated_at = now
        return sorted(set(newly))

    # ------------------------------------------------------------------ review

    def propose(self, run_id: int, candidate_ids: Iterable[int]) -> None:
        """Mark candidates the verifier would accept as waiting for the user's review."""
        ids = [int(i) for i in candidate_ids]
        if not ids:
            return
        with self.store.transaction(write=True) as session:
            session.execute(
                update(RunCandidate)
                .where(RunCandidate.run_id == run_id, RunCandidate.id.in_(ids), RunCandidate.verdict.is_(None))
                .values(proposed="accepted")
            )

    def pending_review(self, run_id: int) -> list[Candidate]:
        """Candidates proposed for acceptance and not settled yet, in id order."""
        query = (
            select(RunCandidate)
            .where(RunCandidate.run_id == run_id, RunCandidate.proposed.is_not(None), RunCandidate.verdict.is_(None))
            .order_by(RunCandidate.id)
        )
        with self.store.transaction() as session:
            return [_candidate(r) for r in session.scalars(query)]

    def decide(self, run_id: int, candidate_id: int, action: str | None, *, sample: dict[str, Any] | None = None,
               text_hash: str | None = None) -> Candidate:
        """Record the user's decision on a proposed candidate; ``edit`` replaces its text
        (``sample``, ``text_hash``); None takes a decision back."""
        if action not in ("approve", "deny", "edit", None):
            raise ValueError(f"unknown review action {action!r}")
        with self.store.transaction(write=True) as session:
            row = session.get(RunCandidate, candidate_id)
            if row is None or row.run_id != run_id or row.proposed is None or row.verdict is not None:
                raise InputError(f"candidate {candidate_id} is not waiting for review in this run; /review lists those that are")
            row.review = action
            if sample is not None:
                assert text_hash is not None
                row.payload, row.text_hash = sample, text_hash
            session.flush()
            session.refresh(row)  # the payload as stored (a copy, keys sorted)
            return _candidate(row)

    def samples(self, run_id: int, *, include_withdrawn: bool = False, after: int = 0) -> list[AcceptedSample]:
        """Accepted samples in acceptance order (those with an id above ``after``)."""
        query = (
            select(RunSample, RunCandidate)
            .join(RunCandidate, RunCandidate.id == RunSample.candidate_id)
            .where(RunSample.run_id == run_id, RunSample.id > after)
            .order_by(RunSample.id)
        )
        if not include_withdrawn:
            query = query.where(RunSample.withdrawn_at.is_(None))
        with self.store.transaction() as session:
            return [
                AcceptedSample(s.id, _candidate(c), s.activation, s.covered, s.created_at)
                for s, c in session.execute(query)
            ]

    def sample_ids(self, run_id: int, candidate_ids: Iterable[int]) -> dict[int, int]:
        """Candidate id -> sample id, for those of ``candidate_ids`` that joined the data."""
        ids = [int(i) for i in candidate_ids]
        if not ids:
            return {}
        query = select(RunSample.candidate_id, RunSample.id).where(
            RunSample.run_id == run_id, RunSample.candidate_id.in_(ids), RunSample.withdrawn_at.is_(None)
        )
        with self.store.transaction() as session:
            return {int(c): int(s) for c, s in session.execute(query)}

    def withdraw_samples(self, run_id: int, sample_ids: Iterable[int], *, delta: float) -> list[int]:
        """Withdraw accepted samples (a user rejected them) and the coverage only they gave.

        A feature they covered passes to the earliest remaining sample that fires it above
        ``delta``; with none it is uncovered again (``pending`` when it was ``covered``, or
        ``excluded`` again when it was held back or excluded before a sample covered it).
        One transaction. Returns the features that are uncovered now.
        """
        return self._recredit(run_id, [int(i) for i in sample_ids], delta=delta, withdraw=True)

    def restore_samples(self, run_id: int, sample_ids: Iterable[int], *, delta: float) -> list[int]:
        """Undo :meth:`withdraw_samples`: the samples count again and cover what is uncovered
        that they fire. Returns the features covered again."""
        return self._recredit(run_id, [int(i) for i in sample_ids], delta=delta, withdraw=False)

    def _recredit(self, run_id: int, ids: list[int], *, delta: float, withdraw: bool) -> list[int]:
        now = utcnow()
        with self.store.transaction(write=True) as session:
            _lock_run(session, run_id)
            rows = list(session.scalars(select(RunSample).where(RunSample.run_id == run_id, RunSample.id.in_(ids))))
            unknown = set(ids) - {r.id for r in rows}
            if unknown:
                raise InputError(f"run {run_id} has no accepted sample {', '.join(map(str, sorted(unknown)))}")
            for r in rows:
                r.withdrawn_at = now if withdraw else None
            session.flush()
            live = session.execute(
                select(RunSample.id, RunCandidate.feature_ids, RunCandidate.max_acts)
                .join(RunCandidate, RunCandidate.id == RunSample.candidate_id)
                .where(RunSample.run_id == run_id, RunSample.withdrawn_at.is_(None))
                .order_by(RunSample.id)
            ).all()
            fires = {
                sid: set(decode_ids(fi)[decode_acts(ma) > delta].tolist())
                for sid, fi, ma in live if fi is not None and ma is not None
            }
            if withdraw:
                query = select(RunFeature).where(RunFeature.run_id == run_id, RunFeature.covered_by.in_(ids))
            else:
                query = select(RunFeature).where(RunFeature.run_id == run_id, RunFeature.covered_by.is_(None))
            changed: list[int] = []
            for f in session.scalars(query):
                by = next((sid for sid in sorted(fires) if f.feature_id in fires[sid]), None)
                if withdraw:
                    f.covered_by = by
                    if by is None:
                        changed.append(f.feature_id)
                        if f.status == "covered":
                            f.status = "excluded" if f.reason in _EXCLUSIONS else "pending"
                elif by is not None:
                    f.covered_by = by
                    changed.append(f.feature_id)
                    if f.status in ("pending", "exhausted", "excluded"):
                        f.status, f.reason = "covered", f.reason if f.status == "excluded" else None
                f.updated_at = now
            return sorted(changed)

    # ------------------------------------------------------------------ progress and summary

    def add_progress(self, run_id: int, *, llm_calls: int, tokens: int, elapsed_s: float) -> None:
        """Append a point of the FAC-against-calls curve (coverage read in the same transaction).

        The run's total wall time becomes ``elapsed_s``, so a run killed with SIGKILL keeps
        what it spent up to its last step."""
        with self.store.transaction(write=True) as session:
            run = session.get(Run, run_id, with_for_update={"key_share": True})  # workers append in turn (seq is per run)
            assert run is not None
            run.elapsed_s = max(float(run.elapsed_s), float(elapsed_s))
            run.updated_at = utcnow()
            covered = self._covered(session, run_id)
            seq = (session.scalar(select(func.max(RunProgress.seq)).where(RunProgress.run_id == run_id)) or 0) + 1
            fac = (run.n_seed_covered + covered) / run.n_relevant if run.n_relevant else 0.0
            session.add(
                RunProgress(
                    run_id=run_id, seq=seq, llm_calls=llm_calls, tokens=tokens, covered=covered, fac=fac,
                    elapsed_s=elapsed_s, created_at=utcnow(),
                )
            )

    def progress(self, run_id: int) -> list[RunProgress]:
        with self.store.transaction() as session:
            rows = list(session.scalars(select(RunProgress).where(RunProgress.run_id == run_id).order_by(RunProgress.seq)))
            session.expunge_all()
            return rows

    @staticmethod
    def _covered(session: Any, run_id: int) -> int:
        return int(
            session.scalar(
                select(func.count()).where(RunFeature.run_id == run_id, RunFeature.covered_by.is_not(None))
            )
            or 0
        )

    def yields(self, run_id: int) -> tuple[int, int, int, int]:
        """Verified positives and accepted ones, on first attempts and on retries:
        ``(first, first_accepted, retries, retries_accepted)``."""
        retry = RunCandidate.attempt > 1
        accepted = RunCandidate.verdict == "accepted"
        query = (
            select(retry, accepted, func.count())
            .where(RunCandidate.run_id == run_id, RunCandidate.role != "negative", RunCandidate.verdict.is_not(None))
            .group_by(retry, accepted)
        )
        out = [0, 0, 0, 0]
        with self.store.transaction() as session:
            for is_retry, ok, n in session.execute(query):
                base = 2 if is_retry else 0
                out[base] += int(n)
                if ok:
                    out[base + 1] += int(n)
        return out[0], out[1], out[2], out[3]

    def summary(self, name_or_id: str | int) -> Summary:
        with self.store.transaction() as session:
            query = select(Run).where(Run.id == name_or_id if isinstance(name_or_id, int) else Run.name == name_or_id)
            run = session.scalar(query)
            if run is None:
                raise InputError(f"no run {name_or_id!r} in {self.store.url}")
            by_status = {s: 0 for s in FEATURE_STATUSES}
            for status, n in session.execute(
                select(RunFeature.status, func.count()).where(RunFeature.run_id == run.id).group_by(RunFeature.status)
            ):
                by_status[status] = int(n)
            n_cand = session.scalar(select(func.count()).where(RunCandidate.run_id == run.id)) or 0
            verified = session.scalar(
                select(func.count()).where(RunCandidate.run_id == run.id, RunCandidate.verdict.is_not(None))
            ) or 0
            accepted = session.scalar(
                select(func.count()).where(RunSample.run_id == run.id, RunSample.withdrawn_at.is_(None))
            ) or 0
            by_negatives = session.scalar(
                select(func.count())
                .select_from(RunFeature)
                .join(RunSample, RunSample.id == RunFeature.covered_by)
                .join(RunCandidate, RunCandidate.id == RunSample.candidate_id)
                .where(RunFeature.run_id == run.id, RunCandidate.role == "negative")
            ) or 0
            return Summary(
                run=_record(run), by_status=by_status, covered=self._covered(session, run.id), samples=int(accepted),
                candidates=int(n_cand), verified=int(verified), accepted=int(accepted),
                covered_by_negatives=int(by_negatives),
            )

    def reasons(self, run_id: int) -> dict[str, dict[str, int]]:
        """Verified candidates per role and reason code (``{"positive": {"joined": 3, ...}}``)."""
        query = (
            select(RunCandidate.role, RunCandidate.reason_code, func.count())
            .where(RunCandidate.run_id == run_id, RunCandidate.verdict.is_not(None))
            .group_by(RunCandidate.role, RunCandidate.reason_code)
        )
        out: dict[str, dict[str, int]] = {}
        with self.store.transaction() as session:
            for role, code, n in session.execute(query):
                out.setdefault(role, {})[code or "unknown"] = int(n)
        return out

    # ------------------------------------------------------------------ directives

    def add_directive(self, run_id: int, words: str, kind: str, args: dict[str, Any]) -> int:
        with self.store.transaction(write=True) as session:
            row = RunDirective(run_id=run_id, words=words, kind=kind, args=args, active=1, created_at=utcnow())
            session.add(row)
            session.flush()
            return row.id

    def directives(self, run_id: int, *, active_only: bool = True) -> list[Directive]:
        query = select(RunDirective).where(RunDirective.run_id == run_id)
        if active_only:
            query = query.where(RunDirective.active == 1)
        with self.store.transaction() as session:
            return [
                Directive(r.id, r.words, r.kind, r.args, bool(r.active), r.created_at, r.reverted_at)
                for r in session.scalars(query.order_by(RunDirective.id))
            ]

    def revert_directive(self, run_id: int, directive_id: int) -> bool:
        with self.store.transaction(write=True) as session:
            result = session.execute(
                update(RunDirective)
                .where(RunDirective.run_id == run_id, RunDirective.id == directive_id, RunDirective.active == 1)
                .values(active=0, reverted_at=utcnow())
            )
            return bool(result.rowcount)
