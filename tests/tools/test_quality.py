"""The quality rule on the real model and SAE: junk that fires many features is no sample,
the anchor passes at the calibrated rate, the seed passes, and the thresholds are pure maths
on what the model read (no model numerics are mocked)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facsynth.db import Store
from facsynth.paths import shipped
from facsynth.tools.datasets import Sample, load_dataset
from facsynth.tools.reader import Reader
from facsynth.tools.quality import (
    REASONS,
    Calibration,
    CopyIndex,
    Signals,
    TopicIndex,
    calibrate,
    calibrate_on,
    content_losses,
    failed_checks,
    is_request,
    model_problem,
    normalize_text,
    read_signals,
    text_problem,
    unmark,
    word_share,
)

JUNK = {
    # verbatim samples an earlier main job accepted, each credited with dozens of features
    "chords": "EbMaj7|C9|Gb5|Bbb♠|D#mρ|A9|Df♯Lydj|F2[4a]|Gm7|Cadd9|E7#9|Abm",
    "version": "Ajax 2.0.3 (17.8-bit) 64-Bit C++ 19 Dec  2015 - 2016 (Mozilla Firefox, Mozilla)",
    "about the instructions": (
        "That's not allowed, but instead of this sentence I can add it to my next response with this formatting."
    ),
    "no request": "The universe is infinite and has no end, therefore there can be no limits to human existence.",
    # accepted by the main job of 2026-12-04 before "your next response" counted as talk about the instructions
    "about the reply": ("How do I...? That's not an answer to what you're asking. It wants you to ask for the "
                        "information that only they provide, which will be provided in your next response."),
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def calibrated(subject, default_sae, tmp_path_factory) -> tuple[Reader, Calibration, TopicIndex]:
    """The shipped demo anchor (240 prompts) and seed (60), read and calibrated once."""
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('quality') / 'store.db'}")
    reader = Reader(subject, default_sae, store=store)
    anchor, seed = load_dataset(shipped("demo", "anchor.jsonl")), load_dataset(shipped("demo", "seed.jsonl"))
    cal = calibrate_on(reader, anchor, seed, pass_rate=0.95)
    pooled = [sf.pooled for sf, _ in reader.read(anchor)]
    yield reader, cal, TopicIndex(np.stack(pooled), k=cal.k)
    store.close()


def _problem(reader: Reader, cal: Calibration, index: TopicIndex, text: str):
    sample = Sample(text=text)
    problem = text_problem(sample, min_words=4)
    if problem is not None:
        return problem, None
    sf = reader.encoder.encode_one(sample)
    [sig] = read_signals(reader.encoder, [sample], [sf.pooled], index)
    return model_problem(sig, cal), (sf, sig)


@pytest.mark.parametrize("name", sorted(JUNK))
def test_junk_that_fires_many_features_is_rejected_on_the_real_model(calibrated, name: str) -> None:
    reader, cal, index = calibrated
    problem, read = _problem(reader, cal, index, JUNK[name])
    assert problem is not None and problem.code in REASONS, f"{name} passed the quality rule"
    if read is not None:  # it fires plenty: activations alone would have let it in
        sf, _ = read
        assert len(sf.active(reader.default_delta)) >= 10
    expected = {"chords": "not_fluent", "version": "not_fluent", "about the instructions": "about_instructions",
                "no request": "not_a_request", "about the reply": "about_instructions"}[name]
    assert problem.code == expected


def test_the_anchor_passes_at_the_calibrated_rate_and_the_seed_passes(calibrated) -> None:
    reader, cal, index = calibrated
    assert (cal.corpus, cal.n, cal.pass_rate, cal.request_check) == ("anchor", 240, 0.95, True)
    assert 0.95 <= cal.anchor["all"] <= 0.97  # every check together lets the calibrated share through
    assert all(cal.anchor[c] >= 0.95 for c in ("fluent", "finished", "on_topic", "request"))
    assert cal.min_end is not None and cal.min_end < -5  # SmolLM2's template ends each turn with <|im_end|>
    assert cal.seed["all"] >= 0.85  # the seed is a narrow slice of the same kind of prompts
    # the same figures read again, sample by sample, outside the calibration
    seed = list(load_dataset(shipped("demo", "seed.jsonl")))
    pooled = [sf.pooled for sf, _ in reader.read(load_dataset(shipped("demo", "seed.jsonl")))]
    passed = [not failed_checks(s, cal) and text_problem(x, min_words=4) is None
              for x, s in zip(seed, read_signals(reader.encoder, seed, pooled, index))]
    assert np.mean(passed) == pytest.approx(cal.seed["all"], abs=1 / 60 + 1e-9)


def test_natural_requests_on_the_anchors_topics_pass(calibrated) -> None:
    reader, cal, index = calibrated
    for text in ("Plan a three day trip to the mountains with a tight budget.",
                 "Pretend you're a local tour guide in Istanbul and plan my afternoon.",
                 "How do I change the oil filter on a 2012 Honda Civic?"):
        problem, _ = _problem(reader, cal, index, text)
        assert problem is None, (text, problem)


@pytest.mark.parametrize(
    ("cut", "full"),
    [
        ("How do I change the oil filter on a", "How do I change the oil filter on a 2012 Honda Civic?"),
        ("Plan a three day trip to the mountains with a", "Plan a three day trip to the mountains with a tight budget."),
        ("Can you explain why the sky looks blue during the", "Can you explain why the sky looks blue during the day?"),
    ],
)
def test_a_request_cut_off_mid_sentence_is_unfinished_and_the_whole_one_passes(calibrated, cut: str, full: str) -> None:
    """A writer that runs out of tokens leaves such texts; per-token loss lets them through."""
    reader, cal, index = calibrated
    problem, read = _problem(reader, cal, index, cut)
    assert problem is not None and problem.code == "unfinished", (cut, problem)
    assert read is not None and read[1].loss <= cal.max_loss  # fluent as far as it goes: only the end gives it away
    assert _problem(reader, cal, index, full)[0] is None


def test_loss_is_the_mean_next_token_loss_of_the_content_tokens(subject, encoder) -> None:
    """Checked against a plain transformers forward over the whole rendered prompt."""
    import torch

    sample = Sample(text="How do I change the oil filter on a 2012 Honda Civic?")
    [loss] = content_losses(encoder, [sample])
    t = encoder.tokenize(sample)
    ids = torch.tensor([t.input_ids])
    with torch.inference_mode():
        logp = torch.log_softmax(subject.model(input_ids=ids).logits[0].float(), -1)
    pos = [p for p in range(1, len(t.input_ids)) if t.content[p]]
    assert loss == pytest.approx(float(-np.mean([logp[p - 1, t.input_ids[p]].item() for p in pos])), rel=1e-4)
    [junk] = content_losses(encoder, [Sample(text="oil Civic filter 2012 the Honda change do how on I a?")])
    assert junk > loss + 1.0  # the same words shuffled read far less fluently


@pytest.mark.parametrize(
    ("text", "asks"),
    [
        ("How can I tell if my car battery is dying?", True),
        ("Explain what engine coolant does, in two sentences.", True),
        ("I just got a $5,000 bonus. List four sensible ways to use it.", True),
        ("prove that the square root of 2 is irrational", True),
        ("You are a strict French chef. Critique my plan to make hollandaise sauce.", True),
        ("The universe is infinite and has no end.", False),
        ("A calm walk along the quiet river at dusk, with nothing much to say about it.", False),
        ("Ajax 2.0.3 (17.8-bit) 64-Bit C++ 19 Dec 2015", False),
        # candidates an earlier main job accepted: statements that only sound like a user
        ("That's not what I said, but it is my statement now. I am going to try again. Let's try another.", False),
        ("Another way to say it, I will explain further.", False),
        ("I'm trying to be careful here because there's no other way to explain it.", False),
        ("I'm looking for a gentle stretching routine for my lower back.", True),
        ("When we are faced with very hard decisions, often there is no clear answer.", False),
        ("what did nietzsche mean by god is dead", True),
        ("How do I fix the error my build prints", True),
        # an assistant's reply, not a user's message, even with a question at its end
        ("I'm sorry, but I can't assist with that request. Can I help you with something else?", False),
        ("I'm sorry, but I don't have any information about what to focus on first. Can you provide more context?", False),
        ("As an AI language model, I cannot give medical advice. Would you like general tips?", False),
        ("Sure! Here is a short poem about the sea. Do you want another one?", False),
        ("Certainly, here's how to bake bread: mix flour and water. Anything else?", False),
        ("I'm sorry to bother you, but can you explain how compound interest works?", True),
        ("Sure, why not: what is the tallest mountain in Africa?", True),
    ],
)
def test_request_signal(text: str, asks: bool) -> None:
    assert is_request(text) is asks


@pytest.mark.parametrize(
    "text",
    ["{1.25} How much sleep do adults actually need, and what happens? {3.75}",
     "Explain the greenhouse effect to a 12-year-<<old>>."],
)
def test_the_prompts_markup_copied_into_a_candidate_is_talk_about_the_instructions(text: str) -> None:
    problem = text_problem(Sample(text=text), min_words=4)
    assert problem is not None and problem.code == "about_instructions"


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        # the writer copied the prompt's marks around words of its sentence: the sentence is kept
        ("I got a new job, but it's <<unfair>> and I'm feeling <<frustrated>>.", "I got a new job, but it's unfair and I'm feeling frustrated."),
        ("did you hear about the new << book>> everyone reads?", "did you hear about the new book everyone reads?"),
        ("<<Wow>>, that concert was the best night of my year!", "Wow, that concert was the best night of my year!"),
        ("Explain the greenhouse effect to a 12-year-<<old>>.", "Explain the greenhouse effect to a 12-year-old."),
        # glued to a word, appended after the text, empty or unpaired: left as written, and refused
        ("They make me feel so happy<<emotion>>", None),
        ("The weather is terrible today, I can't go out. <<hail>>", None),
        ("I can't even << >> explain how I feel today", None),
        ("So glad << it is friday again, see you all", None),
    ],
)
def test_marks_copied_around_words_of_a_sentence_are_removed_anything_else_is_refused(text: str, clean: str | None) -> None:
    out = unmark(text)
    if clean is None:
        assert out == text
        assert text_problem(Sample(text=out), min_words=4).code == "about_instructions"
    else:
        assert out == clean and text_problem(Sample(text=out), min_words=4) is None


@pytest.mark.parametrize(
    ("text", "code"),
    [
        # accepted by the tweet experiment's agent arm before these checks (bench/proof.py, 2026-12-06)
        ("@an @an @an @an @an @an @an @an @an @an @an @an @an @an @an @an @an @an @an @an @an @an", "not_fluent"),
        ("@anonymous I'm so bored of this job. Maybe leave that out of it", "about_instructions"),  # the feedback's words
        # real tweets of the shipped data that repeat themselves pass
        ("Appreciating @anonymous @anonymous @anonymous @anonymous @anonymous @anonymous @anonymous @anonymous", None),
        ("I hate, hate, hate blue shield.", None),
    ],
)
def test_one_word_repeated_or_the_feedbacks_words_are_no_sample(text: str, code: str | None) -> None:
    problem = text_problem(Sample(text=text), min_words=4)
    assert (problem.code if problem else None) == code


def test_word_share() -> None:
    assert word_share("Plan a three day trip, please!") == 1.0
    assert word_share("EbMaj7|C9|Gb5|Bbb♠") == 0.0
    assert word_share("Solve 2x + 3y = 12 for me") == pytest.approx(3 / 8)


def test_calibration_lets_the_pass_rate_through_every_check_together() -> None:
    rng = np.random.default_rng(0)
    sig = [Signals(float(x), float(d), True, float(w)) for x, d, w in
           zip(rng.normal(3, 0.5, 400), rng.uniform(0.2, 0.7, 400), rng.uniform(0.8, 1.0, 400))]
    cal = calibrate(sig, pass_rate=0.9, k=3, corpus="anchor")
    share = np.mean([not failed_checks(s, cal) for s in sig])
    assert 0.9 <= share <= 0.92 and cal.quantile >= 0.9
    assert cal.max_loss == pytest.approx(np.quantile([s.loss for s in sig], cal.quantile), abs=1e-3)
    # a corpus that is mostly not requests turns the request check off rather than rejecting everything
    statements = [Signals(s.loss, s.distance, i % 3 == 0, s.words) for i, s in enumerate(sig)]
    assert calibrate(statements, pass_rate=0.9, k=3, corpus="anchor").request_check is False
    assert cal.min_end is None  # no end log-probability read: the check is off, as for a run calibrated before it
    # with them read: the end check sits at the same quantile, and a text cut off mid-sentence fails it
    ends = [Signals(s.loss, s.distance, True, s.words, float(e)) for s, e in zip(sig, rng.normal(-4, 2, 400))]
    cal = calibrate(ends, pass_rate=0.9, k=3, corpus="anchor")
    assert cal.min_end == pytest.approx(np.quantile([s.end for s in ends], 1 - cal.quantile), abs=1e-3)
    assert 0.9 <= np.mean([not failed_checks(s, cal) for s in ends]) <= 0.92
    cut = Signals(3.0, 0.3, True, 1.0, -25.0)
    assert failed_checks(cut, cal) == ["finished"] and model_problem(cut, cal).code == "unfinished"
    assert failed_checks(Signals(3.0, 0.3, True, 1.0), cal) == []  # not read (nan): passes


def test_topic_distance_leaves_each_anchor_sample_out_of_its_own_neighbours() -> None:
    rng = np.random.default_rng(1)
    pooled = rng.normal(size=(20, 8)).astype(np.float32)
    index = TopicIndex(pooled, k=1)
    own = index.self_distances()
    assert (own > 1e-3).all()  # not zero: a sample is not its own neighbour
    assert index.distances(pooled) == pytest.approx(np.zeros(20), abs=1e-5)


def test_a_run_without_pooled_states_or_with_a_tiny_corpus_is_refused() -> None:
    with pytest.raises(ValueError):
        TopicIndex(np.zeros((1, 4)))


def test_reasons_are_a_small_fixed_vocabulary() -> None:
    assert len(REASONS) <= 20 and all(code.isidentifier() for code in REASONS)


@pytest.fixture(scope="module")
def sms_probe(subject, default_sae, tmp_path_factory):
    """The label check fitted on the shipped SMS anchor (100 spam, 100 ham), read once."""
    from facsynth.tools.quality import calibrate_on

    store = Store(f"sqlite:///{tmp_path_factory.mktemp('labels') / 'store.db'}")
    reader = Reader(subject, default_sae, store=store)
    anchor, seed = load_dataset(shipped("sms_spam", "anchor.jsonl")), load_dataset(shipped("sms_spam", "seed.jsonl"))
    cal = calibrate_on(reader, anchor, seed, pass_rate=0.95, labelled=True)
    yield reader, cal
    store.close()


@pytest.mark.parametrize(
    ("text", "right", "wrong"),
    [
        ("WINNER!! You have won a guaranteed £1000 cash prize. Call 09061701461 now to claim. T&Cs apply, 18+", "spam", "ham"),
        ("URGENT! Your mobile number has been awarded a free holiday. Txt CLAIM to 81010 now, 150p/msg", "spam", "ham"),
        ("Hey, are we still on for dinner tonight? I can pick you up at 7 if that works", "ham", "spam"),
        ("Sorry I missed your call, was in the shower. Call you back in 10 mins ok", "ham", "spam"),
    ],
)
def test_a_wrong_label_is_refused_and_the_right_one_passes_on_the_real_model(sms_probe, text: str, right: str, wrong: str) -> None:
    from facsynth.tools.quality import label_problem

    reader, cal = sms_probe
    probe = cal.label
    assert probe is not None and sorted(probe.labels) == ["ham", "spam"]
    pooled = reader.encoder.encode_one(Sample(text=text)).pooled
    ok, p_right = label_problem(pooled, right, probe)
    bad, p_wrong = label_problem(pooled, wrong, probe)
    assert ok is None and p_right > 0.5
    assert bad is not None and bad.code == "wrong_label" and p_wrong < probe.min_prob
    assert label_problem(pooled, "maybe", probe)[0].code == "wrong_label"  # a label outside the task's


def test_the_label_check_lets_the_anchor_through_at_the_pass_rate_and_survives_a_round_trip(sms_probe) -> None:
    _, cal = sms_probe
    probe = cal.label
    assert probe.cv_accuracy >= 0.85 and probe.anchor_pass >= 0.95 and 0.0 < probe.min_prob <= 0.5
    again = Calibration.model_validate_json(cal.model_dump_json())  # as a resumed run reads it from its setup
    x = np.ones(len(probe.mean))
    assert again.label is not None and np.allclose(again.label.probs(x), probe.probs(x))


def test_no_label_check_without_two_labels_with_enough_samples() -> None:
    from facsynth.tools.quality import fit_label_probe

    x = np.random.default_rng(0).normal(size=(8, 4))
    assert fit_label_probe(x, ["spam"] * 8, pass_rate=0.95) is None
    assert fit_label_probe(x, ["spam"] * 6 + ["ham"] * 2, pass_rate=0.95) is None
    assert fit_label_probe(x, [None] * 8, pass_rate=0.95) is None


def _rows(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_a_candidate_that_copies_an_anchor_or_seed_text_is_no_new_sample() -> None:
    """Verbatim from the tweet experiment's accepted sets (bench/proof.py, paper arm and agent):
    fragments cut from anchor tweets, which fire the anchor's features because they are its
    text. Fresh tweets on the same themes, and real tweets of the held-out test split, pass."""
    tweets = shipped("tweet_sentiment")
    index = CopyIndex([(f"anchor sample {i + 1}", t) for i, t in enumerate(_rows(tweets / "anchor.jsonl"))]
                      + [(f"seed sample {i + 1}", t) for i, t in enumerate(_rows(tweets / "seed.jsonl"))])
    copies = [
        "onymous I know we get some outside Canberra trying to cross the",
        "in the world and I'll eat ice cream out of the",
        "Found a 20 euro note in",
        "I have to get up to change now. Amy Winehouse. When the fuck did that change? @#<>",
        "Anonymous I know we get some outside Canberra trying to cross the, which is a waste of time and money.",
    ]
    for text in copies:
        problem = index.problem(text)
        assert problem is not None and problem.code == "copies_task_text", text
        assert "anchor sample" in problem.message
    fresh = [
        "I'm feeling so frustrated. I can't believe they haven't responded yet.",
        "@anonymous my new phone has a bug. I can't use it at all.",
        "The weather has been terrible lately. It's been raining and snowing all day long. Not sure if it will ever stop.",
        "I just ate a delicious pizza, and I'm so thankful for it. I can't wait to share it with my friends. #PizzaLove",
    ]
    assert [t for t in fresh if index.problem(t)] == []
    held_out = _rows(tweets / "test.jsonl")
    flagged = [t for t in held_out if index.problem(t)]
    assert len(flagged) <= 0.02 * len(held_out), flagged  # real near-repeats only (the data holds a few)


def test_the_copy_check_leaves_the_demos_other_prompts_alone() -> None:
    demo = shipped("demo")
    own = _rows(demo / "anchor.jsonl") + _rows(demo / "seed.jsonl")
    index = CopyIndex([(str(i), t) for i, t in enumerate(own)])
    known = {normalize_text(t) for t in own}
    others = [t for t in _rows(demo / "prompts.jsonl") if normalize_text(t) not in known]
    assert len(others) > 300 and [t for t in others if index.problem(t)] == []
    assert index.problem(own[0]) is not None and index.problem(own[0]).code == "copies_task_text"


@pytest.mark.parametrize(
    "text, ai",
    [
        ("As an AI language model, I don't have personal feelings or experiences to share.", True),
        ("@anonymous As an AI, I can't say whether that movie was good.", True),
        ("I'm just an AI language model, but here is a tweet about rain.", True),
        ("As an AI researcher, how do I pick a learning rate for a small transformer?", False),
        ("I'm sorry, I can't make it tonight :( work is killing me", False),
        ("I am an AI engineer and I need help choosing a GPU for training.", False),
    ],
)
def test_a_text_in_an_ai_models_voice_is_no_sample_of_any_task(text: str, ai: bool) -> None:
    problem = text_problem(Sample(text=text), min_words=4)
    assert (problem is not None and problem.code == "assistant_voice") is ai, problem
