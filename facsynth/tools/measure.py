"""Measure a dataset: FAC over a feature set, missing features, and text diversity beside it.

:func:`measure` is the Python twin of ``facsynth measure``; it reads through a
:class:`~facsynth.tools.reader.Reader` (the model and SAE loaded once, the store's cache).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from facsynth.errors import InputError
from facsynth.tools.datasets import Dataset, load_dataset
from facsynth.tools.diversity import text_diversity
from facsynth.tools.encoder import Progress
from facsynth.tools.fac import Coverage, coverage, read_feature_ids
from facsynth.tools.reader import DatasetInfo, Reader, ReaderInfo
from facsynth.tools.relevance import task_features

log = logging.getLogger(__name__)


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
