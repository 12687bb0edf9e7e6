"""The verifier tool on the real model and SAE: activations, spans, duplicates, quality."""

from __future__ import annotations

import numpy as np
import pytest

from facsynth.tools.datasets import Sample
from facsynth.tools.candidates import DuplicateIndex, Verifier, span_text, text_hash
from facsynth.tools.quality import text_problem

pytestmark = pytest.mark.slow

TEXT = "Pretend you're a local tour guide in Istanbul and plan my afternoon."


def test_reading_reports_the_targets_max_activation_and_the_span_ending_at_its_peak(encoder) -> None:
    sample = Sample(text=TEXT)
    sf = encoder.encode_one(sample)
    target = int(sf.feature_ids[np.argmax(sf.max_acts)])
    [r] = Verifier(encoder, delta=12.0, threshold=12.0, window=5).read([sample], [target])
    assert r.target_act == pytest.approx(float(sf.max_acts.max()))
    words, acts = encoder.token_activations(sample)
    peak = int(acts[:, target].argmax())
    assert r.span["tokens"] == words[max(0, peak - 4) : peak + 1]
    assert r.span["acts"][-1] == pytest.approx(r.target_act, abs=0.01)
    assert span_text(r.span).endswith(f"<<{words[peak].strip()}>>") or f"<<{words[peak]}>>" in span_text(r.span)
    [off] = Verifier(encoder, delta=12.0, threshold=12.0).read([sample], [int(np.setdiff1d(np.arange(4096), sf.feature_ids)[0])])
    assert (off.target_act, off.span) == (0.0, None)


def test_exact_and_near_copies_are_caught_and_new_text_is_not(encoder) -> None:
    index = DuplicateIndex(4096, cosine_cut=0.95)
    original = Sample(text=TEXT)
    index.add("seed sample 1", text_hash(original), encoder.encode_one(original))

    recased = Sample(text="  PRETEND you're a local tour guide in Istanbul, and plan my afternoon!  ")
    assert text_hash(recased) == text_hash(original)
    assert index.check(text_hash(recased), encoder.encode_one(recased)) == "exact duplicate of seed sample 1"

    retold = Sample(text="Pretend you are a local tour guide in Istanbul and plan my afternoon.")
    near = index.check(text_hash(retold), encoder.encode_one(retold))
    other = Sample(text="How do I change the oil filter on a 2012 Honda Civic?")
    new = index.check(text_hash(other), encoder.encode_one(other))
    assert new is None
    sims = [index.vector(encoder.encode_one(s)) @ index.vector(encoder.encode_one(original)) for s in (retold, other)]
    assert sims[0] > sims[1]
    assert (near is not None) == (sims[0] >= 0.95)
    strict = DuplicateIndex(4096, cosine_cut=float(sims[0]) - 1e-3)
    strict.add("seed sample 1", text_hash(original), encoder.encode_one(original))
    assert strict.check(text_hash(retold), encoder.encode_one(retold)).startswith("near duplicate of seed sample 1")


def test_a_sample_that_repeats_most_of_a_kept_one_is_a_near_duplicate_whatever_it_fires(encoder) -> None:
    # two tweets an agent's set held side by side: the second adds hashtags to the first
    kept, longer = Sample(text="I can't wait to get that new job offer!"), Sample(text="I can't wait to get that new job offer! #Hiring #Excited")
    words_only = DuplicateIndex(4096, cosine_cut=1.01)  # features alone never call a near duplicate here
    words_only.add("accepted sample 7", text_hash(kept), encoder.encode_one(kept), text=kept.plain_text)
    why = words_only.check(text_hash(longer), encoder.encode_one(longer), text=longer.plain_text)
    assert why is not None and why.startswith("near duplicate: copies 9 of its 11 words in a row from accepted sample 7")
    assert words_only.check(text_hash(longer), encoder.encode_one(longer)) is None  # without the text, features decide
    other = Sample(text="I can't wait to start my new job on Monday, wish me luck!")  # same opening, a new tweet
    assert words_only.check(text_hash(other), encoder.encode_one(other), text=other.plain_text) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("You", "too short: 1 word(s)"),
        ("ContrastivePair, of course ok", None),
        ("Similar Sample Without Them", "repeats the reply format"),
        # a reply's JSON leaked into its first field (an agent's set, label pairs)
        ("@anonymous I'm feeling overwhelmed and can't stop thinking', 'new_sample_label':'negative','contrast_sample':'I just",
         "repeats the reply format"),
        ("Rename the column similar_sample_without_them to contrast in my pandas frame, please.", None),
        ("sample_using_the_marked_words", "too short"),
        ("Plan a trip to Istanbul for me.", None),
        ("A new sample on the same topic without the marked words.", "talks about the instructions"),
        ("Here is another example that does not use them.", "talks about the instructions"),
        ("{'use this key words verbatim and use the theme as it is.'}", "talks about the instructions"),
        ("How can I save water in my garden while keeping its central theme, using the marked key words?",
         "talks about the instructions"),
        ("Extract the key words from this paragraph and rank them by importance.", None),
        ("What sample size do I need for a survey of 2,000 people?", None),
        ("{your suggested replacement}, I need to know what is said in my request", "leaves a placeholder"),
        ("[Insert company name] is hiring a data engineer in Berlin.", "leaves a placeholder"),
        # templates an earlier main job accepted
        ("How to make a cake on the go with [keyword] ingredients and spices, using [key word 1];", "leaves a placeholder"),
        ("The [theme] of [subject] is about [feature1]. Please consider [additive_effect3] when improving this.",
         "leaves a placeholder"),
        ("{{<string>}}: how to fix the engine of your car. How can you turn the engines on and off?", "leaves a placeholder"),
        ("Can you suggest a [new item] that goes well with a rainy weekend at home?", "leaves a placeholder"),
        ("Add [the name] of the person you met to the list, then send it to me.", "leaves a placeholder"),
        ("Where can I buy a new item like this in [new york]?", None),
        ("What does arr[i] mean in C, and why does arr[0] give the first element?", None),
        ("Explain what [1] and [2] mean in this citation: 'as shown in [1], results improve [2]'.", None),
        ("In Python, why does d[key_name] raise KeyError when I print d['key_name'] fine?", None),
        ("Why does print(f'{your_total} items') fail when the variable is unset?", None),
        ("Format {name} and {age} into one greeting string in Python.", None),
        ("Press [Enter] twice to confirm the new password in the installer.", None),
    ],
)
def test_quality_gate(text: str, problem: str | None) -> None:
    found = text_problem(Sample(text=text), min_words=4, echoes=("similar_sample_without_them", "ContrastivePair", "new_sample", "contrast_sample"))
    got = None if found is None else found.message
    assert (got is None) if problem is None else (got is not None and got.startswith(problem))
