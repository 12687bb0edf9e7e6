"""Measure a dataset: FAC over a feature set, missing features, and text diversity beside it.

:class:`Reader` loads the subject model and the SAE once and reads datasets through
them, reusing the activations the store already holds for the same model, layer,
SAE and reading mode. :func:`measure` is the Python twin of ``facsynth measure``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel

from facsynth.db import Store, open_store
from facsynth.errors import InputError
from facsynth.tools import model as model_mod
from facsynth.tools.activations import SampleFeatures
from facsynth.tools.datasets import Dataset, Sample, load_dataset
from facsynth.tools.diversity import text_diversity
from facsynth.tools.encoder import FeatureEncoder, Progress, TemplateMode
from facsynth.tools.fac import Coverage, CoverageCounter, coverage, read_feature_ids
from facsynth.tools.sae import FeatureSAE, load_sae

if TYPE_CHECKING:
    from facsynth.tools.ray_read import EncoderPool

log = logging.getLogger(__name__)


class ReaderInfo(BaseModel):
    model: str
    layer: int
    sae: str
    sae_hash: str
    d_sae: int
    activation: str
    template: str


class DatasetInfo(BaseModel):
    name: str
    source: str
    n_samples: int
    n_unique: int
    n_tokens: int
    encoded: int
    """Samples read through the model in this call."""
    reused: int
    """Samples whose activations came from the store."""


class MeasureReport(BaseModel):
    """What ``facsynth measure`` prints and writes with ``--json``."""

    data: DatasetInfo
    anchor: DatasetInfo | None = None
    reader: ReaderInfo
    feature_set: str
    coverage: list[Coverage]
    diversity: dict
    seconds: float
    tokens_per_s: float

    def at(self, delta: float) -> Coverage:
        for c in self.coverage:
            if c.delta == float(delta):
                return c
        raise KeyError(delta)


@dataclass
class Counted:
    """A dataset folded into coverage counts, with what the diversity metrics need."""

    dataset: Dataset
    counter: CoverageCounter
    pooled: list[np.ndarray] = field(default_factory=list)
    encoded: int = 0
    reused: int = 0

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.dataset.name,
            source=self.dataset.source,
            n_samples=len(self.dataset),
            n_unique=self.dataset.n_unique,
            n_tokens=self.counter.n_tokens,
            encoded=self.encoded,
            reused=self.reused,
        )


class Reader:
    """A subject model, an SAE at one layer, and the store of activations already read."""

    def __init__(
        self,
        model: str | model_mod.SubjectModel | None = None,
        sae: str | FeatureSAE | None = None,
        layer: int | None = None,
        *,
        activation: Literal["relu", "sae"] | None = None,
        device: str | None = "cpu",
        dtype: str = "float32",
        template: TemplateMode = "auto",
        batch_size: int = 32,
        max_tokens: int = 512,
        store: Store | str | None = None,
        use_store: bool = True,
    ) -> None:
        self.sae = sae if isinstance(sae, FeatureSAE) else load_sae(sae, device=device or "cpu", activation=activation)
        self.subject = model if isinstance(model, model_mod.SubjectModel) else model_mod.load(model, device=device, dtype=dtype)
        self.encoder = FeatureEncoder(
            self.subject, self.sae, layer, template=template, batch_size=batch_size, max_tokens=max_tokens
        )
        self.store: Store | None = None
        if use_store:
            self.store = store if isinstance(store, Store) else open_store(store)
        self._reader_id: int | None = None
        self.pool: EncoderPool | None = None
        """Set (by :func:`facsynth.tools.ray_read.ray_reading`): new samples are read on Ray actors."""

    @property
    def info(self) -> ReaderInfo:
        return ReaderInfo(
            model=self.subject.name,
            layer=self.encoder.layer,
            sae=self.sae.name,
            sae_hash=self.sae.hash,
            d_sae=self.sae.d_sae,
            activation=self.sae.activation,
            template=self.encoder.template,
        )

    @property
    def default_delta(self) -> float:
        """The SAE's recommended delta when it records one (the shipped SAE does), else 0.0."""
        return self.sae.recommended_delta if self.sae.recommended_delta is not None else 0.0

    @property
    def reader_id(self) -> int | None:
        if self.store is not None and self._reader_id is None:
            i = self.info
            self._reader_id = self.store.reader(
                i.model, self.subject.source.fingerprint, i.layer, i.sae, i.sae_hash, i.activation, i.template
            )
        return self._reader_id

    def read(self, dataset: Dataset, progress: Progress | None = None, chunk: int = 512) -> Iterator[tuple[SampleFeatures, bool]]:
        """Yield (features, reused) per sample in order; new readings are saved to the store.

        With a :attr:`pool` (Ray actors) the chunks' new samples are planned up front, read
        by the pool chunk by chunk (the same chunks, so the same batches), and saved and
        yielded here exactly as without it.
        """
        store, rid = self.store, self.reader_id
        if store is not None:
            store.register_dataset(dataset.name, dataset.source, [(s.sample_hash, s.payload) for s in dataset])
        it = iter(dataset)
        chunks: Iterable[list[Sample]] = iter(lambda: list(islice(it, chunk)), [])
        planned: list[list[Sample]] = []
        ahead: Iterator[list[SampleFeatures]] | None = None
        if self.pool is not None:
            chunks = list(chunks)
            planned = self._plan(chunks)
            ahead = self.pool.encode_chunks([todo for todo in planned if todo], progress)
        for k, samples in enumerate(chunks):
            stored = store.stored_features(rid, [s.sample_hash for s in samples]) if store is not None else {}
            todo = _unique([s for s in samples if s.sample_hash not in stored])
            if ahead is None:
                fresh = {sf.sample_hash: sf for sf in self.encoder.encode(todo, progress)}
            else:  # todo is planned[k] (less what another writer may have stored since)
                got = {sf.sample_hash: sf for sf in next(ahead)} if planned[k] else {}
                fresh = {s.sample_hash: got[s.sample_hash] for s in todo}
            if store is not None and fresh:
                store.save_features(rid, list(fresh.values()))
            for s in samples:
                if s.sample_hash in stored:
                    if progress is not None:
                        progress(1, stored[s.sample_hash].n_tokens)
                    yield stored[s.sample_hash], True
                else:
                    yield fresh[s.sample_hash], False

    def _plan(self, chunks: Sequence[list[Sample]]) -> list[list[Sample]]:
        """Per chunk, the samples :meth:`read` will encode: not stored, not in an earlier chunk's plan."""
        store, rid = self.store, self.reader_id
        seen: set[str] = set()
        plan = []
        for samples in chunks:
            stored = store.stored_features(rid, [s.sample_hash for s in samples]) if store is not None else {}
            todo = _unique([s for s in samples if s.sample_hash not in stored and s.sample_hash not in seen])
            if store is not None:  # saved before the next chunk is read, so found stored there
                seen.update(s.sample_hash for s in todo)
            plan.append(todo)
        return plan

    def count(self, dataset: Dataset, deltas: Sequence[float], progress: Progress | None = None) -> Counted:
        """Fold a dataset into a :class:`CoverageCounter` in one streamed pass."""
        counted = Counted(dataset, CoverageCounter(self.sae.d_sae, deltas))
        for sf, reused in self.read(dataset, progress):
            counted.counter.add(sf)
            if sf.pooled is not None:
                counted.pooled.append(sf.pooled)
            counted.reused += reused
            counted.encoded += not reused
        return counted


def _unique(samples: list) -> list:
    seen: set[str] = set()
    return [s for s in samples if not (s.sample_hash in seen or seen.add(s.sample_hash))]


def _as_dataset(data: str | Path | Dataset, limit: int | None = None) -> Dataset:
    return data if isinstance(data, Dataset) else load_dataset(data, limit=limit)


def measure(
    data: str | Path | Dataset,
    *,
    anchor: str | Path | Dataset | None = None,
    features: str | Path | Sequence[int] | None = None,
    task: str | None = None,
    deltas: Sequence[float] | None = None,
    reader: Reader | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
    **reader_options: object,
) -> MeasureReport:
    """FAC of ``data``, the features it misses, and its text diversity.

    The feature set F is, in order of precedence: the ids in ``features`` (a file or a
    list), the stored relevant set of ``task`` for this reader (with ``anchor``: those of
    them active on the anchor), the features active on ``anchor`` (per delta), or all
    SAE features. ``deltas``
    default to the SAE's recommended delta. ``reader_options`` go to :class:`Reader`
    when no reader is given (model, sae, layer, activation, device, dtype, store, ...).
    """
    if anchor is not None and features is not None:
        raise InputError("give either an anchor or a feature file, not both")
    if task is not None and features is not None:
        raise InputError("give either a task or a feature file, not both")
    started = time.perf_counter()
    data_ds = _as_dataset(data, limit)
    anchor_ds = _as_dataset(anchor, limit) if anchor is not None else None
    reader = reader or Reader(**reader_options)  # type: ignore[arg-type]
    task_ids = None
    if task is not None:
        from facsynth.tools.relevance import task_features

        task_ids = task_features(reader, task)
    deltas = sorted({float(d) for d in deltas}) if deltas else [reader.default_delta]
    counted = reader.count(data_ds, deltas, progress)
    anchor_counted = reader.count(anchor_ds, deltas, progress) if anchor_ds is not None else None

    if features is not None:
        ids = read_feature_ids(features) if isinstance(features, (str, Path)) else np.unique(np.asarray(features, dtype=np.int64))
        label = f"{len(ids)} features from {features}" if isinstance(features, (str, Path)) else f"{len(ids)} given features"
        sets = {d: ids for d in deltas}
    elif task_ids is not None and anchor_counted is not None:
        label = f"features relevant to task {task} ({len(task_ids)}) that fire on anchor {anchor_ds.name}"
        sets = {d: np.intersect1d(task_ids, np.flatnonzero(anchor_counted.counter.active(d))) for d in deltas}
    elif task_ids is not None:
        label = f"{len(task_ids)} features relevant to task {task}"
        sets = {d: task_ids for d in deltas}
    elif anchor_counted is not None:
        label = f"features active on anchor {anchor_ds.name}"
        sets = {d: anchor_counted.counter.active(d) for d in deltas}
    else:
        label = f"all {reader.sae.d_sae} SAE features"
        sets = {d: np.ones(reader.sae.d_sae, dtype=bool) for d in deltas}
    covs = [coverage(counted.counter, sets[d], d) for d in deltas]

    texts = [s.plain_text for s in data_ds]
    vectors = np.stack(counted.pooled) if counted.pooled else None
    seconds = time.perf_counter() - started
    tokens = counted.counter.n_tokens + (anchor_counted.counter.n_tokens if anchor_counted else 0)
    return MeasureReport(
        data=counted.info(),
        anchor=anchor_counted.info() if anchor_counted else None,
        reader=reader.info,
        feature_set=label,
        coverage=covs,
        diversity=text_diversity(texts, vectors).to_dict(),
        seconds=seconds,
        tokens_per_s=tokens / seconds if seconds > 0 else 0.0,
    )
