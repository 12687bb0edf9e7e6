"""LLM access: one config, one chat-model factory, one client that every LLM call goes through.

* :class:`LLMConfig` names the endpoint (``base_url``; None means the embedded llama.cpp
  server of :mod:`facsynth.agent.server`), the model, the *name* of the environment
  variable that holds the API key (the key is read at call time into a ``SecretStr`` and
  never stored, logged or recorded) and the sampling, timeout, concurrency and retry
  settings.
* :func:`make_chat_model` turns it into a langchain-openai ``ChatOpenAI`` whose openai client
  retries with its own policy (timeouts, connection failures, 408/409/429/5xx; exponential
  backoff with jitter, ``Retry-After`` honoured) up to ``max_attempts`` requests per call.
* :class:`LLMClient` sends every HTTP attempt of that policy through one transport per event
  loop, which bounds concurrency (a retry waiting out its backoff holds no slot), sends each
  attempt to the least busy endpoint and records each failed attempt; records every call in
  the store (purpose, model, prompt hash, tokens, latency, outcome); serves repeated prompts from the store's
  response cache, keyed by (model, messages, parameters, schema); and returns pydantic
  objects for structured calls. A reply that does not parse gets one repair request; if
  that fails too the call is recorded as ``parse_error`` and raises
  :class:`ReplyParseError`, never a default.
* :func:`open_client` starts the embedded server when ``base_url`` is None, yields a
  client and stops the server on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import ipaddress
import json
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload
from urllib.parse import urlparse

import httpx
import openai
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    convert_to_messages,
    convert_to_openai_messages,
)
from pydantic import (
    BaseModel,
    SecretStr,
    ValidationError,
)

from facsynth.agent.config import LLMConfig, StructuredMode
from facsynth.agent.server import EmbeddedServer
from facsynth.db.store import Outcome
from facsynth.errors import LLMError

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable
    from langchain_openai import ChatOpenAI

log = logging.getLogger(__name__)

MessagesLike = Sequence[BaseMessage | dict[str, Any] | tuple[str, str] | str]
T = TypeVar("T", bound=BaseModel)


class ReplyParseError(LLMError):
    """The LLM's reply did not match the requested schema, even after one repair request."""


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
    key = _api_key(cfg, url)
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


def _api_key(cfg: LLMConfig, url: str) -> SecretStr:
    key = cfg.api_key()
    if key is not None:
        return key
    if is_loopback(url):
        return SecretStr("no-key")  # llama.cpp checks no key; the client library wants one
    raise LLMError(f"the LLM endpoint {url} needs an API key: set the environment variable {cfg.api_key_env}")


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


# -- hashing ------------------------------------------------------------------------------------


def to_messages(messages: MessagesLike) -> list[BaseMessage]:
    """Normalize langchain messages, ``{"role", "content"}`` dicts, ``(role, text)`` pairs or strings."""
    if isinstance(messages, str):
        messages = [messages]
    return list(convert_to_messages(list(messages)))


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def request_key(
    cfg: LLMConfig, messages: Sequence[BaseMessage], schema: type[BaseModel] | None = None, variant: int = 0
) -> str:
    """sha256 of everything that determines a reply: model, messages, sampling parameters, schema.

    ``variant`` tells apart deliberate repeats of one prompt (several samples at
    temperature > 0); 0 leaves the key as it would be without it.
    """
    payload: dict[str, Any] = {
        "model": cfg.model,
        "messages": convert_to_openai_messages(list(messages)),
        "temperature": cfg.temperature,
        "max_tokens": cfg.max_tokens,
        "top_p": cfg.top_p,
        "schema": None if schema is None else {"name": schema.__name__, "json_schema": schema.model_json_schema()},
    }
    if variant:
        payload["variant"] = variant
    if cfg.seed:
        payload["seed"] = cfg.seed
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()


# -- failures -----------------------------------------------------------------------------------

_RETRYABLE = (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)


def is_retryable(exc: BaseException) -> bool:
    """Timeouts, connection failures, 429 and 5xx: what the openai client retried before it
    gave up (the error then says how many attempts failed, not that the request was refused)."""
    if isinstance(exc, _RETRYABLE):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, (asyncio.TimeoutError, httpx.TimeoutException, httpx.TransportError))


def _rejects_format_body(status: int, body: str) -> bool:
    """An error response that refuses the ``response_format`` itself (400/422, or llama-cpp-python's 500)."""
    if status in (400, 422):
        return "response_format" in body or "json_schema" in body
    return status >= 500 and "response_format" in body


def _rejects_response_format(exc: BaseException) -> bool:
    """The endpoint refused the ``response_format`` itself (400/422, or llama-cpp-python's 500)."""
    if not isinstance(exc, openai.APIStatusError) or exc.status_code == 429:
        return False
    text = str(exc)
    if exc.status_code in (400, 422):
        return "response_format" in text or "json_schema" in text
    return exc.status_code >= 500 and "response_format" in text


# -- structured replies -------------------------------------------------------------------------

_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.DOTALL)


def parse_reply(schema: type[T], text: str) -> T:
    """Strict parse: one JSON document (optionally in one ```json fence) that validates as ``schema``."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    return schema.model_validate_json(body)


def _schema_instruction(schema: type[BaseModel]) -> str:
    return (
        f"Reply with one JSON object and nothing else. It must validate against this JSON schema "
        f"({schema.__name__}):\n{json.dumps(schema.model_json_schema(), separators=(',', ':'))}"
    )


def _repair_instruction(error: str) -> str:
    return (
        "That reply is not valid for the requested schema: "
        f"{error}\nReply again with only the corrected JSON object."
    )


def _validation_summary(exc: ValidationError) -> str:
    """``field: problem`` for each error, without pydantic's URLs."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err.get("loc", ())) or "reply"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def _short_error(exc: BaseException, limit: int = 600) -> str:
    text = str(exc).strip().replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tokens(message: AIMessage) -> tuple[int, int]:
    usage = message.usage_metadata
    if usage:
        return int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
    raw = message.response_metadata.get("token_usage") or {}
    return int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0)


def _text(message: AIMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(part if isinstance(part, str) else str(part.get("text", "")) for part in content)


def _message_from_response(response: object) -> AIMessage | None:
    """The reply inside a raw chat-completion HTTP response (langchain attaches it to parse errors)."""
    if not isinstance(response, httpx.Response):
        return None
    try:
        body = response.json()
        content = body["choices"][0]["message"].get("content") or ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    usage = body.get("usage") or {}
    return AIMessage(content, response_metadata={"token_usage": usage})


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
class _Call:
    """One call's HTTP attempts as the transport sees them (a context variable carries it
    from :meth:`LLMClient._exchange` into the openai client's retry loop)."""

    purpose: str
    run_id: str | None
    prompt_hash: str
    attempts: int = 0
    url: str = ""
    """Endpoint of the last attempt."""
    latency_s: float = 0.0
    """Duration of the last attempt."""
    last_failed: bool = False
    """The last attempt failed and is recorded (an error response or no response)."""


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("facsynth_llm_call", default=None)


@dataclass
class _Endpoint:
    url: str
    base: httpx.URL
    in_flight: int = 0


class _AttemptTransport(httpx.AsyncBaseTransport):
    """Under the openai client: every HTTP attempt of its retry policy passes here. Each one
    waits for a concurrency slot (a retry waiting out its backoff holds none), goes to the least
    busy endpoint (the embedded server's instances answer one request at a time), is cut at
    1.5x the timeout plus a second whatever the server does, and is recorded when it fails.
    An endpoint's refusal of ``response_format`` is marked ``x-should-retry: false``: asking
    again would be refused again, the client steps down to the next structured mode instead."""

    def __init__(self, client: LLMClient, limits: httpx.Limits) -> None:
        self._client = client
        self._inner = httpx.AsyncHTTPTransport(limits=limits)
        self._endpoints = [_Endpoint(url, httpx.URL(url)) for url in client.urls]
        self._semaphore = asyncio.Semaphore(client.cfg.max_concurrency)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = _CALL.get()
        self._client.stats.http_requests += 1
        async with self._semaphore:
            endpoint = min(self._endpoints, key=lambda e: e.in_flight)
            request = _rebase(request, self._endpoints[0].base, endpoint.base)
            endpoint.in_flight += 1
            start = time.perf_counter()
            try:
                response = await asyncio.wait_for(self._send(request), timeout=self._client.cfg.timeout_s * 1.5 + 1.0)
            except (asyncio.TimeoutError, httpx.TimeoutException) as exc:
                self._failed(call, endpoint, start, f"request timed out after {time.perf_counter() - start:.1f} s")
                raise httpx.ReadTimeout("request timed out", request=request) from exc
            except Exception as exc:
                self._failed(call, endpoint, start, f"{type(exc).__name__}: {exc}")
                raise
            finally:
                endpoint.in_flight -= 1
        if response.status_code < 400:
            if call is not None:
                call.attempts, call.url, call.latency_s, call.last_failed = call.attempts + 1, endpoint.url, time.perf_counter() - start, False
            return response
        body = await _body_text(response)
        self._failed(call, endpoint, start, f"Error code: {response.status_code} - {body}")
        if _rejects_format_body(response.status_code, body) and b"response_format" in _content(request):
            response.headers["x-should-retry"] = "false"
        return response

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """The whole exchange, body included (replies are small), so the timeout covers it."""
        response = await self._inner.handle_async_request(request)
        try:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        return httpx.Response(response.status_code, headers=response.headers, stream=httpx.ByteStream(raw),
                              extensions=response.extensions, request=request)

    def _failed(self, call: _Call | None, endpoint: _Endpoint, start: float, error: str) -> None:
        latency = time.perf_counter() - start
        if call is None:
            return
        call.attempts, call.url, call.latency_s, call.last_failed = call.attempts + 1, endpoint.url, latency, True
        error = self._client._redact(_short_error(Exception(error)))
        log.info("LLM %s: attempt %d of %d failed: %s", call.purpose, call.attempts, self._client.cfg.max_attempts, error[:200])
        self._client._write(call.purpose, call.prompt_hash, 0, 0, latency, "error", error=error, run_id=call.run_id)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _rebase(request: httpx.Request, primary: httpx.URL, target: httpx.URL) -> httpx.Request:
    """``request`` (built for the first endpoint) sent to ``target`` instead."""
    if target == primary:
        return request
    path = request.url.raw_path
    prefix = primary.raw_path.rstrip(b"/")
    if path.startswith(prefix):
        path = target.raw_path.rstrip(b"/") + path[len(prefix):]
    url = request.url.copy_with(scheme=target.scheme, host=target.host, port=target.port, raw_path=path)
    headers = httpx.Headers(request.headers)
    headers["host"] = url.netloc.decode("ascii")
    return httpx.Request(request.method, url, headers=headers, content=_content(request), extensions=request.extensions)


def _content(request: httpx.Request) -> bytes:
    try:
        return request.content
    except httpx.RequestNotRead:
        return b""


async def _body_text(response: httpx.Response) -> str:
    probe = httpx.Response(response.status_code, headers=response.headers, stream=response.stream)
    await probe.aread()
    return probe.text


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
            _api_key(cfg, url)  # fail now on a missing key, not at the first call
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
                text = _text(reply.message)
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
            http = httpx.AsyncClient(timeout=self.cfg.timeout_s, transport=_AttemptTransport(self, limits))
            state = _LoopState(http, make_chat_model(self.cfg, base_url=self.urls[0], http_async_client=http))
            self._states[loop] = state
        return state

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
        call = _Call(purpose, run_id, prompt_hash)
        token = _CALL.set(call)
        runnable = self._runnable(self._seeded(state.chat, prompt_hash), mode, schema)
        try:
            result = await runnable.ainvoke(messages)
        except ValidationError as exc:  # openai's own parse of a json_schema reply failed
            message = _message_from_response(getattr(exc, "response", None))
            if message is None:
                raise _UnparsedReply(exc, call.latency_s) from exc
            return _Reply(message, call.latency_s, *_tokens(message))
        except openai.LengthFinishReasonError as exc:  # cut at max_tokens: a reply that does not parse
            raise _UnparsedReply(exc, call.latency_s) from exc
        except Exception as exc:
            if not call.last_failed:  # failed after the last HTTP exchange succeeded, or before any
                self._write(purpose, prompt_hash, 0, 0, call.latency_s, "error", error=_short_error(exc), run_id=run_id)
            if mode != "plain" and _rejects_response_format(exc):
                raise _FormatRejected(exc) from exc
            url = call.url or self.urls[0]
            if call.attempts and is_retryable(exc):
                raise self._exhausted(exc, url, call.attempts) from exc
            raise self._fatal(exc, url, call.attempts) from exc
        finally:
            _CALL.reset(token)
        if isinstance(result, dict):  # with_structured_output(include_raw=True)
            message, parsed = result["raw"], result.get("parsed")
        else:
            message, parsed = result, None
        tokens_in, tokens_out = _tokens(message)
        return _Reply(message, call.latency_s, tokens_in, tokens_out, parsed if isinstance(parsed, BaseModel) else None)

    async def _structured(
        self, state: _LoopState, messages: list[BaseMessage], schema: type[T], key: str, *, purpose: str, run_id: str | None
    ) -> T:
        while True:
            mode = self._mode
            request = messages if mode == "json_schema" else [SystemMessage(_schema_instruction(schema)), *messages]
            try:
                return await self._parse_with_repair(state, request, schema, mode, key, purpose=purpose, run_id=run_id)
            except _FormatRejected as rejected:
                if self.cfg.structured_output != "auto" or mode == "prompt":
                    raise LLMError(
                        f"the LLM endpoint rejects response_format ({self._mode} mode): {_short_error(rejected.error)}"
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
                error = _short_error(unparsed.error)
                self._write(purpose, prompt_hash, 0, 0, unparsed.latency_s, "parse_error", error=error, run_id=run_id)
                request = [*request, HumanMessage(_repair_instruction(error))]
                continue
            if isinstance(reply.parsed, schema):
                self._record(purpose, prompt_hash, reply, "ok", run_id=run_id)
                return reply.parsed
            text = _text(reply.message)
            try:
                parsed = parse_reply(schema, text)
            except ValidationError as exc:
                error = _validation_summary(exc)
                self._record(purpose, prompt_hash, reply, "parse_error", error=error, run_id=run_id)
                request = [*request, AIMessage(text), HumanMessage(_repair_instruction(error))]
                continue
            self._record(purpose, prompt_hash, reply, "ok", run_id=run_id)
            return parsed
        raise ReplyParseError(f"the LLM reply for {purpose!r} does not fit {schema.__name__} after one repair request: {error}")

    def _fatal(self, exc: BaseException, url: str, attempt: int) -> BaseException:
        if isinstance(exc, openai.AuthenticationError):
            return LLMError(f"the LLM endpoint {url} refused the API key from ${self.cfg.api_key_env} (401)")
        if isinstance(exc, openai.APIStatusError):
            return LLMError(f"the LLM endpoint {url} refused the request ({exc.status_code}): {self._redact(_short_error(exc))}")
        return exc  # a bug, not an endpoint failure: raise it as it is

    def _exhausted(self, exc: BaseException, url: str, attempts: int) -> LLMError:
        detail = self._redact(_short_error(exc))
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
