"""Contrast relevance (no LLM), missing features and ``measure(task=...)``.

The constructed case plants feature 7, which fires only on task-positive samples, among
noise features that fire alike in both groups. The readings are built by hand and put
in the store under a real reader (real model and SAE), so :meth:`Reader.read` serves
them exactly as it serves stored activations; the model never runs on them.
"""

from __future__ import annotations

import numpy as np
import pytest

from facsynth.agent.tasks import store_tasks
from facsynth.db import Store
from facsynth.db.catalog import Catalog
from facsynth.errors import InputError
from facsynth.records import SampleFeatures
from facsynth.tools.datasets import Dataset, Sample
from facsynth.tools.relevance import (
    anchor_delta,
    auroc_by_feature,
    average_ranks,
    contrast_relevance,
    missing_features,
    positive_mask,
)

PLANTED = 7


def _auroc_by_hand(x: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = x[positive], x[~positive]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (pos.size * neg.size)


def _readings(n_pos: int, n_neg: int, d_sae: int, seed: int = 0) -> tuple[list[SampleFeatures], np.ndarray, np.ndarray]:
    """Sparse readings with feature 7 firing on ~70% of positives only; the rest is shared noise."""
    rng = np.random.default_rng(seed)
    n = n_pos + n_neg
    positive = np.zeros(n, dtype=bool)
    positive[rng.permutation(n)[:n_pos]] = True
    dense = np.where(rng.random((n, d_sae)) < 0.25, rng.gamma(2.0, 1.5, (n, d_sae)), 0.0).astype(np.float32)
    dense[:, PLANTED] = np.where(positive & (rng.random(n) < 0.7), rng.uniform(1.0, 5.0, n), 0.0)
    out = []
    for i, row in enumerate(dense):
        ids = np.flatnonzero(row).astype(np.int32)
        out.append(SampleFeatures(f"{i:064x}", 12, ids, row[ids]))
    return out, positive, dense


def test_average_ranks_share_ties() -> None:
    x = np.array([[0.0, 3.0], [2.0, 3.0], [0.0, 1.0], [5.0, 3.0]])
    np.testing.assert_array_equal(average_ranks(x), [[1.5, 3.0], [3.0, 3.0], [1.5, 1.0], [4.0, 3.0]])


def test_auroc_matches_the_pairwise_definition_and_finds_the_planted_feature() -> None:
    feats, positive, dense = _readings(40, 40, d_sae=300)
    scores = auroc_by_feature(feats, positive, 300, block=64)  # several blocks
    for f in [0, 1, PLANTED, 63, 64, 299]:
        assert scores[f] == pytest.approx(_auroc_by_hand(dense[:, f], positive))
    assert scores[PLANTED] > 0.8
    assert int(np.argmax(scores)) == PLANTED
    assert np.flatnonzero(scores >= 0.7).tolist() == [PLANTED]
    # a feature that never fires has no contrast
    assert auroc_by_feature([SampleFeatures("a", 1, np.array([], np.int32), np.array([], np.float32))] * 2,
                            np.array([True, False]), 5).tolist() == [0.5] * 5
    with pytest.raises(InputError, match="0 positive"):
        auroc_by_feature(feats, np.zeros(80, dtype=bool), 300)


def test_positive_mask_reads_the_label_field() -> None:
    ds = Dataset("l", "l.jsonl", [Sample(text=f"t{i}", meta={"label": v}) for i, v in enumerate([1, "toxic", "no", "Yes", 0])])
    assert positive_mask(ds, "toxicity").tolist() == [True, False, False, True, False]
    assert positive_mask(ds, "toxicity", positive=["toxic"]).tolist() == [False, True, False, False, False]
    with pytest.raises(InputError, match="sample 0 has no 'kind' field"):
        positive_mask(ds, "toxicity", field="kind")


def _stored_dataset(reader, name: str, readings: list[SampleFeatures], labels: np.ndarray | None = None) -> Dataset:
    """A dataset whose samples' readings are the given ones, saved under the reader."""
    samples = [
        Sample(text=f"{name} sample {i}", meta={} if labels is None else {"label": int(labels[i])})
        for i in range(len(readings))
    ]
    ds = Dataset(name, f"{name}.jsonl", samples)
    reader.store.register_dataset(ds.name, ds.source, [(s.sample_hash, s.payload) for s in ds])
    reader.store.save_features(
        reader.reader_id,
        [SampleFeatures(s.sample_hash, r.n_tokens, r.feature_ids, r.max_acts) for s, r in zip(samples, readings)],
    )
    return ds


@pytest.fixture
def reader(subject, default_sae, tmp_path):
    from facsynth.tools.reader import Reader

    return Reader(subject, default_sae, store=Store(f"sqlite:///{tmp_path / 'rel.db'}"))


@pytest.mark.slow
def test_contrast_relevance_selects_the_planted_feature_and_measure_uses_it(reader, monkeypatch) -> None:
    from facsynth.tools.measure import measure

    def refuse(samples, *_a, **_k):
        if list(samples):
            raise AssertionError("the model was read: the stored readings were not used")
        return iter(())

    monkeypatch.setattr(reader.encoder, "encode", refuse)
    catalog = Catalog(reader.store)
    store_tasks(catalog)
    d_sae = reader.sae.d_sae
    assert d_sae > 200
    feats, positive, _ = _readings(30, 30, d_sae=200, seed=1)  # noise on 200 features: chance stays below 0.75
    labeled = _stored_dataset(reader, "labeled", feats, positive)

    with pytest.raises(InputError, match="facsynth features relevance"):
        measure(labeled, task="toxicity", reader=reader)

    report = contrast_relevance(reader, labeled, "toxicity", threshold=0.75)
    assert report.selected[0] == PLANTED and report.n_positive == 30 and report.n_other == 30
    assert report.selected == [PLANTED]  # noise shared by both groups stays below the threshold
    assert report.by_chance == 0 and report.scored == 200
    rows = {r.feature: r for r in catalog.relevance(reader.reader_id, "toxicity")}
    assert rows[PLANTED].method == "contrast" and rows[PLANTED].label == "Yes"
    assert rows[PLANTED].score == pytest.approx(report.scores[PLANTED])
    assert catalog.selected_by(reader.reader_id, "toxicity") == {PLANTED: ["contrast"]}

    # a seed that never fires feature 7 misses it; FAC over the task's set is 0, then 1 with it
    none = [SampleFeatures("x", 5, np.array([1, 2], np.int32), np.array([3.0, 1.0], np.float32))] * 3
    seed = _stored_dataset(reader, "seed", none)
    assert missing_features(reader, seed, "toxicity", delta=0.0) == [PLANTED]
    cov = measure(seed, task="toxicity", reader=reader, deltas=[0.0]).at(0.0)
    assert (cov.total, cov.covered, cov.missing) == (1, 0, [PLANTED])
    fires = none[:2] + [SampleFeatures("y", 5, np.array([PLANTED], np.int32), np.array([2.0], np.float32))]
    seed2 = _stored_dataset(reader, "seed2", fires)
    rep = measure(seed2, task="toxicity", reader=reader, deltas=[0.0, 2.5])
    assert rep.at(0.0).fac == 1.0 and rep.at(2.5).fac == 0.0
    assert "relevant to task toxicity" in rep.feature_set
    with pytest.raises(InputError, match="either a task or a feature file"):
        measure(seed2, task="toxicity", features=[1], reader=reader)


@pytest.mark.slow
def test_both_sides_selects_the_features_that_mark_the_other_class_too(reader) -> None:
    store_tasks(Catalog(reader.store))
    feats, positive, _ = _readings(30, 30, d_sae=200, seed=1)
    flipped = _stored_dataset(reader, "flipped", feats, ~positive)  # the planted feature now fires on the others
    one_side = contrast_relevance(reader, flipped, "toxicity", threshold=0.75)
    assert PLANTED not in one_side.selected
    assert Catalog(reader.store).relevant_features(reader.reader_id, "toxicity") == one_side.selected
    both = contrast_relevance(reader, flipped, "toxicity", threshold=0.75, both_sides=True)
    assert both.selected[0] == PLANTED and both.scores[PLANTED] < 0.25 and both.both_sides
    assert set(both.selected) - set(one_side.selected) == {PLANTED}
    row = {r.feature: r for r in Catalog(reader.store).relevance(reader.reader_id, "toxicity")}[PLANTED]
    assert row.label == "Yes" and "marks the other samples" in row.analysis and "or 0.25" in row.analysis
    assert PLANTED in Catalog(reader.store).relevant_features(reader.reader_id, "toxicity")


@pytest.mark.slow
def test_anchor_delta_is_the_quantile_of_the_features_own_firings(reader) -> None:
    # feature 3 fires at 1, 2, 3, 4 over four samples and feature 9 at 100 (not in F): the median of
    # F's firings is 2.5, and feature 9's large activations do not move it
    rows = [SampleFeatures(f"s{i}", 5, np.array([3, 9], np.int32), np.array([a, 100.0], np.float32)) for i, a in enumerate([1.0, 2.0, 3.0, 4.0])]
    anchor = _stored_dataset(reader, "anchor", rows)
    assert anchor_delta(reader, anchor, [3]) == pytest.approx(2.5)
    assert anchor_delta(reader, anchor, [3], quantile=0.75) == pytest.approx(3.25)
    assert anchor_delta(reader, anchor, [3, 9]) > 4  # half of all firings are feature 9's
    with pytest.raises(InputError, match="none of the 1 features fires"):
        anchor_delta(reader, anchor, [11])
    with pytest.raises(InputError, match="quantile must lie in"):
        anchor_delta(reader, anchor, [3], quantile=1.0)
