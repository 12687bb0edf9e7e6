"""What each strategy's generator prompt shows the writer (rendered, no LLM)."""

from __future__ import annotations

from facsynth.agent.tasks import PRESETS
from facsynth.tools.sides import label_side
from facsynth.graph.prompts import (
    NEGATIVE,
    POSITIVE,
    REPLY_ECHOES,
    GenerationRequest,
    LabelSide,
    Shown,
    render,
    reply_examples,
    reply_model,
)
from facsynth.tools.quality import META

SEED = [("How do I keep basil alive on a windowsill?", None), ("Write a haiku about the first snow.", None)]


def request(strategy: str, **kw: object) -> GenerationRequest:
    return GenerationRequest(
        feature=7, step=1, strategy=strategy, task=PRESETS["instruction-following"], explanation="cooking with garlic",
        spans=["Saute the <<garlic>> in butter", "Crush two <<cloves>> of it"], threshold=12.0, request=True, **kw,
    )


def user_text(req: GenerationRequest) -> str:
    [(_, system), (role, user)] = render(req)
    assert role == "user" and "JSON" in system
    return user


def test_the_agent_shows_seed_samples_for_the_format_then_the_theme_and_where_it_shows() -> None:
    text = user_text(request("agent", examples=SEED))
    assert text.index("Examples of the data") < text.index("Theme to bring in: cooking with garlic") < text.index("1. Saute")
    assert "'How do I keep basil alive on a windowsill?'" in text and "'Write a haiku about the first snow.'" in text
    assert f'"{POSITIVE}"' in text and f'"{NEGATIVE}"' in text
    # no "marked words" in the reply keys: writers wrote samples about the words themselves
    assert "marked" not in POSITIVE + NEGATIVE and META.search("A new sample without the marked words")


def test_the_paper_prompt_keeps_the_papers_wording_and_shows_no_seed_samples() -> None:
    text = user_text(request("paper", examples=SEED))
    assert "Snippets (the words to use are marked <<like this>>):" in text and "Theme: cooking with garlic" in text
    assert "Examples of the data" not in text and "basil" not in text


def test_step_two_shows_the_contrastive_pair_and_the_feedback() -> None:
    req = request("agent", examples=SEED, feedback=["the positive reached only 3.0 (needs more than 12.0)"])
    req.step, req.strong, req.weak = 2, Shown("Roast garlic for soup", 20.0, "Roast <<garlic>>"), Shown("Boil rice", 0.0, "")
    text = user_text(req)
    assert "Strong example from an earlier attempt (score 20.0)" in text and "reuse its activating phrase verbatim" in text
    assert "Weak example (score 0.0): 'Boil rice'" in text and "- the positive reached only 3.0" in text


def test_a_labelled_task_asks_for_labels_and_a_reply_gives_role_text_and_label() -> None:
    task = PRESETS["sms-spam"]
    req = request("agent", examples=[("WIN a free prize now", "spam")])
    req.task = task
    text = user_text(req)
    assert "Label each sample with one of: spam, ham." in text and "(label: spam)" in text
    model = reply_model("agent", task)
    reply = model.model_validate({POSITIVE: "Call me when you land", f"{POSITIVE}_label": "ham",
                                  NEGATIVE: "Claim your free cruise today", f"{NEGATIVE}_label": "spam"})
    assert reply_examples("agent", reply) == [("positive", "Call me when you land", "ham"),
                                              ("negative", "Claim your free cruise today", "spam")]
    assert POSITIVE in REPLY_ECHOES and "sample_using_the_marked_words" in REPLY_ECHOES


def test_a_feature_that_marks_a_label_gets_a_pair_across_the_label_boundary() -> None:
    req = request("agent", examples=[("WIN a free prize now", "spam")], side=LabelSide("spam", "ham", 9, 12))
    req.task = PRESETS["sms-spam"]
    text = user_text(req)
    assert "The theme is typical of spam samples (it shows in 9 of 12 spam samples" in text
    assert f'"{POSITIVE}": a spam sample in the sample format' in text
    assert f'"{NEGATIVE}": a ham sample on the same subject' in text
    # the writer still labels each sample (the label check reads what it gave)
    assert f'"{POSITIVE}_label": its label (spam or ham)' in text
    # without a side (no labelled anchor, or no label stands out) the writer picks the labels
    req.side = None
    plain = user_text(req)
    assert "typical of" not in plain and "a spam sample in the sample format" not in plain and f'"{NEGATIVE}": a sample on the same subject' in plain


def test_label_side_names_the_label_a_feature_shows_in_clearly_more_often() -> None:
    labels = ("spam", "ham")
    anchor = [("spam", True)] * 6 + [("spam", False)] * 4 + [("ham", True)] * 3 + [("ham", False)] * 17
    assert label_side(anchor, labels) == LabelSide("spam", "ham", 6, 10)  # 60% of spam vs 15% of ham
    # labels are read case-insensitively; samples with no label or another one do not count
    assert label_side([("SPAM", hit) for _, hit in anchor[:10]] + anchor[10:] + [(None, True)] * 9, labels) == \
        LabelSide("spam", "ham", 6, 10)
    # about as often in both labels: no side, and the writer picks the labels as before
    assert label_side([("spam", True)] * 5 + [("spam", False)] * 5 + [("ham", True)] * 4 + [("ham", False)] * 6, labels) is None
    # shows in one sample only: too little to say
    assert label_side([("ham", True)] + [("ham", False)] * 9 + [("spam", False)] * 10, labels) is None
    # an anchor of one label (or none) says nothing about the other
    assert label_side([("spam", True)] * 5, labels) is None
    # three labels: the contrast sample may carry any other one
    three = ("negative", "neutral", "positive")
    side = label_side([("negative", True)] * 4 + [("neutral", False)] * 4 + [("positive", True)] + [("positive", False)] * 3, three)
    assert side == LabelSide("negative", None, 4, 4)


def test_no_strategy_asks_the_writer_for_something_new() -> None:
    # "new_sample" / "a new sample" made writers write about new things: in a tweet run, 34% (agent) and
    # 50% (unguided) of the tweets said "new" against 2-5% of real tweets
    side = LabelSide("spam", "ham", 5, 9)
    for req in (request("agent", examples=SEED), request("paper"), request("unguided", examples=SEED),
                GenerationRequest(feature=7, step=1, strategy="agent", task=PRESETS["sms-spam"], explanation="prizes",
                                  spans=["<<WIN>> a prize"], threshold=12.0, side=side)):
        fields = user_text(req).split("Reply with a JSON object with these fields:")[1]
        assert fields.count('- "') >= 2 and "new" not in fields.lower(), (req.strategy, fields)
