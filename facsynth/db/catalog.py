"""The feature catalog's part of the store: spans, stats, explanations, tasks and relevance.

:class:`Catalog` wraps a :class:`~facsynth.db.store.Store` (same engine, same
transactions) so that ``store.py`` keeps only the measurement tables. Everything here
is keyed by a reader (model, layer, SAE, reading modes) because a feature id means
nothing without the SAE that defines it.

Records cross the boundary as the small dataclasses below; JSON columns (span tokens,
quantiles, words, task formats) are :class:`~facsynth.db.models.Json` columns.

Writes are replace-style: saving a span collection replaces the previous one for the
same reader and corpus, saving an explanation replaces the feature's previous one (and
with it its scores, which were about the old text), saving a relevance row replaces
the row of the same feature, task and method.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from facsynth.db.models import (
    LABELS,
    RELEVANCE_METHODS,
    SPAN_KINDS,
    DatasetRow,
    ExplanationRow,
    FeatureSpan,
    FeatureStatsRow,
    ReaderRow,
    RelevanceRow,
    SampleRow,
    SpanCollection,
    TaskRow,
)
from facsynth.db.store import Store
from facsynth.errors import StoreError

log = logging.getLogger(__name__)

RELEVANT_LABELS = ("Yes", "Probably", "Maybe")
"""Labels that count as relevant (the paper's rule), for both the check and the task judge."""
CANNOT_TELL = "Cannot tell"
"""The explanation recorded when the explainer sees no pattern."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class CollectionInfo:
    """The parameters and size of one span collection."""

    reader_id: int
    dataset_id: int
    dataset_name: str
    top_n: int
    window: int
    held_out: int
    n_random: int
    delta: float
    seed: int
    n_samples: int
    n_features: int
    created_at: datetime | None = None


@dataclass(frozen=True)
class FeatureStats:
    """How often and how strongly one feature fires on one corpus."""

    feature: int
    n_samples: int
    active_count: int
    frequency: float
    max_act: float
    quantiles: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Span:
    """Up to W content tokens of one sample; for a feature, ending at its peak token."""

    feature: int | None
    kind: str
    """``top``, ``held_out`` or ``random`` (see :data:`facsynth.db.models.SPAN_KINDS`)."""
    rank: int
    sample_hash: str
    activation: float
    peak_token: int
    tokens: list[str]
    acts: list[float] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.tokens)


@dataclass(frozen=True)
class Explanation:
    """A feature's explanation and the scores given to it."""

    feature: int
    text: str
    explainer_model: str
    dataset_id: int | None = None
    words: list[str] | None = None
    check_label: str | None = None
    check_model: str | None = None
    detection_score: float | None = None
    detection_n: int | None = None
    detection_model: str | None = None
    created_at: datetime | None = None

    @property
    def cannot_tell(self) -> bool:
        return self.text.strip().rstrip(".").lower() == CANNOT_TELL.lower()


@dataclass(frozen=True)
class TaskRecord:
    """A task as stored (see :mod:`facsynth.agent.tasks` for the validated form)."""

    name: str
    definition: str
    criteria: str
    format: dict[str, Any] | None = None
    source: str = "preset"


@dataclass(frozen=True)
class Relevance:
    """One feature's relevance to one task by one method."""

    feature: int
    task: str
    method: str
    label: str
    analysis: str
    score: float | None = None
    model: str | None = None
    created_at: datetime | None = None

    @property
    def relevant(self) -> bool:
        return self.label in RELEVANT_LABELS


def _check_label(label: str | None, what: str) -> None:
    if label is not None and label not in LABELS:
        raise ValueError(f"{what} must be one of {', '.join(LABELS)}; got {label!r}")


# --------------------------------------------------------------------------- catalog


class Catalog:
    """Catalog reads and writes on a store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ------------------------------------------------------------------ readers

    def readers(self) -> list[tuple[int, str]]:
        """Readers that have catalog data, as (id, description), ascending id."""
        ids: set[int] = set()
        with self.store.transaction() as session:
            for model in (SpanCollection, ExplanationRow, RelevanceRow):
                ids.update(session.scalars(select(model.reader_id).distinct()))
            rows = session.execute(select(ReaderRow).where(ReaderRow.id.in_(sorted(ids))).order_by(ReaderRow.id)).scalars()
            return [(r.id, f"{r.model_name} block {r.layer}, SAE {r.sae_name} ({r.activation_mode})") for r in rows]

    def reader_identity(self, reader_id: int) -> dict[str, Any]:
        """The seven identity fields of a reader (what :meth:`Store.reader` takes)."""
        with self.store.transaction() as session:
            r = session.get(ReaderRow, reader_id)
            if r is None:
                raise StoreError(f"no reader with id {reader_id} in {self.store.url}")
            return {
                "model_name": r.model_name,
                "model_fingerprint": r.model_fingerprint,
                "layer": r.layer,
                "sae_name": r.sae_name,
                "sae_hash": r.sae_hash,
                "activation_mode": r.activation_mode,
                "template_mode": r.template_mode,
            }

    # ------------------------------------------------------------------ spans and stats

    def save_collection(self, info: CollectionInfo, stats: Sequence[FeatureStats], spans: Sequence[Span]) -> None:
        """Store a whole span collection, replacing the previous one of the same reader and corpus."""
        self.clear_collection(info.reader_id, info.dataset_id)
        self.add_spans(info.reader_id, info.dataset_id, spans)
        self.finish_collection(info, stats)

    def clear_collection(self, reader_id: int, dataset_id: int) -> None:
        """Drop a collection with its stats and spans (also the spans of one that never finished)."""
        with self.store.transaction(write=True) as session:
            for model in (SpanCollection, FeatureStatsRow, FeatureSpan):
                session.execute(delete(model).where(model.reader_id == reader_id, model.dataset_id == dataset_id))

    def add_spans(self, reader_id: int, dataset_id: int, spans: Sequence[Span]) -> None:
        """Append spans to a collection being written (one transaction per call: call it per batch)."""
        for span in spans:
            if span.kind not in SPAN_KINDS:
                raise ValueError(f"span kind must be one of {', '.join(SPAN_KINDS)}; got {span.kind!r}")
        if not spans:
            return
        with self.store.transaction(write=True) as session:
            hashes = list({s.sample_hash for s in spans})
            sample_ids = self.store.sample_ids(session, hashes)
            missing = set(hashes) - set(sample_ids)
            if missing:
                raise StoreError(f"{len(missing)} span sample(s) are not registered; register the corpus first")
            session.execute(
                insert(FeatureSpan),
                [
                    {
                        "reader_id": reader_id, "dataset_id": dataset_id,
                        "feature_id": None if s.feature is None else int(s.feature), "kind": s.kind,
                        "rank": int(s.rank), "sample_id": sample_ids[s.sample_hash],
                        "activation": float(s.activation), "peak_token": int(s.peak_token),
                        "tokens": list(s.tokens), "acts": [round(float(a), 5) for a in s.acts], "text": s.text,
                    }
                    for s in spans
                ],
            )

    def finish_collection(self, info: CollectionInfo, stats: Sequence[FeatureStats]) -> None:
        """Store the stats and the collection row: a collection counts as present only from here on."""
        rid, did = info.reader_id, info.dataset_id
        with self.store.transaction(write=True) as session:
            for model in (SpanCollection, FeatureStatsRow):
                session.execute(delete(model).where(model.reader_id == rid, model.dataset_id == did))
            if stats:
                session.execute(
                    insert(FeatureStatsRow),
                    [
                        {
                            "reader_id": rid, "dataset_id": did, "feature_id": int(s.feature),
                            "n_samples": int(s.n_samples), "active_count": int(s.active_count),
                            "frequency": float(s.frequency), "max_act": float(s.max_act),
                            "quantiles": s.quantiles,
                        }
                        for s in stats
                    ],
                )
            session.add(
                SpanCollection(
                    reader_id=rid, dataset_id=did, top_n=info.top_n, window=info.window, held_out=info.held_out,
                    n_random=info.n_random, delta=float(info.delta), seed=info.seed, n_samples=info.n_samples,
                    n_features=info.n_features,
                )
            )
        log.info("saved span collection: reader %d, dataset %d, %d feature stats", rid, did, len(stats))

    def collection(self, reader_id: int, dataset_id: int) -> CollectionInfo | None:
        """The span collection of a reader over a corpus, or None."""
        found = self.collections(reader_id, dataset_id)
        return found[0] if found else None

    def collections(self, reader_id: int, dataset_id: int | None = None) -> list[CollectionInfo]:
        """A reader's span collections, newest first."""
        query = (
            select(SpanCollection, DatasetRow.name)
            .join(DatasetRow, DatasetRow.id == SpanCollection.dataset_id)
            .where(SpanCollection.reader_id == reader_id)
            .order_by(SpanCollection.created_at.desc(), SpanCollection.id.desc())
        )
        if dataset_id is not None:
            query = query.where(SpanCollection.dataset_id == dataset_id)
        with self.store.transaction() as session:
            return [
                CollectionInfo(
                    reader_id=c.reader_id, dataset_id=c.dataset_id, dataset_name=name, top_n=c.top_n,
                    window=c.window, held_out=c.held_out, n_random=c.n_random, delta=c.delta, seed=c.seed,
                    n_samples=c.n_samples, n_features=c.n_features, created_at=c.created_at,
                )
                for c, name in session.execute(query)
            ]

    def stats(self, reader_id: int, dataset_id: int, features: Iterable[int] | None = None) -> dict[int, FeatureStats]:
        """Per-feature stats of a collection (features that never fired are absent)."""
        query = select(FeatureStatsRow).where(
            FeatureStatsRow.reader_id == reader_id, FeatureStatsRow.dataset_id == dataset_id
        )
        if features is not None:
            query = query.where(FeatureStatsRow.feature_id.in_([int(f) for f in features]))
        with self.store.transaction() as session:
            return {
                r.feature_id: FeatureStats(
                    feature=r.feature_id, n_samples=r.n_samples, active_count=r.active_count,
                    frequency=r.frequency, max_act=r.max_act, quantiles=r.quantiles,
                )
                for r in session.scalars(query)
            }

    def spans(
        self, reader_id: int, dataset_id: int, features: Iterable[int] | None = None, kinds: Sequence[str] = ("top",)
    ) -> dict[int | None, list[Span]]:
        """Spans by feature (``None`` holds the random ones), each list in rank order."""
        query = (
            select(FeatureSpan, SampleRow.sample_hash)
            .join(SampleRow, SampleRow.id == FeatureSpan.sample_id)
            .where(
                FeatureSpan.reader_id == reader_id,
                FeatureSpan.dataset_id == dataset_id,
                FeatureSpan.kind.in_(list(kinds)),
            )
            .order_by(FeatureSpan.feature_id, FeatureSpan.rank)
        )
        if features is not None:
            query = query.where(FeatureSpan.feature_id.in_([int(f) for f in features]))
        out: dict[int | None, list[Span]] = {}
        with self.store.transaction() as session:
            for row, sample_hash in session.execute(query):
                out.setdefault(row.feature_id, []).append(
                    Span(
                        feature=row.feature_id, kind=row.kind, rank=row.rank, sample_hash=sample_hash,
                        activation=row.activation, peak_token=row.peak_token, tokens=row.tokens, acts=row.acts,
                    )
                )
        return out

    def random_spans(self, reader_id: int, dataset_id: int) -> list[Span]:
        """The collection's pool of random context spans."""
        return self.spans(reader_id, dataset_id, kinds=("random",)).get(None, [])

    def span_features(self, reader_id: int, dataset_id: int) -> list[int]:
        """Features that have top spans in a collection, strongest max activation first."""
        query = (
            select(FeatureSpan.feature_id, func.max(FeatureSpan.activation))
            .where(
                FeatureSpan.reader_id == reader_id, FeatureSpan.dataset_id == dataset_id, FeatureSpan.kind == "top"
            )
            .group_by(FeatureSpan.feature_id)
        )
        with self.store.transaction() as session:
            rows = session.execute(query).all()
        return [int(f) for f, _ in sorted(rows, key=lambda r: (-r[1], r[0]))]

    # ------------------------------------------------------------------ explanations

    def save_explanation(self, reader_id: int, exp: Explanation) -> None:
        """Store a feature's explanation, replacing its previous one and that one's scores."""
        _check_label(exp.check_label, "check_label")
        with self.store.transaction(write=True) as session:
            session.execute(
                delete(ExplanationRow).where(
                    ExplanationRow.reader_id == reader_id, ExplanationRow.feature_id == exp.feature
                )
            )
            session.add(
                ExplanationRow(
                    reader_id=reader_id, feature_id=int(exp.feature), dataset_id=exp.dataset_id, text=exp.text,
                    words=None if exp.words is None else list(exp.words),
                    explainer_model=exp.explainer_model, check_label=exp.check_label, check_model=exp.check_model,
                    detection_score=exp.detection_score, detection_n=exp.detection_n,
                    detection_model=exp.detection_model,
                )
            )

    def set_check(self, reader_id: int, feature: int, label: str, model: str) -> None:
        """Record the explanation check judge's label."""
        _check_label(label, "check label")
        self._update_explanation(reader_id, feature, check_label=label, check_model=model)

    def set_detection(self, reader_id: int, feature: int, score: float, n: int, model: str) -> None:
        """Record the detection score (balanced accuracy over ``n`` spans)."""
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"a balanced accuracy lies in [0, 1]; got {score}")
        self._update_explanation(reader_id, feature, detection_score=float(score), detection_n=int(n), detection_model=model)

    def _update_explanation(self, reader_id: int, feature: int, **values: Any) -> None:
        with self.store.transaction(write=True) as session:
            done = session.execute(
                update(ExplanationRow)
                .where(ExplanationRow.reader_id == reader_id, ExplanationRow.feature_id == int(feature))
                .values(**values)
            )
            if done.rowcount == 0:
                raise StoreError(f"feature {feature} has no explanation under reader {reader_id}")

    def explanation(self, reader_id: int, feature: int) -> Explanation | None:
        return self.explanations(reader_id, [feature]).get(int(feature))

    def explanations(self, reader_id: int, features: Iterable[int] | None = None) -> dict[int, Explanation]:
        """Explanations by feature (all of the reader's, or those of ``features``)."""
        query = select(ExplanationRow).where(ExplanationRow.reader_id == reader_id).order_by(ExplanationRow.feature_id)
        if features is not None:
            query = query.where(ExplanationRow.feature_id.in_([int(f) for f in features]))
        with self.store.transaction() as session:
            return {r.feature_id: _explanation(r) for r in session.scalars(query)}

    # ------------------------------------------------------------------ tasks

    def save_task(self, task: TaskRecord) -> int:
        """Store a task (replacing the definition of one with the same name); return its id."""
        with self.store.transaction(write=True) as session:
            row = session.execute(select(TaskRow).where(TaskRow.name == task.name)).scalar_one_or_none()
            if row is None:
                row = TaskRow(name=task.name)
                session.add(row)
            row.definition, row.criteria, row.format, row.source = task.definition, task.criteria, task.format, task.source
            session.flush()
            return int(row.id)

    def task(self, name: str) -> TaskRecord | None:
        with self.store.transaction() as session:
            row = session.execute(select(TaskRow).where(TaskRow.name == name)).scalar_one_or_none()
            return None if row is None else _task(row)

    def tasks(self) -> list[TaskRecord]:
        with self.store.transaction() as session:
            return [_task(r) for r in session.scalars(select(TaskRow).order_by(TaskRow.name))]

    def _task_id(self, session: Session, name: str) -> int:
        task_id = session.execute(select(TaskRow.id).where(TaskRow.name == name)).scalar_one_or_none()
        if task_id is None:
            raise StoreError(f"no task named {name!r} in the store")
        return int(task_id)

    # ------------------------------------------------------------------ relevance

    def save_relevance(self, reader_id: int, rows: Sequence[Relevance], *, replace_method: str | None = None) -> None:
        """Store relevance rows (replacing same feature, task and method).

        ``replace_method`` first drops every row of that method for the tasks in
        ``rows``: a new contrast run replaces the old one whole.
        """
        for r in rows:
            _check_label(r.label, "relevance label")
            if r.method not in RELEVANCE_METHODS:
                raise ValueError(f"relevance method must be one of {', '.join(RELEVANCE_METHODS)}; got {r.method!r}")
        with self.store.transaction(write=True) as session:
            task_ids = {name: self._task_id(session, name) for name in {r.task for r in rows}}
            if replace_method is not None:
                for task_id in task_ids.values():
                    session.execute(
                        delete(RelevanceRow).where(
                            RelevanceRow.reader_id == reader_id,
                            RelevanceRow.task_id == task_id,
                            RelevanceRow.method == replace_method,
                        )
                    )
            for r in rows:
                session.execute(
                    delete(RelevanceRow).where(
                        RelevanceRow.reader_id == reader_id,
                        RelevanceRow.feature_id == int(r.feature),
                        RelevanceRow.task_id == task_ids[r.task],
                        RelevanceRow.method == r.method,
                    )
                )
            session.add_all(
                RelevanceRow(
                    reader_id=reader_id, feature_id=int(r.feature), task_id=task_ids[r.task], method=r.method,
                    label=r.label, analysis=r.analysis, score=r.score, model=r.model,
                )
                for r in rows
            )

    def relevance(
        self, reader_id: int, task: str | None = None, features: Iterable[int] | None = None, method: str | None = None
    ) -> list[Relevance]:
        """Relevance rows, by feature then task then method."""
        query = (
            select(RelevanceRow, TaskRow.name)
            .join(TaskRow, TaskRow.id == RelevanceRow.task_id)
            .where(RelevanceRow.reader_id == reader_id)
            .order_by(RelevanceRow.feature_id, TaskRow.name, RelevanceRow.method)
        )
        if task is not None:
            query = query.where(TaskRow.name == task)
        if features is not None:
            query = query.where(RelevanceRow.feature_id.in_([int(f) for f in features]))
        if method is not None:
            query = query.where(RelevanceRow.method == method)
        with self.store.transaction() as session:
            return [
                Relevance(
                    feature=r.feature_id, task=name, method=r.method, label=r.label, analysis=r.analysis,
                    score=r.score, model=r.model, created_at=r.created_at,
                )
                for r, name in session.execute(query)
            ]

    def relevant_features(self, reader_id: int, task: str) -> list[int]:
        """The task's relevant set for this reader, ascending.

        A feature is relevant when any method selects it: ``llm_judge`` with a label in
        Yes/Probably/Maybe *and* an explanation whose check is in Yes/Probably/Maybe (the
        paper's rule); ``contrast`` or ``import`` with a label in Yes/Probably/Maybe.
        """
        return sorted(self.selected_by(reader_id, task))

    def selected_by(self, reader_id: int, task: str) -> dict[int, list[str]]:
        """Each relevant feature of the task with the methods that selected it."""
        checks = {f: e.check_label for f, e in self.explanations(reader_id).items()}
        out: dict[int, list[str]] = {}
        for r in self.relevance(reader_id, task):
            if r.relevant and (r.method != "llm_judge" or checks.get(r.feature) in RELEVANT_LABELS):
                out.setdefault(r.feature, []).append(r.method)
        return out


def _explanation(r: ExplanationRow) -> Explanation:
    return Explanation(
        feature=r.feature_id, text=r.text, explainer_model=r.explainer_model, dataset_id=r.dataset_id,
        words=r.words, check_label=r.check_label,
        check_model=r.check_model, detection_score=r.detection_score, detection_n=r.detection_n,
        detection_model=r.detection_model, created_at=r.created_at,
    )


def _task(r: TaskRow) -> TaskRecord:
    return TaskRecord(
        name=r.name, definition=r.definition, criteria=r.criteria,
        format=r.format, source=r.source,
    )
