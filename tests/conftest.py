"""Shared fixtures.

Model and SAE numerics are never mocked: the fixtures load the real default subject
model (SmolLM2-135M-Instruct from the bundled GGUF, de-quantized once into the cache)
and the SAE the package ships, once per session. Tests that change them deep-copy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from facsynth.agent.server import EmbeddedServer, ServerConfig

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


@pytest.fixture(scope="session")
def llama_server() -> Iterator[EmbeddedServer]:
    """The real llama.cpp server, one instance, small context; stopped however the session ends."""
    server = EmbeddedServer(ServerConfig(instances=1, threads_per_instance=1, n_ctx=1024), model_alias="smollm2-135m-instruct")
    server.start()
    try:
        yield server
    finally:
        pids = server.pids
        server.stop()
    from agent.conftest import llama_server_pids

    assert not set(pids) & set(llama_server_pids()), "the embedded server outlived stop()"
