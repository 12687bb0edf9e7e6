"""Feature Activation Coverage.

FAC(D) = |F(D)| / |F| where F is a feature set (all SAE features, ids from a file,
the features active on an anchor corpus, or a task's relevant set) and F(D) the
features of F that fire (a_i(x) > delta) on at least one sample of D.

:class:`CoverageCounter` folds a stream of :class:`SampleFeatures` into per-feature
counts for several deltas at once, so one pass over the data serves a whole sweep.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from facsynth.errors import InputError
from facsynth.records import SampleFeatures


class CoverageCounter:
    """Per-feature hit counts and max activations for a dataset, at several deltas."""

    def __init__(self, d_sae: int, deltas: Sequence[float]) -> None:
        if not deltas:
            raise InputError("give at least one delta")
        self.d_sae = d_sae
        self.deltas = sorted(float(d) for d in deltas)
        self.hits = np.zeros((len(self.deltas), d_sae), dtype=np.int64)
        """Samples on which each feature fires, per delta."""
        self.max_act = np.zeros(d_sae, dtype=np.float32)
        self.n_samples = 0
        self.n_tokens = 0
        self.active_per_sample = np.zeros(len(self.deltas), dtype=np.int64)
        """Sum over samples of the number of features active on the sample, per delta."""

    def add(self, sf: SampleFeatures) -> None:
        self.n_samples += 1
        self.n_tokens += sf.n_tokens
        if sf.feature_ids.size == 0:
            return
        np.maximum.at(self.max_act, sf.feature_ids, sf.max_acts)
        for j, delta in enumerate(self.deltas):
            ids = sf.feature_ids[sf.max_acts > delta]
            self.hits[j, ids] += 1
            self.active_per_sample[j] += ids.size

    def update(self, items: Iterable[SampleFeatures]) -> CoverageCounter:
        for sf in items:
            self.add(sf)
        return self

    def active(self, delta: float) -> np.ndarray:
        """Bool [d_sae]: features firing on at least one sample at ``delta``."""
        return self.hits[self._index(delta)] > 0

    def _index(self, delta: float) -> int:
        try:
            return self.deltas.index(float(delta))
        except ValueError:
            raise InputError(f"delta {delta} was not counted; counted: {self.deltas}") from None


class FeatureStat(BaseModel):
    feature: int
    hits: int
    """Samples of the data on which the feature fires at this delta."""
    max_act: float


class Coverage(BaseModel):
    """FAC of a dataset over one feature set at one delta."""

    delta: float
    fac: float
    covered: int
    total: int
    missing: list[int] = Field(description="Features of F that fire on no sample, ascending.")
    features_per_1k_tokens: float = Field(
        description="Distinct features of F active on the data per 1,000 content tokens: a length-controlled view."
    )
    mean_active_per_sample: float
    mean_active_per_1k_tokens: float = Field(
        description="Mean over samples of (features of any kind active on the sample / its tokens x 1000)."
    )
    stats: list[FeatureStat] = Field(default_factory=list, description="Per feature of F: hits and max activation.")


def coverage(counter: CoverageCounter, feature_set: np.ndarray, delta: float, *, with_stats: bool = True) -> Coverage:
    """FAC of the counted data over ``feature_set`` (bool [d_sae] mask or id array)."""
    mask = as_mask(feature_set, counter.d_sae)
    total = int(mask.sum())
    if total == 0:
        raise InputError(f"the feature set is empty at delta {delta}: nothing to cover")
    j = counter._index(delta)
    active = counter.hits[j] > 0
    covered = active & mask
    n_cov = int(covered.sum())
    tokens = max(counter.n_tokens, 1)
    stats = []
    if with_stats:
        ids = np.flatnonzero(mask)
        stats = [FeatureStat(feature=int(i), hits=int(counter.hits[j, i]), max_act=float(counter.max_act[i])) for i in ids]
    return Coverage(
        delta=float(delta),
        fac=n_cov / total,
        covered=n_cov,
        total=total,
        missing=[int(i) for i in np.flatnonzero(mask & ~active)],
        features_per_1k_tokens=1000.0 * n_cov / tokens,
        mean_active_per_sample=float(counter.active_per_sample[j]) / max(counter.n_samples, 1),
        mean_active_per_1k_tokens=1000.0 * float(counter.active_per_sample[j]) / tokens,
        stats=stats,
    )


def as_mask(features: np.ndarray, d_sae: int) -> np.ndarray:
    """A feature set (bool [d_sae] mask or id array) as a bool [d_sae] mask; ids out of range are an error."""
    features = np.asarray(features)
    if features.dtype == bool:
        if features.shape != (d_sae,):
            raise InputError(f"feature mask has shape {features.shape}, expected ({d_sae},)")
        return features
    mask = np.zeros(d_sae, dtype=bool)
    if features.size:
        if features.min() < 0 or features.max() >= d_sae:
            bad = int(features.max() if features.max() >= d_sae else features.min())
            raise InputError(f"feature id {bad} is out of range: the SAE has {d_sae} features (0..{d_sae - 1})")
        mask[features.astype(np.int64)] = True
    return mask


def read_feature_ids(path: str | Path) -> np.ndarray:
    """Feature ids from a file: one id a line, a JSON list, or a TSV/CSV with a FeatureID column."""
    import csv
    import json

    path = Path(path)
    if not path.is_file():
        raise InputError(f"feature file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (byte at offset {exc.start})") from None
    stripped = text.strip()
    if not stripped:
        raise InputError(f"{path} holds no feature ids")
    try:
        if stripped.startswith("["):
            ids = [int(x) for x in json.loads(stripped)]
        elif "FeatureID" in stripped.splitlines()[0]:
            dialect = "excel-tab" if "\t" in stripped.splitlines()[0] else "excel"
            ids = [int(row["FeatureID"]) for row in csv.DictReader(stripped.splitlines(), dialect=dialect)]
        else:
            ids = []
            for line in stripped.splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    ids.extend(int(tok) for tok in line.replace(",", " ").split())
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{path}: feature ids must be integers ({exc})") from None
    if not ids:
        raise InputError(f"{path} holds no feature ids")
    return np.unique(np.asarray(ids, dtype=np.int64))
