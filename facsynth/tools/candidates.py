"""The verifier tool: reads candidates through the model and SAE, and spots duplicates.

:class:`Verifier` is the tool the synthesis graph's verifier node calls. For a target
feature it returns, per candidate, the activation the target reached (max over content
tokens, as FAC reads it), the span of tokens ending at the target's peak, and every
feature the candidate fires above the measuring delta. :class:`DuplicateIndex` rejects
exact copies (a hash of the normalized text) and near copies (cosine of the sparse SAE
feature vectors at or above a cut, or most of a kept sample's words in a row, as the
copy check of :class:`facsynth.tools.quality.CopyIndex` counts them): coverage is not
bought with copies. Whether a candidate is a usable sample at all is the rule of
:mod:`facsynth.tools.quality`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facsynth.records import SampleFeatures
from facsynth.tools.datasets import Sample
from facsynth.tools.encoder import FeatureEncoder
from facsynth.tools.quality import CopyIndex, normalize_text


def text_hash(sample: Sample) -> str:
    """sha256 of the normalized text of every message (roles included for chats)."""
    if sample.text is not None:
        norm = normalize_text(sample.text)
    else:
        norm = "\n".join(f"{m.role}: {normalize_text(m.content)}" for m in sample.as_messages)
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()


@dataclass
class Reading:
    """One candidate read for one target feature."""

    features: SampleFeatures
    target_act: float
    span: dict[str, object] | None
    """``{"tokens": [...], "acts": [...]}``: up to ``window`` tokens ending at the target's peak."""

    def fires(self, delta: float) -> np.ndarray:
        return self.features.active(delta)


class DuplicateIndex:
    """Normalized-text hashes and L2-normalized sparse feature vectors of kept samples."""

    def __init__(self, d_sae: int, cosine_cut: float) -> None:
        self.d_sae = d_sae
        self.cosine_cut = cosine_cut
        self.hashes: dict[str, str] = {}
        self._rows: list[np.ndarray] = []
        self._names: list[str] = []
        self._matrix: np.ndarray | None = None
        self._words = CopyIndex()

    def __len__(self) -> int:
        return len(self._names)

    def vector(self, sf: SampleFeatures) -> np.ndarray:
        v = np.zeros(self.d_sae, dtype=np.float32)
        v[sf.feature_ids] = sf.max_acts
        n = float(np.linalg.norm(v))
        return v / n if n > 0 else v

    def add(self, name: str, hash_: str, sf: SampleFeatures, text: str | None = None) -> None:
        """Keep a sample; with its ``text``, a candidate that repeats most of it in a row (a
        tweet with a hashtag added, a request with one clause less) is a near duplicate too,
        whatever its features."""
        self.hashes.setdefault(hash_, name)
        if text is not None:
            self._words.add(name, text)
        self._rows.append(self.vector(sf))
        self._names.append(name)
        self._matrix = None

    def check(self, hash_: str, sf: SampleFeatures, text: str | None = None) -> str | None:
        """Why the candidate is a duplicate (``None`` when it is not)."""
        if hash_ in self.hashes:
            return f"exact duplicate of {self.hashes[hash_]}"
        if text is not None and len(self._words):
            copied = self._words.problem(text)
            if copied is not None:
                return f"near duplicate: {copied.message}"
        if not self._rows:
            return None
        if self._matrix is None:
            self._matrix = np.stack(self._rows)
        sims = self._matrix @ self.vector(sf)
        best = int(np.argmax(sims))
        if sims[best] >= self.cosine_cut:
            return f"near duplicate of {self._names[best]} (feature cosine {sims[best]:.3f} >= {self.cosine_cut})"
        return None


class Verifier:
    """Encodes candidates through the SAE and reports what they fire."""

    def __init__(self, encoder: FeatureEncoder, *, delta: float, threshold: float, window: int = 16) -> None:
        self.encoder = encoder
        self.delta = float(delta)
        self.threshold = float(threshold)
        self.window = window

    def read(self, samples: Sequence[Sample], targets: Sequence[int]) -> list[Reading]:
        """Read each sample (in one batched pass) and its span for its target feature."""
        if len(samples) != len(targets):
            raise ValueError("one target per sample")
        feats = list(self.encoder.encode(list(samples)))
        out = []
        for sample, target, sf in zip(samples, targets, feats):
            hit = np.flatnonzero(sf.feature_ids == target)
            act = float(sf.max_acts[hit[0]]) if hit.size else 0.0
            out.append(Reading(sf, act, self.span(sample, target) if act > 0 else None))
        return out

    def span(self, sample: Sample, feature: int) -> dict[str, object]:
        """The ``window`` content tokens ending at the feature's peak, with their activations."""
        words, acts = self.encoder.token_activations(sample)
        col = acts[:, feature]
        peak = int(col.argmax())
        start = max(0, peak - self.window + 1)
        return {
            "tokens": words[start : peak + 1],
            "acts": [round(float(a), 2) for a in col[start : peak + 1]],
        }


def span_text(span: dict[str, object] | None, *, mark: bool = True) -> str:
    """A span on one line, the peak token (the last) marked ``<<...>>``."""
    if not span:
        return ""
    tokens = [str(t) for t in span.get("tokens", [])]  # type: ignore[union-attr]
    if not tokens:
        return ""
    text = "".join(tokens[:-1]) + (f"<<{tokens[-1]}>>" if mark else tokens[-1])
    return text.replace("\n", " ").strip()
