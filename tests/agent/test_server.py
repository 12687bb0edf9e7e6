"""The embedded llama.cpp server's lifecycle: it answers, and no process outlives facsynth.

Every test here starts the real server (the bundled SmolLM2-135M GGUF, a second or two per
start) and checks the process table afterwards with a /proc scan.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from facsynth.agent import server as server_mod
from facsynth.agent.config import ServerConfig
from facsynth.agent.server import EmbeddedServer, free_port
from facsynth.errors import LLMError

from endpoints import llama_server_pids

pytestmark = pytest.mark.llm_server
SMALL = {"n_ctx": 512, "threads_per_instance": 1}


def gone(pids: list[int], timeout_s: float = 10.0) -> bool:
    """True once none of ``pids`` is a live embedded server (zombies do not count)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not set(pids) & set(llama_server_pids()):
            return True
        time.sleep(0.1)
    return False


def test_instances_answer_and_stop_cleanly() -> None:
    port = free_port()
    server = EmbeddedServer(ServerConfig(instances=2, **SMALL), model_alias="tiny", port=port)
    with server:
        assert server.running and len(set(server.base_urls)) == 2
        assert server.base_url == f"http://127.0.0.1:{port}/v1"
        for url in server.base_urls:
            models = httpx.get(f"{url}/models", timeout=5).json()
            assert [m["id"] for m in models["data"]] == ["tiny"]
        pids = server.pids
        assert set(pids) <= set(llama_server_pids())
    assert gone(pids, timeout_s=0.5)  # stopped before __exit__ returned
    assert not server.running
    server.stop()  # idempotent


def test_start_proves_each_instance_generates() -> None:
    with EmbeddedServer(ServerConfig(instances=2, **SMALL)) as server:
        assert len(server.checks) == 2 and all(0 < s < 60 for s in server.checks)
    with EmbeddedServer(ServerConfig(instances=1, check_generation=False, **SMALL)) as server:
        assert server.checks == []


TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture
def crashing(monkeypatch: pytest.MonkeyPatch) -> ServerConfig:
    """A server that answers /v1/models and dies with SIGSEGV at its first completion."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    return ServerConfig(instances=1, module="crashing_server", **SMALL)


def test_a_server_that_crashes_at_its_first_token_is_one_clear_error(crashing: ServerConfig) -> None:
    before = set(llama_server_pids())
    server = EmbeddedServer(crashing)
    with pytest.raises(LLMError) as info:
        server.start()
    msg = str(info.value)
    assert "\n" not in msg
    assert "crashed with SIGSEGV at its first completion" in msg
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF' in msg and "-DGGML_AMX_TILE=OFF" in msg and "--no-cache-dir" in msg
    assert not server.running and server.pids == []
    time.sleep(0.2)
    assert set(llama_server_pids()) <= before


def test_an_error_in_the_block_stops_the_server() -> None:
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), EmbeddedServer(ServerConfig(instances=1, **SMALL)) as server:
        pids = server.pids
        raise RuntimeError("boom")
    assert pids and gone(pids, timeout_s=0.5)


def test_startup_failure_names_the_cause_and_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file" * 64)
    before = set(llama_server_pids())
    with pytest.raises(LLMError, match=r"exited at start .*Failed to load model"):
        EmbeddedServer(ServerConfig(gguf=str(bad), instances=1, **SMALL)).start()
    with pytest.raises(LLMError, match=r"did not answer .* within"):
        EmbeddedServer(ServerConfig(instances=1, startup_timeout_s=0.05, **SMALL)).start()
    time.sleep(0.2)
    assert set(llama_server_pids()) <= before


def test_atexit_hook_stops_running_servers() -> None:
    server = EmbeddedServer(ServerConfig(instances=1, **SMALL)).start()
    pids = server.pids
    server_mod.stop_all()  # what atexit runs
    assert not server.running and gone(pids, timeout_s=0.5)


@pytest.fixture
def serve() -> Iterator[subprocess.Popen[str]]:
    """``facsynth llm serve`` in a child process with Ctrl-C's default behaviour."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "facsynth", "llm", "serve", "--instances", "2", "--n-ctx", "512"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 - a shell's `&` ignores SIGINT
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert gone(llama_server_pids(started_by=proc.pid))


def _urls(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    urls = [proc.stdout.readline().strip() for _ in range(2)]
    for url in urls:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1"), urls
        assert httpx.get(f"{url}/models", timeout=5).status_code == 200
    return urls


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 0), (signal.SIGTERM, 128 + signal.SIGTERM)], ids=["ctrl-c", "sigterm"])
def test_cli_serve_stops_its_servers_on_signal(serve: subprocess.Popen[str], sig: signal.Signals, code: int) -> None:
    _urls(serve)
    children = llama_server_pids(started_by=serve.pid)
    assert len(children) == 2
    serve.send_signal(sig)
    assert serve.wait(timeout=30) == code
    assert gone(children, timeout_s=1.0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_servers_die_with_a_killed_parent(serve: subprocess.Popen[str]) -> None:
    _urls(serve)
    children = llama_server_pids(started_by=serve.pid)
    serve.kill()  # SIGKILL: no Python cleanup runs in the parent
    serve.wait()
    assert gone(children, timeout_s=10.0)
