"""Task relevance without an LLM judge, and the features a seed set misses.

The paper picks task-relevant features with GPT-4o-mini and names that reliance as a
weakness. :func:`contrast_relevance` needs no LLM: from a small labeled set (a
``label`` field per sample: task-positive vs anything else) it ranks every feature by
the AUROC of its max activation a_i(x) between the two groups (Mann-Whitney U with
average ranks, so the many tied zeros count half) and selects those at or above a
threshold. Rows are stored with method ``contrast`` and the AUROC as score. With
``both_sides`` it also selects the features that mark the *other* group (AUROC at or below
1 - threshold): a labelled task's classifier needs the cues of each class, and a set F of
one side only steers synthesis toward one label.

:func:`missing_features` applies the paper's rule: relevant to the task (any method,
see :meth:`facsynth.db.catalog.Catalog.relevant_features`) and active on no seed sample.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

from facsynth.db.catalog import Catalog, Relevance
from facsynth.errors import InputError
from facsynth.records import SampleFeatures
from facsynth.tools.datasets import Dataset

if TYPE_CHECKING:
    from facsynth.tools.reader import Reader

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.7
POSITIVE_VALUES = ("1", "true", "yes", "positive", "pos")
"""Label values read as task-positive when no ``positive`` values are given (plus the task's name)."""


class ContrastReport(BaseModel):
    """What :func:`contrast_relevance` found."""

    task: str
    dataset: str
    n_positive: int
    n_other: int
    threshold: float
    scored: int
    """Features active on at least one labeled sample (each stored with its AUROC)."""
    selected: list[int]
    """Features with AUROC >= threshold (with ``both_sides``, or <= 1 - threshold), strongest
    (farthest from 0.5) first."""
    scores: dict[int, float]
    """AUROC of the selected features (below 0.5: the feature marks the other group)."""
    both_sides: bool = False
    by_chance: int
    """Features at or above the threshold with the labels shuffled (one seeded permutation): about
    how many of ``selected`` chance alone would give. With thousands of features and a few dozen
    labeled samples it is not small; then raise the threshold or label more samples."""

    @property
    def rule(self) -> str:
        """The selection rule in words: ``AUROC >= 0.7`` (``or <= 0.3`` with ``both_sides``)."""
        return f"AUROC >= {self.threshold:g}" + (f" or <= {1.0 - self.threshold:g}" if self.both_sides else "")


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks down each column of ``x`` [n, m], ties sharing their average rank."""
    n = x.shape[0]
    order = np.argsort(x, axis=0, kind="stable")
    s = np.take_along_axis(x, order, axis=0)
    idx = np.broadcast_to(np.arange(n)[:, None], s.shape)
    starts = np.ones(s.shape, dtype=bool)
    starts[1:] = s[1:] != s[:-1]
    ends = np.ones(s.shape, dtype=bool)
    ends[:-1] = s[1:] != s[:-1]
    first = np.maximum.accumulate(np.where(starts, idx, 0), axis=0)
    last = np.minimum.accumulate(np.where(ends, idx, n - 1)[::-1], axis=0)[::-1]
    ranks = np.empty(s.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=0)
    return ranks


def auroc_by_feature(
    features: Sequence[SampleFeatures], positive: np.ndarray, d_sae: int, *, block: int = 2048
) -> np.ndarray:
    """AUROC [d_sae] of each feature's max activation, positives vs the rest (0.5: no contrast).

    P(a_i(pos) > a_i(other)) + 0.5 P(tie), from average ranks; the dense matrix is built
    ``block`` features at a time, so memory is samples x block.
    """
    positive = np.asarray(positive, dtype=bool)
    if len(features) != positive.size:
        raise ValueError(f"{len(features)} samples but {positive.size} labels")
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise InputError(f"contrast needs task-positive and other samples; got {n_pos} positive, {n_neg} other")
    rows = np.concatenate([np.full(sf.feature_ids.size, i, dtype=np.int64) for i, sf in enumerate(features)])
    cols = np.concatenate([sf.feature_ids.astype(np.int64) for sf in features])
    vals = np.concatenate([sf.max_acts.astype(np.float32) for sf in features])
    out = np.full(d_sae, 0.5)
    for b0 in range(0, d_sae, block):
        b1 = min(b0 + block, d_sae)
        pick = (cols >= b0) & (cols < b1)
        used = np.unique(cols[pick])
        if used.size == 0:
            continue
        dense = np.zeros((len(features), used.size), dtype=np.float32)
        dense[rows[pick], np.searchsorted(used, cols[pick])] = vals[pick]
        r_pos = average_ranks(dense)[positive].sum(axis=0)
        out[used] = (r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return out


def positive_mask(dataset: Dataset, task: str, *, field: str = "label", positive: Iterable[str] | None = None) -> np.ndarray:
    """Which samples are task-positive, from each sample's ``field`` (kept in its meta)."""
    accepted = {str(p).strip().lower() for p in positive} if positive else {*POSITIVE_VALUES, task.lower()}
    out = np.zeros(len(dataset), dtype=bool)
    for i, sample in enumerate(dataset):
        if field not in sample.meta:
            raise InputError(f"{dataset.source}: sample {i} has no {field!r} field; label every sample")
        out[i] = str(sample.meta[field]).strip().lower() in accepted
    return out


def contrast_relevance(
    reader: Reader,
    dataset: Dataset,
    task: str,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    field: str = "label",
    positive: Iterable[str] | None = None,
    seed: int = 0,
    both_sides: bool = False,
) -> ContrastReport:
    """Score every feature by AUROC on a labeled set and store the result as ``contrast`` relevance.

    The task must be stored already (see :func:`facsynth.agent.tasks.resolve_task`); a new
    run replaces the task's previous contrast rows for this reader. ``both_sides``: features
    whose AUROC is at or below ``1 - threshold`` (they mark the other samples) are selected too.
    """
    if not 0.5 <= threshold <= 1.0:
        raise InputError(f"the AUROC threshold must lie in [0.5, 1]; got {threshold}")
    if reader.store is None:
        raise InputError("contrast relevance keeps its results in the store; run it with a store")
    labels = positive_mask(dataset, task, field=field, positive=positive)
    read = [sf for sf, _ in reader.read(dataset)]
    scores = auroc_by_feature(read, labels, reader.sae.d_sae)
    shuffled = auroc_by_feature(read, np.random.default_rng(seed).permutation(labels), reader.sae.d_sae)

    def chosen_by(auroc: np.ndarray) -> np.ndarray:
        return (auroc >= threshold) | (both_sides & (auroc <= 1.0 - threshold))

    picked = chosen_by(scores)
    active = np.unique(np.concatenate([sf.feature_ids for sf in read])) if read else np.array([], dtype=np.int64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    rows = [
        Relevance(
            feature=int(f), task=task, method="contrast", label="Yes" if picked[f] else "No",
            analysis=f"AUROC {scores[f]:.3f} of max activation, {n_pos} task-positive vs {n_neg} other samples "
            f"of {dataset.name} (threshold {threshold:g}{f' or {1.0 - threshold:g}' if both_sides else ''})"
            + ("; marks the other samples" if both_sides and picked[f] and scores[f] < 0.5 else ""),
            score=round(float(scores[f]), 6),
        )
        for f in active
    ]
    Catalog(reader.store).save_relevance(reader.reader_id, rows, replace_method="contrast")  # type: ignore[arg-type]
    chosen = [int(f) for f in active if picked[f]]
    chosen.sort(key=lambda f: (-abs(scores[f] - 0.5), -scores[f], f))
    log.info("contrast relevance for %s: %d of %d features selected", task, len(chosen), len(active))
    return ContrastReport(
        task=task, dataset=dataset.name, n_positive=n_pos, n_other=n_neg, threshold=threshold, scored=len(rows),
        selected=chosen, scores={f: float(scores[f]) for f in chosen}, by_chance=int(chosen_by(shuffled)[active].sum()),
        both_sides=both_sides,
    )


def anchor_delta(reader: Reader, dataset: Dataset, features: Iterable[int], *, quantile: float = 0.5) -> float:
    """A delta read off the task's own text: the ``quantile`` of the activations
    a_i(x) > 0 of ``features`` over the samples of ``dataset`` (the anchor).

    At the median, a feature of F counts as active on a sample where it fires at least as
    strongly as it does in half of its firings on real task text: a bar that text of the
    task's kind reaches, whatever corpus the SAE's own recommended delta was set on.
    """
    if not 0 < quantile < 1:
        raise InputError(f"the delta quantile must lie in (0, 1); got {quantile}")
    wanted = np.asarray(sorted({int(f) for f in features}), dtype=np.int64)
    if wanted.size == 0:
        raise InputError("no features to set a delta from")
    acts = [sf.max_acts[np.isin(sf.feature_ids, wanted)] for sf, _ in reader.read(dataset)]
    pooled = np.concatenate(acts) if acts else np.zeros(0, dtype=np.float32)
    if pooled.size == 0:
        raise InputError(f"none of the {wanted.size} features fires on {dataset.name}: no delta to read off it")
    return float(np.quantile(pooled, quantile))


def task_features(reader: Reader, task: str) -> np.ndarray:
    """The task's relevant feature ids for this reader; a one-line error when there are none."""
    if reader.store is None:
        raise InputError("--task reads the task's features from the store; run without --no-store")
    ids = Catalog(reader.store).relevant_features(reader.reader_id, task)  # type: ignore[arg-type]
    if not ids:
        raise InputError(
            f"no relevant features for task {task!r} under this model and SAE in {reader.store.url}; "
            "select them first with `facsynth features relevance` (or `facsynth features judge`)"
        )
    return np.asarray(ids, dtype=np.int64)


def missing_features(reader: Reader, seed: Dataset, task: str, delta: float | None = None) -> list[int]:
    """Task-relevant features (on the anchor they were chosen from) that no seed sample fires."""
    relevant = task_features(reader, task)
    delta = reader.default_delta if delta is None else float(delta)
    active = reader.count(seed, [delta]).counter.active(delta)
    return [int(f) for f in relevant if not active[f]]
