"""Where LLM calls go and how they are made: the endpoint, sampling and retry settings, and
the embedded llama.cpp server's. Plain pydantic models (no client, no process), stored with
a run and read by the CLI without loading the client stack.

An :class:`LLMConfig` holds no secret: only the name of the environment variable that holds
the API key, read at call time.
"""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from facsynth import paths

DEFAULT_MODEL = paths.BUNDLED_MODEL
"""The model the embedded server serves by default, and the name requests send to it."""
LOOPBACK = "127.0.0.1"
StructuredMode = Literal["auto", "json_schema", "json_object", "prompt"]
RETIRED = frozenset({"backoff_base_s", "backoff_cap_s", "retry_after_cap_s"})
"""Retry pacing fields of earlier versions; the openai client's policy paces retries now."""


def server_module_default() -> str:
    return os.environ.get("FACSYNTH_SERVER_MODULE") or "llama_cpp.server"


class ServerConfig(BaseModel):
    """How the embedded llama.cpp server runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gguf: str | None = None
    """A writer name (:data:`facsynth.agent.writers.WRITERS`), a model spec for
    :func:`facsynth.tools.model.resolve` or a ``.gguf`` path; None: bundled SmolLM2."""
    instances: int = Field(2, ge=1, le=16)
    """Server processes; each answers one request at a time."""
    threads_per_instance: int = Field(1, ge=1)
    """CPU threads of each instance (more than one only pays on an otherwise idle machine)."""
    n_ctx: int = Field(2048, ge=128)
    """Context window of each instance, in tokens."""
    n_batch: int = Field(512, ge=1)
    """Prompt tokens evaluated per batch."""
    startup_timeout_s: float = Field(120.0, gt=0)
    """How long to wait for ``/v1/models`` to answer."""
    check_generation: bool = True
    """Before start() returns, each instance must generate one token (a server built for
    another CPU crashes there instead of in the middle of a run)."""
    module: str = Field(default_factory=server_module_default)
    """The Python module run as the server (``python -m MODULE`` with llama_cpp.server's
    options); ``$FACSYNTH_SERVER_MODULE`` sets the default."""
    die_with_parent: bool = True
    """Linux: the kernel stops the server when the thread that started it ends."""



class LLMConfig(BaseModel):
    """Where LLM calls go and how they are made. Holds no secret: only the key's variable name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = None
    """OpenAI-compatible base URL (``https://api.openai.com/v1``); None: the embedded server."""
    model: str = DEFAULT_MODEL
    """Model name sent with each request (the embedded server answers to it)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable read, at call time, for the API key. Loopback endpoints need none."""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(0, ge=0)
    """Sampling seed: each request is sent with ``seed`` + a number drawn from its request key,
    so a prompt gets the same reply whatever ran before it (llama.cpp, vLLM; OpenAI on a best-effort
    basis). None sends no seed."""
    max_tokens: int = Field(256, ge=1)
    """Most tokens generated per reply."""
    timeout_s: float = Field(60.0, gt=0.0)
    """Per-request timeout (connect + read); a timeout is retried."""
    max_concurrency: int = Field(4, ge=1)
    """Requests in flight at once (per event loop)."""
    max_attempts: int = Field(4, ge=1)
    """Hard cap on requests per call, the first included (a repair request has its own). The
    openai client's retry policy paces them: timeouts, connection failures, 408/409/429/5xx
    are retried after 0.5, 1, 2, ... s (at most 8, with jitter), or the ``Retry-After`` the
    endpoint asks for (up to 2 minutes; a longer one ends the call)."""
    structured_output: StructuredMode = "auto"
    """How schemas reach the endpoint: ``json_schema`` (OpenAI structured outputs, through
    ``with_structured_output``), ``json_object`` (llama.cpp's ``response_format`` with a
    ``schema``: grammar-constrained), ``prompt`` (schema in the prompt, strict parse);
    ``auto``: json_object on the embedded server, else json_schema, stepping down to the
    next mode when the endpoint rejects a ``response_format``."""
    server: ServerConfig = Field(default_factory=ServerConfig)
    """The embedded server, used when ``base_url`` is None."""

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data: Any) -> Any:
        """Configs stored before retries moved to the openai client name its pacing: drop it."""
        if isinstance(data, dict) and RETIRED.intersection(data):
            data = {k: v for k, v in data.items() if k not in RETIRED}
        return data

    @model_validator(mode="after")
    def _check(self) -> LLMConfig:
        if self.base_url is not None and urlparse(self.base_url).scheme not in ("http", "https"):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if not self.api_key_env.strip():
            raise ValueError("api_key_env must name an environment variable")
        return self

    def api_key(self) -> SecretStr | None:
        """The API key from ``$api_key_env``, read now; None when unset or empty."""
        value = os.environ.get(self.api_key_env, "")
        return SecretStr(value) if value else None
