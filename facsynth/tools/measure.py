"""Measure a dataset: FAC over a feature set, missing features, and text diversity beside it.

:func:`measure` is the Python twin of ``facsynth measure``; it reads through a
:class:`~facsynth.tools.reader.Reader` (the model and SAE loaded once, the store's cache).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from facsynth.errors import InputError
from facsynth.tools.datasets import Dataset, load_dataset
from facsynth.tools.diversity import text_diversity
from facsynth.tools.encoder import Progress
from facsynth.tools.fac import Coverage, CoverageCounter, as_mask, coverage, read_feature_ids
from facsynth.tools.reader import DatasetInfo, Reader, ReaderInfo
from facsynth.tools.relevance import task_features
from facsynth.tools.sides import credited_by_label, label_sides, labels_of, unreadable_by_label

log = logging.getLogger(__name__)


class LabelCoverage(BaseModel):
    """FAC by label at one delta (:mod:`facsynth.tools.sides`): a feature of F that marks a
    label on the anchor is covered only by a sample with that label."""

    coverage: Coverage
    marks: dict[str, int]
    """Features of F that mark each label on the anchor (the rest mark none: any sample covers them)."""


class MeasureReport(BaseModel):
    """What ``facsynth measure`` prints and writes with ``--json``."""

    data: DatasetInfo
    anchor: DatasetInfo | None = None
    reader: ReaderInfo
    feature_set: str
    coverage: list[Coverage]
    by_label: list[LabelCoverage] | None = None
    """With ``by_label``: FAC by label, per delta (the same deltas as ``coverage``)."""
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
    by_label: bool | None = None,
    label_column: str = "label",
    **reader_options: object,
) -> MeasureReport:
    """FAC of ``data``, the features it misses, and its text diversity.

    The feature set F is, in order of precedence: the ids in ``features`` (a file or a
    list), the stored relevant set of ``task`` for this reader (with ``anchor``: those of
    them active on the anchor), the features active on ``anchor`` (per delta), or all
    SAE features. ``deltas``
    default to the SAE's recommended delta. ``reader_options`` go to :class:`Reader`
    when no reader is given (model, sae, layer, activation, device, dtype, store, ...).
    ``by_label``: also FAC by label (``label_column`` of ``data`` and of the labelled
    ``anchor``); default: where it can be read (both carry labels, the anchor two or more).
    """
    if anchor is not None and features is not None:
        raise InputError("give either an anchor or a feature file, not both")
    if task is not None and features is not None:
        raise InputError("give either a task or a feature file, not both")
    started = time.perf_counter()
    data_ds = _as_dataset(data, limit)
    anchor_ds = _as_dataset(anchor, limit) if anchor is not None else None
    if by_label:
        check_labelled(data_ds, anchor_ds, label_column)
    elif by_label is None:  # where it can be read
        by_label = unreadable_by_label(data_ds, anchor_ds, label_column) is None
    reader = reader or Reader(**reader_options)  # type: ignore[arg-type]
    task_ids = None
    if task is not None:
        task_ids = task_features(reader, task)
    deltas = sorted({float(d) for d in deltas}) if deltas else [reader.default_delta]
    d_read: list | None = [] if by_label else None  # FAC by label reads the same features again, by label
    a_read: list | None = [] if by_label else None
    counted = reader.count(data_ds, deltas, progress, keep=d_read)
    anchor_counted = reader.count(anchor_ds, deltas, progress, keep=a_read) if anchor_ds is not None else None

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
    labelled = (_by_label(reader.sae.d_sae, data_ds, d_read, anchor_ds, a_read, sets, deltas, label_column)
                if d_read is not None and a_read is not None and anchor_ds is not None else None)

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
        by_label=labelled,
        diversity=text_diversity(texts, vectors).to_dict(),
        seconds=seconds,
        tokens_per_s=tokens / seconds if seconds > 0 else 0.0,
    )


def check_labelled(data: Dataset, anchor: Dataset | None, column: str = "label") -> None:
    """FAC by label needs a labelled anchor (which label each feature marks) and labelled
    data: one clear error otherwise, before any model loads."""
    why = unreadable_by_label(data, anchor, column)
    if why is not None:
        hint = " (or name the field with --label-column)" if "field" in why else ""
        raise InputError(f"--by-label: {why}{hint}")


def _by_label(d_sae: int, data: Dataset, d_read: list, anchor: Dataset, a_read: list, sets: dict[float, np.ndarray],
              deltas: list[float], column: str) -> list[LabelCoverage]:
    """FAC by label per delta from the features already read (``d_read``, ``a_read``): which
    label each feature of F marks, read off the anchor at that delta; then each data sample
    counts only the features its label covers."""
    a_labels, d_labels = labels_of(anchor, column), labels_of(data, column)
    labels = tuple(sorted({v for v in a_labels if v is not None}))
    out = []
    for d in deltas:
        ids = np.flatnonzero(as_mask(sets[d], d_sae))
        sides = label_sides([(lab, set(sf.active(d).tolist())) for lab, sf in zip(a_labels, a_read)], ids, labels)
        counter = CoverageCounter(d_sae, [d]).update(credited_by_label(zip(d_labels, d_read), sides, d))
        out.append(LabelCoverage(coverage=coverage(counter, sets[d], d), marks=dict(sorted(Counter(sides.values()).items()))))
    return out
