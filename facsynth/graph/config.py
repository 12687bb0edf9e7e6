"""What a synthesis run is asked to do: one pydantic model, stored with the run.

The CLI's ``facsynth run`` options map one to one onto :class:`RunConfig` fields. The
model holds no secret (an API key stays in the environment variable that
:class:`~facsynth.agent.config.LLMConfig` names), so it is stored and shown as it is.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from facsynth.agent.config import LLMConfig

Strategy = Literal["agent", "paper", "unguided"]
STRATEGIES: tuple[str, ...] = ("agent", "paper", "unguided")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Budget(BaseModel):
    """When a run must stop spending; None: no limit of that kind.

    Each field is one option of ``facsynth run`` and ``facsynth resume`` (``--budget-calls``,
    ...: :mod:`facsynth.cli.from_config`), with the first sentence of its docstring as help."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    calls: int | None = Field(None, ge=1)
    """Stop after this many generator LLM calls (cache hits are free and not counted)."""
    tokens: int | None = Field(None, ge=1)
    """Stop after this many LLM tokens (in + out) of the generator calls."""
    seconds: float | None = Field(None, gt=0)
    """Stop after this much synthesis wall time, in seconds, summed over every session of the run."""


class RunConfig(BaseModel):
    """A synthesis run: data, task, target, budget and how candidates are judged.

    Each field is one option of ``facsynth run`` (:mod:`facsynth.cli.from_config`), with this
    default and the first sentence of its docstring as help; ``budget`` and ``llm`` have
    their own options."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    task: str
    """Task: a preset (toxicity, instruction-following, helpfulness, sycophancy,
    survival-instinct, sms-spam, tweet-sentiment) or one from the tasks file. It gives the sample format
    and, where the store has them, the relevant features."""
    seed: str
    """The data whose gaps are filled (JSONL, CSV/TSV, text, HF dataset dir: any format
    ``facsynth measure`` reads)."""
    anchor: str | None = None
    """Corpus of the task's domain: F = relevant features active on it."""
    tasks_file: str | None = None
    """TOML or YAML file of task definitions."""
    target_fac: float = Field(0.9, gt=0.0, le=1.0)
    """Stop when FAC over F reaches this."""
    budget: Budget = Field(default_factory=Budget)
    """When to stop spending (``--budget-calls``, ``--budget-tokens``, ``--budget-seconds``)."""
    strategy: Strategy = "agent"
    """How candidates are written: agent (feedback, retries), paper (the authors' fixed two
    steps) or unguided (new samples from seed examples, no features: the baseline).

    ``agent``: feedback, retries, skips what is covered; ``paper``: the authors' fixed
    two-step pipeline (2 samples per feature, then 2 with the pair; no feedback, no retry);
    ``unguided``: the baseline users would otherwise pick, self-instruct style: each call
    writes 2 new samples from a few seed examples, no features, no target check (the
    quality rule and duplicates still apply)."""
    max_attempts: int = Field(4, ge=1, le=32)
    """Generator calls per feature before it is marked exhausted (agent strategy)."""
    batch: int = Field(2, ge=1, le=64)
    """Features worked on at once (their generator calls run concurrently)."""
    max_features: int | None = Field(None, ge=1)
    """Target only the N highest-priority missing features (a small, quick run)."""
    delta: float | None = None
    """Activation above which a feature is active (default: the SAE's recommended delta)."""
    threshold: float | None = None
    """Acceptance threshold of the target's activation (default: delta). A positive is
    accepted above it, a negative below it."""
    negative_min_new: int = Field(3, ge=0, le=1000)
    """An accepted negative joins the data when it covers at least this many missing features
    nothing covers yet (0: negatives are contrast only, never data)."""
    label_pairs: bool = False
    """On a labelled task, write each contrastive pair across the label boundary (agent): the
    positive with the label whose anchor samples carry the target, the contrast sample with
    the other (off: the writer picks both labels). A usable contrast sample with the other
    label joins the data whatever it covers (``negative_min_new`` does not apply to it), so
    the pair reaches the data whole. Measured on tweets (README)."""
    fac_by_label: bool | None = None
    """On a labelled task, count a feature of F as covered only by a sample with the label
    it marks on the anchor (a cue of negative tweets fired by a positive tweet teaches a
    classifier nothing about negatives); features that mark no label count by any sample.
    The seed's missing list, every credit and the run's FAC follow this reading, and the
    agent's prompt names the label (as with ``label_pairs``). Measured on real tweets, it is
    the reading of FAC that tracks the downstream gain (README, bench/reading.py). Default:
    on where it can be read (a labelled task, a seed and an anchor with its labels, two of
    them on the anchor), by any sample otherwise; the run stores what it chose. On: one
    clear error where it cannot be read."""
    min_words: int = Field(4, ge=1, le=200)
    """A candidate with fewer words is rejected before its activations count."""
    near_duplicate_cosine: float = Field(0.95, gt=0.0, le=1.0)
    """A candidate whose SAE feature vector has at least this cosine with an accepted or seed
    sample is a near duplicate and is rejected."""
    quality: bool = True
    """Reject candidates that are no usable sample of the task whatever they fire: not fluent,
    off the anchor's topic, not a request (thresholds calibrated on the anchor). Off: only the
    text checks apply (:mod:`facsynth.tools.quality`)."""
    quality_pass: float = Field(0.95, ge=0.5, le=1.0)
    """Share of the anchor each model check lets through: the calibration quantile."""
    quality_judge: bool = False
    """Also ask the generator's LLM whether each candidate the checks accept is a usable sample
    (Yes/No with a reason); a reply that does not parse leaves the decision to the checks.
    Judge calls are LLM calls of the run (they count against the call budget)."""
    review: bool = False
    """Stop before accepting each batch until you approve, deny or edit it in `facsynth chat RUN`."""
    model: str | None = None
    """Subject model (default: bundled SmolLM2-135M-Instruct)."""
    sae: str | None = None
    """SAE (default: the shipped SAE)."""
    layer: int | None = None
    """Decoder block read (default: the SAE's)."""
    llm: LLMConfig = Field(default_factory=lambda: LLMConfig(temperature=0.8, top_p=0.9, max_tokens=320))
    """The generator's endpoint and sampling (the paper: temperature 0.8, top_p 0.9)."""

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.threshold is not None and self.delta is not None and self.threshold < self.delta:
            raise ValueError(
                f"threshold ({self.threshold}) is below delta ({self.delta}): an accepted positive would not count as active"
            )
        return self


def check_run_name(name: str) -> str:
    if not RUN_NAME.match(name):
        raise ValueError(f"run name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name
