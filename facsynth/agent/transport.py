"""The HTTP transport under the openai client: every attempt of its retry policy passes here.

Each attempt waits for a concurrency slot (a retry waiting out its backoff holds none), goes
to the least busy endpoint, is cut at 1.5x the timeout plus a second whatever the server
does, and is reported when it fails (the client records it). :func:`is_retryable` tells
what the policy retried.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
import openai

_RETRYABLE = (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)


def is_retryable(exc: BaseException) -> bool:
    """Timeouts, connection failures, 429 and 5xx: what the openai client retried before it
    gave up (the error then says how many attempts failed, not that the request was refused)."""
    if isinstance(exc, _RETRYABLE):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, (asyncio.TimeoutError, httpx.TimeoutException, httpx.TransportError))


def rejects_format_body(status: int, body: str) -> bool:
    """An error response that refuses the ``response_format`` itself (400/422, or llama-cpp-python's 500)."""
    if status in (400, 422):
        return "response_format" in body or "json_schema" in body
    return status >= 500 and "response_format" in body


def rejects_response_format(exc: BaseException) -> bool:
    """The openai client's error for such a response (:func:`rejects_format_body`)."""
    return isinstance(exc, openai.APIStatusError) and rejects_format_body(exc.status_code, str(exc))


@dataclass
class Call:
    """One call's HTTP attempts as the transport sees them (:data:`CALL` carries it from the
    LLM client into the openai client's retry loop)."""

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


CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar("facsynth_llm_call", default=None)


@dataclass
class _Endpoint:
    url: str
    base: httpx.URL
    in_flight: int = 0


class AttemptTransport(httpx.AsyncBaseTransport):
    """Under the openai client: every HTTP attempt of its retry policy passes here (see the
    module). The embedded server's instances answer one request at a time, hence the least
    busy endpoint. An endpoint's refusal of ``response_format`` is marked
    ``x-should-retry: false``: asking again would be refused again; the client steps down to
    the next structured mode instead."""

    def __init__(
        self, urls: Sequence[str], *, max_concurrency: int, timeout_s: float, limits: httpx.Limits,
        on_send: Callable[[], None], on_failure: Callable[[Call, str], None],
    ) -> None:
        """``on_send`` is told of every attempt, ``on_failure`` of each failed one (with its
        error text) when a :data:`CALL` is set."""
        self._inner = httpx.AsyncHTTPTransport(limits=limits)
        self._endpoints = [_Endpoint(url, httpx.URL(url)) for url in urls]
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._guard_s = timeout_s * 1.5 + 1.0
        self._on_send = on_send
        self._on_failure = on_failure

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        call = CALL.get()
        self._on_send()
        async with self._semaphore:
            endpoint = min(self._endpoints, key=lambda e: e.in_flight)
            request = _rebase(request, self._endpoints[0].base, endpoint.base)
            endpoint.in_flight += 1
            start = time.perf_counter()
            try:
                response = await asyncio.wait_for(self._send(request), timeout=self._guard_s)
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
        if rejects_format_body(response.status_code, body) and b"response_format" in _content(request):
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

    def _failed(self, call: Call | None, endpoint: _Endpoint, start: float, error: str) -> None:
        if call is None:
            return
        call.attempts, call.url, call.latency_s, call.last_failed = call.attempts + 1, endpoint.url, time.perf_counter() - start, True
        self._on_failure(call, error)

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


