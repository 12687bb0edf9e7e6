"""Text-diversity baselines: values worked out by hand on tiny corpora."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facsynth.errors import InputError
from facsynth.tools.diversity import (
    TextDiversity,
    distinct_n,
    mean_pairwise_cosine_distance,
    ngram_entropy,
    self_bleu,
    text_diversity,
    words,
)

TEMPLATE = [
    f"please write a short summary of the report about {topic} for me"
    for topic in ["cats", "taxes", "rain", "chess", "bread", "trains", "jazz", "soil"]
]
VARIED = [
    "how do i bake sourdough without a starter",
    "translate good morning into japanese",
    "why is the sky blue at noon but red at dusk",
    "list three prime numbers bigger than 100",
    "my landlord kept the deposit what can i do",
    "write a haiku about autumn leaves",
    "explain recursion to a ten year old",
    "which chess opening suits aggressive players",
]


def test_words_lowercases_keeps_numbers_drops_punctuation() -> None:
    text = "Hello, World! It's 2024 -- Straße/Ünïcode (v2.0) don't_stop"
    assert words(text) == [
        "hello", "world", "it's", "2024", "straße", "ünïcode",
        "v2", "0", "don't", "stop",
    ]  # fmt: skip
    assert words("?! ... --") == []


def test_distinct_n_hand_values() -> None:
    # unigrams a, b, a: 2 unique / 3
    assert distinct_n(["a b a"], 1) == pytest.approx(2 / 3)
    # bigrams (a b), (b a), (a b): 2 unique / 3
    assert distinct_n(["A b, a b"], 2) == pytest.approx(2 / 3)
    # n-grams stop at text boundaries: "a a" twice is 2 bigrams, 1 unique
    # (across the boundary it would be 3 bigrams)
    assert distinct_n(["a a", "a a"], 2) == pytest.approx(1 / 2)
    assert distinct_n(["one", ""], 2) == 0.0
    assert distinct_n([], 1) == 0.0
    with pytest.raises(ValueError, match="order"):
        distinct_n(["a b"], 0)


def test_ngram_entropy_hand_values() -> None:
    # four distinct bigrams, once each: uniform over 4 -> log2(4) = 2 bits
    assert ngram_entropy(["a b c d e"], 2) == pytest.approx(2.0)
    # bigrams (a b) x2, (b a) x1: -(2/3 log2 2/3 + 1/3 log2 1/3) = 0.918296 bits
    assert ngram_entropy(["a b a b"], 2) == pytest.approx(0.9182958, abs=1e-6)
    # one repeated unigram carries no information
    assert ngram_entropy(["x x x"], 1) == pytest.approx(0.0)
    assert ngram_entropy(["x"], 2) == 0.0


def test_self_bleu_identical_is_one_disjoint_is_zero() -> None:
    same = ["the quick brown fox jumps over the dog"] * 3
    assert self_bleu(same) == pytest.approx(1.0)
    # shorter than 4 words: scored on the orders it has, still 1.0
    assert self_bleu(["red apple", "red apple"]) == pytest.approx(1.0)
    disjoint = ["alpha beta gamma delta", "one two three four", "red green blue cyan"]
    assert self_bleu(disjoint) == pytest.approx(0.0, abs=1e-9)
    # nothing to compare against
    assert self_bleu(["only one text here"]) == 0.0
    assert self_bleu(["only one text here", "", "!!"]) == 0.0


def test_self_bleu_matches_hand_computed_bleu() -> None:
    texts = [
        "the cat the cat sat",  # S1, 5 words
        "the cat sat down",  # S2, 4 words
        "a dog sat on the mat",  # S3, 6 words
    ]
    # S1 vs refs {S2, S3}. Ref lengths 4 and 6 are equally close to 5: the shorter,
    # 4, is taken; 5 > 4 so no brevity penalty.
    #   1-grams the x2, cat x2, sat: clipped to max ref count 1 each -> 3/5
    #   2-grams "the cat" x2 (clip 1), "cat the" (0), "cat sat" (1) -> 2/4
    #   3-grams "the cat the", "cat the cat", "the cat sat" (in S2) -> 1/3
    #   4-grams none of 2 match -> smoothed 0.1/2
    s1 = (3 / 5 * 2 / 4 * 1 / 3 * 0.1 / 2) ** (1 / 4)
    # S2 vs refs {S1, S3}: closest ref length 5 > 4 -> BP = exp(1 - 5/4)
    #   1-grams the, cat, sat match, down does not -> 3/4
    #   2-grams "the cat", "cat sat" match, "sat down" not -> 2/3
    #   3-grams "the cat sat" matches, "cat sat down" not -> 1/2
    #   4-gram "the cat sat down" -> smoothed 0.1/1
    s2 = math.exp(1 - 5 / 4) * (3 / 4 * 2 / 3 * 1 / 2 * 0.1 / 1) ** (1 / 4)
    # S3 vs refs {S1, S2}: closest ref length 5 < 6 -> no penalty
    #   1-grams only sat and the match -> 2/6; no 2-, 3-, 4-gram matches
    #   -> smoothed 0.1/5, 0.1/4, 0.1/3
    s3 = (2 / 6 * 0.1 / 5 * 0.1 / 4 * 0.1 / 3) ** (1 / 4)
    # s1 ~ 0.26591, s2 ~ 0.30968, s3 ~ 0.04855
    assert self_bleu(texts) == pytest.approx((s1 + s2 + s3) / 3, rel=1e-9)
    assert (s1 + s2 + s3) / 3 == pytest.approx(0.208048, abs=1e-5)


def test_self_bleu_takes_max_count_over_references() -> None:
    # "a b c d" vs refs "a b c e" and "x b c d": every 1-3-gram is found in one
    # reference or the other, the 4-gram in neither -> (1 * 1 * 1 * 0.1)^(1/4).
    # "a b c e" and "x b c d" each: (3/4 * 2/3 * 1/2 * 0.1)^(1/4).
    texts = ["a b c d", "a b c e", "x b c d"]
    first = 0.1 ** (1 / 4)
    other = (3 / 4 * 2 / 3 * 1 / 2 * 0.1) ** (1 / 4)
    assert self_bleu(texts) == pytest.approx((first + 2 * other) / 3, rel=1e-9)


def test_self_bleu_samples_hypotheses_beyond_sample() -> None:
    texts = TEMPLATE + VARIED
    full = self_bleu(texts)
    # a subset of template hypotheses only would score far above the full mean;
    # a seeded subset is repeatable and near the full mean
    small = self_bleu(texts, sample=8, seed=3)
    assert small == self_bleu(texts, sample=8, seed=3)
    assert small != full
    assert abs(small - full) < 0.3
    with pytest.raises(ValueError, match="sample"):
        self_bleu(texts, sample=0)


def test_template_corpus_scores_less_diverse_than_varied() -> None:
    template, varied = text_diversity(TEMPLATE), text_diversity(VARIED)
    assert template.distinct_2 < varied.distinct_2
    assert template.entropy_2 < varied.entropy_2
    assert template.self_bleu > varied.self_bleu
    assert template.self_bleu > 0.7
    assert varied.self_bleu < 0.2


def test_cosine_distance_hand_values() -> None:
    orthogonal = np.eye(3, dtype=np.float32)
    assert mean_pairwise_cosine_distance(orthogonal) == pytest.approx(1.0)
    same = np.tile(np.array([[0.3, -2.0, 5.0]], dtype=np.float32), (4, 1))
    assert mean_pairwise_cosine_distance(same) == pytest.approx(0.0, abs=1e-6)
    # scale does not matter; opposite directions are distance 2
    assert mean_pairwise_cosine_distance(
        np.array([[1.0, 1.0], [3.0, 3.0], [-1.0, -1.0]], dtype=np.float32)
    ) == pytest.approx((0.0 + 2.0 + 2.0) / 3)
    # [1,0], [0,1], [1,1]: cosines 0, 1/sqrt2, 1/sqrt2
    mixed = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    expected = (1.0 + 2 * (1 - 1 / math.sqrt(2))) / 3
    assert mean_pairwise_cosine_distance(mixed) == pytest.approx(expected)
    assert mean_pairwise_cosine_distance(np.ones((1, 4), dtype=np.float32)) == 0.0


def test_cosine_distance_zero_vector_counts_as_distance_one() -> None:
    vectors = np.array([[1, 0], [1, 0], [0, 0]], dtype=np.float32)
    # pairs: (v0, v1) 0, (v0, zero) 1, (v1, zero) 1
    result = mean_pairwise_cosine_distance(vectors)
    assert not math.isnan(result)
    assert result == pytest.approx(2 / 3)
    with pytest.raises(InputError, match="NaN"):
        mean_pairwise_cosine_distance(np.array([[1, np.nan], [0, 1]]))


def test_cosine_distance_subsamples_rows() -> None:
    rng = np.random.default_rng(0)
    # half the rows point one way, half the other: the mean over all pairs of the
    # full 400 rows is 200*200*2 / (400*399/2) = 1.00250...
    rows = np.repeat(np.array([[1, 0], [-1, 0]], dtype=np.float32), 200, axis=0)
    rows += rng.normal(scale=1e-4, size=rows.shape).astype(np.float32)
    full = mean_pairwise_cosine_distance(rows, sample=400)
    assert full == pytest.approx(200 * 200 * 2 / (400 * 399 / 2), abs=1e-6)
    sub = mean_pairwise_cosine_distance(rows, sample=50, seed=1)
    assert sub == mean_pairwise_cosine_distance(rows, sample=50, seed=1)
    assert sub != pytest.approx(full, abs=1e-9)  # really a different subset
    assert sub == pytest.approx(full, abs=0.1)


def test_text_diversity_fields_and_dict() -> None:
    texts = ["a b a", "c d"]
    vectors = np.array([[1, 0], [0, 1]], dtype=np.float32)
    result = text_diversity(texts, vectors)
    assert isinstance(result, TextDiversity)
    assert result.distinct_1 == pytest.approx(4 / 5)
    assert result.distinct_2 == pytest.approx(3 / 3)
    assert result.entropy_2 == pytest.approx(math.log2(3))
    assert result.self_bleu == pytest.approx(0.0)
    assert result.cosine_distance == pytest.approx(1.0)
    assert result.n_samples == 2
    assert result.to_dict() == {
        "distinct_1": result.distinct_1,
        "distinct_2": result.distinct_2,
        "entropy_2": result.entropy_2,
        "self_bleu": result.self_bleu,
        "cosine_distance": result.cosine_distance,
        "n_samples": 2,
    }
    assert text_diversity(texts).cosine_distance is None


def test_text_diversity_rejects_empty_and_mismatched_input() -> None:
    with pytest.raises(InputError, match="empty corpus") as info:
        text_diversity([])
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="2 vectors for 3 texts"):
        text_diversity(["a", "b", "c"], np.zeros((2, 4), dtype=np.float32))
