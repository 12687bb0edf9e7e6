"""The generator's prompts and reply schemas.

Step 1 (no pair yet) shows the target's explanation and the spans where it fires most.
Step 2 adds the contrastive pair, as in the paper: the strongest and the weakest example
so far, each with its activating span and score, and the rule "if the strong score is
high, reuse its activating phrase verbatim, else paraphrase it". The agent strategy adds
two seed samples (for the format and register, as the unguided baseline has them), the
verifier's feedback on the last attempt and the run's style directives. With ``label_pairs``,
on a labelled task whose anchor shows which label the target marks
(:func:`facsynth.tools.sides.label_side`), the agent writes its pair across the label
boundary: the positive with that label, the contrast sample with the other, on the same
subject (a minimal pair). The paper strategy asks for two samples and gets no feedback.
The unguided baseline shows no feature at all: a few seed examples and "write two more
samples like these" (self-instruct). No reply key or field asks for a "new" sample: a writer
took the word for a topic (a new job, car, phone) in a third to a half of its tweets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, create_model, field_validator

from facsynth.agent.tasks import TaskSpec
from facsynth.tools.sides import LabelSide

GENERATOR_SYSTEM = (
    "You write training data. Every sample you write must be natural, self-contained and in the requested "
    "format. Reply with JSON only."
)


MAX_CHARS = 1500
REQUEST_RULE = (
    "Each sample is only what a user sends to an AI assistant: a clear question, or an instruction such as "
    "'Explain ...', 'Write ...', 'How do I ...?', in plain, fluent English. Never a statement, a response, "
    "a list of codes or symbols, or words about these instructions."
)


def _clean(value: str) -> str:
    value = value.strip()
    if len(value) < 3:
        raise ValueError("the sample is empty")
    if len(value) > MAX_CHARS:
        raise ValueError(f"the sample is longer than {MAX_CHARS} characters")
    return value


@lru_cache(maxsize=32)
def _reply(name: str, fields: tuple[str, ...], labels: tuple[str, ...] | None) -> type[BaseModel]:
    """A flat reply model (grammar-constrained decoding of small local models copes best
    with flat objects): one text field per sample, plus ``<field>_label`` with ``labels``."""
    spec: dict[str, Any] = {}
    for f in fields:
        spec[f] = (str, ...)  # lengths are checked in Python: llama.cpp's grammar for {3,1500} crashes it
        if labels:
            spec[f"{f}_label"] = (Literal[labels], ...)  # type: ignore[valid-type]
    validators = {"_clean": field_validator(*fields)(classmethod(lambda cls, v: _clean(v)))}
    return create_model(name, __validators__=validators, **spec)


POSITIVE = "sample"
NEGATIVE = "contrast_sample"
FIRST, SECOND = "first_sample_using_the_marked_words", "second_sample_using_them_differently"
"""Reply keys: descriptive, because a small model writes what the key says."""
NEW_FIRST, NEW_SECOND = "first_sample", "second_sample"
"""The unguided strategy's reply keys."""
REPLY_ECHOES = (POSITIVE, NEGATIVE, FIRST, SECOND, NEW_FIRST, NEW_SECOND, "ContrastivePair", "TwoSamples", "TwoMoreSamples",
                "sample_using_the_marked_words", "similar_sample_without_them",
                "new_sample", "first_new_sample", "second_new_sample", "TwoNewSamples")  # earlier keys
"""Texts that only repeat the reply format: a candidate equal to one is no sample."""


def pair_model(labels: tuple[str, ...] | None) -> type[BaseModel]:
    """The agent's reply: a positive (fires the feature) and a negative (same topic, does not)."""
    return _reply("ContrastivePair", (POSITIVE, NEGATIVE), labels)


def two_samples_model(labels: tuple[str, ...] | None) -> type[BaseModel]:
    """The paper strategy's reply: two samples meant to fire the feature."""
    return _reply("TwoSamples", (FIRST, SECOND), labels)


def new_samples_model(labels: tuple[str, ...] | None) -> type[BaseModel]:
    """The unguided strategy's reply: two new samples like the seed examples."""
    return _reply("TwoMoreSamples", (NEW_FIRST, NEW_SECOND), labels)


def task_labels(task: TaskSpec) -> tuple[str, ...] | None:
    labels = (task.format or {}).get("label")
    if isinstance(labels, (list, tuple)) and labels:
        return tuple(str(x) for x in labels)
    return None


def task_sample_format(task: TaskSpec) -> str:
    return str((task.format or {}).get("sample") or "one user message (a prompt to an assistant)")


@dataclass
class Shown:
    """An earlier candidate as the prompt shows it."""

    text: str
    activation: float
    span: str
    source: str = "an earlier attempt"


@dataclass
class GenerationRequest:
    """Everything one generator call is written from (all read from the store)."""

    feature: int
    step: int
    strategy: str
    task: TaskSpec
    explanation: str | None
    spans: list[str]
    threshold: float
    strong: Shown | None = None
    weak: Shown | None = None
    feedback: list[str] = field(default_factory=list)
    style: list[str] = field(default_factory=list)
    examples: list[tuple[str, str | None]] = field(default_factory=list)
    """Seed samples (text, label): the unguided strategy writes new ones like them; the agent
    shows them for the format and register only."""
    request: bool = False
    """The run's quality rule asks for requests (its anchor is made of them): the prompt says so."""
    side: LabelSide | None = None
    """Agent, labelled task: the label the target marks; the pair is then written across the
    label boundary (the positive with it, the contrast sample with another)."""


def _examples_block(req: GenerationRequest, labels: tuple[str, ...] | None, header: str) -> list[str]:
    if not req.examples:
        return []
    lines = [header]
    lines += [f"{i}. {t!r}" + (f" (label: {lab})" if lab and labels else "") for i, (t, lab) in enumerate(req.examples, 1)]
    return lines


def _feature_block(req: GenerationRequest) -> list[str]:
    lines = []
    if req.strategy == "paper":  # the paper's wording
        if req.explanation:
            lines.append(f"Theme: {req.explanation}")
        if req.spans:
            lines.append("Snippets (the words to use are marked <<like this>>):")
            lines += [f"{i}. {s}" for i, s in enumerate(req.spans, 1)]
        return lines
    if req.explanation:
        lines.append(f"Theme to bring in: {req.explanation}")
    if req.spans:
        lines.append("Where the theme shows in other texts (its key words marked <<like this>>):")
        lines += [f"{i}. {s}" for i, s in enumerate(req.spans, 1)]
        lines.append("The << >> marks only point the key words out to you: never write them.")
    return lines


def _pair_block(req: GenerationRequest) -> list[str]:
    lines: list[str] = []
    if req.strong is not None:
        lines.append(
            f"Strong example from {req.strong.source} (score {req.strong.activation:.1f}): {req.strong.text!r}; "
            f"it fires at: {req.strong.span}"
        )
    if req.weak is not None:
        lines.append(f"Weak example (score {req.weak.activation:.1f}): {req.weak.text!r}")
    if req.strong is not None:
        if req.strong.activation > req.threshold:
            lines.append("The strong score is high: reuse its activating phrase verbatim in another context.")
        else:
            lines.append("The strong score is still low: paraphrase its activating phrase and make it more central.")
    return lines


def render(req: GenerationRequest) -> list[tuple[str, str]]:
    """The chat messages of one generator call."""
    fmt = task_sample_format(req.task)
    labels = task_labels(req.task)
    lines = [f"Task: {req.task.definition}", f"Sample format: {fmt}"]
    if req.request:
        lines.append(REQUEST_RULE)
    if labels:
        lines.append(f"Label each sample with one of: {', '.join(labels)}.")
    lines.append("")
    if req.strategy == "unguided":
        lines += _examples_block(req, labels, "Examples of the data:")
    else:
        block = [] if req.strategy == "paper" else _examples_block(
            req, labels, "Examples of the data (match their format and register; never copy them):")
        lines += block + ([""] if block else []) + _feature_block(req)
        if req.side is not None and labels and req.strategy == "agent":
            lines.append(f"The theme is typical of {req.side.label} samples (it shows in {req.side.hits} of "
                         f"{req.side.total} {req.side.label} samples of the task's data).")
    if req.step == 2:
        lines.append("")
        lines += _pair_block(req)
    if req.feedback:
        lines.append("")
        lines.append("Feedback on your last attempt:")
        lines += [f"- {f}" for f in req.feedback]
    if req.style:
        lines.append("")
        lines.append("The user asks for this style:")
        lines += [f"- {s}" for s in req.style]
    lines.append("")
    lines.append("Reply with a JSON object with these fields:")
    if req.strategy == "unguided":
        fields = [(NEW_FIRST, "a sample in the sample format, like the examples but on a subject they do not cover"),
                  (NEW_SECOND, "another sample, different from the first and from the examples")]
    elif req.strategy == "paper":
        fields = [(FIRST, "a sample in the sample format that contains the marked words"),
                  (SECOND, "another, different sample in the sample format that contains them too")]
    elif req.side is not None and labels:
        other = f"a {req.side.other} sample" if req.side.other else f"a sample with another label than {req.side.label}"
        fields = [(POSITIVE, f"a {req.side.label} sample in the sample format, on a subject of its own, built around "
                             "the theme: use its marked key words verbatim, as a natural part of the sample"),
                  (NEGATIVE, f"{other} on the same subject and in the same format that leaves the theme and its key words out")]
    else:
        fields = [(POSITIVE, "a sample in the sample format, on a subject of its own, built around the theme: "
                             "use its marked key words verbatim, as a natural part of the sample"),
                  (NEGATIVE, "a sample on the same subject and in the same format that leaves the theme and its key words out")]
    for key, what in fields:
        lines.append(f'- "{key}": {what};')
        if labels:
            lines.append(f'- "{key}_label": its label ({" or ".join(labels)});')
    return [("system", GENERATOR_SYSTEM), ("user", "\n".join(lines))]


def reply_model(strategy: str, task: TaskSpec) -> type[BaseModel]:
    labels = task_labels(task)
    if strategy == "unguided":
        return new_samples_model(labels)
    return two_samples_model(labels) if strategy == "paper" else pair_model(labels)


def reply_examples(strategy: str, reply: BaseModel) -> list[tuple[str, str, str | None]]:
    """(role, text, label) of each sample of a parsed reply."""
    fields = {
        "paper": (("sample", FIRST), ("sample", SECOND)),
        "unguided": (("sample", NEW_FIRST), ("sample", NEW_SECOND)),
    }.get(strategy, (("positive", POSITIVE), ("negative", NEGATIVE)))
    data = reply.model_dump()
    return [(role, data[f], data.get(f"{f}_label")) for role, f in fields]
