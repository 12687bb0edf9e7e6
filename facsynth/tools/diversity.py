"""Surface text-diversity metrics, the baselines the FAC paper compares against.

FAC measures diversity in the model's SAE feature space. The paper reports that the
usual text metrics (distinct-n, n-gram entropy, self-BLEU, pairwise cosine distance
of embeddings) track downstream quality far less well (|r| <= ~0.66 against FAC's
0.72-0.95). This module computes them, so a report can show both side by side.

Everything here is pure numpy + stdlib. Texts are split with :func:`words`; n-grams
never cross the boundary between two texts.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from facsynth.errors import InputError

__all__ = [
    "TextDiversity",
    "distinct_n",
    "mean_pairwise_cosine_distance",
    "ngram_entropy",
    "self_bleu",
    "text_diversity",
    "words",
]

Ngram = tuple[str, ...]

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
"""Runs of unicode letters/digits, keeping inner apostrophes ("don't", "l'eau")."""

BLEU_EPSILON = 0.1
"""Numerator given to an n-gram order with no match (NLTK's ``method1`` smoothing)."""


def words(text: str) -> list[str]:
    """Lowercase word tokens of ``text``: letters and digits in any script.

    Punctuation and underscores separate words and are dropped; an apostrophe
    between two letters stays inside the word.
    """
    return _WORD.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> list[Ngram]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _check_order(n: int) -> None:
    if n < 1:
        raise ValueError(f"n-gram order must be >= 1, got {n}")


def _corpus_ngrams(texts: Sequence[str], n: int) -> Counter[Ngram]:
    _check_order(n)
    counts: Counter[Ngram] = Counter()
    for text in texts:
        counts.update(_ngrams(words(text), n))
    return counts


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams over the corpus; 0.0 when it has none."""
    counts = _corpus_ngrams(texts, n)
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def ngram_entropy(texts: Sequence[str], n: int) -> float:
    """Shannon entropy, in bits, of the corpus n-gram distribution; 0.0 when empty."""
    counts = _corpus_ngrams(texts, n)
    total = sum(counts.values())
    if not total:
        return 0.0
    p = np.fromiter(counts.values(), dtype=np.float64, count=len(counts)) / total
    return float(-(p * np.log2(p)).sum())


class _TopCounts:
    """Per n-gram, its two largest per-text counts and the text holding the largest.

    max over texts j != i of count_j(g) is then the top count, or the runner-up when
    text i itself holds the top: one dictionary look-up instead of a scan over texts.
    """

    def __init__(self, per_text: Sequence[Counter[Ngram]]) -> None:
        self._top: dict[Ngram, tuple[int, int, int]] = {}  # (count1, text1, count2)
        for index, counts in enumerate(per_text):
            for gram, count in counts.items():
                first, owner, second = self._top.get(gram, (0, -1, 0))
                if count > first:
                    self._top[gram] = (count, index, first)
                elif count > second:
                    self._top[gram] = (first, owner, count)

    def max_excluding(self, gram: Ngram, index: int) -> int:
        first, owner, second = self._top.get(gram, (0, -1, 0))
        return second if owner == index else first


def _closest_ref_length(lengths: np.ndarray, counts: np.ndarray, hyp_len: int) -> int:
    """Reference length closest to ``hyp_len``, ties to the shorter (as NLTK).

    ``lengths`` are the distinct text lengths (ascending) and ``counts`` how many
    texts have each, the hypothesis itself already taken out.
    """
    available = lengths[counts > 0]
    gaps = np.abs(available - hyp_len)
    return int(available[np.argmin(gaps)])  # argmin takes the first: the shorter


def self_bleu(
    texts: Sequence[str], max_n: int = 4, sample: int = 200, seed: int = 0
) -> float:
    """Mean BLEU of each text against all the other texts as references.

    Higher means less diverse (1.0 for a corpus of one repeated text). Per
    hypothesis: clipped n-gram precisions for n = 1..``max_n`` (a hypothesis n-gram
    counts at most as often as it occurs in the one reference holding it most),
    their geometric mean with uniform weights, times the brevity penalty
    exp(1 - r/c) when the hypothesis length c is below the closest reference length
    r (ties to the shorter). An order with no match gets ``BLEU_EPSILON`` / its
    n-gram count as precision (NLTK ``SmoothingFunction().method1``); no unigram
    match at all scores 0.

    Differences from NLTK's ``sentence_bleu``: a hypothesis shorter than ``max_n``
    words is scored on the orders it has (sacrebleu's "effective order"), so two
    identical 3-word texts score 1.0; texts with no words are neither hypotheses
    nor references. With fewer than two such texts the result is 0.0.

    Cost grows with hypotheses x their length. When more than ``sample`` texts have
    words, a random subset of ``sample`` hypotheses (``numpy`` generator seeded with
    ``seed``) is scored; the references are still all the other texts, so the
    result is an unbiased estimate of the full mean.
    """
    _check_order(max_n)
    if sample < 1:
        raise ValueError(f"sample must be >= 1, got {sample}")
    tokens = [t for t in (words(text) for text in texts) if t]
    if len(tokens) < 2:
        return 0.0
    per_order = [
        _TopCounts([Counter(_ngrams(t, n)) for t in tokens])
        for n in range(1, max_n + 1)
    ]
    lengths, counts = np.unique([len(t) for t in tokens], return_counts=True)

    hypotheses = np.arange(len(tokens))
    if len(tokens) > sample:
        rng = np.random.default_rng(seed)
        hypotheses = np.sort(rng.choice(len(tokens), size=sample, replace=False))

    scores = []
    for index in hypotheses.tolist():
        hyp = tokens[index]
        log_precision = 0.0
        orders = min(max_n, len(hyp))
        for n in range(1, orders + 1):
            grams = Counter(_ngrams(hyp, n))
            matched = sum(
                min(c, per_order[n - 1].max_excluding(g, index))
                for g, c in grams.items()
            )
            total = len(hyp) - n + 1
            if matched == 0 and n == 1:
                log_precision = -math.inf
                break
            log_precision += math.log((matched or BLEU_EPSILON) / total)
        if log_precision == -math.inf:
            scores.append(0.0)
            continue
        own = counts.copy()
        own[np.searchsorted(lengths, len(hyp))] -= 1
        ref_len = _closest_ref_length(lengths, own, len(hyp))
        brevity = 1.0 if len(hyp) > ref_len else math.exp(1.0 - ref_len / len(hyp))
        scores.append(brevity * math.exp(log_precision / orders))
    return float(np.mean(scores))


def mean_pairwise_cosine_distance(
    vectors: np.ndarray, sample: int = 2000, seed: int = 0
) -> float:
    """Mean of 1 - cos(u, v) over all distinct pairs of rows of ``vectors``.

    ``vectors`` is float [n, d] (mean-pooled hidden states). Rows are normalised and
    one matmul gives every cosine; the strict upper triangle is averaged. A zero row
    has no direction: its cosine with anything is taken as 0, i.e. distance 1, so it
    never yields NaN. Fewer than two rows give 0.0. Beyond ``sample`` rows, a random
    subset of ``sample`` rows (seeded with ``seed``) is used: the matmul is
    quadratic in rows.
    """
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D [n, d], got shape {vectors.shape}")
    if sample < 2:
        raise ValueError(f"sample must be >= 2, got {sample}")
    if not np.isfinite(vectors).all():
        raise InputError("vectors contain NaN or infinite values")
    rows = vectors
    if len(rows) > sample:
        rng = np.random.default_rng(seed)
        rows = rows[np.sort(rng.choice(len(rows), size=sample, replace=False))]
    rows = np.asarray(rows, dtype=np.float64)
    m = len(rows)
    if m < 2:
        return 0.0
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    cos = np.clip(unit @ unit.T, -1.0, 1.0)
    upper = cos[np.triu_indices(m, k=1)]
    return float(np.mean(1.0 - upper))


@dataclass(frozen=True)
class TextDiversity:
    """The text-diversity baselines of one corpus."""

    distinct_1: float
    """Unique unigrams / unigrams."""
    distinct_2: float
    """Unique bigrams / bigrams."""
    entropy_2: float
    """Shannon entropy of the bigram distribution, bits."""
    self_bleu: float
    """Mean BLEU-4 of each text against the others (higher = less diverse)."""
    cosine_distance: float | None
    """Mean pairwise cosine distance of the pooled vectors; None without vectors."""
    n_samples: int
    """Texts in the corpus."""

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain fields, ready for JSON."""
        return asdict(self)


def text_diversity(
    texts: Sequence[str], vectors: np.ndarray | None = None
) -> TextDiversity:
    """All text-diversity baselines of ``texts``; row i of ``vectors`` is text i."""
    if len(texts) == 0:
        raise InputError("cannot measure text diversity of an empty corpus")
    if vectors is not None and len(vectors) != len(texts):
        raise InputError(
            f"got {len(vectors)} vectors for {len(texts)} texts; need one per text"
        )
    return TextDiversity(
        distinct_1=distinct_n(texts, 1),
        distinct_2=distinct_n(texts, 2),
        entropy_2=ngram_entropy(texts, 2),
        self_bleu=self_bleu(texts),
        cosine_distance=(
            None if vectors is None else mean_pairwise_cosine_distance(vectors)
        ),
        n_samples=len(texts),
    )
