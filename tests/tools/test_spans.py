"""Span collection on the real default model and shipped SAE, checked against a by-hand reading.

The reference reads each sample alone with :meth:`FeatureEncoder.token_activations`
(one unpadded forward per sample; the collection reads padded batches) and finds the
peaks with plain torch, so a wrong peak, an off-by-one span or a span cut from the
wrong sample cannot agree with it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facsynth.db import Store
from facsynth.db.catalog import Catalog
from facsynth.paths import shipped
from facsynth.tools.datasets import load_dataset
from facsynth.tools.spans import ActivationStats, SpanConfig, TopActivations, collect_spans


def test_top_activations_keep_the_k_strongest_and_never_grow() -> None:
    rng = np.random.default_rng(0)
    d_sae, k, n = 40, 5, 300
    dense = np.where(rng.random((n, d_sae)) < 0.3, rng.gamma(2.0, 2.0, (n, d_sae)), 0.0).astype(np.float32)
    dense[:, 3] = 0.0  # a feature that never fires
    tops = TopActivations(d_sae, k)
    for i, row in enumerate(dense):
        ids = np.flatnonzero(row)
        tops.add(i, ids, row[ids])
        assert tops.values.shape == (d_sae, k)  # bounded by construction, whatever the corpus size
    for f in range(d_sae):
        fired = np.flatnonzero(dense[:, f])
        want = sorted(((float(dense[i, f]), int(i)) for i in fired), key=lambda p: (-p[0], p[1]))[:k]
        assert tops.top(f) == want
    assert tops.top(3) == []


def test_top_activations_earlier_sample_wins_a_tie() -> None:
    tops = TopActivations(2, 2)
    for i in range(4):
        tops.add(i, np.array([0]), np.array([1.0], dtype=np.float32))
    assert tops.top(0) == [(1.0, 0), (1.0, 1)]


def test_activation_stats_are_exact_below_the_reservoir_and_bounded_above() -> None:
    stats = ActivationStats(3, reservoir=16, rng=np.random.default_rng(0))
    small = np.arange(1, 11, dtype=np.float32)
    for v in small:
        stats.add(np.array([0]), np.array([v]))
    assert stats.count[0] == 10 and stats.max[0] == 10.0
    assert stats.quantiles(0) == {k: pytest.approx(float(np.quantile(small, float(k)))) for k in ("0.5", "0.9", "0.99")}
    big = np.random.default_rng(1).exponential(3.0, 5000).astype(np.float32)
    for v in big:
        stats.add(np.array([1]), np.array([v]))
    assert stats.sample.shape == (3, 16)
    assert stats.count[1] == 5000 and stats.max[1] == pytest.approx(big.max())
    assert 0.5 * np.median(big) < stats.quantiles(1)["0.5"] < 2.0 * np.median(big)  # a 16-value estimate
    assert stats.quantiles(2) == {}


# -- the real model ---------------------------------------------------------------------------


@pytest.fixture
def reader(subject, default_sae, tmp_path):
    from facsynth.tools.reader import Reader

    return Reader(subject, default_sae, store=Store(f"sqlite:///{tmp_path / 'spans.db'}"), batch_size=8)


@pytest.mark.slow
def test_spans_end_at_the_true_peak_and_are_reused(reader, monkeypatch: pytest.MonkeyPatch) -> None:
    data = load_dataset(shipped("demo", "prompts.jsonl"), limit=10)
    cfg = SpanConfig(top_n=3, window=6, held_out=1, n_random=4)
    report = collect_spans(reader, data, cfg)
    assert not report.from_store and report.n_samples == 10 and report.encoded == 10

    delta = reader.default_delta
    words, hand = zip(*(reader.encoder.token_activations(s) for s in data))
    a = torch.stack([t.amax(dim=0) for t in hand]).numpy()  # a_i(x): [samples, d_sae]

    catalog = Catalog(reader.store)
    rid, did = reader.reader_id, report.dataset_id
    spans = catalog.spans(rid, did, kinds=("top", "held_out"))
    stats = catalog.stats(rid, did)
    active_counts = (a > delta).sum(axis=0)
    assert set(stats) == set(np.flatnonzero(active_counts)) == set(spans)
    assert report.n_features == len(stats)

    hashes = [s.sample_hash for s in data]
    checked = 0
    for f in sorted(stats, key=lambda f: -a[:, f].max())[:40]:
        st = stats[f]
        assert st.active_count == active_counts[f] and st.frequency == pytest.approx(active_counts[f] / 10)
        fired = a[:, f][a[:, f] > delta]
        assert st.max_act == pytest.approx(float(fired.max()), rel=1e-3)
        assert st.quantiles["0.5"] == pytest.approx(float(np.quantile(fired.astype(np.float64), 0.5)), rel=1e-3, abs=1e-4)

        kept = spans[f]
        assert len(kept) <= cfg.top_n + cfg.held_out
        assert sum(s.kind == "top" for s in kept) <= cfg.top_n
        # the kept samples are the feature's strongest, in order
        order = np.argsort(-a[:, f], kind="stable")[: len(kept)]
        assert [s.sample_hash for s in kept] == [hashes[i] for i in order]
        for span in kept:
            i = hashes.index(span.sample_hash)
            peak = int(hand[i][:, f].argmax())
            assert span.peak_token == peak
            assert span.tokens == words[i][max(0, peak - cfg.window + 1) : peak + 1]
            assert len(span.tokens) == min(cfg.window, peak + 1)
            assert span.activation == pytest.approx(float(hand[i][peak, f]), rel=1e-3, abs=1e-4)
            assert span.acts[-1] == pytest.approx(span.activation, rel=1e-4)
            checked += 1
    assert len(stats) >= 10 and checked >= min(40, len(stats))

    randoms = catalog.random_spans(rid, did)
    assert len(randoms) == cfg.n_random
    assert all(0 < len(s.tokens) <= cfg.window and s.sample_hash in hashes for s in randoms)

    # a second call with the same settings reads nothing at all
    def refuse(*_a, **_k):
        raise AssertionError("the model was read again")

    monkeypatch.setattr(reader.encoder, "token_activations", refuse)
    monkeypatch.setattr(reader.encoder, "token_activations_batch", refuse)
    monkeypatch.setattr(reader.encoder, "encode", refuse)
    again = collect_spans(reader, data, cfg)
    assert again.from_store and again.n_spans == report.n_spans and again.n_features == report.n_features
    monkeypatch.undo()

    # other settings re-cut the spans, but pass 1 takes every activation from the store
    fewer = collect_spans(reader, data, SpanConfig(top_n=2, window=4, held_out=0, n_random=0))
    assert not fewer.from_store and fewer.encoded == 0 and fewer.reused == 10
    assert all(len(v) <= 2 for v in catalog.spans(rid, did).values())
    assert catalog.collection(rid, did).top_n == 2
