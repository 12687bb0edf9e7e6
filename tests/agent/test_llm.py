"""LLMClient: real replies from the local llama.cpp server, and retries, backoff, caching,
recording and parsing against a scripted loopback endpoint.

The model is never mocked: replies come from the real SmolLM2-135M server (tests marked
``llm_server``). Only failure modes a real server cannot be made to produce on command
(429, 500, slow, unparseable replies) come from the fake endpoint in ``conftest.py``,
which speaks HTTP like a remote one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import text

from facsynth.agent.llm import (
    LLMClient,
    LLMConfig,
    ReplyParseError,
    is_retryable,
    make_chat_model,
    request_key,
    to_messages,
)
from facsynth.agent.server import EmbeddedServer, free_port
from facsynth.errors import LLMError

from endpoints import FakeOpenAI, Reply


class Animal(BaseModel):
    name: str = Field(description="an animal")
    legs: int = Field(description="how many legs it has")


def fast(url: str, **overrides: Any) -> LLMConfig:
    """A config for the fake endpoint: a short timeout."""
    settings: dict[str, Any] = {"base_url": url, "timeout_s": 2.0}
    settings.update(overrides)
    return LLMConfig(**settings)


def rows(store: Any, table: str = "llm_calls") -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]


# -- the real local server ----------------------------------------------------------------------


@pytest.fixture
def real(llama_server: EmbeddedServer, store: Any) -> LLMClient:
    cfg = LLMConfig(max_tokens=48, timeout_s=120.0)
    return LLMClient(cfg, store=store, endpoints=llama_server.base_urls, llama_cpp=True)


@pytest.mark.llm_server
def test_plain_call_is_answered_and_recorded(real: LLMClient, store: Any) -> None:
    reply = real.invoke([("system", "You are terse."), ("user", "Say hello.")], purpose="smoke", run_id="r1")
    assert isinstance(reply, str) and reply.strip()
    totals = store.llm_totals("r1")
    assert totals["calls"] == 1 and totals["by_outcome"]["ok"] == 1
    assert totals["tokens_in"] > 0 and totals["tokens_out"] > 0
    (row,) = rows(store)
    assert row["purpose"] == "smoke" and row["model"] == "smollm2-135m-instruct" and len(row["prompt_hash"]) == 64


@pytest.mark.llm_server
def test_structured_call_returns_the_schema(real: LLMClient, store: Any) -> None:
    animal = real.invoke("Name one animal and how many legs it has.", purpose="structured", schema=Animal)
    assert isinstance(animal, Animal)
    assert real.structured_mode == "json_object"  # llama.cpp: grammar-constrained by the schema
    assert store.llm_totals()["by_outcome"]["ok"] >= 1


@pytest.mark.llm_server
def test_second_identical_call_makes_no_http_request(real: LLMClient, store: Any) -> None:
    first = real.invoke("Name a colour.", purpose="cache")
    sent = real.stats.http_requests
    assert sent == 1
    again = real.invoke("Name a colour.", purpose="cache")
    assert again == first
    assert real.stats.http_requests == sent  # counted at the HTTP transport
    assert store.llm_totals()["by_outcome"] == {"ok": 1, "error": 0, "parse_error": 0, "cached": 1}
    cached = [r for r in rows(store) if r["outcome"] == "cached"]
    assert cached[0]["tokens_in"] == 0 and cached[0]["tokens_out"] == 0
    # a fresh client on the same store (a re-run) does not pay either, structured calls included
    animal = real.invoke("Name one animal and how many legs it has.", purpose="cache", schema=Animal)
    rerun = LLMClient(real.cfg, store=store, endpoints=real.urls, llama_cpp=True)
    assert rerun.invoke("Name a colour.", purpose="cache") == first
    assert rerun.invoke("Name one animal and how many legs it has.", purpose="cache", schema=Animal) == animal
    assert rerun.stats.http_requests == 0


@pytest.mark.llm_server
def test_max_tokens_reaches_llama_cpp(llama_server: EmbeddedServer) -> None:
    """ChatOpenAI sends max_completion_tokens, which llama-cpp-python ignores; the limit must still hold."""
    client = LLMClient(LLMConfig(max_tokens=4), endpoints=llama_server.base_urls, llama_cpp=True)
    client.invoke("Write a long story about the sea.", purpose="limit", cache=False)
    assert 0 < client.stats.tokens_out <= 4


@pytest.mark.llm_server
@pytest.mark.filterwarnings("ignore:This model does not support OpenAI's structured output")
def test_endpoint_without_json_schema_steps_down(llama_server: EmbeddedServer, store: Any) -> None:
    """llama-cpp-python answers response_format json_schema with a 500: auto mode moves to json_object."""
    client = LLMClient(LLMConfig(base_url=llama_server.base_url, max_tokens=48), store=store)
    assert client.structured_mode == "json_schema"
    animal = client.invoke("Name one animal and how many legs it has.", purpose="fallback", schema=Animal)
    assert isinstance(animal, Animal)
    assert client.structured_mode == "json_object"
    assert store.llm_totals()["by_outcome"]["error"] == 1  # the rejected request, not retried
    assert client.stats.http_requests == 2


# -- retries: the openai client's policy, every attempt recorded (scripted endpoint) -----------


def test_429_waits_for_retry_after(fake_llm: FakeOpenAI, store: Any) -> None:
    fake_llm.queue(Reply(429, headers={"Retry-After": "2"}), Reply(content="fine"))
    client = LLMClient(fast(fake_llm.url), store=store)
    assert client.invoke("hi", purpose="retry") == "fine"
    first, second = fake_llm.requests
    assert 1.95 <= second.at - first.at < 4.0  # the client's first backoff alone is at most 0.5 s
    assert store.llm_totals()["by_outcome"] == {"ok": 1, "error": 1, "parse_error": 0, "cached": 0}
    (error,) = [r for r in rows(store) if r["outcome"] == "error"]
    assert "429" in error["error"] and error["purpose"] == "retry"


def test_retries_back_off_exponentially(fake_llm: FakeOpenAI, store: Any) -> None:
    """The openai client's pacing: 0.5 s, then 1 s, each less up to 25% jitter."""
    fake_llm.queue(Reply(500), Reply(502), Reply(content="third time"))
    client = LLMClient(fast(fake_llm.url, max_attempts=3), store=store)
    assert client.invoke("hi", purpose="pace") == "third time"
    at = [r.at for r in fake_llm.requests]
    assert 0.35 <= at[1] - at[0] < 1.5 and 0.7 <= at[2] - at[1] < 2.5
    assert [r["outcome"] for r in rows(store)] == ["error", "error", "ok"]


def test_a_retry_waiting_out_its_backoff_holds_no_slot(fake_llm: FakeOpenAI) -> None:
    """One slot: a call told to come back in 2 s lets another call through meanwhile."""
    fake_llm.queue(Reply(429, headers={"Retry-After": "2"}), Reply(content="second"), Reply(content="first"))
    client = LLMClient(fast(fake_llm.url, max_concurrency=1))

    async def run() -> list[str]:
        first = asyncio.ensure_future(client.ainvoke("first", purpose="slot"))
        await asyncio.sleep(0.3)
        second = await client.ainvoke("second", purpose="slot")
        return [await first, second]

    assert asyncio.run(run()) == ["first", "second"]
    assert [r.body["messages"][0]["content"] for r in fake_llm.requests] == ["first", "second", "first"]


def test_a_retry_after_beyond_two_minutes_ends_the_call(fake_llm: FakeOpenAI, store: Any) -> None:
    fake_llm.queue(Reply(429, headers={"Retry-After": "600"}))
    client = LLMClient(fast(fake_llm.url), store=store)
    start = time.monotonic()
    with pytest.raises(LLMError, match=r"kept failing \(429\) after 1 attempts"):
        client.invoke("hi", purpose="late")
    assert time.monotonic() - start < 5.0 and len(fake_llm.requests) == 1
    assert store.llm_totals()["by_outcome"]["error"] == 1


def test_500_and_timeout_are_retried(fake_llm: FakeOpenAI, store: Any) -> None:
    fake_llm.queue(Reply(500), Reply(delay_s=3.0), Reply(503), Reply(content="at last"))
    client = LLMClient(fast(fake_llm.url, timeout_s=0.5, max_attempts=4), store=store)
    start = time.monotonic()
    assert client.invoke("hi", purpose="retry") == "at last"
    assert time.monotonic() - start < 5.5  # the slow reply was abandoned at the timeout (backoffs: at most 3.5 s)
    assert len(fake_llm.requests) == 4
    errors = [r["error"] for r in rows(store) if r["outcome"] == "error"]
    assert len(errors) == 3 and any("timed out" in e.lower() for e in errors)


def test_attempts_stop_at_the_cap(fake_llm: FakeOpenAI, store: Any) -> None:
    fake_llm.default = Reply(500)
    client = LLMClient(fast(fake_llm.url, max_attempts=3), store=store)
    with pytest.raises(LLMError, match=r"kept failing \(500\) after 3 attempts"):
        client.invoke("hi", purpose="cap")
    assert len(fake_llm.requests) == 3
    assert store.llm_totals()["by_outcome"]["error"] == 3


def test_client_errors_are_not_retried(fake_llm: FakeOpenAI) -> None:
    fake_llm.queue(Reply(400), Reply(404))
    client = LLMClient(fast(fake_llm.url))
    with pytest.raises(LLMError, match=r"refused the request \(400\)"):
        client.invoke("hi", purpose="4xx")
    with pytest.raises(LLMError, match=r"refused the request \(404\)"):
        client.invoke("hi again", purpose="4xx")
    assert len(fake_llm.requests) == 2


def test_unreachable_endpoint(store: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    client = LLMClient(fast(url, max_attempts=2), store=store)
    with pytest.raises(LLMError, match=rf"cannot reach LLM endpoint {url} after 2 attempts"):
        client.invoke("hi", purpose="down")
    assert store.llm_totals()["by_outcome"]["error"] == 2


def test_concurrency_is_bounded(fake_llm: FakeOpenAI) -> None:
    fake_llm.default = Reply(content="slow", delay_s=0.2)
    client = LLMClient(fast(fake_llm.url, max_concurrency=3))

    async def run() -> None:
        await asyncio.gather(*(client.ainvoke(f"prompt {i}", purpose="bound") for i in range(9)))
        await client.aclose()

    asyncio.run(run())
    assert len(fake_llm.requests) == 9
    assert fake_llm.max_in_flight == 3


def test_calls_spread_over_endpoints(fake_llm: FakeOpenAI) -> None:
    """The embedded server's instances each answer one request at a time: spread the load."""
    other = FakeOpenAI().start()
    try:
        for fake in (fake_llm, other):
            fake.default = Reply(content="x", delay_s=0.2)
        client = LLMClient(fast(fake_llm.url, max_concurrency=4), endpoints=[fake_llm.url, other.url])

        async def run() -> None:
            await asyncio.gather(*(client.ainvoke(f"p{i}", purpose="spread") for i in range(8)))

        asyncio.run(run())
        assert len(fake_llm.requests) == len(other.requests) == 4
        assert fake_llm.max_in_flight == other.max_in_flight == 2
    finally:
        other.stop()


def test_identical_concurrent_calls_pay_once(fake_llm: FakeOpenAI, store: Any) -> None:
    fake_llm.default = Reply(content="shared", delay_s=0.1)
    client = LLMClient(fast(fake_llm.url), store=store)

    async def run() -> list[str]:
        return list(await asyncio.gather(*(client.ainvoke("same", purpose="dedupe") for _ in range(4))))

    assert asyncio.run(run()) == ["shared"] * 4
    assert len(fake_llm.requests) == 1
    assert store.llm_totals()["by_outcome"]["cached"] == 3


def test_variants_and_parameters_are_separate_cache_entries(fake_llm: FakeOpenAI, store: Any) -> None:
    client = LLMClient(fast(fake_llm.url), store=store)
    client.invoke("draw", purpose="v")
    client.invoke("draw", purpose="v", variant=1)
    LLMClient(fast(fake_llm.url, temperature=0.8), store=store).invoke("draw", purpose="v")
    client.invoke("draw", purpose="v", cache=False)
    client.invoke("draw", purpose="v")
    assert len(fake_llm.requests) == 4


# -- structured replies -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["json_schema", "json_object", "prompt"])
def test_unparseable_reply_is_a_recorded_failure(fake_llm: FakeOpenAI, store: Any, mode: str) -> None:
    fake_llm.default = Reply(content="Sure! The animal is a cat.")
    client = LLMClient(fast(fake_llm.url, structured_output=mode), store=store)
    with pytest.raises(ReplyParseError, match="does not fit Animal after one repair request"):
        client.invoke("Name an animal.", purpose="judge", schema=Animal, run_id="run-7")
    assert len(fake_llm.requests) == 2  # the request and exactly one repair
    repair = fake_llm.requests[1].body["messages"]
    assert repair[-2] == {"role": "assistant", "content": "Sure! The animal is a cat."}
    assert "not valid" in repair[-1]["content"] and repair[-1]["role"] == "user"
    calls = rows(store)
    assert [r["outcome"] for r in calls] == ["parse_error", "parse_error"]
    assert all(r["run_id"] == "run-7" and r["tokens_out"] == 3 for r in calls)
    assert rows(store, "llm_cache") == []  # nothing cached, no default returned


def test_repair_attempt_can_succeed(fake_llm: FakeOpenAI, store: Any) -> None:
    fake_llm.queue(Reply(content='{"name": "cat"}'), Reply(content='```json\n{"name": "cat", "legs": 4}\n```'))
    client = LLMClient(fast(fake_llm.url, structured_output="prompt"), store=store)
    assert client.invoke("Name an animal.", purpose="judge", schema=Animal) == Animal(name="cat", legs=4)
    assert "legs" in fake_llm.requests[1].body["messages"][-1]["content"]  # the validation error is shown
    assert [r["outcome"] for r in rows(store)] == ["parse_error", "ok"]
    assert client.invoke("Name an animal.", purpose="judge", schema=Animal) == Animal(name="cat", legs=4)
    assert len(fake_llm.requests) == 2


def test_request_formats_per_mode(fake_llm: FakeOpenAI) -> None:
    fake_llm.default = Reply(content='{"name": "ant", "legs": 6}')
    for mode in ("json_schema", "json_object", "prompt"):
        LLMClient(fast(fake_llm.url, structured_output=mode)).invoke("x", purpose="f", schema=Animal, cache=False)
    by_mode = [r.body.get("response_format") for r in fake_llm.requests]
    assert by_mode[0]["type"] == "json_schema" and by_mode[0]["json_schema"]["name"] == "Animal"
    assert by_mode[1] == {"type": "json_object", "schema": Animal.model_json_schema()}
    assert by_mode[2] is None
    assert "JSON schema" in fake_llm.requests[2].body["messages"][0]["content"]


@pytest.mark.filterwarnings("ignore:This model does not support OpenAI's structured output")
def test_json_schema_rejection_steps_down(fake_llm: FakeOpenAI) -> None:
    refusal = "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model."
    fake_llm.queue(Reply(400, message=refusal), Reply(content='{"name": "ant", "legs": 6}'))
    client = LLMClient(fast(fake_llm.url))
    assert client.invoke("x", purpose="f", schema=Animal).legs == 6
    assert client.structured_mode == "json_object"
    assert fake_llm.requests[1].body["response_format"]["type"] == "json_object"


# -- secrets ------------------------------------------------------------------------------------


def test_api_key_never_reaches_store_logs_or_errors(
    fake_llm: FakeOpenAI, store: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-test-" + "x9" * 20
    monkeypatch.setenv("FACSYNTH_TEST_KEY", secret)
    fake_llm.default = Reply(500, echo_auth=True)  # a server that echoes the key in its errors
    cfg = fast(fake_llm.url, api_key_env="FACSYNTH_TEST_KEY", max_attempts=2)
    client = LLMClient(cfg, store=store)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LLMError) as err:
        client.invoke("hi", purpose="secret")
    assert fake_llm.requests[0].headers["authorization"] == f"Bearer {secret}"  # the key was used
    assert secret not in str(err.value) and "***" in str(err.value)  # echoed, then masked
    assert secret not in caplog.text
    stored = rows(store) + rows(store, "llm_cache")
    assert len(stored) == 2 and secret not in repr(stored) and "***" in stored[0]["error"]
    assert secret not in cfg.model_dump_json() and secret not in repr(client.cfg)
    assert secret not in repr(make_chat_model(cfg))


def test_remote_endpoint_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACSYNTH_NO_SUCH_KEY", raising=False)
    cfg = LLMConfig(base_url="https://llm.example.com/v1", api_key_env="FACSYNTH_NO_SUCH_KEY")
    with pytest.raises(LLMError, match="set the environment variable FACSYNTH_NO_SUCH_KEY"):
        LLMClient(cfg)
    make_chat_model(LLMConfig(base_url="http://localhost:1/v1", api_key_env="FACSYNTH_NO_SUCH_KEY"))  # loopback: fine


def test_cli_reports_totals(fake_llm: FakeOpenAI, store: Any) -> None:
    from typer.testing import CliRunner

    from facsynth.cli import app

    client = LLMClient(fast(fake_llm.url), store=store)
    client.invoke("hi", purpose="cli", run_id="run-1")
    client.invoke("hi", purpose="cli", run_id="run-2")  # served from the cache
    result = CliRunner().invoke(app, ["llm", "totals", "--db", str(store.engine.url), "--run", "run-2"])
    assert result.exit_code == 0, result.output
    lines = {line.strip("│ ").split("│")[0].strip(): line.split("│")[-2].strip() for line in result.output.splitlines() if "│" in line}
    assert lines["calls"] == "1" and lines["cached"] == "1" and lines["ok"] == "0"


# -- pure parts ---------------------------------------------------------------------------------


def test_config_rejects_impossible_settings() -> None:
    with pytest.raises(ValidationError, match="http"):
        LLMConfig(base_url="ftp://example.com")
    with pytest.raises(ValidationError):
        LLMConfig(max_concurrency=0)
    with pytest.raises(ValidationError):
        LLMConfig(structured_output="xml")  # type: ignore[arg-type]


def test_a_config_stored_with_the_retired_retry_pacing_still_loads() -> None:
    """Runs stored before retries moved to the openai client name backoff settings."""
    old = {"base_url": "http://127.0.0.1:1/v1", "max_attempts": 3, "backoff_base_s": 0.5, "backoff_cap_s": 30.0,
           "retry_after_cap_s": 120.0}
    cfg = LLMConfig.model_validate(old)
    assert cfg.max_attempts == 3 and "backoff_base_s" not in cfg.model_dump()
    with pytest.raises(ValidationError, match="backoff_typo"):
        LLMConfig.model_validate({"backoff_typo": 1})


def _status_error(status: int, headers: dict[str, str]) -> Exception:
    import openai

    request = httpx.Request("POST", "http://x/v1/chat/completions")
    response = httpx.Response(status, headers=headers, request=request)
    return openai.APIStatusError("x", response=response, body=None)


def test_what_is_retried() -> None:
    assert is_retryable(_status_error(429, {})) and is_retryable(_status_error(502, {}))
    assert not is_retryable(_status_error(400, {})) and not is_retryable(_status_error(401, {}))
    assert not is_retryable(ValueError("a bug")) and not is_retryable(Exception("anything"))


def test_request_key_covers_what_changes_the_reply() -> None:
    cfg = LLMConfig()
    msgs = to_messages([{"role": "user", "content": "hi"}])
    assert request_key(cfg, msgs) == request_key(cfg, to_messages([("user", "hi")])) == request_key(cfg, to_messages("hi"))
    others = {
        request_key(cfg, msgs, Animal),
        request_key(cfg.model_copy(update={"temperature": 0.5}), msgs),
        request_key(cfg.model_copy(update={"max_tokens": 5}), msgs),
        request_key(cfg.model_copy(update={"model": "other"}), msgs),
        request_key(cfg, msgs, variant=1),
        request_key(cfg, to_messages("hi!")),
    }
    assert request_key(cfg, msgs) not in others and len(others) == 6


def test_invoke_inside_an_event_loop_is_refused(fake_llm: FakeOpenAI) -> None:
    client = LLMClient(fast(fake_llm.url))

    async def run() -> None:
        client.invoke("hi", purpose="x")

    with pytest.raises(RuntimeError, match="await ainvoke"):
        asyncio.run(run())
