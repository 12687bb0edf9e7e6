"""The downstream probe (``facsynth.evaluate``) on the shipped real SMS spam set, with the real model.

Hidden states come from the real default model (the session fixture); nothing is mocked.
Sets are small (40 train, 40 test) to keep the tests fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facsynth.errors import InputError
from facsynth.paths import shipped
from facsynth.tools.datasets import Sample, load_dataset
from facsynth.tools.downstream import EvalConfig, average_precision, choose_positive, draw_seed, evaluate
from facsynth.tools.encoder import FeatureEncoder

SMS = shipped("sms_spam")


def _head(src: Path, dst: Path, n: int) -> Path:
    lines = [ln for ln in src.read_text(encoding="utf-8").splitlines() if ln.strip()][:n]
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


@pytest.fixture
def sms(tmp_path: Path) -> dict[str, Path]:
    """seed (40), test (first 40 of the shipped test set), more (first 20 of more.jsonl)."""
    return {
        "seed": _head(SMS / "seed.jsonl", tmp_path / "seed.jsonl", 40),
        "test": _head(SMS / "test.jsonl", tmp_path / "test.jsonl", 40),
        "more": _head(SMS / "more.jsonl", tmp_path / "more.jsonl", 20),
    }


def _within(i) -> bool:  # noqa: ANN001 - Interval
    return 0.0 <= i.low <= i.value <= i.high <= 1.0


@pytest.mark.parametrize(("name", "labels", "sizes", "rare"), [
    ("sms_spam", {"spam", "ham"}, (40, 120, 200, 200), "spam"),
    ("tweet_sentiment", {"negative", "positive"}, (40, 120, 300, 200), "negative"),
])
def test_shipped_sets_are_real_labelled_and_small(name, labels, sizes, rare) -> None:
    root = shipped(name)
    files = {f: load_dataset(root / f"{f}.jsonl") for f in ("seed", "more", "test", "anchor")}
    assert tuple(len(d) for d in files.values()) == sizes
    texts = [s.text.lower() for d in files.values() for s in d]
    assert len(set(texts)) == len(texts)  # no text in two files
    for f, d in files.items():
        assert {s.meta["label"] for s in d} == labels
        count = sum(s.meta["label"] == rare for s in d)
        assert count * 2 == len(d) if f == "anchor" else count * 2 < len(d)  # the rarer class, balanced anchor
    assert sum(p.stat().st_size for p in root.iterdir()) < 1_000_000
    assert (root / "README.md").is_file()


def test_probe_on_real_sms_spam_gives_auprc_with_intervals(subject, sms) -> None:
    report = evaluate(sms["seed"], sms["test"], [sms["more"]], model=subject, config=EvalConfig(bootstrap=200))
    assert report.positive == ["spam"]  # no 1/true/positive label: the rarer test class
    assert report.n_test == 40 and 0 < report.n_test_positive < 20
    assert [a.name for a in report.arms] == ["seed", "more"]
    seed, more = report.arms
    assert (seed.n_train, more.n_train) == (40, 60)  # adding a set changes n_train
    assert more.n_train_positive > seed.n_train_positive
    for arm in report.arms:
        assert arm.interval == "bootstrap" and _within(arm.auprc) and _within(arm.accuracy)
        assert arm.auprc.value > report.chance_auprc  # the frozen features do separate spam
        assert arm.overlap == 0
    assert report.auprc == {"seed": seed.auprc.value, "more": more.auprc.value}
    assert seed.auprc_gain is None and more.auprc_gain.value == pytest.approx(more.auprc.value - seed.auprc.value)
    assert more.auprc_gain.low <= more.auprc_gain.value <= more.auprc_gain.high
    data = json.loads(report.model_dump_json())
    assert set(data["auprc"]) == {"seed", "more"} and data["layer"] == 15


def test_seed_size_draws_report_the_mean_over_draws(subject, sms) -> None:
    cfg = EvalConfig(seed_size=6, draws=3, bootstrap=100)
    report = evaluate(sms["seed"], sms["test"], [sms["more"]], model=subject, config=cfg)
    seed, more = report.arms
    assert (seed.n_train, more.n_train) == (6, 26)
    for arm in report.arms:
        assert arm.interval == "draws" and len(arm.draws) == 3 and _within(arm.auprc)
        assert arm.auprc.value == pytest.approx(np.mean([d.auprc.value for d in arm.draws]))
        assert all(_within(d.auprc) for d in arm.draws)


def test_pooled_without_sae_equals_the_encoders_pooled(subject, encoder) -> None:
    samples = [Sample(text=t) for t in ("Free entry! Text WIN to 80086 now", "see you at 6 then", "ok lar")]
    bare = FeatureEncoder(subject, None, encoder.layer, batch_size=2)
    np.testing.assert_allclose(bare.pooled(samples), np.stack([sf.pooled for sf in encoder.encode(samples)]), atol=1e-5)


def test_average_precision_matches_scikit_learn_with_ties() -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.random(50) < 0.3
        scores = np.round(rng.random(50), 1)  # many ties
        if y.any():
            assert average_precision(y, scores) == pytest.approx(average_precision_score(y, scores))


def test_positive_class_rules() -> None:
    assert choose_positive(["0", "1"], ["1", "0", "0"], ()) == {"1"}
    assert choose_positive(["ham", "spam"], ["spam", "ham", "ham"], ()) == {"spam"}  # the rarer test class
    assert choose_positive(["a", "b"], ["a", "b", "b"], ["B"]) == {"b"}  # named, case-insensitive
    with pytest.raises(InputError, match="one class only"):
        choose_positive(["ham", "ham"], ["ham"], ())
    with pytest.raises(InputError, match="equally frequent"):
        choose_positive(["a", "b"], ["a", "b"], ())
    with pytest.raises(InputError, match="name the positive class"):
        choose_positive(["a", "b", "c"], ["a", "b", "c", "c"], ())
    with pytest.raises(InputError, match="no test label is x"):
        choose_positive(["a", "b"], ["a", "b"], ["x"])


def test_seed_draws_keep_both_classes() -> None:
    y = np.array([True] * 3 + [False] * 37)
    for n in (2, 5, 40):
        pick = draw_seed(y, n, np.random.default_rng(n))
        assert pick.size == n == np.unique(pick).size and y[pick].any() and not y[pick].all()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: (d / "t.jsonl").write_text('{"text": "hi there"}\n{"text": "win cash"}\n') and d / "t.jsonl",
         "no 'label' field"),
        (lambda d: (d / "t.jsonl").write_text('{"text": "hi there", "label": "ham"}\n{"text": "yo"}\n') and d / "t.jsonl",
         "sample 1 has no 'label'"),
        (lambda d: (d / "t.jsonl").write_text('{"text": "hi", "label": "ham"}\n{"text": "yo", "label": "ham"}\n')
         and d / "t.jsonl", "one class only"),
    ],
    ids=["unlabelled", "one-unlabelled", "single-class"],
)
def test_bad_test_sets_fail_before_the_model_loads(tmp_path, sms, make, expected) -> None:
    with pytest.raises(InputError, match=expected):
        evaluate(sms["seed"], make(tmp_path), model="no-such-model-is-ever-loaded")


def test_bad_options_are_one_input_error() -> None:
    with pytest.raises(InputError, match="seed_size"):
        EvalConfig.make(seed_size=1)


def test_an_unlabelled_added_set_and_a_too_large_seed_size_fail_before_the_model_loads(tmp_path, sms) -> None:
    unlabelled = tmp_path / "export.jsonl"
    unlabelled.write_text('{"messages": [{"role": "user", "content": "win a prize"}], "source": "synthetic"}\n')
    with pytest.raises(InputError, match="export.jsonl has no 'label' field"):
        evaluate(sms["seed"], sms["test"], [unlabelled], model="no-such-model-is-ever-loaded")
    with pytest.raises(InputError, match="larger than the seed"):
        evaluate(sms["seed"], sms["test"], config=EvalConfig(seed_size=41), model="no-such-model-is-ever-loaded")


def test_the_gain_over_the_seed_is_paired_on_the_same_resamples() -> None:
    from facsynth.tools.downstream import bootstrap_intervals, paired_gain

    rng = np.random.default_rng(3)
    y = rng.random(60) < 0.3
    weak, strong = rng.random(60), np.where(y, 0.6, 0.4) + 0.3 * rng.random(60)
    ap_w, _, rw = bootstrap_intervals(y, weak, resamples=300, confidence=0.95, rng=np.random.default_rng(1))
    ap_s, _, rs = bootstrap_intervals(y, strong, resamples=300, confidence=0.95, rng=np.random.default_rng(1))
    gain = paired_gain([ap_s.value - ap_w.value], [rs - rw], 0.95)
    assert gain.value == pytest.approx(ap_s.value - ap_w.value) and 0 < gain.low <= gain.high
    same = paired_gain([0.0], [rw - rw], 0.95)  # an arm against itself: exactly no gain
    assert (same.low, same.value, same.high) == (0.0, 0.0, 0.0)
