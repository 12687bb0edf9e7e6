"""Local writer models: parts assembled in order, checked, and never left half-written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from facsynth.agent import writers
from facsynth.agent.writers import WRITERS, WriterModel, assemble, part_files, writer_gguf
from facsynth.errors import LLMError


def _parts(root: Path, prefix: str, chunks: list[bytes]) -> None:
    """Installed part packages as pip lays them out: PREFIXn/__init__.py and PREFIXn/data/partNN.bin."""
    for i, chunk in enumerate(chunks, 1):
        pkg = root / f"{prefix}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)


def _writer(chunks: list[bytes], prefix: str = "fs_test_part", sha: str | None = None) -> WriterModel:
    whole = b"".join(chunks)
    return WriterModel(
        name="tiny", title="tiny", part_prefix=prefix, parts=len(chunks), size=len(whole),
        sha256=sha or hashlib.sha256(whole).hexdigest(), extra="writer-tiny", licence="test",
    )


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[bytes]]:
    # twelve parts: numeric order (1, 2, ..., 10, 11, 12) differs from text order (1, 10, 11, 12, 2, ...)
    chunks = [bytes([i]) * (1000 + i) for i in range(12)]
    _parts(tmp_path / "site", "fs_test_part", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return tmp_path, chunks


def test_parts_are_assembled_in_numeric_order_and_checked(installed: tuple[Path, list[bytes]]) -> None:
    tmp, chunks = installed
    out = assemble(_writer(chunks), tmp / "cache" / "tiny.gguf")
    assert out.read_bytes() == b"".join(chunks)
    assert [p.name for p in (tmp / "cache").iterdir()] == ["tiny.gguf"]


def test_a_mismatch_leaves_nothing_behind(installed: tuple[Path, list[bytes]]) -> None:
    tmp, chunks = installed
    with pytest.raises(LLMError, match=r"does not match .* --force-reinstall"):
        assemble(_writer(chunks, sha="0" * 64), tmp / "cache" / "tiny.gguf")
    assert list((tmp / "cache").iterdir()) == []


def test_missing_parts_name_the_extra_to_install(installed: tuple[Path, list[bytes]]) -> None:
    _, chunks = installed
    with pytest.raises(LLMError, match=r"not installed \(12 of its 12 parts missing.*pip install 'facsynth\[writer-tiny\]'"):
        part_files(_writer(chunks, prefix="fs_absent_part"))


def test_writer_gguf_assembles_once(installed: tuple[Path, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    tmp, chunks = installed
    monkeypatch.setitem(WRITERS, "tiny", _writer(chunks))
    first = writer_gguf("tiny", tmp / "cache")
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(writers, "assemble", lambda *a: pytest.fail("assembled twice"))
    assert writer_gguf("tiny", tmp / "cache") == first and first.stat().st_mtime_ns == stamp
    with pytest.raises(LLMError, match="unknown writer 'nope'; choose one of: qwen2.5-coder-1.5b"):
        writer_gguf("nope")


@pytest.mark.llm_server
def test_the_real_small_writer_serves_and_generates() -> None:
    small = WRITERS["qwen2.5-coder-0.5b"]
    try:
        part_files(small)
    except LLMError:
        pytest.skip(f"writer {small.name} is not installed ({small.install})")
    from facsynth.agent.config import ServerConfig
    from facsynth.agent.server import EmbeddedServer

    with EmbeddedServer(ServerConfig(gguf=small.name, instances=1, n_ctx=512), model_alias=small.name) as server:
        assert len(server.checks) == 1  # it generated its start-up token
