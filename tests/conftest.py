"""Shared fixtures.

Model and SAE numerics are never mocked: the fixtures load the real default subject
model (SmolLM2-135M-Instruct from the bundled GGUF, de-quantized once into the cache)
and the SAE the package ships, once per session. Tests that change them deep-copy.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def subject():
    from facsynth.tools import model

    return model.load()


@pytest.fixture(scope="session")
def default_sae():
    from facsynth.tools.sae import load_sae

    return load_sae()


@pytest.fixture(scope="session")
def encoder(subject, default_sae):
    from facsynth.tools.encoder import FeatureEncoder

    return FeatureEncoder(subject, default_sae, batch_size=8)
