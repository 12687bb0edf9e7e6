"""The ChatOpenAI factory: one langchain-openai chat model per endpoint and config.

The openai client under it retries with its own policy (``max_retries`` from
``cfg.max_attempts``); the API key is read from ``$cfg.api_key_env`` when the model is made
and never stored.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import httpx
from pydantic import SecretStr

from facsynth.agent.config import LLMConfig
from facsynth.errors import LLMError

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI


def is_loopback(url: str) -> bool:
    """True for ``localhost`` and loopback IP addresses."""
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_chat_model(
    cfg: LLMConfig, *, base_url: str | None = None, http_async_client: httpx.AsyncClient | None = None
) -> ChatOpenAI:
    """A ``ChatOpenAI`` for ``cfg`` (``base_url`` overrides ``cfg.base_url``) whose openai client
    makes up to ``cfg.max_attempts`` requests per call (its own retry policy).

    The key comes from ``$cfg.api_key_env``; a loopback endpoint without one gets a
    placeholder (llama.cpp checks none), any other raises :class:`LLMError`. ChatOpenAI
    sends the token limit as ``max_completion_tokens``, which llama-cpp-python's server
    ignores (it then generates until the context is full), so loopback endpoints also get
    the older ``max_tokens``.
    """
    from langchain_openai import ChatOpenAI

    url = base_url or cfg.base_url
    if url is None:
        raise LLMError("no LLM endpoint: set base_url, or let open_client() start the embedded server")
    key = api_key_for(cfg, url)
    kwargs: dict[str, Any] = {}
    if cfg.top_p is not None:
        kwargs["top_p"] = cfg.top_p
    if http_async_client is not None:
        kwargs["http_async_client"] = http_async_client
    if is_loopback(url):
        kwargs["extra_body"] = {"max_tokens": cfg.max_tokens}
    return ChatOpenAI(
        model=cfg.model,
        base_url=url,
        api_key=key,
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        timeout=cfg.timeout_s,
        max_retries=cfg.max_attempts - 1,
        **kwargs,
    )


def api_key_for(cfg: LLMConfig, url: str) -> SecretStr:
    """The key for ``url``: ``$cfg.api_key_env``, a placeholder on loopback, else :class:`LLMError`."""
    key = cfg.api_key()
    if key is not None:
        return key
    if is_loopback(url):
        return SecretStr("no-key")  # llama.cpp checks no key; the client library wants one
    raise LLMError(f"the LLM endpoint {url} needs an API key: set the environment variable {cfg.api_key_env}")
