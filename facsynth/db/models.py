"""The store's tables as typed SQLAlchemy 2.0 declarative models.

These classes describe the schema *as it is after every migration* in
:mod:`facsynth.db.migrations` has run; the migrations, not these classes, create and
change tables (``Base.metadata.create_all`` is never called on a real store). A test
checks that both agree, so a new column means a new migration plus an edit here.

Conventions:

* surrogate integer ``id`` primary keys, natural keys under a unique constraint;
* hashes are lowercase sha256 hex (``String(64)``);
* timestamps are UTC, set by Python (``created_at``);
* binary arrays are little-endian, their dtype documented on the column.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Constraint names, deterministic on every dialect so later migrations can drop or alter
them by name. Shared with :mod:`facsynth.db.migrations`; never change it."""

OUTCOMES = ("ok", "error", "parse_error", "cached")
"""Allowed values of ``llm_calls.outcome``."""
LABELS = ("Yes", "Probably", "Maybe", "No")
"""The judges' scale (explanation check and task relevance), strongest first."""
SPAN_KINDS = ("top", "held_out", "random")
"""``feature_spans.kind``: explanation spans, held-out activating spans, random context spans."""
RELEVANCE_METHODS = ("llm_judge", "contrast", "import")
"""How a relevance row was decided (``relevance.method``)."""


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of every facsynth table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Reader(Base):
    """One measurement identity: which model, layer, SAE and reading modes produced a hit.

    Two readings are comparable only when all seven fields agree; ``key`` is the sha256
    of them (see :func:`facsynth.db.store.reader_key`).
    """

    __tablename__ = "readers"
    __table_args__ = (
        UniqueConstraint(
            "model_name",
            "model_fingerprint",
            "layer",
            "sae_name",
            "sae_hash",
            "activation_mode",
            "template_mode",
            name="uq_readers_identity",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    model_name: Mapped[str] = mapped_column(String(512))
    model_fingerprint: Mapped[str] = mapped_column(String(64))
    layer: Mapped[int] = mapped_column(Integer)
    sae_name: Mapped[str] = mapped_column(String(512))
    sae_hash: Mapped[str] = mapped_column(String(64))
    activation_mode: Mapped[str] = mapped_column(String(32))
    template_mode: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Dataset(Base):
    """An ordered list of samples, identified by its content (not its name or path)."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(Text)
    """Where it was read from (a path or a description); informative only."""
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """sha256 over the sample hashes in order (see :func:`facsynth.db.store.dataset_hash`)."""
    n_samples: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Sample(Base):
    """One sample, shared by every dataset that contains it."""

    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_hash: Mapped[str] = mapped_column(String(64), unique=True)
    payload: Mapped[str] = mapped_column(Text)
    """Canonical JSON text: ``{"text": ...}`` or ``{"messages": [...]}`` plus ``meta``."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetSample(Base):
    """Link: the sample at ``position`` (0-based) of a dataset."""

    __tablename__ = "dataset_samples"
    __table_args__ = (Index("ix_dataset_samples_sample_id", "sample_id"),)

    dataset_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int] = mapped_column(Integer, ForeignKey("samples.id"))


class SampleFeatureRow(Base):
    """One sample's sparse SAE hits under one reader (a stored ``SampleFeatures``).

    Blob encodings (all little-endian, no header; length = ``n_active`` elements):

    * ``feature_ids``: int32, ascending;
    * ``max_acts``: float32, aligned with ``feature_ids`` (kept at full precision
      because activation thresholds are compared against it);
    * ``pooled``: float16 ``[d_model]`` or NULL (values clipped to the float16 range).
    """

    __tablename__ = "sample_features"

    reader_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("readers.id", ondelete="CASCADE"), primary_key=True
    )
    sample_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True
    )
    n_tokens: Mapped[int] = mapped_column(Integer)
    feature_ids: Mapped[bytes] = mapped_column(LargeBinary)
    max_acts: Mapped[bytes] = mapped_column(LargeBinary)
    pooled: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Feature(Base):
    """One SAE feature as seen by one reader; catalog columns arrive in later migrations."""

    __tablename__ = "features"
    __table_args__ = (UniqueConstraint("reader_id", "feature_id", name="uq_features_reader_feature"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reader_id: Mapped[int] = mapped_column(Integer, ForeignKey("readers.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LLMCall(Base):
    """One call to an LLM endpoint (or a cache hit standing in for one).

    ``error`` is redacted before it is stored; no secret ever reaches this table.
    """

    __tablename__ = "llm_calls"
    __table_args__ = (
        CheckConstraint("outcome IN ('ok', 'error', 'parse_error', 'cached')", name="outcome"),
        Index("ix_llm_calls_run_id", "run_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    purpose: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(255))
    prompt_hash: Mapped[str] = mapped_column(String(64))
    tokens_in: Mapped[int] = mapped_column(Integer)
    tokens_out: Mapped[int] = mapped_column(Integer)
    latency_s: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class LLMCacheEntry(Base):
    """A cached LLM reply, keyed by the sha256 of everything that determines it."""

    __tablename__ = "llm_cache"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(255))
    response: Mapped[str] = mapped_column(Text)
    """The serialized reply (JSON text as the caller wrote it)."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SpanCollection(Base):
    """One span collection over a corpus: its parameters (one per reader and dataset)."""

    __tablename__ = "span_collections"
    __table_args__ = (UniqueConstraint("reader_id", "dataset_id", name="uq_span_collections_reader_dataset"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reader_id: Mapped[int] = mapped_column(Integer, ForeignKey("readers.id", ondelete="CASCADE"))
    dataset_id: Mapped[int] = mapped_column(Integer, ForeignKey("datasets.id", ondelete="CASCADE"))
    top_n: Mapped[int] = mapped_column(Integer)
    window: Mapped[int] = mapped_column(Integer)
    held_out: Mapped[int] = mapped_column(Integer)
    n_random: Mapped[int] = mapped_column(Integer)
    delta: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(Integer)
    n_samples: Mapped[int] = mapped_column(Integer)
    n_features: Mapped[int] = mapped_column(Integer)
    """Features active on at least one sample of the corpus."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FeatureStatsRow(Base):
    """How often one feature fires on one corpus, and how strongly (features that never fire are absent)."""

    __tablename__ = "feature_stats"
    __table_args__ = (
        UniqueConstraint("reader_id", "dataset_id", "feature_id", name="uq_feature_stats_reader_dataset_feature"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reader_id: Mapped[int] = mapped_column(Integer, ForeignKey("readers.id", ondelete="CASCADE"))
    dataset_id: Mapped[int] = mapped_column(Integer, ForeignKey("datasets.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(Integer)
    n_samples: Mapped[int] = mapped_column(Integer)
    active_count: Mapped[int] = mapped_column(Integer)
    """Samples with a_i(x) > delta (the collection's delta)."""
    frequency: Mapped[float] = mapped_column(Float)
    """active_count / n_samples."""
    max_act: Mapped[float] = mapped_column(Float)
    quantiles: Mapped[str] = mapped_column(Text)
    """JSON object ``{"0.5": v, "0.9": v, ...}``: quantiles of a_i(x) over the samples where it is active."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FeatureSpan(Base):
    """A span of up to W content tokens of one sample.

    ``top`` / ``held_out`` spans end at the feature's peak token; ``random`` spans (the
    context pool the detection scorer draws non-activating examples from) end anywhere
    and have no feature (``feature_id`` NULL).
    """

    __tablename__ = "feature_spans"
    __table_args__ = (
        CheckConstraint("kind IN ('top', 'held_out', 'random')", name="kind"),
        Index("ix_feature_spans_reader_id_dataset_id_feature_id", "reader_id", "dataset_id", "feature_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reader_id: Mapped[int] = mapped_column(Integer, ForeignKey("readers.id", ondelete="CASCADE"))
    dataset_id: Mapped[int] = mapped_column(Integer, ForeignKey("datasets.id", ondelete="CASCADE"))
    feature_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    rank: Mapped[int] = mapped_column(Integer)
    """0-based: the strongest sample first (held-out spans continue after the top ones)."""
    sample_id: Mapped[int] = mapped_column(Integer, ForeignKey("samples.id", ondelete="CASCADE"))
    activation: Mapped[float] = mapped_column(Float)
    """a_i(x) at the peak token (0 for random spans)."""
    peak_token: Mapped[int] = mapped_column(Integer)
    """Index of the span's last token among the sample's content tokens."""
    tokens: Mapped[str] = mapped_column(Text)
    """JSON list of the span's token strings (concatenated they give ``text``)."""
    acts: Mapped[str] = mapped_column(Text)
    """JSON list of the feature's activation on each span token (empty for random spans)."""
    text: Mapped[str] = mapped_column(Text)


class ExplanationRow(Base):
    """A feature's one-line explanation (or ``Cannot tell``) and the scores of that explanation."""

    __tablename__ = "explanations"
    __table_args__ = (
        UniqueConstraint("reader_id", "feature_id", name="uq_explanations_reader_feature"),
        CheckConstraint("check_label IS NULL OR check_label IN ('Yes', 'Probably', 'Maybe', 'No')", name="check_label"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reader_id: Mapped[int] = mapped_column(Integer, ForeignKey("readers.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(Integer)
    dataset_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True)
    """The corpus whose spans the explainer read (NULL when imported)."""
    text: Mapped[str] = mapped_column(Text)
    words: Mapped[str | None] = mapped_column(Text, nullable=True)
    """JSON list of the feature's peak tokens on its top spans (the authors' ``Words``)."""
    explainer_model: Mapped[str] = mapped_column(String(255))
    check_label: Mapped[str | None] = mapped_column(String(16), nullable=True)
    check_model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    detection_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Balanced accuracy of a judge sorting held-out activating and random spans by the explanation."""
    detection_n: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Spans the detection judge sorted."""
    detection_model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TaskRow(Base):
    """A task: what makes data relevant to it (presets and user-defined ones)."""

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    definition: Mapped[str] = mapped_column(Text)
    criteria: Mapped[str] = mapped_column(Text)
    format: Mapped[str | None] = mapped_column(Text, nullable=True)
    """JSON: the sample format synthesis should produce for this task."""
    source: Mapped[str] = mapped_column(String(512))
    """``preset`` or the file the task was read from."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RelevanceRow(Base):
    """Whether one feature matters for one task, decided by one method."""

    __tablename__ = "relevance"
    __table_args__ = (
        UniqueConstraint("reader_id", "feature_id", "task_id", "method", name="uq_relevance_reader_feature_task_method"),
        CheckConstraint("label IN ('Yes', 'Probably', 'Maybe', 'No')", name="label"),
        CheckConstraint("method IN ('llm_judge', 'contrast', 'import')", name="method"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reader_id: Mapped[int] = mapped_column(Integer, ForeignKey("readers.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[int] = mapped_column(Integer, ForeignKey("tasks.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(16))
    analysis: Mapped[str] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    """``contrast``: AUROC of the feature's max activation, task-positive vs other samples."""
    model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    """The judge model (``llm_judge``), else NULL."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


RUN_STATUSES = ("created", "running", "reviewing", "stopped", "paused", "done", "failed")
"""``runs.status``: created, running (a process holds it), reviewing (a batch waits for the
user's review), stopped (Ctrl-C, kill, error), paused (by the user), done (target, budget or
nothing left), failed."""
FEATURE_STATUSES = ("pending", "in_progress", "covered", "exhausted", "excluded")
"""``run_features.status``."""


class Run(Base):
    """A synthesis run: its configuration, feature set and where it stands."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('created', 'running', 'reviewing', 'stopped', 'paused', 'done', 'failed')", name="status"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    strategy: Mapped[str] = mapped_column(String(16))
    """``agent`` or ``paper``."""
    task: Mapped[str] = mapped_column(String(128))
    reader_id: Mapped[int] = mapped_column(Integer, ForeignKey("readers.id", ondelete="CASCADE"))
    config: Mapped[str] = mapped_column(Text)
    """JSON of :class:`facsynth.graph.config.RunConfig` (no secret: keys stay in the environment)."""
    feature_set: Mapped[str] = mapped_column(Text)
    """How F was chosen, in words."""
    n_relevant: Mapped[int] = mapped_column(Integer)
    """|F|: the features coverage is measured over."""
    n_seed_covered: Mapped[int] = mapped_column(Integer)
    """Features of F the seed already fires."""
    stop_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    elapsed_s: Mapped[float] = mapped_column(Float)
    """Wall time spent synthesizing, summed over every session of the run."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RunFeature(Base):
    """One missing feature of a run: its status, attempts and what covered it."""

    __tablename__ = "run_features"
    __table_args__ = (
        UniqueConstraint("run_id", "feature_id", name="uq_run_features_run_feature"),
        CheckConstraint("status IN ('pending', 'in_progress', 'covered', 'exhausted', 'excluded')", name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    """Generator calls made for this feature."""
    priority: Mapped[float] = mapped_column(Float)
    """Higher first (task relevance, explanation score, how easily the anchor fires it)."""
    best_act: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Highest activation a candidate reached on it."""
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    """Why it was exhausted or excluded."""
    covered_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """``run_samples.id`` of the first accepted sample that fires it."""
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RunCandidate(Base):
    """One generated example and the verifier's verdict on it."""

    __tablename__ = "run_candidates"
    __table_args__ = (
        UniqueConstraint("run_id", "feature_id", "attempt", "idx", name="uq_run_candidates_run_feature_attempt_idx"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(Integer)
    """The target feature it was written for."""
    attempt: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    """1: written from the explanation and spans; 2: written with a contrastive pair."""
    idx: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    """``positive``, ``negative`` (agent) or ``sample`` (paper)."""
    payload: Mapped[str] = mapped_column(Text)
    """JSON ``{"text": ...}`` or ``{"messages": [...]}``."""
    label: Mapped[str | None] = mapped_column(String(64), nullable=True)
    text_hash: Mapped[str] = mapped_column(String(64))
    """sha256 of the normalized text (exact-duplicate check)."""
    prompt_hash: Mapped[str] = mapped_column(String(64))
    """The LLM request key (``llm_calls.prompt_hash``)."""
    model: Mapped[str] = mapped_column(String(255))
    target_act: Mapped[float | None] = mapped_column(Float, nullable=True)
    span: Mapped[str | None] = mapped_column(Text, nullable=True)
    """JSON: the tokens ending at the target's peak and their activations."""
    feature_ids: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    """int32 little-endian: features with activation > 0."""
    max_acts: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    """float32 little-endian, aligned with ``feature_ids``."""
    verdict: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """NULL until verified; ``accepted``, ``rejected``, ``duplicate``."""
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    proposed: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """Review mode: ``accepted`` while the verifier's acceptance waits for the user."""
    reason_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """The verdict's reason as a code of :data:`facsynth.tools.quality.REASONS` (m004)."""
    checks: Mapped[str | None] = mapped_column(Text, nullable=True)
    """JSON: the quality signals read (loss, distance, request, judge) (m004)."""
    review: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """The user's decision on a proposed candidate: ``approve``, ``deny`` or ``edit``."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RunSample(Base):
    """An accepted sample and the coverage it added."""

    __tablename__ = "run_samples"
    __table_args__ = (UniqueConstraint("run_id", "text_hash", name="uq_run_samples_run_text_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id", ondelete="CASCADE"))
    candidate_id: Mapped[int] = mapped_column(Integer, ForeignKey("run_candidates.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(Integer)
    text_hash: Mapped[str] = mapped_column(String(64))
    activation: Mapped[float] = mapped_column(Float)
    covered: Mapped[str] = mapped_column(Text)
    """JSON list: the run's missing features this sample covered first (the target included)."""
    withdrawn_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    """Set when a user rejects the sample afterwards; its coverage is withdrawn."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RunProgress(Base):
    """Coverage after one verifier step: the points of the FAC-against-calls plot."""

    __tablename__ = "run_progress"
    __table_args__ = (UniqueConstraint("run_id", "seq", name="uq_run_progress_run_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    llm_calls: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(Integer)
    covered: Mapped[int] = mapped_column(Integer)
    fac: Mapped[float] = mapped_column(Float)
    elapsed_s: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RunDirective(Base):
    """A steering directive: the user's words and what they were parsed into."""

    __tablename__ = "run_directives"
    __table_args__ = (Index("ix_run_directives_run_id", "run_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id", ondelete="CASCADE"))
    words: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(32))
    """``focus``, ``exclude``, ``style``, ``target``, ``budget``, ``pause``."""
    args: Mapped[str] = mapped_column(Text)
    """JSON of the parsed directive."""
    active: Mapped[int] = mapped_column(Integer)
    """1 while it applies; 0 once undone."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    reverted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RunWorker(Base):
    """One session of a synthesis worker on a PostgreSQL store (``facsynth worker``, ``run --workers``).

    A worker holds a PostgreSQL advisory lock on its slot for as long as it lives; the lock,
    not this row, says whether it is alive (it dies with the worker's connection, SIGKILL
    included). The row is the record: who ran, where, when (m005)."""

    __tablename__ = "run_workers"
    __table_args__ = (Index("ix_run_workers_run_id", "run_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(32))
    """``w<slot>``; also the worker's LangGraph thread (``<run>:w<slot>``)."""
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    """Set when the worker ended on its own; NULL after a crash (or while it runs)."""


class RunClaim(Base):
    """A worker's claim on one target feature, open while ``released_at`` is NULL (m005).

    At most one open claim per feature (a partial unique index); a claim whose worker died is
    closed (``outcome`` ``recovered``) by whoever claims the feature next."""

    __tablename__ = "run_claims"
    __table_args__ = (
        Index("ix_run_claims_run_id_feature_id", "run_id", "feature_id"),
        Index(
            "uq_run_claims_open", "run_id", "feature_id", unique=True,
            postgresql_where=text("released_at IS NULL"), sqlite_where=text("released_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id", ondelete="CASCADE"))
    feature_id: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(32))
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """``released`` (by its worker) or ``recovered`` (its worker died; another took the feature)."""
