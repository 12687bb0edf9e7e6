"""The run store (m003_runs) on SQLite and, when it is reachable, PostgreSQL.

What a resumed run relies on: storing an attempt again keeps the first copy, settling
an attempt again changes nothing, and an accepted sample lands with every feature it
covers or not at all.
"""

from __future__ import annotations

import numpy as np
import pytest

from facsynth.db import Store
from facsynth.db.runs import HELD_BACK, Candidate, Runs, Verdict
from facsynth.errors import InputError, StoreError
from facsynth.graph.acceptance import admit

READER = ("smollm2-135m-instruct", "0123456789abcdef", 15, "sae-test", "f" * 64, "relu", "chat")


def settle(runs: Runs, *args: object, **kw: object) -> list[int]:
    """Settle with the acceptance rule the verifier node uses."""
    return runs.settle(*args, admit=admit, **kw)  # type: ignore[arg-type]


def _run(store: Store, name: str = "r1") -> tuple[Runs, int]:
    runs = Runs(store)
    rid = store.reader(*READER)
    run = runs.create(
        name, strategy="agent", task="toxicity", reader_id=rid, config={"config": {}, "setup": {}},
        feature_set="test", n_relevant=10, n_seed_covered=4, missing={1: 3.0, 2: 2.0, 3: 1.0, 4: 0.5, 5: 0.1},
        held_back=[5],
    )
    return runs, run.id


def _cands(feature: int, attempt: int, texts: list[str]) -> list[Candidate]:
    roles = ["positive", "negative"]
    return [
        Candidate(feature=feature, attempt=attempt, step=1, idx=i, role=roles[i % 2], payload={"text": t},
                  text_hash=f"h-{t}", prompt_hash="p", model="m")
        for i, t in enumerate(texts)
    ]


def _verdict(c: Candidate, verdict: str, act: float, fires: list[int], accept: bool) -> Verdict:
    ids = np.array(sorted(fires), dtype=np.int32)
    return Verdict(candidate_id=c.id, target_act=act, span={"tokens": ["a"], "acts": [act]}, feature_ids=ids,
                   max_acts=np.full(ids.shape, act, dtype=np.float32), verdict=verdict, reason="r", accept=accept,
                   fires=fires)


def test_a_run_starts_with_its_missing_features_pending_and_the_held_back_excluded(store: Store) -> None:
    runs, run_id = _run(store)
    by_feature = {f.feature: f for f in runs.features(run_id)}
    assert [f.feature for f in runs.features(run_id)] == [1, 2, 3, 4, 5]  # priority order
    assert {f: s.status for f, s in by_feature.items()} == {1: "pending", 2: "pending", 3: "pending", 4: "pending", 5: "excluded"}
    assert by_feature[5].reason == HELD_BACK
    s = runs.summary(run_id)
    assert (s.fac_before, s.fac, s.samples) == (0.4, 0.4, 0)
    with pytest.raises(InputError, match="exists"):
        _run(store)


def test_storing_an_attempt_again_keeps_the_first_copy_and_counts_it_once(store: Store) -> None:
    runs, run_id = _run(store)
    first = runs.add_candidates(run_id, 1, 1, _cands(1, 1, ["a positive text", "a negative text"]))
    again = runs.add_candidates(run_id, 1, 1, _cands(1, 1, ["other words", "other negative"]))
    assert [c.payload["text"] for c in again] == ["a positive text", "a negative text"]
    assert [c.id for c in again] == [c.id for c in first]
    assert runs.feature(run_id, 1).attempts == 1
    assert len(runs.candidates(run_id, 1, unverified=True)) == 2


def test_an_accepted_sample_credits_every_missing_feature_it_fires_once(store: Store) -> None:
    runs, run_id = _run(store)
    runs.set_feature_status(run_id, [1], "in_progress")
    pos, neg = runs.add_candidates(run_id, 1, 1, _cands(1, 1, ["fires one two five", "fires nothing"]))
    covered = settle(runs, run_id, 1, [
        _verdict(pos, "accepted", 20.0, [1, 2, 5, 99], accept=True),  # 99 is not a missing feature
        _verdict(neg, "accepted", 0.0, [], accept=False),
    ])
    assert covered == [1, 2, 5]
    status = {f.feature: f.status for f in runs.features(run_id)}
    assert status == {1: "covered", 2: "covered", 3: "pending", 4: "pending", 5: "covered"}
    [sample] = runs.samples(run_id)
    assert sample.covered == [1, 2, 5] and sample.candidate.payload == {"text": "fires one two five"}
    assert runs.feature(run_id, 2).covered_by == sample.id
    s = runs.summary(run_id)
    assert (s.covered, s.samples, s.fac) == (3, 1, 0.7)
    assert runs.feature(run_id, 5).reason == HELD_BACK  # covered, but still no strategy's target

    # withdrawing the sample returns the held-back feature to excluded, the others to pending
    assert runs.withdraw_samples(run_id, [sample.id], delta=1.0) == [1, 2, 5]
    status = {f.feature: f.status for f in runs.features(run_id)}
    assert status == {1: "pending", 2: "pending", 3: "pending", 4: "pending", 5: "excluded"}
    assert runs.restore_samples(run_id, [sample.id], delta=1.0) == [1, 2, 5]
    assert runs.feature(run_id, 5).status == "covered" and runs.feature(run_id, 5).reason == HELD_BACK

    # settling the same attempt again (a resumed verifier) changes nothing
    assert settle(runs, run_id, 1, [_verdict(pos, "accepted", 20.0, [1, 2, 5], accept=True)]) == []
    assert len(runs.samples(run_id)) == 1

    # a later sample with the same normalized text is a duplicate, not a second sample
    runs.set_feature_status(run_id, [3], "in_progress")
    [copy] = runs.add_candidates(run_id, 3, 1, _cands(3, 1, ["fires one two five"]))
    assert settle(runs, run_id, 3, [_verdict(copy, "accepted", 15.0, [3], accept=True)]) == []
    assert runs.candidates(run_id, 3)[0].verdict == "duplicate"
    assert runs.feature(run_id, 3).status == "in_progress"
    assert runs.summary(run_id).samples == 1


def test_a_negative_joins_only_with_enough_new_coverage(store: Store) -> None:
    runs, run_id = _run(store)
    runs.set_feature_status(run_id, [1, 3], "in_progress")
    pos, neg = runs.add_candidates(run_id, 1, 1, _cands(1, 1, ["positive fires one", "negative fires two"]))
    weak = _verdict(neg, "accepted", 0.0, [2, 99], accept=True)
    weak.min_new = 2  # covers only feature 2 of the run's missing ones
    assert settle(runs, run_id, 1, [_verdict(pos, "rejected", 3.0, [], accept=False), weak]) == []
    assert runs.samples(run_id) == [] and runs.candidates(run_id, 1)[1].verdict == "accepted"
    [neg2] = runs.add_candidates(run_id, 3, 1, _cands(3, 1, ["negative fires two and four"])[:1])
    strong = _verdict(neg2, "accepted", 0.0, [2, 4], accept=True)
    strong.min_new = 2
    assert settle(runs, run_id, 3, [strong]) == [2, 4]
    assert [s.covered for s in runs.samples(run_id)] == [[2, 4]]
    assert runs.feature(run_id, 3).status == "in_progress"  # its own target is still missing
    # only the negative that joined guards the run against duplicates
    assert runs.sample_ids(run_id, [pos.id, neg.id, neg2.id]) == {neg2.id: runs.samples(run_id)[0].id}


def test_a_positive_that_missed_its_target_joins_only_with_enough_new_coverage(store: Store) -> None:
    runs, run_id = _run(store)
    runs.set_feature_status(run_id, [1, 2], "in_progress")
    [few] = runs.add_candidates(run_id, 1, 1, _cands(1, 1, ["misses one, adds two"]))
    miss = _verdict(few, "rejected", 5.0, [3, 4], accept=True)
    miss.min_new, miss.code = 3, "target_not_fired"
    assert settle(runs, run_id, 1, [miss]) == []
    [c] = runs.candidates(run_id, 1)
    assert (c.verdict, c.code) == ("rejected", "target_not_fired") and runs.feature(run_id, 1).status == "in_progress"
    [many] = runs.add_candidates(run_id, 2, 1, _cands(2, 1, ["misses two, adds three"]))
    miss = _verdict(many, "rejected", 5.0, [1, 3, 4], accept=True)
    miss.min_new, miss.code = 3, "target_not_fired"
    assert settle(runs, run_id, 2, [miss]) == [1, 3, 4]
    [c] = runs.candidates(run_id, 2)
    assert (c.verdict, c.code) == ("rejected", "joined")
    assert runs.feature(run_id, 2).status == "in_progress"  # its own target still wants a retry
    assert runs.summary(run_id).samples == 1


def test_settle_is_all_or_nothing(store: Store) -> None:
    runs, run_id = _run(store)
    other_runs, other_id = _run(store, "r2")
    runs.set_feature_status(run_id, [1], "in_progress")
    [pos] = runs.add_candidates(run_id, 1, 1, _cands(1, 1, ["fires one"]))
    [foreign] = other_runs.add_candidates(other_id, 1, 1, _cands(1, 1, ["another run's text"]))
    with pytest.raises(StoreError, match="not part of run"):
        settle(runs, run_id, 1, [_verdict(pos, "accepted", 20.0, [1, 2], accept=True),
                                _verdict(foreign, "accepted", 20.0, [1], accept=True)])
    assert runs.samples(run_id) == []
    assert runs.candidates(run_id, 1)[0].verdict is None
    assert {f.feature: f.covered_by for f in runs.features(run_id)}[1] is None


def test_the_attempt_cap_exhausts_a_feature_and_a_later_sample_still_covers_it(store: Store) -> None:
    runs, run_id = _run(store)
    runs.set_feature_status(run_id, [1, 2], "in_progress")
    [weak] = runs.add_candidates(run_id, 1, 1, _cands(1, 1, ["weak attempt text"]))
    settle(runs, run_id, 1, [_verdict(weak, "rejected", 3.0, [3], accept=False)], exhausted_reason="1 attempt(s) reached 3.00")
    f1 = runs.feature(run_id, 1)
    assert (f1.status, f1.reason, f1.best_act) == ("exhausted", "1 attempt(s) reached 3.00", 3.0)
    [good] = runs.add_candidates(run_id, 2, 1, _cands(2, 1, ["fires one and two"]))
    assert settle(runs, run_id, 2, [_verdict(good, "accepted", 30.0, [1, 2], accept=True)]) == [1, 2]
    assert runs.feature(run_id, 1).status == "covered"


def test_progress_points_and_wall_time_survive_the_process(store: Store) -> None:
    runs, run_id = _run(store)
    runs.add_progress(run_id, llm_calls=0, tokens=0, elapsed_s=0.0)
    runs.add_progress(run_id, llm_calls=4, tokens=900, elapsed_s=12.5)
    assert [(p.seq, p.llm_calls, p.fac) for p in runs.progress(run_id)] == [(1, 0, 0.4), (2, 4, 0.4)]
    assert runs.get("r1").elapsed_s == 12.5  # kept at each step, not only at a clean exit


def test_directives_are_kept_in_order_and_undone_by_id(store: Store) -> None:
    runs, run_id = _run(store)
    a = runs.add_directive(run_id, "focus on 3", "focus", {"features": [3]})
    b = runs.add_directive(run_id, "skip 4", "exclude", {"features": [4]})
    assert [d.kind for d in runs.directives(run_id)] == ["focus", "exclude"]
    assert runs.revert_directive(run_id, a) and not runs.revert_directive(run_id, a)
    assert [d.id for d in runs.directives(run_id)] == [b]
    assert [d.active for d in runs.directives(run_id, active_only=False)] == [False, True]
