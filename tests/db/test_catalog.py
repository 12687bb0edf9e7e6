"""The catalog tables (m002_catalog) on SQLite and, when it is reachable, PostgreSQL."""

from __future__ import annotations


import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from facsynth.db import Store
from facsynth.db.catalog import Catalog, CollectionInfo, Explanation, FeatureStats, Relevance, Span, TaskRecord
from facsynth.errors import StoreError

READER = ("smollm2-135m-instruct", "0123456789abcdef", 15, "sae-test", "f" * 64, "relu", "chat")


def _corpus(store: Store, n: int = 6) -> tuple[int, int, list[str]]:
    rid = store.reader(*READER)
    samples = [(f"{i:064x}", {"text": f"sample {i}"}) for i in range(n)]
    did = store.register_dataset("corpus", "corpus.jsonl", samples)
    return rid, did, [h for h, _ in samples]


def _info(rid: int, did: int, **kw: object) -> CollectionInfo:
    base = dict(reader_id=rid, dataset_id=did, dataset_name="corpus", top_n=2, window=4, held_out=1, n_random=2,
                delta=0.0, seed=0, n_samples=6, n_features=2)
    base.update(kw)
    return CollectionInfo(**base)  # type: ignore[arg-type]


def test_collection_round_trip_and_replacement(store: Store) -> None:
    cat = Catalog(store)
    rid, did, hashes = _corpus(store)
    spans = [
        Span(7, "top", 0, hashes[0], 5.0, 3, [" the", " cat", " sat", " down"], [0.0, 1.0, 2.0, 5.0]),
        Span(7, "top", 1, hashes[1], 4.0, 1, ["A", " dog"], [0.5, 4.0]),
        Span(7, "held_out", 2, hashes[2], 3.0, 0, ["Cats"], [3.0]),
        Span(9, "top", 0, hashes[3], 9.0, 2, ["x", "y", "z"], [0, 0, 9.0]),
        Span(None, "random", 0, hashes[4], 0.0, 1, ["ra", "nd"]),
    ]
    stats = [FeatureStats(7, 6, 3, 0.5, 5.0, {"0.5": 4.0, "0.9": 4.8}), FeatureStats(9, 6, 1, 1 / 6, 9.0, {"0.5": 9.0})]
    cat.save_collection(_info(rid, did), stats, spans)

    got = cat.spans(rid, did, kinds=("top", "held_out"))
    assert [s.rank for s in got[7]] == [0, 1, 2] and got[7][0].text == " the cat sat down"
    assert got[7][0].acts == [0.0, 1.0, 2.0, 5.0] and got[7][0].sample_hash == hashes[0]
    assert [s.kind for s in got[7]] == ["top", "top", "held_out"]
    assert set(cat.spans(rid, did)) == {7, 9}  # default: top spans only, no random pool
    assert [s.text for s in cat.random_spans(rid, did)] == ["rand"]
    assert cat.span_features(rid, did) == [9, 7]  # strongest first
    assert cat.stats(rid, did)[7].quantiles == {"0.5": 4.0, "0.9": 4.8}
    info = cat.collection(rid, did)
    assert info is not None and info.top_n == 2 and info.dataset_name == "corpus"

    # a new collection of the same reader and corpus replaces the old one whole
    cat.save_collection(_info(rid, did, top_n=1), [stats[1]], [spans[3]])
    assert set(cat.spans(rid, did, kinds=("top", "held_out", "random"))) == {9}
    assert set(cat.stats(rid, did)) == {9}
    assert cat.collection(rid, did).top_n == 1  # type: ignore[union-attr]
    assert len(cat.collections(rid)) == 1


def test_an_unfinished_collection_is_absent_and_cleared_by_the_next(store: Store) -> None:
    cat = Catalog(store)
    rid, did, hashes = _corpus(store)
    cat.clear_collection(rid, did)
    cat.add_spans(rid, did, [Span(3, "top", 0, hashes[0], 2.0, 0, ["a"], [2.0])])  # then the run died
    assert cat.collection(rid, did) is None and cat.collections(rid) == []
    cat.save_collection(_info(rid, did), [FeatureStats(4, 6, 1, 1 / 6, 1.0)], [Span(4, "top", 0, hashes[1], 1.0, 0, ["b"])])
    assert set(cat.spans(rid, did)) == {4} and cat.collection(rid, did) is not None


def test_spans_need_registered_samples(store: Store) -> None:
    cat = Catalog(store)
    rid, did, _ = _corpus(store)
    with pytest.raises(StoreError, match="not registered"):
        cat.save_collection(_info(rid, did), [], [Span(1, "top", 0, "e" * 64, 1.0, 0, ["a"])])
    assert cat.collection(rid, did) is None


def test_explanation_scores_and_replacement(store: Store) -> None:
    cat = Catalog(store)
    rid, did, _ = _corpus(store)
    cat.save_explanation(rid, Explanation(7, "plural animals", "judge-model", dataset_id=did, words=["cats", "dogs"]))
    cat.set_check(rid, 7, "Probably", "checker")
    cat.set_detection(rid, 7, 0.75, 8, "detector")
    e = cat.explanation(rid, 7)
    assert e is not None and e.text == "plural animals" and e.words == ["cats", "dogs"]
    assert (e.check_label, e.check_model, e.detection_score, e.detection_n) == ("Probably", "checker", 0.75, 8)
    assert not e.cannot_tell and Explanation(1, "Cannot Tell.", "m").cannot_tell

    # a new explanation drops the old one's scores (they judged another text)
    cat.save_explanation(rid, Explanation(7, "Cannot tell", "explainer-2"))
    e = cat.explanation(rid, 7)
    assert e is not None and e.check_label is None and e.detection_score is None and e.explainer_model == "explainer-2"
    assert list(cat.explanations(rid)) == [7]

    with pytest.raises(ValueError, match="Yes, Probably, Maybe, No"):
        cat.set_check(rid, 7, "Definitely", "m")
    with pytest.raises(StoreError, match="no explanation"):
        cat.set_check(rid, 8, "Yes", "m")
    with pytest.raises(ValueError):
        cat.set_detection(rid, 7, 1.5, 4, "m")


def test_check_constraint_guards_labels_in_the_database(store: Store) -> None:
    rid, _, _ = _corpus(store)
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO explanations (reader_id, feature_id, text, explainer_model, check_label, created_at) "
                 "VALUES (:r, 1, 'x', 'm', 'Definitely', CURRENT_TIMESTAMP)"),
            {"r": rid},
        )


def test_tasks_upsert(store: Store) -> None:
    cat = Catalog(store)
    first = cat.save_task(TaskRecord("toxicity", "harmful text", "insults", {"label": ["toxic", "safe"]}))
    again = cat.save_task(TaskRecord("toxicity", "harmful or hateful text", "insults; slurs", None, "my.toml"))
    assert first == again
    t = cat.task("toxicity")
    assert t == TaskRecord("toxicity", "harmful or hateful text", "insults; slurs", None, "my.toml")
    assert cat.task("nope") is None
    assert [t.name for t in cat.tasks()] == ["toxicity"]


def test_relevant_set_follows_the_papers_rule_and_records_methods(store: Store) -> None:
    cat = Catalog(store)
    rid, _, _ = _corpus(store)
    cat.save_task(TaskRecord("toxicity", "d", "c"))
    for f, check in [(1, "Yes"), (2, "No"), (3, "Maybe"), (4, None)]:
        cat.save_explanation(rid, Explanation(f, f"feature {f}", "m"))
        if check:
            cat.set_check(rid, f, check, "m")
    cat.save_relevance(rid, [
        Relevance(1, "toxicity", "llm_judge", "Yes", "slurs", model="judge"),
        Relevance(2, "toxicity", "llm_judge", "Probably", "insults", model="judge"),  # check says No
        Relevance(3, "toxicity", "llm_judge", "No", "cooking", model="judge"),
        Relevance(4, "toxicity", "llm_judge", "Yes", "unchecked", model="judge"),  # no check yet
        Relevance(5, "toxicity", "contrast", "Yes", "AUROC 0.91", score=0.91),
        Relevance(6, "toxicity", "contrast", "No", "AUROC 0.52", score=0.52),
        Relevance(2, "toxicity", "import", "Maybe", "from the authors' TSV"),
    ])
    assert cat.relevant_features(rid, "toxicity") == [1, 2, 5]
    assert cat.selected_by(rid, "toxicity") == {1: ["llm_judge"], 2: ["import"], 5: ["contrast"]}

    # a new contrast run replaces the old one whole; other methods stay
    cat.save_relevance(rid, [Relevance(6, "toxicity", "contrast", "Yes", "AUROC 0.8", score=0.8)], replace_method="contrast")
    assert cat.relevant_features(rid, "toxicity") == [1, 2, 6]
    assert [r.score for r in cat.relevance(rid, "toxicity", method="contrast")] == [0.8]
    assert [(r.feature, r.method) for r in cat.relevance(rid, features=[2])] == [
        (2, "import"), (2, "llm_judge"),
    ]
    assert cat.readers() == [(rid, "smollm2-135m-instruct block 15, SAE sae-test (relu)")]

    with pytest.raises(StoreError, match="no task named 'sycophancy'"):
        cat.save_relevance(rid, [Relevance(1, "sycophancy", "contrast", "Yes", "x")])
    with pytest.raises(ValueError, match="llm_judge, contrast, import"):
        cat.save_relevance(rid, [Relevance(1, "toxicity", "vibes", "Yes", "x")])
