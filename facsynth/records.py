"""What reading one sample through the model and SAE yields (numpy only, no torch).

These records cross from the encoder (``tools.encoder``) to the FAC maths
(``tools.fac``) and the store (``db``), so they carry no tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SampleFeatures:
    """One sample's SAE reading, pooled over its content tokens.

    ``feature_ids`` / ``max_acts`` are the sparse vector a_i(x) = max over content
    tokens of feature i's activation, keeping only features with a_i(x) > 0.
    """

    sample_hash: str
    """sha256 of the sample's canonical JSON (text or messages): the cache key."""
    n_tokens: int
    """Content tokens read (template prefix excluded)."""
    feature_ids: np.ndarray
    """int32 [n_active], ascending."""
    max_acts: np.ndarray
    """float32 [n_active], > 0."""
    pooled: np.ndarray | None = None
    """float32 [d_model]: the layer's hidden state mean-pooled over content tokens."""

    def active(self, delta: float) -> np.ndarray:
        """Feature ids with a_i(x) > delta."""
        return self.feature_ids[self.max_acts > delta]
