"""The LLM client that every LLM call of facsynth goes through.

The parts, one concern each:

* :mod:`facsynth.agent.config`: :class:`LLMConfig` (endpoint, model, the *name* of the
  variable holding the API key, sampling, timeout, concurrency, attempts);
* :mod:`facsynth.agent.chat_model`: :func:`make_chat_model`, the ``ChatOpenAI`` whose openai
  client retries with its own policy (timeouts, connection failures, 408/409/429/5xx;
  exponential backoff with jitter, ``Retry-After`` honoured) up to ``max_attempts`` requests;
* :mod:`facsynth.agent.transport`: the HTTP transport under it, which bounds concurrency per
  attempt (a retry waiting out its backoff holds no slot), balances endpoints and reports
  each failed attempt;
* :mod:`facsynth.agent.replies`: request keys and the strict parse of structured replies;
* here, :class:`LLMClient`: records every call and every failed attempt in the store
  (purpose, model, prompt hash, tokens, latency, outcome), serves repeated prompts from the
  store's response cache, and returns pydantic objects for structured calls. A reply that
  does not parse gets one repair request; if that fails too the call is recorded as
  ``parse_error`` and raises :class:`ReplyParseError`, never a default. The key is read at
  call time and never stored, logged or recorded. :func:`open_client` starts the embedded
  server when ``base_url`` is None and stops it on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, overload

import httpx
import openai
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, ValidationError

from facsynth.agent.chat_model import api_key_for, is_loopback, make_chat_model
from facsynth.agent.config import LLMConfig, StructuredMode
from facsynth.agent.replies import (
    MessagesLike,
    ReplyParseError,
    T,
    message_from_response,
    parse_reply,
    repair_instruction,
    request_key,
    schema_instruction,
    short_error,
    text_of,
    to_messages,
    tokens_of,
    validation_summary,
)
from facsynth.agent.server import EmbeddedServer
from facsynth.agent.transport import CALL, AttemptTransport, Call, is_retryable, rejects_response_format
from facsynth.db.store import Outcome
from facsynth.errors import LLMError

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable
    from langchain_openai import ChatOpenAI

__all__ = [
    "LLMClient", "LLMConfig", "LLMStats", "LLMStore", "MessagesLike", "ReplyParseError", "is_loopback",
    "is_retryable", "make_chat_model", "open_client", "parse_reply", "request_key", "to_messages",
]

log = logging.getLogger(__name__)


# -- store interface ----------------------------------------------------------------------------


class LLMStore(Protocol):
    """What the client needs from the store (:class:`facsynth.db.Store` provides it)."""

    def record_llm_call(
        self, *, purpose: str, model: str, prompt_hash: str, tokens_in: int, tokens_out: int,
        latency_s: float, outcome: str, error: str | None = None, run_id: str | None = None,
    ) -> int: ...

    def llm_cache_get(self, key: str) -> str | None: ...

    def llm_cache_put(self, key: str, model: str, response: str) -> None: ...

    def llm_totals(self, run_id: str | None = None) -> dict[str, Any]: ...


# -- client -------------------------------------------------------------------------------------


@dataclass
class LLMStats:
    """Counts kept by one client (the store keeps the durable record)."""

    http_requests: int = 0
    """HTTP requests that left this client (counted at the transport)."""
    outcomes: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0, "parse_error": 0, "cached": 0})
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The shape of :meth:`facsynth.db.Store.llm_totals`, plus ``http_requests``."""
        return {
            "calls": sum(self.outcomes.values()), "by_outcome": dict(self.outcomes), "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out, "latency_s": self.latency_s, "http_requests": self.http_requests,
        }


@dataclass
class _LoopState:
    """What is bound to one event loop (httpx pools and asyncio primitives are): a run's
    loop keeps one for the whole run; :meth:`LLMClient.invoke` makes one per call."""

    http: httpx.AsyncClient
    chat: ChatOpenAI
    key_locks: dict[str, tuple[asyncio.Lock, int]] = field(default_factory=dict)

    @asynccontextmanager
    async def key_lock(self, key: str) -> AsyncIterator[None]:
        """Identical concurrent calls wait for the first, then read its reply from the cache."""
        lock, users = self.key_locks.get(key, (asyncio.Lock(), 0))
        self.key_locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self.key_locks[key]
            if users <= 1:
                del self.key_locks[key]
            else:
                self.key_locks[key] = (lock, users - 1)


@dataclass
class _Reply:
    message: AIMessage
    latency_s: float
    tokens_in: int
    tokens_out: int
    parsed: BaseModel | None = None
    """Set when ``with_structured_output`` already parsed the reply."""


class LLMClient:
    """Every LLM call of facsynth: bounded, retried, recorded, cached, parsed.

    ``endpoints`` (base URLs) overrides ``cfg.base_url``; with several (the embedded
    server's instances) each HTTP attempt goes to the least busy. ``llama_cpp`` marks the
    endpoints as llama.cpp servers (``auto`` structured mode then uses ``json_object``).
    """

    def __init__(
        self,
        cfg: LLMConfig,
        *,
        store: LLMStore | None = None,
        endpoints: Sequence[str] | None = None,
        llama_cpp: bool = False,
    ) -> None:
        urls = list(endpoints) if endpoints else ([cfg.base_url] if cfg.base_url else [])
        if not urls:
            raise LLMError("no LLM endpoint: set base_url, or let open_client() start the embedded server")
        self.cfg = cfg
        self.store = store
        self.urls = urls
        self.stats = LLMStats()
        if cfg.structured_output != "auto":
            self._mode: StructuredMode = cfg.structured_output
        else:
            self._mode = "json_object" if llama_cpp else "json_schema"
        for url in urls:
            api_key_for(cfg, url)  # fail now on a missing key, not at the first call
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()

    @property
    def structured_mode(self) -> StructuredMode:
        """The mode structured calls use now (``auto`` resolved; lowered after a rejection)."""
        return self._mode

    # -- public calls ---------------------------------------------------------------------------

    @overload
    async def ainvoke(
        self, messages: MessagesLike, *, purpose: str, schema: None = None, run_id: str | None = None,
        variant: int = 0, cache: bool = True,
    ) -> str: ...

    @overload
    async def ainvoke(
        self, messages: MessagesLike, *, purpose: str, schema: type[T], run_id: str | None = None,
        variant: int = 0, cache: bool = True,
    ) -> T: ...

    async def ainvoke(
        self,
        messages: MessagesLike,
        *,
        purpose: str,
        schema: type[BaseModel] | None = None,
        run_id: str | None = None,
        variant: int = 0,
        cache: bool = True,
    ) -> str | BaseModel:
        """One LLM call: the reply text, or an instance of ``schema``.

        ``purpose`` labels the call in the store (``explain``, ``judge``, ...); ``variant``
        asks for a distinct, separately cached draw of the same prompt; ``cache=False``
        neither reads nor writes the cache. Raises :class:`LLMError` when the endpoint
        cannot be used, :class:`ReplyParseError` when a reply does not fit ``schema``.
        """
        msgs = to_messages(messages)
        key = request_key(self.cfg, msgs, schema, variant)
        state = self._state()
        async with state.key_lock(key) if cache else contextlib.nullcontext():
            if cache:
                hit = self._cached(key, schema, purpose=purpose, run_id=run_id)
                if hit is not None:
                    return hit
            if schema is None:
                reply = await self._exchange(state, msgs, None, "plain", purpose=purpose, run_id=run_id, prompt_hash=key)
                text = text_of(reply.message)
                self._record(purpose, key, reply, "ok", run_id=run_id)
                if cache:
                    self._cache_put(key, text)
                return text
            parsed = await self._structured(state, msgs, schema, key, purpose=purpose, run_id=run_id)
            if cache:
                self._cache_put(key, parsed.model_dump_json())
            return parsed

    @overload
    def invoke(
        self, messages: MessagesLike, *, purpose: str, schema: None = None, run_id: str | None = None,
        variant: int = 0, cache: bool = True,
    ) -> str: ...

    @overload
    def invoke(
        self, messages: MessagesLike, *, purpose: str, schema: type[T], run_id: str | None = None,
        variant: int = 0, cache: bool = True,
    ) -> T: ...

    def invoke(
        self,
        messages: MessagesLike,
        *,
        purpose: str,
        schema: type[BaseModel] | None = None,
        run_id: str | None = None,
        variant: int = 0,
        cache: bool = True,
    ) -> str | BaseModel:
        """Blocking :meth:`ainvoke`, for code without an event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("LLMClient.invoke() called inside a running event loop; await ainvoke() instead")

        async def once() -> str | BaseModel:
            try:
                return await self.ainvoke(
                    messages, purpose=purpose, schema=schema, run_id=run_id, variant=variant, cache=cache
                )
            finally:
                await self.aclose()

        return asyncio.run(once())

    def totals(self, run_id: str | None = None) -> dict[str, Any]:
        """Totals from the store (all runs, or one), else this client's own counts."""
        if self.store is not None:
            return self.store.llm_totals(run_id)
        return self.stats.as_dict()

    async def aclose(self) -> None:
        """Close the HTTP connections of the current event loop (a run's ends with the run)."""
        state = self._states.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state.http.aclose()

    # -- internals ------------------------------------------------------------------------------

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            limits = httpx.Limits(max_connections=self.cfg.max_concurrency * 2, max_keepalive_connections=self.cfg.max_concurrency * 2)
            transport = AttemptTransport(self.urls, max_concurrency=self.cfg.max_concurrency, timeout_s=self.cfg.timeout_s,
                                         limits=limits, on_send=self._sent, on_failure=self._attempt_failed)
            http = httpx.AsyncClient(timeout=self.cfg.timeout_s, transport=transport)
            state = _LoopState(http, make_chat_model(self.cfg, base_url=self.urls[0], http_async_client=http))
            self._states[loop] = state
        return state

    def _sent(self) -> None:
        self.stats.http_requests += 1

    def _attempt_failed(self, call: Call, error: str) -> None:
        """A failed HTTP attempt (the openai client may retry it): recorded like a call."""
        error = self._redact(short_error(Exception(error)))
        log.info("LLM %s: attempt %d of %d failed: %s", call.purpose, call.attempts, self.cfg.max_attempts, error[:200])
        self._write(call.purpose, call.prompt_hash, 0, 0, call.latency_s, "error", error=error, run_id=call.run_id)

    def _cached(self, key: str, schema: type[BaseModel] | None, *, purpose: str, run_id: str | None) -> str | BaseModel | None:
        if self.store is None:
            return None
        start = time.perf_counter()
        text = self.store.llm_cache_get(key)
        if text is None:
            return None
        value: str | BaseModel = text
        if schema is not None:
            try:
                value = parse_reply(schema, text)
            except ValidationError:
                log.warning("cached reply %s no longer fits %s; asking again", key[:12], schema.__name__)
                return None
        self._write(purpose, key, 0, 0, time.perf_counter() - start, "cached", run_id=run_id)
        return value

    def _cache_put(self, key: str, response: str) -> None:
        if self.store is not None:
            self.store.llm_cache_put(key, self.cfg.model, response)

    def _seeded(self, chat: ChatOpenAI, prompt_hash: str) -> ChatOpenAI:
        """``chat`` with this request's seed (derived from its key: reproducible, order-free)."""
        if self.cfg.seed is None:
            return chat
        return chat.model_copy(update={"seed": (self.cfg.seed + int(prompt_hash[:8], 16)) % 2**31})

    def _runnable(self, chat: ChatOpenAI, mode: str, schema: type[BaseModel] | None) -> Runnable[Any, Any]:
        if mode == "json_schema" and schema is not None:
            return chat.with_structured_output(schema, method="json_schema", include_raw=True)
        if mode == "json_object" and schema is not None:
            return chat.bind(response_format={"type": "json_object", "schema": schema.model_json_schema()})
        return chat

    async def _exchange(
        self,
        state: _LoopState,
        messages: list[BaseMessage],
        schema: type[BaseModel] | None,
        mode: str,
        *,
        purpose: str,
        run_id: str | None,
        prompt_hash: str,
    ) -> _Reply:
        """One request, retried by the openai client: the reply, or LLMError once it gives up.
        The transport records each failed attempt."""
        call = Call(purpose, run_id, prompt_hash)
        token = CALL.set(call)
        runnable = self._runnable(self._seeded(state.chat, prompt_hash), mode, schema)
        try:
            result = await runnable.ainvoke(messages)
        except ValidationError as exc:  # openai's own parse of a json_schema reply failed
            message = message_from_response(getattr(exc, "response", None))
            if message is None:
                raise _UnparsedReply(exc, call.latency_s) from exc
            return _Reply(message, call.latency_s, *tokens_of(message))
        except openai.LengthFinishReasonError as exc:  # cut at max_tokens: a reply that does not parse
            raise _UnparsedReply(exc, call.latency_s) from exc
        except Exception as exc:
            if not call.last_failed:  # failed after the last HTTP exchange succeeded, or before any
                self._write(purpose, prompt_hash, 0, 0, call.latency_s, "error", error=short_error(exc), run_id=run_id)
            if mode != "plain" and rejects_response_format(exc):
                raise _FormatRejected(exc) from exc
            url = call.url or self.urls[0]
            if call.attempts and is_retryable(exc):
                raise self._exhausted(exc, url, call.attempts) from exc
            raise self._fatal(exc, url, call.attempts) from exc
        finally:
            CALL.reset(token)
        if isinstance(result, dict):  # with_structured_output(include_raw=True)
            message, parsed = result["raw"], result.get("parsed")
        else:
            message, parsed = result, None
        tokens_in, tokens_out = tokens_of(message)
        return _Reply(message, call.latency_s, tokens_in, tokens_out, parsed if isinstance(parsed, BaseModel) else None)

    async def _structured(
        self, state: _LoopState, messages: list[BaseMessage], schema: type[T], key: str, *, purpose: str, run_id: str | None
    ) -> T:
        while True:
            mode = self._mode
            request = messages if mode == "json_schema" else [SystemMessage(schema_instruction(schema)), *messages]
            try:
                return await self._parse_with_repair(state, request, schema, mode, key, purpose=purpose, run_id=run_id)
            except _FormatRejected as rejected:
                if self.cfg.structured_output != "auto" or mode == "prompt":
                    raise LLMError(
                        f"the LLM endpoint rejects response_format ({self._mode} mode): {short_error(rejected.error)}"
                    ) from rejected.error
                lower: StructuredMode = "json_object" if mode == "json_schema" else "prompt"
                log.warning("LLM endpoint rejects %s structured output; using %s from now on", mode, lower)
                self._mode = lower

    async def _parse_with_repair(
        self, state: _LoopState, request: list[BaseMessage], schema: type[T], mode: str, key: str,
        *, purpose: str, run_id: str | None,
    ) -> T:
        error = ""
        for round_ in range(2):  # the request, then one repair
            prompt_hash = key if round_ == 0 else request_key(self.cfg, request, schema)
            try:
                reply = await self._exchange(state, request, schema, mode, purpose=purpose, run_id=run_id, prompt_hash=prompt_hash)
            except _UnparsedReply as unparsed:
                error = short_error(unparsed.error)
                self._write(purpose, prompt_hash, 0, 0, unparsed.latency_s, "parse_error", error=error, run_id=run_id)
                request = [*request, HumanMessage(repair_instruction(error))]
                continue
            if isinstance(reply.parsed, schema):
                self._record(purpose, prompt_hash, reply, "ok", run_id=run_id)
                return reply.parsed
            text = text_of(reply.message)
            try:
                parsed = parse_reply(schema, text)
            except ValidationError as exc:
                error = validation_summary(exc)
                self._record(purpose, prompt_hash, reply, "parse_error", error=error, run_id=run_id)
                request = [*request, AIMessage(text), HumanMessage(repair_instruction(error))]
                continue
            self._record(purpose, prompt_hash, reply, "ok", run_id=run_id)
            return parsed
        raise ReplyParseError(f"the LLM reply for {purpose!r} does not fit {schema.__name__} after one repair request: {error}")

    def _fatal(self, exc: BaseException, url: str, attempt: int) -> BaseException:
        if isinstance(exc, openai.AuthenticationError):
            return LLMError(f"the LLM endpoint {url} refused the API key from ${self.cfg.api_key_env} (401)")
        if isinstance(exc, openai.APIStatusError):
            return LLMError(f"the LLM endpoint {url} refused the request ({exc.status_code}): {self._redact(short_error(exc))}")
        return exc  # a bug, not an endpoint failure: raise it as it is

    def _exhausted(self, exc: BaseException, url: str, attempts: int) -> LLMError:
        detail = self._redact(short_error(exc))
        if isinstance(exc, openai.APIStatusError):
            return LLMError(f"the LLM endpoint {url} kept failing ({exc.status_code}) after {attempts} attempts: {detail}")
        return LLMError(f"cannot reach LLM endpoint {url} after {attempts} attempts: {type(exc).__name__}: {detail}")

    def _redact(self, text: str) -> str:
        key = self.cfg.api_key()
        if key is not None and key.get_secret_value() in text:
            text = text.replace(key.get_secret_value(), "***")
        return text

    def _record(self, purpose: str, prompt_hash: str, reply: _Reply, outcome: Outcome, *, error: str | None = None, run_id: str | None = None) -> None:
        self._write(purpose, prompt_hash, reply.tokens_in, reply.tokens_out, reply.latency_s, outcome, error=error, run_id=run_id)

    def _write(
        self, purpose: str, prompt_hash: str, tokens_in: int, tokens_out: int, latency_s: float, outcome: Outcome,
        *, error: str | None = None, run_id: str | None = None,
    ) -> None:
        error = self._redact(error) if error else None
        self.stats.outcomes[outcome] += 1
        self.stats.tokens_in += tokens_in
        self.stats.tokens_out += tokens_out
        self.stats.latency_s += latency_s
        log.debug("LLM %s %s %s in=%d out=%d %.3fs", purpose, outcome, prompt_hash[:12], tokens_in, tokens_out, latency_s)
        if self.store is not None:
            self.store.record_llm_call(
                purpose=purpose, model=self.cfg.model, prompt_hash=prompt_hash, tokens_in=tokens_in,
                tokens_out=tokens_out, latency_s=latency_s, outcome=outcome, error=error, run_id=run_id,
            )


class _FormatRejected(Exception):
    """The endpoint refused the response_format of a structured request."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _UnparsedReply(Exception):
    """The openai client's own parse of a json_schema reply failed (no raw text to show)."""

    def __init__(self, error: BaseException, latency_s: float) -> None:
        super().__init__(str(error))
        self.error = error
        self.latency_s = latency_s


@contextmanager
def open_client(cfg: LLMConfig, *, store: LLMStore | None = None) -> Iterator[LLMClient]:
    """A client for ``cfg``; with ``base_url`` None, the embedded server runs until the block ends."""
    if cfg.base_url is not None:
        client = LLMClient(cfg, store=store)
        try:
            yield client
        finally:
            _log_totals(client)
        return
    with EmbeddedServer(cfg.server, model_alias=cfg.model) as server:
        client = LLMClient(cfg, store=store, endpoints=server.base_urls, llama_cpp=True)
        try:
            yield client
        finally:
            _log_totals(client)


def _log_totals(client: LLMClient) -> None:
    stats = client.stats
    if stats.http_requests or stats.outcomes["cached"]:
        log.info(
            "LLM totals: %s; %d HTTP request(s), %d tokens in, %d out, %.1f s",
            ", ".join(f"{k}={v}" for k, v in stats.outcomes.items()), stats.http_requests,
            stats.tokens_in, stats.tokens_out, stats.latency_s,
        )
