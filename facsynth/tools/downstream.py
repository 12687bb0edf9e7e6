"""Does the data help? A head-only probe on the subject model's frozen hidden states.

The paper fine-tunes a model on seed + synthetic data and reports a downstream metric
(toxicity AUPRC, reward-model accuracy, ...). :func:`evaluate` is a cheap proxy that runs
on a laptop: every sample is read once through the subject model up to one block
(the same rendering and content-token pooling as ``facsynth measure``; no SAE), its
hidden state mean-pooled over content tokens is the feature vector, and a
scikit-learn logistic regression (standardized features, L2, balanced class weights)
is trained

* on the seed alone (the arm ``seed``), and
* on the seed plus each added set (one arm per ``add``, named after the file),

then scored on a labelled test set: AUPRC (average precision of the positive class)
and accuracy (probability >= 0.5), each with a percentile bootstrap interval over
test resamples. With ``seed_size`` every arm is trained ``draws`` times on a random
draw of that many seed samples (class proportions kept, at least one of each class;
the same draws for every arm), and the point is the mean over draws with a t
interval over draws.

What it shows and what it does not: whether the added samples move a linear read-out
of the frozen model's features for this task. It fine-tunes nothing, so it cannot
show what the paper's fine-tuning shows (a model that changed); with a few dozen
samples the intervals are wide, and overlapping intervals mean "no evidence either
way", not "no effect".

Labels come from one field of each sample (``label`` unless told otherwise). The task
is binary: the positive class against everything else. The positive class is the
``positive`` values when given; otherwise a label spelled 1/true/yes/positive/pos,
else, with exactly two classes, the rarer one in the test set (AUPRC is about finding
the minority class, as with the paper's toxicity task).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from facsynth.errors import InputError
from facsynth.tools.datasets import Dataset, Sample, load_dataset

if TYPE_CHECKING:
    from facsynth.tools.model import SubjectModel

log = logging.getLogger(__name__)

POSITIVE_NAMES = ("1", "true", "yes", "positive", "pos")
"""Label values taken as the positive class when none is named."""
SEED_ARM = "seed"
Progress = Callable[[int, int], None]


class EvalConfig(BaseModel):
    """How the probe is trained and scored.

    Each field is one option of ``facsynth eval`` (:mod:`facsynth.cli.from_config`), with
    this default and the first sentence of its docstring as help."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    label_column: str = Field("label", min_length=1)
    """The field that holds each sample's label."""
    positive: tuple[str, ...] = ()
    """Label values of the positive class, compared case-insensitively; none: a label spelled
    1/true/yes/positive/pos, else (two classes) the rarer one in the test set."""
    seed_size: int | None = Field(None, ge=2)
    """Train on random draws of this many seed samples (class proportions kept) instead of the whole seed."""
    draws: int = Field(5, ge=1)
    """Random seed draws per arm with a seed size; the mean and interval are over the draws."""
    bootstrap: int = Field(1000, ge=10)
    """Test-set resamples for the intervals."""
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    """Confidence level of the intervals."""
    rng_seed: int = 0
    """Seed of the seed draws and the test resamples."""
    c: float = Field(1.0, gt=0.0)
    """Inverse L2 strength of the logistic regression."""
    layer: int | None = None
    """Decoder block read (0-based); default: the middle block (15 of SmolLM2's 30, the shipped SAE's)."""
    batch_size: int = Field(32, ge=1)
    """Samples per forward pass."""
    max_tokens: int = Field(512, ge=1)
    """Tokens read per sample (longer samples are truncated)."""

    @classmethod
    def make(cls, **values: object) -> EvalConfig:
        """Build a config; an invalid value is one :class:`InputError` line."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
            raise InputError(f"invalid eval option: {problems}") from None


class Interval(BaseModel):
    """A point estimate with its interval."""

    value: float
    low: float
    high: float


class DrawResult(BaseModel):
    """One seed draw of one arm (with ``seed_size``)."""

    n_train: int
    auprc: Interval
    accuracy: Interval
    """Both with their bootstrap interval over test resamples."""


class ArmResult(BaseModel):
    """One training set: the seed alone, or the seed plus one added set."""

    name: str
    sources: list[str]
    n_train: int
    n_train_positive: int
    overlap: int
    """Training samples whose text is also in the test set (leakage; should be 0)."""
    auprc: Interval
    accuracy: Interval
    interval: Literal["bootstrap", "draws"]
    """What the AUPRC and accuracy intervals span: test resamples, or the seed draws."""
    auprc_gain: Interval | None = None
    """AUPRC minus the seed arm's (None for the seed arm), paired: the same test resamples and
    seed draws for both arms; its interval spans test resamples (pooled over the draws)."""
    draws: list[DrawResult] = []


class EvalReport(BaseModel):
    """What ``facsynth eval`` prints and writes with ``--json``."""

    test: str
    n_test: int
    n_test_positive: int
    chance_auprc: float
    """AUPRC of a random scorer: the test set's positive rate."""
    label_column: str
    positive: list[str]
    model: str
    layer: int
    classifier: str
    seed_size: int | None
    draws: int
    bootstrap: int
    confidence: float
    arms: list[ArmResult]
    auprc: dict[str, float]
    """AUPRC per arm (the arms' points), for quick reading."""
    seconds: float

    def arm(self, name: str) -> ArmResult:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(name)


# --- labels ---------------------------------------------------------------------------


def label_values(dataset: Dataset, column: str) -> list[str]:
    """Each sample's label as a stripped string; one clear error when a label is missing."""
    present = [column in s.meta for s in dataset.samples]
    if not any(present):
        fields = sorted({k for s in dataset.samples for k in s.meta})
        found = ", ".join(fields[:12]) or "none besides the text"
        raise InputError(f"{dataset.source} has no {column!r} field (other fields: {found}); "
                         "a labelled set is needed (--label-column names the field)")
    if not all(present):
        i = present.index(False)
        raise InputError(f"{dataset.source}: sample {i} has no {column!r} field; label every sample")
    return [str(s.meta[column]).strip() for s in dataset.samples]


def choose_positive(train: Sequence[str], test: Sequence[str], given: Sequence[str]) -> set[str]:
    """The positive label values (lower-case): ``given``, else the default rule of the module doc."""
    classes = sorted({v.lower() for v in (*train, *test)})
    if given:
        wanted = {g.strip().lower() for g in given}
        if not wanted & {v.lower() for v in test}:
            raise InputError(f"no test label is {' or '.join(sorted(wanted))}; the test labels are {', '.join(classes)}")
        return wanted
    if len(classes) < 2:
        raise InputError(f"every training and test sample has the label {classes[0]!r}: "
                         "one class only; the probe needs positive and other samples")
    named = [c for c in classes if c in POSITIVE_NAMES]
    if len(named) == 1:
        return {named[0]}
    if len(classes) == 2:
        counts = [sum(v.lower() == c for v in test) for c in classes]
        if counts[0] == counts[1]:
            raise InputError(f"{classes[0]} and {classes[1]} are equally frequent in the test set: "
                             "name the positive class with --positive")
        return {classes[int(counts[1] < counts[0])]}
    raise InputError(f"{len(classes)} label values ({', '.join(classes[:12])}): name the positive class with --positive")


def binary(values: Sequence[str], positive: set[str]) -> np.ndarray:
    return np.array([v.lower() in positive for v in values], dtype=bool)


def _check_two_classes(y: np.ndarray, what: str, positive: set[str]) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = f"positive ({'/'.join(sorted(positive))})" if n_pos else f"non-positive (not {'/'.join(sorted(positive))})"
        raise InputError(f"{what} holds one class only: all {y.size} samples are {only}; "
                         "the probe needs positive and other samples")


# --- metrics --------------------------------------------------------------------------


def average_precision(y: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of the positive class (as scikit-learn computes it, ties included)."""
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # the end of each run of equal scores
    tp = np.cumsum(t)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall_step = np.diff(np.r_[0, tp]) / n_pos
    return float(np.sum(recall_step * precision))


def bootstrap_intervals(
    y: np.ndarray, scores: np.ndarray, *, resamples: int, confidence: float, rng: np.random.Generator
) -> tuple[Interval, Interval, np.ndarray]:
    """AUPRC and accuracy (threshold 0.5) with percentile intervals over test resamples,
    and the AUPRC of each resample (for paired differences: the same ``rng`` state gives the
    same resamples).

    A resample with one class only has no AUPRC and is drawn again (it is rare unless the
    test set is tiny or nearly one class).
    """
    pred = scores >= 0.5
    correct = pred == y
    ap_point, acc_point = average_precision(y, scores), float(correct.mean())
    n = y.size
    aps, accs = np.empty(resamples), np.empty(resamples)
    done = tries = 0
    while done < resamples and tries < resamples * 20:
        tries += 1
        idx = rng.integers(0, n, n)
        yy = y[idx]
        if yy.all() or not yy.any():
            continue
        aps[done], accs[done] = average_precision(yy, scores[idx]), correct[idx].mean()
        done += 1
    a = (1.0 - confidence) / 2.0
    q = [100 * a, 100 * (1 - a)]
    ap_lo, ap_hi = np.percentile(aps[:done], q)
    acc_lo, acc_hi = np.percentile(accs[:done], q)
    return (
        Interval(value=ap_point, low=float(ap_lo), high=float(ap_hi)),
        Interval(value=acc_point, low=float(acc_lo), high=float(acc_hi)),
        aps[:done],
    )


def paired_gain(points: Sequence[float], resampled: Sequence[np.ndarray], confidence: float) -> Interval:
    """Mean AUPRC gain over draws, with the percentile interval of the paired per-resample gains
    pooled over draws: it spans test-set noise and, with several draws, seed-draw noise too."""
    pooled = np.concatenate(list(resampled))
    a = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(pooled, [100 * a, 100 * (1 - a)])
    return Interval(value=float(np.mean(points)), low=float(lo), high=float(hi))


def mean_interval(values: Sequence[float], confidence: float) -> Interval:
    """Mean with a t interval over ``values`` (draws), clipped to [0, 1]."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if v.size < 2:
        return Interval(value=m, low=m, high=m)
    half = float(stats.t.ppf((1 + confidence) / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return Interval(value=m, low=max(0.0, m - half), high=min(1.0, m + half))


# --- training ---------------------------------------------------------------------------


def probe_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, c: float) -> np.ndarray:
    """Positive-class probabilities of a logistic regression on standardized features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))
    clf.fit(x_train, y_train)
    return clf.predict_proba(x_test)[:, 1]


def draw_seed(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` seed samples: class proportions kept, at least one of each class."""
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    n_pos = int(round(n * pos.size / y.size))
    n_pos = min(max(n_pos, 1), pos.size, n - 1)
    n_neg = n - n_pos
    if n_neg > neg.size:
        n_neg, n_pos = neg.size, n - neg.size
    picked = np.r_[rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)]
    return np.sort(picked)


def _as_dataset(data: str | Path | Dataset) -> Dataset:
    return data if isinstance(data, Dataset) else load_dataset(data)


def _arm_names(adds: Sequence[Dataset]) -> list[str]:
    names, used = [], {SEED_ARM}
    for ds in adds:
        name, k = ds.name, 2
        while name in used:
            name, k = f"{ds.name}-{k}", k + 1
        used.add(name)
        names.append(name)
    return names


def _score_arm(
    name: str,
    sets: list[Dataset],
    x: np.ndarray,
    y: np.ndarray,
    seed_aps: list[tuple[float, np.ndarray]] | None,
    x_test: np.ndarray,
    y_test: np.ndarray,
    draws: list[np.ndarray] | None,
    cfg: EvalConfig,
) -> tuple[ArmResult, list[tuple[float, np.ndarray]]]:
    """Train and score one arm: rows ``x``/``y`` are the seed's, then the added set's.

    With ``draws`` each draw keeps those seed rows and every added row. ``seed_aps`` (the seed
    arm's AUPRC and per-resample AUPRCs, per draw) gives the paired gain; None for the seed arm.
    """
    n_seed = len(sets[0])
    added = np.arange(n_seed, y.size)
    picks = draws if draws is not None else [np.arange(n_seed)]
    results, aps, gains, gain_resampled = [], [], [], []
    for k, pick in enumerate(picks):
        rows = np.r_[pick, added]
        scores = probe_scores(x[rows], y[rows], x_test, cfg.c)
        # the same test resamples for every arm and draw: differences are paired
        ap, acc, resampled = bootstrap_intervals(
            y_test, scores, resamples=cfg.bootstrap, confidence=cfg.confidence, rng=np.random.default_rng(cfg.rng_seed + 1),
        )
        aps.append((ap.value, resampled))
        if seed_aps is not None:
            gains.append(ap.value - seed_aps[k][0])
            gain_resampled.append(resampled - seed_aps[k][1])
        results.append(DrawResult(n_train=int(rows.size), auprc=ap, accuracy=acc))
    if draws is None:
        auprc, accuracy, kind, kept = results[0].auprc, results[0].accuracy, "bootstrap", []
    else:
        auprc = mean_interval([r.auprc.value for r in results], cfg.confidence)
        accuracy = mean_interval([r.accuracy.value for r in results], cfg.confidence)
        kind, kept = "draws", results
    arm = ArmResult(
        name=name, sources=[ds.source for ds in sets], n_train=results[0].n_train,
        n_train_positive=int(y[np.r_[picks[0], added]].sum()), overlap=0, auprc=auprc, accuracy=accuracy,
        interval=kind, draws=kept, auprc_gain=paired_gain(gains, gain_resampled, cfg.confidence) if gains else None,  # type: ignore[arg-type]
    )
    return arm, aps


def evaluate(
    train: str | Path | Dataset,
    test: str | Path | Dataset,
    add: Sequence[str | Path | Dataset] = (),
    *,
    model: str | SubjectModel | None = None,
    config: EvalConfig | None = None,
    device: str | None = "cpu",
    dtype: str = "float32",
    progress: Progress | None = None,
) -> EvalReport:
    """Train the probe on the seed alone and on the seed plus each ``add`` set; score it on ``test``.

    Every input is read and checked (labels present, two classes, the positive class) before
    the model loads. ``model``: a spec for :func:`facsynth.tools.model.load` or a loaded model.
    """
    from facsynth.tools.encoder import FeatureEncoder
    from facsynth.tools.model import SubjectModel
    from facsynth.tools.model import load as load_model

    cfg = config or EvalConfig()
    start = time.perf_counter()
    seed_ds, test_ds = _as_dataset(train), _as_dataset(test)
    add_ds = [_as_dataset(a) for a in add]
    col = cfg.label_column
    seed_v, test_v = label_values(seed_ds, col), label_values(test_ds, col)
    add_v = [label_values(ds, col) for ds in add_ds]
    positive = choose_positive(seed_v, test_v, cfg.positive)
    y_seed, y_test = binary(seed_v, positive), binary(test_v, positive)
    _check_two_classes(y_test, f"test set {test_ds.source}", positive)
    _check_two_classes(y_seed, f"training set {seed_ds.source}", positive)
    known = {v.lower() for v in (*seed_v, *test_v)}
    for ds, values in zip(add_ds, add_v):
        strange = sorted({v.lower() for v in values} - known)
        if strange:
            log.warning("%s has label values the seed and test sets lack: %s (read as non-positive)",
                        ds.source, ", ".join(strange[:8]))
    if cfg.seed_size is not None and cfg.seed_size > len(seed_ds):
        raise InputError(f"--seed-size {cfg.seed_size} is larger than the seed ({len(seed_ds)} samples)")

    subject = model if isinstance(model, SubjectModel) else load_model(model, device=device, dtype=dtype)
    layer = cfg.layer if cfg.layer is not None else subject.n_layers // 2
    encoder = FeatureEncoder(subject, None, layer, batch_size=cfg.batch_size, max_tokens=cfg.max_tokens)

    # read each distinct text once, whichever sets it is in
    index: dict[str, int] = {}
    unique: list[Sample] = []
    for ds in (seed_ds, test_ds, *add_ds):
        for s in ds.samples:
            if s.sample_hash not in index:
                index[s.sample_hash] = len(unique)
                unique.append(s)
    log.info("reading %d distinct samples at block %d of %s", len(unique), encoder.layer, subject.name)
    x_all = encoder.pooled(unique, progress=progress)

    def rows(ds: Dataset) -> np.ndarray:
        return x_all[[index[s.sample_hash] for s in ds.samples]]

    x_seed, x_test = rows(seed_ds), rows(test_ds)
    rng = np.random.default_rng(cfg.rng_seed)
    draws = (
        [draw_seed(y_seed, cfg.seed_size, rng) for _ in range(cfg.draws)] if cfg.seed_size is not None else None
    )
    seed_arm, seed_aps = _score_arm(SEED_ARM, [seed_ds], x_seed, y_seed, None, x_test, y_test, draws, cfg)
    arms = [seed_arm]
    for name, extra, values in zip(_arm_names(add_ds), add_ds, add_v):
        x_arm = np.concatenate([x_seed, rows(extra)])  # the seed rows first: draws index into them
        y_arm = np.concatenate([y_seed, binary(values, positive)])
        arm, _ = _score_arm(name, [seed_ds, extra], x_arm, y_arm, seed_aps, x_test, y_test, draws, cfg)
        arms.append(arm)
    test_hashes = {s.sample_hash for s in test_ds.samples}
    for arm, sets in zip(arms, [[seed_ds], *([seed_ds, ds] for ds in add_ds)]):
        arm.overlap = sum(s.sample_hash in test_hashes for ds in sets for s in ds.samples)
        if arm.overlap:
            log.warning("arm %s: %d training samples are also in the test set", arm.name, arm.overlap)
    return EvalReport(
        test=test_ds.source, n_test=len(test_ds), n_test_positive=int(y_test.sum()),
        chance_auprc=float(y_test.mean()), label_column=col, positive=sorted(positive), model=subject.name,
        layer=encoder.layer, classifier=f"LogisticRegression(C={cfg.c:g}, balanced) on standardized mean-pooled block-{encoder.layer} states",
        seed_size=cfg.seed_size, draws=cfg.draws if cfg.seed_size is not None else 1, bootstrap=cfg.bootstrap,
        confidence=cfg.confidence, arms=arms, auprc={a.name: a.auprc.value for a in arms},
        seconds=round(time.perf_counter() - start, 2),
    )
