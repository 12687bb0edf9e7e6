"""Shared fixtures.

Model and SAE numerics are never mocked: the fixtures load the real default subject
model (SmolLM2-135M-Instruct from the bundled GGUF, de-quantized once into the cache)
and the SAE the package ships, once per session. Tests that change them deep-copy.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from endpoints import FakeOpenAI, llama_server_pids

from facsynth.agent.config import ServerConfig
from facsynth.agent.server import EmbeddedServer
from facsynth.paths import shipped

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PG_URL = os.environ.get("FACSYNTH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
"""PostgreSQL for the tests that need it (skipped with the reason when it is not reachable)."""


def _pg_admin() -> Engine:
    url = make_url(PG_URL)
    host, port = url.host or "127.0.0.1", url.port or 5432
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {host}:{port} ({exc}); set FACSYNTH_TEST_PG_URL")
    return create_engine(url, isolation_level="AUTOCOMMIT")


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    """An engine on a fresh PostgreSQL schema, dropped afterwards."""
    admin = _pg_admin()
    schema = f"facsynth_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"cannot use PostgreSQL at {PG_URL}: {exc.orig}")
    engine = create_engine(make_url(PG_URL), connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database (for what opens its own connections: a
    subprocess, LangGraph's Postgres saver), dropped afterwards."""
    admin = _pg_admin()
    name = f"facsynth_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"cannot create a PostgreSQL database at {PG_URL}: {exc.orig}")
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def subject():
    from facsynth.tools import model

    return model.load()


@pytest.fixture(scope="session")
def default_sae():
    from facsynth.tools.sae import load_sae

    return load_sae()


@pytest.fixture
def reader(subject, default_sae, tmp_path: Path):
    """A reader on the session's model and SAE with a store of its own, per test."""
    from facsynth.db import Store
    from facsynth.tools.reader import Reader

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        yield Reader(subject, default_sae, store=store)
    finally:
        store.close()


@pytest.fixture(scope="session")
def encoder(subject, default_sae):
    from facsynth.tools.encoder import FeatureEncoder

    return FeatureEncoder(subject, default_sae, batch_size=8)


@pytest.fixture(scope="session")
def _llama_server_session() -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(ServerConfig(instances=1, threads_per_instance=1, n_ctx=2048), model_alias="smollm2-135m-instruct")
    try:
        yield server
    finally:
        pids = server.pids
        server.stop()
    assert not set(pids) & set(llama_server_pids()), "the embedded server outlived stop()"


@pytest.fixture
def llama_server(_llama_server_session: EmbeddedServer) -> EmbeddedServer:
    """The real llama.cpp server, one instance, small context, shared by the session (started
    again if a test stopped every server, as the atexit test does); stopped however it ends."""
    if not _llama_server_session.running:
        _llama_server_session.start()
    return _llama_server_session


@pytest.fixture
def fake_llm() -> Iterator[FakeOpenAI]:
    """A scripted loopback OpenAI-compatible endpoint (see ``tests/endpoints.py``)."""
    fake = FakeOpenAI().start()
    try:
        yield fake
    finally:
        fake.stop()


def _head(src: Path, dst: Path, n: int, every: int = 1) -> Path:
    lines = [ln for ln in src.read_text(encoding="utf-8").splitlines() if ln.strip()]
    dst.write_text("\n".join(lines[::every][:n]) + "\n", encoding="utf-8")
    return dst


@pytest.fixture
def demo_data(tmp_path: Path) -> tuple[Path, Path]:
    """(seed, anchor) for quick runs: 20 narrow-seed prompts (3 topics), 48 anchor prompts (all 24)."""
    demo = shipped("demo")
    return _head(demo / "seed.jsonl", tmp_path / "seed.jsonl", 20), _head(demo / "anchor.jsonl", tmp_path / "anchor.jsonl", 48, 5)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llm_server: starts the real embedded llama.cpp server (once per session)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No embedded server may outlive the suite: fail the run if one started here is left."""
    left = llama_server_pids(started_by=os.getpid())
    if left:
        session.config.get_terminal_writer().line(f"embedded LLM server process(es) left after the suite: {left}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
