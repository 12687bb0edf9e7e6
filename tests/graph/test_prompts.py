"""What each strategy's generator prompt shows the writer (rendered, no LLM)."""

from __future__ import annotations

from facsynth.agent.tasks import PRESETS
from facsynth.graph.prompts import (
    NEGATIVE,
    POSITIVE,
    REPLY_ECHOES,
    GenerationRequest,
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
