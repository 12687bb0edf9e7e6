"""A reader: the subject model and the SAE at one layer, loaded once, and the store's cache.

:class:`Reader` reads datasets through the model and the SAE, reusing the activations
the store already holds for the same model, layer, SAE and reading mode, and saving the
new ones. Everything that reads text into SAE features (``measure``, relevance, span
collection, the synthesis run) goes through it; a :class:`ChunkPool` (Ray actors,
:mod:`facsynth.tools.ray_read`) may read its new samples elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel

from facsynth.db import Store, open_store
from facsynth.records import SampleFeatures
from facsynth.tools import model as model_mod
from facsynth.tools.datasets import Dataset, Sample
from facsynth.tools.encoder import FeatureEncoder, Progress, TemplateMode
from facsynth.tools.fac import CoverageCounter
from facsynth.tools.sae import FeatureSAE, load_sae

log = logging.getLogger(__name__)


class ChunkPool(Protocol):
    """Reads planned chunks of samples elsewhere (e.g. :class:`facsynth.tools.ray_read.EncoderPool`)."""

    def encode_chunks(self, chunks: Sequence[list[Sample]], progress: Progress | None = None) -> Iterator[list[SampleFeatures]]:
        """Per chunk, in order, the readings of its samples."""
        ...


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
        self.pool: ChunkPool | None = None
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

    def count(self, dataset: Dataset, deltas: Sequence[float], progress: Progress | None = None,
              keep: list[SampleFeatures] | None = None) -> Counted:
        """Fold a dataset into a :class:`CoverageCounter` in one streamed pass; ``keep``, when
        given, also receives each sample's features in order (for a second reading of them
        without a second pass through the model)."""
        counted = Counted(dataset, CoverageCounter(self.sae.d_sae, deltas))
        for sf, reused in self.read(dataset, progress):
            if keep is not None:
                keep.append(sf)
            counted.counter.add(sf)
            if sf.pooled is not None:
                counted.pooled.append(sf.pooled)
            counted.reused += reused
            counted.encoded += not reused
        return counted


def _unique(samples: list) -> list:
    seen: set[str] = set()
    return [s for s in samples if not (s.sample_hash in seen or seen.add(s.sample_hash))]
