"""The acceptance rule (facsynth.graph.acceptance): what the verifier decides, and what joins at settlement."""

from __future__ import annotations

import numpy as np

from facsynth.db.runs import Candidate, Verdict
from facsynth.graph.acceptance import admit, judge, judge_problem, judge_with, verdict_rule
from facsynth.graph.config import RunConfig
from facsynth.records import SampleFeatures
from facsynth.tools.candidates import Reading
from facsynth.tools.quality import JudgeReply, Problem


def reading(act: float, fires: list[int]) -> Reading:
    ids = np.array(sorted(set(fires)), dtype=np.int32)
    return Reading(SampleFeatures("h", 5, ids, np.full(ids.shape, act + 1, dtype=np.float32)), act, None)


def cand(role: str, step: int = 1) -> Candidate:
    return Candidate(feature=1, attempt=1, step=step, idx=0, role=role, payload={"text": "x"}, text_hash="t",
                     prompt_hash="p", model="m", id=11)


def test_positive_is_accepted_only_above_the_threshold_and_not_as_a_copy() -> None:
    ok = judge(cand("positive"), reading(12.5, [1, 8]), threshold=12.0, delta=12.0, adds=True, duplicate=None)
    assert (ok.verdict, ok.accept, ok.fires) == ("accepted", True, [1, 8])
    low = judge(cand("positive"), reading(12.0, [8]), threshold=12.0, delta=12.0, adds=True, duplicate=None)
    assert (low.verdict, low.accept) == ("rejected", False)
    assert "needs > 12" in low.reason
    dup = judge(cand("positive"), reading(30.0, [1]), threshold=12.0, delta=12.0, adds=True, duplicate="exact duplicate of seed sample 3")
    assert (dup.verdict, dup.accept, dup.reason) == ("duplicate", False, "exact duplicate of seed sample 3")


def test_an_agents_usable_positive_that_misses_its_target_joins_on_a_negatives_terms() -> None:
    miss = judge(cand("positive"), reading(5.0, [8, 9, 10]), threshold=12.0, delta=4.0, adds=True, duplicate=None,
                 miss_min_new=3)
    assert (miss.verdict, miss.code, miss.accept, miss.min_new) == ("rejected", "target_not_fired", True, 3)
    assert "joins if it covers 3+" in miss.reason
    copy = judge(cand("positive"), reading(5.0, [8]), threshold=12.0, delta=4.0, adds=True, duplicate="near duplicate",
                 miss_min_new=3)
    assert copy.accept is False
    junk = judge(cand("positive"), reading(5.0, [8, 9, 10]), threshold=12.0, delta=4.0, adds=True, duplicate=None,
                 miss_min_new=3, problem=Problem("not_fluent", "not fluent"))
    assert (junk.code, junk.accept) == ("not_fluent", False)


def test_negative_is_accepted_when_the_target_stays_below_and_joins_only_with_new_coverage() -> None:
    good = judge(cand("negative"), reading(3.0, [8]), threshold=12.0, delta=12.0, adds=True, duplicate=None)
    assert (good.verdict, good.accept, good.min_new) == ("accepted", True, 3)
    never = judge(cand("negative"), reading(3.0, [8]), threshold=12.0, delta=12.0, adds=True, duplicate=None,
                  negative_min_new=0)
    assert (never.verdict, never.accept) == ("accepted", False)
    copy = judge(cand("negative"), reading(3.0, [8]), threshold=12.0, delta=12.0, adds=True, duplicate="exact duplicate")
    assert (copy.verdict, copy.accept) == ("accepted", False)
    bad = judge(cand("negative"), reading(20.0, [1]), threshold=12.0, delta=12.0, adds=True, duplicate=None)
    assert (bad.verdict, bad.accept) == ("rejected", False)


def test_positives_and_negatives_obey_the_same_quality_rule_and_keep_its_reason_code() -> None:
    junk = Problem("not_a_request", "not a request a user would send an assistant")
    for role, act in (("positive", 30.0), ("negative", 3.0)):  # each would pass on its activation alone
        v = judge(cand(role), reading(act, [1, 8, 9]), threshold=12.0, delta=12.0, adds=True, duplicate=None,
                  problem=junk, checks={"loss": 2.0})
        assert (v.verdict, v.accept, v.code, v.checks) == ("rejected", False, "not_a_request", {"loss": 2.0})
        assert v.reason == "quality: not a request a user would send an assistant"
    codes = [judge(cand(r), reading(a, [1]), threshold=12.0, delta=12.0, adds=adds, duplicate=d).code
             for r, a, adds, d in (("positive", 13.0, True, None), ("positive", 13.0, False, None),
                                   ("positive", 5.0, True, None), ("positive", 13.0, True, "exact duplicate"),
                                   ("negative", 13.0, True, None), ("negative", 3.0, True, None))]
    assert codes == ["joined", "example", "target_not_fired", "duplicate", "fires_target", "joined"]
    assert judge_problem(JudgeReply(reason="fine", verdict="Yes")) is None and judge_problem(None) is None
    no = judge_problem(JudgeReply(reason="a list of chords", verdict="No"))
    assert (no.code, no.message) == ("judge_no", "the LLM judge said No: a list of chords")


def verdict(role_min_new: int = 0, accept: bool = True) -> Verdict:
    return Verdict(11, 13.0, None, np.array([1], np.int32), np.array([14.0], np.float32), "accepted", "target fires",
                   accept=accept, min_new=role_min_new, fires=[1, 2, 3], code="joined")


def test_a_sample_joins_with_what_it_fires_that_is_still_missing() -> None:
    assert admit(verdict(), role="positive", same_text_as=None, credits=[1, 2]).joins
    assert admit(verdict(), role="positive", same_text_as=None, credits=[]).joins  # its target may be covered meanwhile


def test_the_same_text_as_a_sample_of_the_run_never_joins() -> None:
    dup = admit(verdict(), role="positive", same_text_as=7, credits=[])
    assert (dup.joins, dup.verdict, dup.code, dup.reason) == (False, "duplicate", "duplicate", "same text as accepted sample 7")
    neg = admit(verdict(3), role="negative", same_text_as=7, credits=[])
    assert (neg.joins, neg.verdict, neg.code) == (False, None, "example")  # still a valid contrast example
    miss = admit(verdict(3), role="positive", same_text_as=7, credits=[])
    assert (miss.joins, miss.verdict, miss.code) == (False, None, None)  # keeps "rejected", target_not_fired


def test_a_negative_or_a_missed_positive_joins_only_with_enough_new_features() -> None:
    assert admit(verdict(3), role="negative", same_text_as=None, credits=[4, 5, 6]).joins
    few = admit(verdict(3), role="negative", same_text_as=None, credits=[4, 5])
    assert (few.joins, few.code) == (False, "example")
    missed = admit(verdict(3), role="positive", same_text_as=None, credits=[4, 5])
    assert (missed.joins, missed.code) == (False, None)


def test_each_strategy_turns_on_its_own_part_of_the_rule() -> None:
    def rule(strategy: str):
        return verdict_rule(RunConfig.model_validate({"task": "toxicity", "seed": "s.jsonl", "strategy": strategy,
                                                      "negative_min_new": 3}))

    agent, paper, unguided = rule("agent"), rule("paper"), rule("unguided")
    miss = reading(5.0, [8, 9, 10])
    assert judge_with(agent, cand("positive"), miss, threshold=12.0, delta=4.0, duplicate=None, problem=None,
                      checks=None).accept
    assert not judge_with(paper, cand("positive", step=2), miss, threshold=12.0, delta=4.0, duplicate=None,
                          problem=None, checks=None).accept
    hit = reading(13.0, [1])
    assert not judge_with(paper, cand("positive", step=1), hit, threshold=12.0, delta=4.0, duplicate=None,
                          problem=None, checks=None).accept  # paper step 1 writes examples only
    assert judge_with(paper, cand("positive", step=2), hit, threshold=12.0, delta=4.0, duplicate=None,
                      problem=None, checks=None).accept
    free = judge_with(unguided, cand("positive"), reading(0.0, [1]), threshold=12.0, delta=4.0, duplicate=None,
                      problem=None, checks=None)
    assert (free.verdict, free.accept) == ("accepted", True)


def test_with_label_pairs_the_other_labels_contrast_sample_joins_whatever_it_covers() -> None:
    def rule(pairs: bool, strategy: str = "agent"):
        return verdict_rule(RunConfig.model_validate({"task": "sms-spam", "seed": "s.jsonl", "strategy": strategy,
                                                      "negative_min_new": 3, "label_pairs": pairs}))

    def contrast(label: str | None) -> Candidate:
        c = cand("negative")
        c.label = label
        return c

    low = reading(3.0, [8])  # stays below its target and covers one feature only

    def decide(r, c, marks="spam", duplicate=None, problem=None, act=low):
        v = judge_with(r, c, act, threshold=12.0, delta=4.0, duplicate=duplicate, problem=problem, checks=None, marks=marks)
        return v, admit(v, role="negative", same_text_as=None, credits=[])

    v, adm = decide(rule(True), contrast("Ham"))  # the other label's half of the pair: joins with nothing new
    assert (v.verdict, v.accept, v.min_new, v.code, adm.joins) == ("accepted", True, 0, "joined", True)
    assert "label pair" in v.reason
    for r, c, marks in ((rule(True), contrast("spam"), "spam"),  # written with the target's own label
                        (rule(True), contrast("ham"), None),  # the anchor shows no side for its target
                        (rule(False), contrast("ham"), "spam"),  # label pairs off
                        (rule(True, "paper"), contrast("ham"), "spam")):  # only the agent writes label pairs
        v, adm = decide(r, c, marks)
        assert v.min_new == 3 and not adm.joins, (c.label, marks)
    # the rest of the rule still holds for it: usable, a non-copy, and below the target
    assert not decide(rule(True), contrast("ham"), duplicate="near duplicate")[0].accept
    assert decide(rule(True), contrast("ham"), problem=Problem("not_fluent", "not fluent"))[0].code == "not_fluent"
    assert decide(rule(True), contrast("ham"), act=reading(20.0, [1]))[0].code == "fires_target"


def test_by_label_a_sample_credits_only_the_features_its_own_label_covers() -> None:
    sides = {1: "spam", 8: "ham"}  # feature 9 marks no label: any sample covers it

    def labelled(role: str, label: str | None) -> Candidate:
        c = cand(role)
        c.label = label
        return c

    spam = judge(labelled("positive", "Spam"), reading(13.0, [1, 8, 9]), threshold=12.0, delta=4.0, adds=True,
                 duplicate=None, sides=sides)
    assert (spam.verdict, spam.code, spam.accept, spam.fires) == ("accepted", "joined", True, [1, 9])
    # the target fires, but on a sample of the other label: it misses, and joins only on what it covers
    ham = judge(labelled("positive", "ham"), reading(13.0, [1, 8, 9]), threshold=12.0, delta=4.0, adds=True,
                duplicate=None, sides=sides, miss_min_new=1)
    assert (ham.verdict, ham.code, ham.fires, ham.min_new) == ("rejected", "other_label", [8, 9], 1)
    assert "marks the label 'spam'" in ham.reason and ham.accept
    assert not admit(ham, role="positive", same_text_as=None, credits=[]).joins
    unlabelled = judge(labelled("negative", None), reading(3.0, [1, 8, 9]), threshold=12.0, delta=2.0, adds=True,
                       duplicate=None, sides=sides)
    assert unlabelled.fires == [9]
    # by any sample (no sides): everything it fires counts, whatever its label
    anyone = judge(labelled("positive", "ham"), reading(13.0, [1, 8, 9]), threshold=12.0, delta=4.0, adds=True,
                   duplicate=None)
    assert (anyone.code, anyone.fires) == ("joined", [1, 8, 9])


def test_label_sides_names_the_label_whose_anchor_samples_carry_each_feature() -> None:
    from facsynth.tools.sides import label_sides

    anchor = [("spam", {1, 3}), ("spam", {1, 3}), ("spam", {1, 3}), ("ham", {2, 3}), ("ham", {2, 3}), ("ham", {3}), (None, {1})]
    assert label_sides(anchor, [1, 2, 3, 4], ("spam", "ham")) == {1: "spam", 2: "ham"}  # 3 fires on both, 4 on none
