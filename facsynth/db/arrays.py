"""The binary array columns: little-endian blobs without a header.

``feature_ids`` are int32, ``max_acts`` float32 (kept at full precision: activation
thresholds are compared against them), ``pooled`` float16 (clipped to its range).
"""

from __future__ import annotations

import numpy as np

_F16_MAX = float(np.finfo(np.float16).max)
_I32_MAX = int(np.iinfo(np.int32).max)


def encode_ids(ids: np.ndarray) -> bytes:
    """Feature ids as int32 little-endian (1-D, each in ``[0, 2**31)``)."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"feature_ids must be 1-D, got shape {arr.shape}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > _I32_MAX):
        raise ValueError("feature_ids must lie in [0, 2**31)")
    return np.ascontiguousarray(arr, dtype="<i4").tobytes()


def encode_acts(acts: np.ndarray) -> bytes:
    """Activations as float32 little-endian."""
    return np.ascontiguousarray(acts, dtype="<f4").tobytes()


def encode_pooled(pooled: np.ndarray | None) -> bytes | None:
    """A pooled residual as float16 little-endian, clipped to the float16 range (None stays None)."""
    if pooled is None:
        return None
    arr = np.clip(np.asarray(pooled, dtype=np.float32).ravel(), -_F16_MAX, _F16_MAX)
    return arr.astype("<f2").tobytes()


def decode_ids(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<i4").astype(np.int32)


def decode_acts(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def decode_pooled(blob: bytes) -> np.ndarray:
    """float16 blob -> float32 array."""
    return np.frombuffer(blob, dtype="<f2").astype(np.float32)
