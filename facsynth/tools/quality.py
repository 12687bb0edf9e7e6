"""Whether a candidate is a usable sample of the task, whatever SAE features it fires.

A candidate that fires many features is not data by that alone: a chord chart, a version
string or a remark about the instructions fires dozens. The rule, applied to positives and
negatives alike:

* **text** (no model): enough words, not an echo of the reply format, no talk about the
  instructions (:data:`META`) nor their markup copied (:data:`PROMPT_MARKUP`; the generator
  first removes marks a writer copied around words of its own sentence, :func:`unmark`), no
  slot left to fill (:data:`PLACEHOLDER`);
* **fluent**: the subject model's mean per-token loss (negative log-likelihood of the
  content tokens, a full forward to the logits) is at most ``max_loss``, and the share of
  its whitespace-separated pieces that are words (letters, with punctuation around them) is
  at least ``min_words`` (SmolLM2 predicts a chord chart such as "EbMaj7|C9|Gb5|..." about
  as well as a terse human prompt, so the loss alone lets it through);
* **finished**: the log-probability the subject model gives the end of the turn right after
  the text (the template's end token) is at least ``min_end``: a text cut off mid-sentence
  ("@anonymous I may have accidentally": -25.4 on SmolLM2-135M, where the bar calibrated on
  the tweet anchor is -15.0) passes the loss check, not this one;
* **on topic**: the cosine distance of its mean-pooled hidden state (the SAE layer, as the
  encoder pools it) to its ``k`` nearest anchor samples, after centring on the anchor's
  mean, is at most ``max_distance``;
* **a request** (when the anchor is made of requests): it asks something, as a user asks
  an assistant (:func:`is_request`: a question mark, a request verb first, or a request
  phrase such as "can you" or "help me").

* **a right label** (a labelled task whose anchor has two or more labels): a logistic
  regression on the anchor's pooled states (:class:`LabelProbe`) must give the candidate's
  label at least ``min_prob``, the probability that ``pass_rate`` of the anchor's own labels
  reach in cross-validation (at most 0.5: only a label the probe finds unlikely is refused).

The thresholds are calibrated on the anchor itself (the seed when the run has no anchor),
the distance read leave-one-out: each is the anchor's ``q`` quantile (``1 - q`` for the word
share and the end log-probability), with the smallest ``q >= pass_rate`` at which
``pass_rate`` (0.95) of the anchor passes every check together. :func:`calibrate` runs
once per run; the numbers are stored in the run's setup, so a resumed run judges with the
same ones, and reported beside FAC with the share of the anchor and the seed that passes
each check.

Every outcome has a short code from the fixed vocabulary :data:`REASONS`, stored with the
candidate's verdict; :data:`ADVICE` is what the generator is told after a rejection.
An optional LLM judge (:class:`JudgeReply`, Yes/No with a reason) is asked last.
"""

from __future__ import annotations

import re
import unicodedata
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from facsynth.tools.datasets import Sample

if TYPE_CHECKING:
    from facsynth.tools.datasets import Dataset
    from facsynth.tools.encoder import FeatureEncoder
    from facsynth.tools.reader import Reader

REASONS: dict[str, str] = {
    "joined": "joined the data",
    "example": "valid, kept as an example only (a negative adding too few features, a paper step-1 sample)",
    "too_short": "too short",
    "echoes_format": "repeats the reply format",
    "about_instructions": "talks about the instructions",
    "placeholder": "leaves a placeholder",
    "assistant_voice": "speaks as an AI model",
    "copies_task_text": "copies a run of words from a seed or anchor text",
    "not_fluent": "not fluent (model loss above the anchor's range)",
    "unfinished": "stops mid-sentence (the model does not expect the text to end there)",
    "off_topic": "off topic (hidden state far from the anchor)",
    "not_a_request": "not a request a user would send an assistant",
    "wrong_label": "its label disagrees with a probe trained on the anchor's labels",
    "judge_no": "the LLM judge said No",
    "duplicate": "duplicate of the seed or an accepted sample",
    "target_not_fired": "positive did not fire its target",
    "other_label": "positive fired its target with another label than the target marks (coverage by label)",
    "fires_target": "negative fired its target",
    "denied_in_review": "denied in review",
}
"""Every verdict's reason code, with what a report shows for it. The vocabulary is fixed."""

QUALITY_CODES = frozenset(
    {"too_short", "echoes_format", "about_instructions", "placeholder", "assistant_voice", "copies_task_text", "not_fluent",
     "unfinished", "off_topic", "not_a_request", "wrong_label", "judge_no"}
)
"""Codes of a candidate that is no usable sample, whatever it fires."""

ADVICE: dict[str, str] = {
    "too_short": "write a full, natural one",
    "echoes_format": "write a full, natural one",
    "about_instructions": "write the sample itself, not words about the task",
    "placeholder": "write every detail out, leave no slot to fill",
    "assistant_voice": "write the sample as its author would, never as an AI model",
    "copies_task_text": "write it in your own words: copy no snippet or example",
    "not_fluent": "write plain, fluent English sentences, no lists of codes, symbols or version numbers",
    "unfinished": "write the sample to its end: a complete text, not one cut off mid-sentence",
    "off_topic": "stay with everyday requests like the snippets' sources",
    "not_a_request": "write it as a question or an instruction a user sends an assistant ('How do I ...?', 'Write ...')",
    "wrong_label": "give each sample the label that fits its text (or write a text that fits the label)",
    "judge_no": "write a natural request a user would send an assistant",
}
"""What the generator is told after a rejection of each quality code."""

CHECKS = ("fluent", "finished", "on_topic", "request")
"""The model checks, in the order they are applied (after the text checks)."""
REQUEST_MIN = 0.8
"""The request check applies when at least this share of the calibration corpus passes it."""

_WORD = re.compile(r"\w+", re.UNICODE)
_LETTERS = re.compile(r"[^\w]*[^\W\d_]+(?:['’-][^\W\d_]+)*[^\w]*", re.UNICODE)
_SENTENCE = re.compile(r"(?:^|[.!:;\n]\s+)(?=\S)")
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")

META = re.compile(
    r"\b(marked (?:key )?(?:words?|phrases?)|(?:its|the theme's) key words?|key words? verbatim|(?:its|the) central theme|the theme (?:more )?central|the theme as it is|snippets?|(?:this|the|a|new|another|similar|same) (?:sample|example)s?|"
    r"without them|contains? them|same style|reply format|leave (?:that|it|them) out of it|(?:the )?instructions? above|above instructions?|"
    r"(?:my|your) (?:next|previous|last) (?:response|reply|answer)|this formatting)\b",
    re.IGNORECASE,
)
"""Words of the generator's instructions: a candidate that uses them talks about the task
instead of being a sample (a small generator writes "A new sample without the marked words")."""

PLACEHOLDER = re.compile(
    r"[{\[<]\s*(?:placeholder|(?:your|insert|enter|add|put)\s+\w[^{}\[\]<>\n]{0,40})\s*[}\]>]|"
    r"\[\s*(?:(?:new|another|other|specific|some|the|a|an)\s+)?(?:key\s*words?|theme|subject|topic|feature|phrase|word|string|text|sample|example|name|noun|verb|adjective|"
    r"thing|item|product|place|person|number|date|x|y)[\s_-]*\d*\s*\]|"
    r"\{\{[^{}\n]{0,40}\}\}",
    re.IGNORECASE,
)
"""A slot left to fill ("{your suggested replacement}", "[Insert company name]", "[keyword]",
"[key word 1]", "[theme]", "[new item]", "{{<string>}}"): a template, not a sample. Code
such as ``arr[i]``, ``d[key_name]``, ``f"{name}"`` or ``{your_var}``, and a key such as
"[Enter]", do not match."""

PROMPT_MARKUP = re.compile(r"<<|>>|\{\s*\d+(?:\.\d+)?\s*\}")
"""Markup of the generator's prompt copied into a candidate: the ``<<peak>>`` marks of a
snippet, or an activation score in braces ("{1.25} How much sleep ... {3.75}")."""

_MARKED = re.compile(r"<<([^<>\n]{1,80}?)>>")


def unmark(text: str) -> str:
    """``text`` without the ``<<key words>>`` marks a writer copied from the prompt, where they
    only wrap words inside the sample ("It's <<unfair>> and I feel <<frustrated>>." -> "It's
    unfair and I feel frustrated."): the writer mimicked the snippets' markup, and the words
    read as a sentence without it. Left as it is (so the text check refuses it) when a mark
    is glued to a word ("happy<<emotion>>"), dangles after the last sentence ("outside.
    <<hail>>"), holds no word, or a mark is left unpaired."""
    parts: list[str] = []
    end = 0
    for m in _MARKED.finditer(text):
        inner = m.group(1)
        before, after = text[: m.start()], text[m.end() :]
        if not re.search(r"\w", inner):
            return text
        if before[-1:].isalnum() and inner[:1].isalnum():  # glued on the left
            return text
        if after[:1].isalnum() and inner[-1:].isalnum():  # glued on the right
            return text
        if not re.search(r"\w", after) and re.search(r"[.!?]\s*$", before):  # a key word appended after the text
            return text
        parts += [text[end : m.start()], inner]
        end = m.end()
    if not parts:
        return text
    out = "".join(parts) + text[end:]
    if "<<" in out or ">>" in out:
        return text
    return re.sub(r"\s+([,.!?;:])", r"\1", re.sub(r"[ \t]{2,}", " ", out)).strip()


_REQUEST_FIRST = re.compile(
    r"\W*(?:(?:hi|hello|hey|ok|okay|so|now|also|quick question)\W+)?(?:please\W+)?"
    r"(?:(?:what|how|why|when|where|which|who|whom|whose)\s+(?:is|are|was|were|do|does|did|can|could|would|will|"
    r"should|shall|may|might|must|has|have|had|to|much|many|long|often|far|old|big|kind|type|sort|if|about|early|"
    r"late|soon|exactly|well)|who\s+\w+|"
    r"what's|how's|who's|where's|why's|is|are|can|could|would|will|should|shall|do|does|did|"
    r"explain|write|describe|list|give|tell|show|help|create|make|plan|suggest|recommend|compare|summarize|summarise|"
    r"translate|draft|generate|design|outline|find|calculate|compute|solve|convert|rewrite|edit|fix|correct|pretend|"
    r"imagine|act|suppose|assume|teach|name|define|provide|share|brainstorm|compose|prepare|analyze|analyse|classify|"
    r"identify|evaluate|estimate|predict|review|check|propose|build|implement|rank|sort|walk|break|turn|use|debug|"
    r"balance|return|refactor|optimize|optimise|simplify|shorten|expand|paraphrase|proofread|format|organize|organise|schedule|"
    r"recommend|advise|critique|rate|choose|pick|decide|argue|defend|sketch|illustrate|convince|persuade|remind|"
    r"i\s+need|i\s+want|i'd\s+like|i\s+would\s+like|i'm\s+looking\s+for|i\s+am\s+looking\s+for|"
    r"prove|critique|derive|show\s+that)\b",
    re.IGNORECASE,
)
_REQUEST_ANY = re.compile(
    r"\?|\b(?:can|could|would|will) you\b|\bplease\b|\bhelp me\b|\bi(?:'d| would) like (?:you|to know|to learn)\b|"
    r"\bi want (?:you|to know|to learn|to understand)\b|\btell me\b|\bshow me\b|\bgive me\b|\bwalk me\b|"
    r"\bhow (?:do|can|should|would) i\b|\bany (?:tips|ideas|advice|suggestions)\b",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------- text checks


@dataclass(frozen=True)
class Problem:
    """Why a candidate is no usable sample: a code of :data:`REASONS` and a one-line message."""

    code: str
    message: str


def normalize_text(text: str) -> str:
    """Case-folded, NFKC, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


REPEAT_MIN = 6
"""A text of this many words or more that is one word repeated ("@an @an @an ...") is no sample."""


def text_problem(sample: Sample, *, min_words: int, echoes: Iterable[str] = ()) -> Problem | None:
    """The text checks (no model): too few words, one word repeated, a text that only repeats
    a reply key or schema name (a small generator writes ``ContrastivePair`` where a sample
    belongs), one that talks about the instructions (:data:`META`), one that leaves a slot to
    fill (:data:`PLACEHOLDER`), one that speaks as an AI model (:data:`AI_SELF`). None when it
    passes them. (Copies of the task's texts: :class:`CopyIndex`.)"""
    text = sample.plain_text
    found = _WORD.findall(text)
    words = len(found)
    if words < min_words:
        return Problem("too_short", f"too short: {words} word(s), needs at least {min_words}")
    distinct = {w.lower() for w in found}
    if words >= REPEAT_MIN and len(distinct) == 1:
        return Problem("not_fluent", f"not fluent: one word, {next(iter(distinct))!r}, repeated {words} times")
    norm = normalize_text(text.replace("_", " "))
    for echo in echoes:
        if norm == normalize_text(echo.replace("_", " ")):
            return Problem("echoes_format", f"repeats the reply format ({echo!r}) instead of writing a sample")
        if "_" in echo:  # a field name of the reply as a key inside the text: the JSON leaked into the sample
            key = re.search(rf"\b{re.escape(echo)}(?:_label)?\b\W{{0,2}}:", text)
            if key:
                return Problem("echoes_format", f"repeats the reply format ({key.group(0)!r}) inside the sample")
    meta = META.search(text)
    if meta:
        return Problem("about_instructions", f"talks about the instructions ({meta.group(0)!r}) instead of being a sample")
    markup = PROMPT_MARKUP.search(text)
    if markup:
        return Problem("about_instructions", f"copies the prompt's markup ({markup.group(0)!r}) instead of writing a sample")
    slot = PLACEHOLDER.search(text)
    if slot:
        return Problem("placeholder", f"leaves a placeholder ({slot.group(0)!r}) instead of writing it out")
    ai = AI_SELF.search(text)
    if ai:
        return Problem("assistant_voice", f"speaks as an AI model ({ai.group(0)!r}) instead of being a sample")
    return None


AI_SELF = re.compile(
    r"\bas an? (?:ai|artificial intelligence)(?: (?:language )?model| assistant| chatbot)?\s*,|"
    r"\bas an? (?:large )?language model\b|\bi(?:'m|’m| am) (?:just |only )?an? (?:ai|artificial intelligence|"
    r"(?:large )?language model)\b(?! researcher| engineer| student| developer| scientist)",
    re.IGNORECASE,
)
"""A text that speaks as an AI model ("As an AI language model, I don't have feelings"): no
sample of any task (a tweet, a review, a user's request) is written by one. "As an AI
researcher, ..." does not match."""

_COPY_WORD = re.compile(r"\w+(?:['’]\w+)*", re.UNICODE)
COPY_GRAM = 5
"""Word n-grams of the task's texts that :class:`CopyIndex` looks up."""
COPY_RUN = 8
"""A candidate that repeats this many words in a row of a seed or anchor text copies it."""
COPY_SHARE = 0.6
"""... and so does one of whose words at least this share is one run of :data:`COPY_GRAM`+ copied words."""


def _copy_words(text: str) -> list[str]:
    return _COPY_WORD.findall(unicodedata.normalize("NFKC", text).casefold().replace("’", "'"))


class CopyIndex:
    """The word 5-grams of the task's own texts (the seed and the anchor). A candidate that
    repeats a run of their words (:data:`COPY_RUN` in a row, or a run that is most of it:
    :data:`COPY_SHARE`) is no new sample: a writer shown snippets or examples copies them
    ("in the world and I'll eat ice cream out of the", cut from an anchor tweet), and such a
    text fires the anchor's features because it is the anchor's text. Case, punctuation and
    spacing are ignored."""

    def __init__(self, texts: Iterable[tuple[str, str]] = ()) -> None:
        self._grams: dict[tuple[str, ...], str] = {}
        for name, text in texts:
            self.add(name, text)

    def __len__(self) -> int:
        return len(self._grams)

    def add(self, name: str, text: str) -> None:
        words = _copy_words(text)
        for i in range(len(words) - COPY_GRAM + 1):
            self._grams.setdefault(tuple(words[i : i + COPY_GRAM]), name)

    def longest(self, text: str) -> tuple[int, str | None, str]:
        """(words in the longest copied run, the text it starts in, the run) of ``text``."""
        words = _copy_words(text)
        best, best_at, best_name = 0, 0, None
        run, run_name = 0, None
        for i in range(len(words) - COPY_GRAM + 1):
            name = self._grams.get(tuple(words[i : i + COPY_GRAM]))
            run, run_name = (run + 1, run_name if run else name) if name is not None else (0, None)
            if run and run + COPY_GRAM - 1 > best:
                best, best_at, best_name = run + COPY_GRAM - 1, i - run + 1, run_name
        return best, best_name, " ".join(words[best_at : best_at + best])

    def problem(self, text: str) -> Problem | None:
        """Why ``text`` copies a task text (None when it does not)."""
        n, name, run = self.longest(text)
        total = len(_copy_words(text))
        if n >= COPY_RUN or (n >= COPY_GRAM and n >= COPY_SHARE * total):
            shown = run if len(run) <= 60 else run[:57] + "..."
            return Problem("copies_task_text", f"copies {n} of its {total} words in a row from {name} ({shown!r})")
        return None


ASSISTANT_VOICE = re.compile(
    r"\W*(?:(?:i'm|i am) sorry,? (?:but )?i (?:can't|cannot|can not|am unable|won't|am not able|don't|do not)|i apologi[sz]e|"
    r"as an ai\b|(?:sure|certainly|of course|absolutely)\s*[!,.]\s*(?:here(?:'s| is| are)|below is|i(?:'d| would| can| will)))",
    re.IGNORECASE,
)
"""The opening of an assistant's reply (a refusal, "As an AI ...", "Sure! Here is ..."):
such a text is no user message, even when it ends with a question."""


def is_request(text: str) -> bool:
    """A request or question a user would send an assistant (cheap signals): a question
    mark, a sentence that starts with a request verb or a question ("how do", "what is"; not
    "When we are faced with ..."), or a request phrase ("can you", "help me"); never a text
    that opens as an assistant's reply (:data:`ASSISTANT_VOICE`)."""
    text = text.strip()
    if ASSISTANT_VOICE.match(text):
        return False
    if _REQUEST_ANY.search(text):
        return True
    return any(_REQUEST_FIRST.match(text, m.end()) for m in _SENTENCE.finditer(text))


def word_share(text: str) -> float:
    """Share of the whitespace-separated pieces of ``text`` that are words (letters only,
    with punctuation around them): low for chord charts, version strings and code dumps."""
    pieces = text.split()
    return sum(bool(_LETTERS.fullmatch(p)) for p in pieces) / len(pieces) if pieces else 0.0


# --------------------------------------------------------------------------- model signals


@dataclass(frozen=True)
class Signals:
    """What the checks read of one sample."""

    loss: float
    """Mean negative log-likelihood of its content tokens under the subject model (nats/token)."""
    distance: float
    """Cosine distance of its pooled hidden state to its nearest anchor samples (centred)."""
    request: bool
    words: float = 1.0
    """:func:`word_share` of its text."""
    end: float = float("nan")
    """Log-probability the subject model gives the end of the turn right after the text (nan:
    not read, or the model's template has no end token there): low for a text cut off
    mid-sentence ("I may have accidentally"), which per-token loss does not catch."""

    def as_dict(self) -> dict[str, float | bool]:
        out: dict[str, float | bool] = {"loss": round(self.loss, 4), "words": round(self.words, 4),
                                        "distance": round(self.distance, 4), "request": self.request}
        if np.isfinite(self.end):
            out["end"] = round(self.end, 4)
        return out


_LOSSES: weakref.WeakKeyDictionary[FeatureEncoder, dict[str, tuple[float, float]]] = weakref.WeakKeyDictionary()
"""(loss, end) already computed, per encoder and sample hash (a run's anchor is read once per process)."""


def content_losses(encoder: FeatureEncoder, samples: Sequence[Sample]) -> np.ndarray:
    """Mean per-token loss of each sample's content tokens: a full forward to the logits.

    Rendered and tokenized as the encoder reads it (chat template, content tokens only;
    each content token is predicted from everything before it, the template included).
    Only the content positions go through the LM head, so memory stays small.
    """
    return _read_losses(encoder, samples)[:, 0]


def end_logprobs(encoder: FeatureEncoder, samples: Sequence[Sample]) -> np.ndarray:
    """Log-probability of the template token right after each sample's content (the end of
    the turn) under the subject model, from the same forward as :func:`content_losses`; nan
    where the template puts no token there."""
    return _read_losses(encoder, samples)[:, 1]


def _read_losses(encoder: FeatureEncoder, samples: Sequence[Sample]) -> np.ndarray:
    known = _LOSSES.setdefault(encoder, {})
    todo = list({s.sample_hash: s for s in samples if s.sample_hash not in known}.values())
    if todo:
        for s, row in zip(todo, _forward_losses(encoder, todo)):
            known[s.sample_hash] = (float(row[0]), float(row[1]))
    return np.array([known[s.sample_hash] for s in samples], dtype=np.float64).reshape(len(samples), 2)


def _forward_losses(encoder: FeatureEncoder, samples: Sequence[Sample]) -> np.ndarray:
    import torch

    toks = [encoder.tokenize(s) for s in samples]
    model = encoder.subject.model
    device = encoder.subject.device
    base = getattr(model, model.base_model_prefix, model)
    head = model.get_output_embeddings()
    out = np.full((len(toks), 2), np.nan, dtype=np.float64)  # (mean content loss, end log-prob)
    with torch.inference_mode():
        for idx in encoder.batches(toks):
            batch = [toks[i] for i in idx]
            width = max(len(t.input_ids) for t in batch)
            ids = torch.full((len(batch), width), encoder._pad_id, dtype=torch.long)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            for row, t in enumerate(batch):
                ids[row, : len(t.input_ids)] = torch.tensor(t.input_ids)
                attn[row, : len(t.input_ids)] = 1
            hidden = base(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False).last_hidden_state
            for row, (i, t) in enumerate(zip(idx, batch)):
                pos = [p for p in range(1, len(t.input_ids)) if t.content[p]]  # a token predicted from the ones before
                if not pos:
                    continue
                end = pos[-1] + 1  # the template's token after the content: the end of the turn
                at = torch.tensor(pos + ([end] if end < len(t.input_ids) else []), device=hidden.device)
                logits = head(hidden[row, at - 1]).float()
                nll = torch.nn.functional.cross_entropy(logits[: len(pos)], ids[row, pos].to(hidden.device), reduction="mean")
                out[i, 0] = float(nll)
                if end < len(t.input_ids):
                    out[i, 1] = float(logits[-1].log_softmax(-1)[int(t.input_ids[end])])
    return out


class TopicIndex:
    """The anchor's pooled hidden states, centred on their mean and L2-normalized."""

    def __init__(self, pooled: np.ndarray, k: int = 3) -> None:
        pooled = np.asarray(pooled, dtype=np.float32)
        if pooled.ndim != 2 or len(pooled) < 2:
            raise ValueError("a topic index needs the pooled states of at least two samples")
        self.mean = pooled.mean(axis=0)
        self.rows = self._unit(pooled)
        self.k = max(1, min(int(k), len(pooled) - 1))

    def _unit(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=np.float32)) - self.mean
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(n > 0, n, 1.0)

    def distances(self, pooled: np.ndarray) -> np.ndarray:
        """1 - mean cosine to the ``k`` nearest anchor samples, per row of ``pooled``."""
        sims = self._unit(pooled) @ self.rows.T
        top = -np.sort(-sims, axis=1)[:, : self.k]
        return 1.0 - top.mean(axis=1)

    def self_distances(self) -> np.ndarray:
        """:meth:`distances` of the anchor's own samples, each left out of its neighbours."""
        sims = self.rows @ self.rows.T
        np.fill_diagonal(sims, -np.inf)
        top = -np.sort(-sims, axis=1)[:, : self.k]
        return 1.0 - top.mean(axis=1)


def read_signals(
    encoder: FeatureEncoder, samples: Sequence[Sample], pooled: Sequence[np.ndarray], index: TopicIndex,
    *, distances: np.ndarray | None = None,
) -> list[Signals]:
    """The signals of ``samples`` (their ``pooled`` states as the encoder read them);
    ``distances`` given (the anchor's leave-one-out ones) replace the index's."""
    if not samples:
        return []
    read = _read_losses(encoder, samples)
    dist = index.distances(np.stack(pooled)) if distances is None else distances
    return [
        Signals(float(loss), float(d), is_request(s.plain_text), word_share(s.plain_text), float(end))
        for s, (loss, end), d in zip(samples, read, dist)
    ]


# --------------------------------------------------------------------------- the label check


class LabelProbe(BaseModel):
    """A logistic regression from pooled hidden states to the task's labels, fitted on the
    anchor and stored (weights included) in the run's setup, so a resumed run checks labels
    with the same numbers."""

    labels: list[str]
    """The classes, in the order of the weights (binary: the second is the positive one)."""
    mean: list[float]
    scale: list[float]
    coef: list[list[float]]
    intercept: list[float]
    min_prob: float
    """The probability of its own label a candidate needs."""
    cv_accuracy: float
    """Accuracy of the probe on the anchor, cross-validated."""
    anchor_pass: float
    """Share of the anchor whose own label passes (cross-validated)."""
    n: int

    def probs(self, pooled: np.ndarray) -> np.ndarray:
        """Class probabilities, one row per pooled state, columns in :attr:`labels` order."""
        x = (np.atleast_2d(np.asarray(pooled, dtype=np.float64)) - np.asarray(self.mean)) / np.asarray(self.scale)
        z = x @ np.asarray(self.coef).T + np.asarray(self.intercept)
        if z.shape[1] == 1:  # binary: one logit for the second class
            z = np.hstack([np.zeros_like(z), z])
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def prob_of(self, pooled: np.ndarray, label: str | None) -> float:
        """The probability of ``label`` (0 for a label the probe does not know)."""
        key = _label_key(label)
        keys = [_label_key(x) for x in self.labels]
        if key not in keys:
            return 0.0
        return float(self.probs(pooled)[0, keys.index(key)])


def _label_key(label: object) -> str:
    return str(label).strip().casefold() if label is not None else ""


LABEL_MIN_PER_CLASS = 3
"""Anchor samples each label needs before the label check applies."""


def fit_label_probe(pooled: np.ndarray, labels: Sequence[object], *, pass_rate: float, seed: int = 0) -> LabelProbe | None:
    """The label check fitted on ``pooled``/``labels`` (the anchor), or None when it has fewer
    than two labels with :data:`LABEL_MIN_PER_CLASS` samples each (rows without a label are left out)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    keep = [i for i, lab in enumerate(labels) if _label_key(lab)]
    y_text = [str(labels[i]).strip() for i in keep]
    classes = sorted({_label_key(v) for v in y_text})
    counts = {c: sum(_label_key(v) == c for v in y_text) for c in classes}
    if len(classes) < 2 or min(counts.values()) < LABEL_MIN_PER_CLASS:
        return None
    spelled = {_label_key(v): v for v in y_text}
    y = np.array([classes.index(_label_key(v)) for v in y_text])
    x = np.asarray(pooled, dtype=np.float64)[keep]
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    xs = (x - mean) / scale
    clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000)
    folds = StratifiedKFold(n_splits=min(5, min(counts.values())), shuffle=True, random_state=seed)
    cv = cross_val_predict(clf, xs, y, cv=folds, method="predict_proba")
    own = cv[np.arange(y.size), y]
    min_prob = round(float(min(0.5, np.quantile(own, 1.0 - pass_rate))), 4)
    clf.fit(xs, y)
    return LabelProbe(
        labels=[spelled[c] for c in classes], mean=mean.tolist(), scale=scale.tolist(), coef=clf.coef_.tolist(),
        intercept=clf.intercept_.tolist(), min_prob=min_prob, cv_accuracy=round(float((cv.argmax(axis=1) == y).mean()), 4),
        anchor_pass=round(float((own >= min_prob).mean()), 4), n=int(y.size),
    )


def label_problem(pooled: np.ndarray, label: str | None, probe: LabelProbe) -> tuple[Problem | None, float]:
    """Whether ``label`` is a wrong label for a text read as ``pooled`` (pure), with its probability."""
    p = probe.prob_of(pooled, label)
    if p >= probe.min_prob:
        return None, p
    if _label_key(label) not in {_label_key(x) for x in probe.labels}:
        return Problem("wrong_label", f"label {label!r} is none of {', '.join(probe.labels)}"), p
    return Problem("wrong_label", f"label {label!r} looks wrong: the anchor-trained probe gives it {p:.2f} "
                                  f"(needs {probe.min_prob:.2f})"), p


# --------------------------------------------------------------------------- calibration


class Calibration(BaseModel):
    """The thresholds of a run, calibrated once on its anchor and stored in its setup."""

    pass_rate: float = Field(gt=0.0, le=1.0)
    """Share of the calibration corpus the model checks let through together."""
    quantile: float
    """The corpus quantile each threshold sits at (``>= pass_rate``)."""
    max_loss: float
    min_words: float
    max_distance: float
    min_end: float | None = None
    """Lowest end-of-turn log-probability (:attr:`Signals.end`) that passes (None: the check is
    off: a run calibrated before it existed, or a model whose template has no end token)."""
    k: int
    request_check: bool
    """On when the calibration corpus is made of requests (at least :data:`REQUEST_MIN` of it passes)."""
    corpus: Literal["anchor", "seed"]
    n: int
    anchor: dict[str, float] = Field(default_factory=dict)
    """Share of the anchor passing each check (and ``all``), the distance read leave-one-out."""
    seed: dict[str, float] = Field(default_factory=dict)
    """The same for the seed."""
    label: LabelProbe | None = None
    """The label check of a labelled task (None: no label check)."""

    @field_validator("max_loss", "min_words", "max_distance")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not np.isfinite(v):
            raise ValueError("a calibrated threshold must be finite")
        return float(v)



def _thresholds(signals: Sequence[Signals], q: float) -> tuple[float, float, float, float | None]:
    loss = np.array([s.loss for s in signals if np.isfinite(s.loss)])
    words = np.array([s.words for s in signals])
    dist = np.array([s.distance for s in signals])
    ends = np.array([s.end for s in signals if np.isfinite(s.end)])
    min_end = round(float(np.quantile(ends, 1.0 - q)), 4) if len(ends) >= max(2, len(signals) // 2) else None
    return (round(float(np.quantile(loss, q)), 4), round(float(np.quantile(words, 1.0 - q)), 4),
            round(float(np.quantile(dist, q)), 4), min_end)


def calibrate(signals: Sequence[Signals], *, pass_rate: float, k: int, corpus: Literal["anchor", "seed"]) -> Calibration:
    """Thresholds that ``pass_rate`` of ``signals`` (the calibration corpus) pass, every check
    together (pure): the smallest quantile ``q >= pass_rate`` that lets that many through."""
    if not signals:
        raise ValueError("nothing to calibrate on")
    requests = float(np.mean([s.request for s in signals]))
    request_check = requests >= REQUEST_MIN
    cal = None
    for q in np.linspace(pass_rate, 1.0, 81):
        max_loss, min_words, max_distance, min_end = _thresholds(signals, float(q))
        cal = Calibration(
            pass_rate=pass_rate, quantile=round(float(q), 4), max_loss=max_loss, min_words=min_words,
            max_distance=max_distance, min_end=min_end, k=k, request_check=request_check, corpus=corpus, n=len(signals),
        )
        if np.mean([not failed_checks(s, cal) for s in signals]) >= pass_rate:
            break
    assert cal is not None
    return cal


TOPIC_K = 3
"""Anchor neighbours a candidate's topic distance is read against."""


def _pooled(reader: Reader, data: Dataset) -> tuple[list[Sample], list[np.ndarray]]:
    samples, pooled = [], []
    for s, (sf, _) in zip(data, reader.read(data)):
        samples.append(s)
        pooled.append(sf.pooled if sf.pooled is not None else reader.encoder.encode_one(s).pooled)
    return samples, pooled


def calibrate_on(reader: Reader, anchor: Dataset | None, seed: Dataset, *, pass_rate: float, k: int = TOPIC_K,
                 labelled: bool = False) -> Calibration:
    """Calibrate the model checks on the anchor (the seed without one) and measure the share
    of the anchor and the seed passing each, with the same reader the run verifies with.
    ``labelled``: the task's samples carry a label; fit the label check on the corpus's labels."""
    corpus, kind = (anchor, "anchor") if anchor is not None else (seed, "seed")
    samples, pooled = _pooled(reader, corpus)
    index = TopicIndex(np.stack(pooled), k=k)
    own = read_signals(reader.encoder, samples, pooled, index, distances=index.self_distances())
    cal = calibrate(own, pass_rate=pass_rate, k=index.k, corpus=kind)  # type: ignore[arg-type]
    if labelled:
        cal.label = fit_label_probe(np.stack(pooled), [s.meta.get("label") for s in samples], pass_rate=pass_rate)
    if anchor is not None:
        cal.anchor = pass_rates(own, cal)
        seed_samples, seed_pooled = _pooled(reader, seed)
        cal.seed = pass_rates(read_signals(reader.encoder, seed_samples, seed_pooled, index), cal)
    else:
        cal.seed = pass_rates(own, cal)
    return cal


def failed_checks(s: Signals, cal: Calibration) -> list[str]:
    """The model checks ``s`` fails, in :data:`CHECKS` order (pure)."""
    failed = []
    if not s.loss <= cal.max_loss or s.words < cal.min_words:  # a NaN loss (nothing to predict) fails
        failed.append("fluent")
    if cal.min_end is not None and s.end < cal.min_end:  # nan (not read) passes
        failed.append("finished")
    if s.distance > cal.max_distance:
        failed.append("on_topic")
    if cal.request_check and not s.request:
        failed.append("request")
    return failed


_CHECK_CODE = {"fluent": "not_fluent", "finished": "unfinished", "on_topic": "off_topic", "request": "not_a_request"}


def model_problem(s: Signals, cal: Calibration) -> Problem | None:
    """The first model check ``s`` fails, as a :class:`Problem` (pure)."""
    failed = failed_checks(s, cal)
    if not failed:
        return None
    check = failed[0]
    if check == "fluent" and s.words < cal.min_words:
        return Problem("not_fluent", f"not fluent: {s.words:.0%} of it is words, the anchor's range starts at {cal.min_words:.0%}")
    if check == "fluent":
        return Problem("not_fluent", f"not fluent: model loss {s.loss:.2f} > {cal.max_loss:.2f}, the anchor's range")
    if check == "finished":
        return Problem("unfinished", f"unfinished: it stops mid-sentence (log-probability of ending there {s.end:.1f} "
                                     f"< {cal.min_end:.1f}, the anchor's range)")
    if check == "on_topic":
        return Problem("off_topic", f"off topic: distance to the anchor {s.distance:.3f} > {cal.max_distance:.3f}")
    return Problem("not_a_request", "not a request a user would send an assistant (no question, no request verb)")


def pass_rates(signals: Sequence[Signals], cal: Calibration) -> dict[str, float]:
    """Share of ``signals`` passing each model check, and all of them (pure)."""
    if not signals:
        return {}
    fails = [failed_checks(s, cal) for s in signals]
    out = {c: round(float(np.mean([c not in f for f in fails])), 4) for c in CHECKS}
    if not cal.request_check:
        out["request"] = round(float(np.mean([s.request for s in signals])), 4)  # shown, not applied
    out["all"] = round(float(np.mean([not f for f in fails])), 4)
    return out


# --------------------------------------------------------------------------- the optional LLM judge


class JudgeReply(BaseModel):
    """The quality judge's answer: a reason, then Yes or No."""

    reason: str = Field(min_length=1, max_length=400, description="One short sentence.")
    verdict: Literal["Yes", "No"]


JUDGE_SYSTEM = "You check training data for an AI assistant. Reply with JSON only."


def judge_messages(text: str, *, definition: str, sample_format: str) -> list[tuple[str, str]]:
    """The judge's prompt for one candidate."""
    user = (
        f"Task: {definition}\nSample format: {sample_format}\n\nCandidate:\n\"\"\"\n{text}\n\"\"\"\n\n"
        "Is the candidate a fluent, self-contained sample in this format, on this task, that a real user "
        "would send to an AI assistant? Gibberish, lists of codes or symbols, statements that ask for nothing, "
        "and remarks about instructions or formatting are No.\n"
        'Reply with a JSON object: "reason": one short sentence; "verdict": "Yes" or "No".'
    )
    return [("system", JUDGE_SYSTEM), ("user", user)]
