"""Span collection: each feature's top-activating samples over a corpus, with the span at the peak.

Two passes, both reusing the store:

1. **scan**: :meth:`Reader.read` streams the corpus (stored max activations where they
   exist, the model otherwise) into bounded per-feature state: the top ``top_n +
   held_out`` samples of each feature (:class:`TopActivations`, ``d_sae x K`` slots,
   the weakest replaced first), how many samples each feature is active on, and a
   reservoir of its activations for quantiles (:class:`ActivationStats`), plus a
   reservoir of random samples for context spans. Memory grows with features x K,
   never with the corpus.
2. **cut**: only the samples some feature kept are read again, token by token (in
   padded batches, :meth:`FeatureEncoder.token_activations_batch`); for each feature that kept a sample its
   peak token is found and the span of up to ``window`` content tokens ending there is
   cut. Random samples give context spans (ending anywhere) that the detection scorer
   uses as non-activating examples. Spans are stored batch by batch; the collection
   row, written last with the stats, marks the collection complete.

A feature is *active* on a sample when a_i(x) > delta (the collection's delta). Spans
and stats are stored per (reader, corpus); asking again with the same settings returns
the stored collection without reading anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

from facsynth.db.catalog import Catalog, CollectionInfo, FeatureStats, Span
from facsynth.errors import InputError
from facsynth.tools.datasets import Dataset, Sample

if TYPE_CHECKING:
    from facsynth.tools.encoder import FeatureEncoder
    from facsynth.tools.reader import Reader

log = logging.getLogger(__name__)

StageProgress = Callable[[str, int, int], None]
"""Called with (stage, samples done in this call, stage total); stages ``read`` and ``spans``."""
QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class SpanConfig:
    """How spans are collected."""

    top_n: int = 20
    """Explanation spans kept per feature."""
    window: int = 32
    """Content tokens per span, the peak token last."""
    held_out: int = 5
    """Further activating spans per feature, kept apart for the detection score."""
    n_random: int = 100
    """Random context spans for the whole corpus (non-activating examples for detection)."""
    delta: float | None = None
    """Activation threshold; None: the reader's default (the SAE's recommended delta)."""
    reservoir: int = 128
    """Activations kept per feature for the quantile estimate (exact below this many samples)."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("top_n", "window", "reservoir"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("held_out", "n_random"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be 0 or more, got {getattr(self, name)}")

    @property
    def k(self) -> int:
        return self.top_n + self.held_out


class SpanReport(BaseModel):
    """What a collection did."""

    dataset: str
    dataset_id: int
    n_samples: int
    n_features: int
    """Features active on at least one sample."""
    n_spans: int
    from_store: bool
    """True when the stored collection was returned and nothing was read."""
    encoded: int = 0
    reused: int = 0
    cut: int = 0
    """Samples read token by token in pass 2."""
    seconds: float = 0.0


class TopActivations:
    """Per feature, the K strongest (activation, sample) pairs seen so far.

    A fixed ``[d_sae, K]`` table with each row's weakest slot tracked: a new pair
    replaces the weakest when it is strictly stronger (the earlier sample wins a tie).
    """

    def __init__(self, d_sae: int, k: int) -> None:
        self.k = k
        self.values = np.full((d_sae, k), -np.inf, dtype=np.float32)
        self.index = np.full((d_sae, k), -1, dtype=np.int64)
        self._min = np.full(d_sae, -np.inf, dtype=np.float32)
        self._argmin = np.zeros(d_sae, dtype=np.int64)

    def add(self, sample: int, ids: np.ndarray, acts: np.ndarray) -> None:
        """Offer one sample's active features (unique ``ids``) with their activations."""
        better = acts > self._min[ids]
        ids, acts = ids[better], acts[better]
        if ids.size == 0:
            return
        slots = self._argmin[ids]
        self.values[ids, slots] = acts
        self.index[ids, slots] = sample
        rows = self.values[ids]
        self._argmin[ids] = rows.argmin(axis=1)
        self._min[ids] = rows.min(axis=1)

    def top(self, feature: int) -> list[tuple[float, int]]:
        """The feature's kept (activation, sample) pairs, strongest first (ties: earlier sample first)."""
        row, idx = self.values[feature], self.index[feature]
        kept = idx >= 0
        order = np.lexsort((idx[kept], -row[kept]))
        return [(float(row[kept][i]), int(idx[kept][i])) for i in order]


class ActivationStats:
    """Per feature: active-sample count, max activation, and a reservoir of activations for quantiles."""

    def __init__(self, d_sae: int, reservoir: int, rng: np.random.Generator) -> None:
        self.count = np.zeros(d_sae, dtype=np.int64)
        self.max = np.zeros(d_sae, dtype=np.float32)
        self.sample = np.zeros((d_sae, reservoir), dtype=np.float32)
        self.rng = rng

    def add(self, ids: np.ndarray, acts: np.ndarray) -> None:
        """One sample's active features (unique ids) and their activations."""
        if ids.size == 0:
            return
        r = self.sample.shape[1]
        seen = self.count[ids]
        fill = seen < r
        self.sample[ids[fill], seen[fill]] = acts[fill]
        rest = ~fill
        if rest.any():  # reservoir sampling (algorithm R): keep with probability r / (seen + 1)
            slot = self.rng.integers(0, seen[rest] + 1)
            keep = slot < r
            self.sample[ids[rest][keep], slot[keep]] = acts[rest][keep]
        self.count[ids] += 1
        self.max[ids] = np.maximum(self.max[ids], acts)

    def quantiles(self, feature: int, levels: tuple[float, ...] = QUANTILES) -> dict[str, float]:
        n = int(min(self.count[feature], self.sample.shape[1]))
        if n == 0:
            return {}
        values = np.quantile(self.sample[feature, :n].astype(np.float64), levels)
        return {f"{q:g}": round(float(v), 6) for q, v in zip(levels, values)}


@dataclass
class _Scan:
    tops: TopActivations
    stats: ActivationStats
    random: list[int]
    n_samples: int
    encoded: int
    reused: int


def scan(reader: Reader, dataset: Dataset, cfg: SpanConfig, delta: float, progress: StageProgress | None = None) -> _Scan:
    """Pass 1: fold the corpus into bounded per-feature state (see the module doc)."""
    d_sae = reader.sae.d_sae
    rng = np.random.default_rng(cfg.seed)
    tops = TopActivations(d_sae, cfg.k)
    stats = ActivationStats(d_sae, cfg.reservoir, rng)
    random: list[int] = []
    seen: set[str] = set()
    n = encoded = reused = 0
    total = len(dataset)

    def tick(done: int, _tokens: int) -> None:
        if progress is not None:
            progress("read", done, total)

    for i, (sf, from_store) in enumerate(reader.read(dataset, tick)):
        reused += from_store
        encoded += not from_store
        if sf.sample_hash in seen:  # a repeated sample adds nothing new
            continue
        seen.add(sf.sample_hash)
        active = sf.max_acts > delta
        ids, acts = sf.feature_ids[active].astype(np.int64), sf.max_acts[active]
        tops.add(i, ids, acts)
        stats.add(ids, acts)
        if cfg.n_random:  # reservoir of random samples
            if len(random) < cfg.n_random:
                random.append(i)
            else:
                j = int(rng.integers(0, n + 1))
                if j < cfg.n_random:
                    random[j] = i
        n += 1
    return _Scan(tops, stats, sorted(random), n, encoded, reused)


def _content_words(encoder: FeatureEncoder, sample: Sample) -> list[str]:
    t = encoder.tokenize(sample)
    tok = encoder.subject.tokenizer
    return [tok.decode([i]) for i, c in zip(t.input_ids, t.content) if c]


def plan_spans(found: _Scan, cfg: SpanConfig) -> dict[int, list[tuple[int, str, int]]]:
    """Which spans pass 2 cuts: per sample index, its (feature, kind, rank) entries.

    A feature's kept samples, strongest first, give ``top_n`` explanation spans then
    ``held_out`` held-out ones; a feature with fewer samples holds out at most a quarter.
    """
    wanted: dict[int, list[tuple[int, str, int]]] = {}
    for feature in np.flatnonzero(found.stats.count):
        kept = found.tops.top(int(feature))
        n_held = cfg.held_out if len(kept) == cfg.k else min(cfg.held_out, len(kept) // 4)
        n_top = min(cfg.top_n, len(kept) - n_held)
        for rank, (_act, sample) in enumerate(kept[: n_top + n_held]):
            wanted.setdefault(sample, []).append((int(feature), "top" if rank < n_top else "held_out", rank))
    return wanted


def cut_spans(
    reader: Reader,
    dataset: Dataset,
    found: _Scan,
    wanted: dict[int, list[tuple[int, str, int]]],
    cfg: SpanConfig,
    progress: StageProgress | None = None,
) -> Iterator[list[Span]]:
    """Pass 2: re-read the ``wanted`` samples token by token and cut each feature's span at its peak.

    Yields the spans batch by batch (the random context spans last), so that the caller
    can store them as they come and memory holds one batch of spans, not all of them.
    """
    encoder = reader.encoder
    order = sorted(wanted)
    for start in range(0, len(order), encoder.batch_size):
        batch = order[start : start + encoder.batch_size]
        spans: list[Span] = []
        for sample_index, (words, acts) in zip(batch, encoder.token_activations_batch([dataset.samples[i] for i in batch])):
            sample_hash = dataset.samples[sample_index].sample_hash
            features = [f for f, _, _ in wanted[sample_index]]
            cols = acts[:, features]  # [n_content, len(features)]
            peaks = cols.argmax(dim=0).tolist()
            for j, ((feature, kind, rank), peak) in enumerate(zip(wanted[sample_index], peaks)):
                first = max(0, peak - cfg.window + 1)
                spans.append(
                    Span(
                        feature=feature, kind=kind, rank=rank, sample_hash=sample_hash,
                        activation=float(cols[peak, j]), peak_token=peak, tokens=words[first : peak + 1],
                        acts=[float(a) for a in cols[first : peak + 1, j]],
                    )
                )
        if progress is not None:
            progress("spans", len(batch), len(order))
        yield spans
    rng = np.random.default_rng(cfg.seed + 1)
    spans = []
    for rank, sample_index in enumerate(found.random):
        sample = dataset.samples[sample_index]
        words = _content_words(encoder, sample)
        end = int(rng.integers(0, len(words))) if words else 0
        start = max(0, end - cfg.window + 1)
        spans.append(
            Span(feature=None, kind="random", rank=rank, sample_hash=sample.sample_hash, activation=0.0,
                 peak_token=end, tokens=words[start : end + 1])
        )
    yield spans


def collect_spans(
    reader: Reader,
    dataset: Dataset,
    cfg: SpanConfig | None = None,
    *,
    force: bool = False,
    progress: StageProgress | None = None,
) -> SpanReport:
    """Collect (or reuse) the spans and stats of every feature of ``reader`` over ``dataset``.

    ``reader`` is a :class:`facsynth.tools.reader.Reader` with a store. The stored
    collection is returned as it is when its settings equal ``cfg`` (unless ``force``).
    """
    cfg = cfg or SpanConfig()
    store = reader.store
    if store is None:
        raise InputError("span collection keeps its results in the store; run it with a store (no --no-store)")
    started = time.perf_counter()
    delta = float(cfg.delta if cfg.delta is not None else reader.default_delta)
    rid = reader.reader_id
    did = store.register_dataset(dataset.name, dataset.source, [(s.sample_hash, s.payload) for s in dataset])
    catalog = Catalog(store)
    have = catalog.collection(rid, did)
    if have is not None and not force and _same(have, cfg, delta):
        n_spans = sum(len(v) for v in catalog.spans(rid, did, kinds=("top", "held_out", "random")).values())
        log.info("reusing the stored span collection of %s", dataset.name)
        return SpanReport(
            dataset=dataset.name, dataset_id=did, n_samples=have.n_samples, n_features=have.n_features,
            n_spans=n_spans, from_store=True, seconds=time.perf_counter() - started,
        )
    found = scan(reader, dataset, cfg, delta, progress)
    catalog.clear_collection(rid, did)
    wanted = plan_spans(found, cfg)
    n_spans = 0
    for batch in cut_spans(reader, dataset, found, wanted, cfg, progress):
        catalog.add_spans(rid, did, batch)
        n_spans += len(batch)
    active = np.flatnonzero(found.stats.count)
    stats = [
        FeatureStats(
            feature=int(f), n_samples=found.n_samples, active_count=int(found.stats.count[f]),
            frequency=float(found.stats.count[f]) / max(found.n_samples, 1), max_act=float(found.stats.max[f]),
            quantiles=found.stats.quantiles(int(f)),
        )
        for f in active
    ]
    info = CollectionInfo(
        reader_id=rid, dataset_id=did, dataset_name=dataset.name, top_n=cfg.top_n, window=cfg.window,
        held_out=cfg.held_out, n_random=cfg.n_random, delta=delta, seed=cfg.seed, n_samples=found.n_samples,
        n_features=int(active.size),
    )
    catalog.finish_collection(info, stats)
    return SpanReport(
        dataset=dataset.name, dataset_id=did, n_samples=found.n_samples, n_features=int(active.size),
        n_spans=n_spans, from_store=False, encoded=found.encoded, reused=found.reused,
        cut=len(wanted),
        seconds=time.perf_counter() - started,
    )


def _same(have: CollectionInfo, cfg: SpanConfig, delta: float) -> bool:
    return (have.top_n, have.window, have.held_out, have.n_random, have.seed) == (
        cfg.top_n, cfg.window, cfg.held_out, cfg.n_random, cfg.seed
    ) and abs(have.delta - delta) < 1e-12
