"""Sparse autoencoders: load one, read features with it, import the authors' checkpoints.

An SAE is named by a spec string:

* ``None`` or ``default``: the SAE this package ships for the default model
  (``facsynth/data/sae/<DEFAULT_SAE>/``);
* the name of another SAE the package ships (a folder of ``facsynth/data/sae/``, e.g.
  ``smollm2-135m-l15-w4096-k32-real``, trained on the chat corpus plus real human text);
* a local directory in sae-lens's on-disk format (``cfg.json`` +
  ``sae_weights.safetensors``), loaded with ``SAE.load_from_disk``;
* ``release:sae_id``: a pretrained SAE from sae-lens's directory, downloaded with
  ``SAE.from_pretrained`` (online users only).

Next to the sae-lens files a directory may hold ``facsynth.json``: facsynth's own
facts about the SAE (the reading it recommends, the corpus it was trained on, its
quality figures). :class:`FeatureSAE` reads it when present.

Two readings of the features (``activation``):

* ``relu``: TopK switched off, as the authors read their SAEs:
  ``ReLU((h - b_dec) @ W_enc + b_enc)``, after any input normalisation the sae-lens
  config asks for. Many more features are non-zero than under TopK.
* ``sae``: the SAE's own ``encode`` (TopK for TopK SAEs, JumpReLU thresholds, ...).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from facsynth import paths
from facsynth.errors import SAEError

log = logging.getLogger(__name__)

Activation = Literal["relu", "sae"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
DEFAULT_SAE = "smollm2-135m-l15-w4096-k32"
"""Directory name of the shipped default SAE under ``facsynth/data/sae/``."""
SIDECAR = "facsynth.json"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
AUTHORS_DEFAULT_K = 20
"""The authors anneal k from 200 down to 20; their final SAEs run with k = 20."""

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


class FeatureSAE:
    """A sae-lens SAE plus what facsynth needs to know to read features with it."""

    def __init__(
        self,
        sae: Any,
        *,
        name: str,
        hash: str,
        activation: Activation = "relu",
        facts: dict[str, Any] | None = None,
        path: Path | None = None,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise SAEError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.sae = sae
        self.name = name
        self.hash = hash
        """Short sha256 of the weights file: identifies the SAE in caches and in the store."""
        self.activation: Activation = activation
        self.facts: dict[str, Any] = dict(facts or {})
        """The contents of ``facsynth.json`` (empty when the directory has none)."""
        self.path = path
        if activation == "relu" and not _has_linear_encoder(sae):
            raise SAEError(
                f"SAE {name} ({sae.cfg.architecture()}) has no plain W_enc/b_enc encoder for the relu reading; "
                "use activation 'sae'"
            )

    # -- facts -----------------------------------------------------------------

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def architecture(self) -> str:
        return str(self.sae.cfg.architecture())

    @property
    def k(self) -> int | None:
        """k of a TopK SAE (None for other architectures)."""
        k = getattr(self.sae.cfg, "k", None)
        return int(k) if k is not None else None

    @property
    def model_name(self) -> str | None:
        """The model the SAE was trained on, as recorded in its sae-lens metadata."""
        name = self.sae.cfg.metadata.model_name
        return str(name) if name else self.facts.get("model")

    @property
    def hook_name(self) -> str | None:
        name = self.sae.cfg.metadata.hook_name
        return str(name) if name else None

    @property
    def layer(self) -> int | None:
        """0-based decoder block whose output the SAE reads, if recorded."""
        if isinstance(self.facts.get("layer"), int):
            return int(self.facts["layer"])
        layer = layer_from_hook_name(self.hook_name)
        if layer is None and self.sae.cfg.metadata.hook_layer is not None:
            layer = int(self.sae.cfg.metadata.hook_layer)
        return layer

    @property
    def recommended_delta(self) -> float | None:
        """The activation threshold facsynth.json recommends for this SAE's reading, if any."""
        by_mode = self.facts.get("recommended_deltas")
        if isinstance(by_mode, dict) and by_mode.get(self.activation) is not None:
            return float(by_mode[self.activation])
        if self.facts.get("recommended_delta") is not None and self.facts.get("activation", "relu") == self.activation:
            return float(self.facts["recommended_delta"])
        return None

    @property
    def device(self) -> torch.device:
        return self.sae.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.sae.W_enc.dtype

    def __repr__(self) -> str:
        return (
            f"FeatureSAE({self.name!r}, d_in={self.d_in}, d_sae={self.d_sae}, model={self.model_name!r}, "
            f"layer={self.layer}, activation={self.activation!r}, hash={self.hash!r})"
        )

    # -- use -------------------------------------------------------------------

    def check_fits(self, d_model: int, model_name: str | None = None) -> None:
        """Fail with one line when the SAE's input width is not the model's hidden size."""
        if self.d_in != d_model:
            raise SAEError(
                f"SAE {self.name} reads vectors of width {self.d_in} but model {model_name or '?'} "
                f"has hidden size {d_model}"
            )
        if model_name and self.model_name and not _same_model(self.model_name, model_name):
            log.warning("SAE %s was trained on model %s but is read with model %s", self.name, self.model_name, model_name)

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> FeatureSAE:
        """Move the SAE (in place) and return self."""
        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                raise SAEError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
            dtype = _DTYPES[dtype]
        kwargs: dict[str, Any] = {}
        if device is not None:
            kwargs["device"] = device
        if dtype is not None:
            kwargs["dtype"] = dtype
        if kwargs:
            self.sae = self.sae.to(**kwargs)
        return self

    @torch.no_grad()
    def pre_activations(self, h: Tensor) -> Tensor:
        """``(h - b_dec * apply_b_dec_to_input) @ W_enc + b_enc`` after the config's input normalisation.

        h: Float[Tensor, "... d_in"] -> Float[Tensor, "... d_sae"]
        """
        sae = self.sae
        if h.shape[-1] != self.d_in:
            raise SAEError(f"SAE {self.name} reads vectors of width {self.d_in}, got width {h.shape[-1]}")
        hidden_pre = sae.process_sae_in(h.to(sae.W_enc.device)) @ sae.W_enc + sae.b_enc
        if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
            hidden_pre = hidden_pre * sae.W_dec.norm(dim=-1)
        return hidden_pre

    @torch.no_grad()
    def encode(self, h: Tensor) -> Tensor:
        """Feature activations of residual vectors under this SAE's reading.

        h: Float[Tensor, "... d_in"] -> Float[Tensor, "... d_sae"], non-negative.
        """
        if self.activation == "relu":
            return torch.relu(self.pre_activations(h))
        if h.shape[-1] != self.d_in:
            raise SAEError(f"SAE {self.name} reads vectors of width {self.d_in}, got width {h.shape[-1]}")
        return self.sae.encode(h.to(self.sae.W_enc.device))

    @torch.no_grad()
    def reconstruct(self, h: Tensor) -> Tensor:
        """The SAE's own reconstruction (its own activation, whatever the reading).

        h: Float[Tensor, "... d_in"] -> Float[Tensor, "... d_in"]
        """
        sae = self.sae
        return sae.decode(sae.encode(h.to(sae.W_enc.device)))


# -- loading -------------------------------------------------------------------


def default_sae_dir() -> Path:
    """The shipped default SAE's directory."""
    return paths.shipped("sae", DEFAULT_SAE)


def load_sae(
    spec: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    activation: Activation | None = None,
) -> FeatureSAE:
    """Load the SAE named by ``spec`` (see the module doc).

    ``activation`` None takes the reading ``facsynth.json`` recommends, else ``relu``
    (the authors' reading).
    """
    if dtype not in _DTYPES:
        raise SAEError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}")
    if activation is not None and activation not in ACTIVATIONS:
        raise SAEError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    spec_str = str(spec) if spec is not None else "default"
    if spec_str == "default":
        folder = default_sae_dir()
        if not folder.is_dir():
            raise SAEError(f"the default SAE is missing from the installed package ({folder}); reinstall facsynth")
        return _load_dir(folder, device=device, dtype=dtype, activation=activation)
    path = Path(spec_str).expanduser()
    if not path.exists() and re.fullmatch(r"[a-z0-9][a-z0-9._-]*", spec_str) and paths.shipped("sae", spec_str).is_dir():
        path = paths.shipped("sae", spec_str)
    if path.exists() or spec_str.startswith((".", "/", "~")) or ":" not in spec_str:
        return _load_dir(path, device=device, dtype=dtype, activation=activation)
    release, _, sae_id = spec_str.partition(":")
    return _load_pretrained(release, sae_id, device=device, dtype=dtype, activation=activation)


def read_sidecar(folder: Path) -> dict[str, Any]:
    """facsynth.json of an SAE directory ({} when absent)."""
    file = folder / SIDECAR
    if not file.is_file():
        return {}
    try:
        facts = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEError(f"SAE {folder}: {SIDECAR} is unreadable: {_one_line(exc)}") from exc
    if not isinstance(facts, dict):
        raise SAEError(f"SAE {folder}: {SIDECAR} must hold a JSON object")
    return facts


def write_sidecar(folder: Path, facts: dict[str, Any]) -> Path:
    """Write facsynth.json (merging nothing: the caller passes the whole record)."""
    file = Path(folder) / SIDECAR
    file.write_text(json.dumps(facts, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return file


def _load_dir(
    folder: Path, *, device: str | torch.device, dtype: str, activation: Activation | None
) -> FeatureSAE:
    from sae_lens import SAE

    if not folder.is_dir():
        raise SAEError(
            f"SAE not found: {folder} (give 'default', a directory with {CFG_FILE} and {WEIGHTS_FILE}, "
            "or release:sae_id)"
        )
    missing = [f for f in (CFG_FILE, WEIGHTS_FILE) if not (folder / f).is_file()]
    if missing:
        raise SAEError(f"SAE directory {folder} lacks {' and '.join(missing)} (not sae-lens format)")
    try:
        cfg = json.loads((folder / CFG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEError(f"SAE {folder}: {CFG_FILE} is not valid JSON: {_one_line(exc)}") from exc
    if not isinstance(cfg, dict) or not {"d_in", "d_sae"} <= cfg.keys():
        raise SAEError(f"SAE {folder}: {CFG_FILE} has no d_in/d_sae: not a sae-lens config")
    facts = read_sidecar(folder)
    try:
        sae = SAE.load_from_disk(str(folder), device=str(device), dtype=dtype)
    except Exception as exc:  # sae-lens/safetensors raise many types for broken files
        raise SAEError(f"cannot load SAE {folder}: {_one_line(exc)}") from exc
    sae.eval()
    chosen = activation or facts.get("activation") or "relu"
    return FeatureSAE(
        sae,
        name=folder.resolve().name,
        hash=file_hash(folder / WEIGHTS_FILE),
        activation=chosen,
        facts=facts,
        path=folder,
    )


def _load_pretrained(
    release: str, sae_id: str, *, device: str | torch.device, dtype: str, activation: Activation | None
) -> FeatureSAE:
    from sae_lens import SAE

    if not release or not sae_id:
        raise SAEError(f"give a pretrained SAE as release:sae_id, got {release}:{sae_id}")
    try:
        sae = SAE.from_pretrained(release, sae_id, device=str(device), dtype=dtype)
    except Exception as exc:  # network, hub and registry errors
        raise SAEError(f"cannot load pretrained SAE {release}:{sae_id}: {_one_line(exc)}") from exc
    sae.eval()
    return FeatureSAE(sae, name=f"{release}/{sae_id}", hash=tensor_hash(sae.state_dict()), activation=activation or "relu")


# -- the authors' checkpoints ------------------------------------------------


def import_authors_checkpoint(
    src: str | Path,
    out_dir: str | Path,
    *,
    model_name: str | None = None,
    layer: int | None = None,
    k: int | None = None,
) -> Path:
    """Convert the authors' TopK checkpoint to sae-lens format; return ``out_dir``.

    The checkpoint is ``torch.save({"weight": {"W_enc": [d_inp, d_hide], "b_enc": [d_hide],
    "b_dec": [d_inp], "mask": [d_hide]}, "config": {"d_inp", "d_hide"[, "topK"]}})`` with a
    tied decoder ``W_dec = W_enc.T``. ``k`` defaults to the checkpoint's ``topK``, else 20.
    ``mask`` only gates features when the authors edit activations, so it is not carried over.
    """
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    src = Path(src).expanduser()
    out = Path(out_dir).expanduser()
    if not src.is_file():
        raise SAEError(f"checkpoint not found: {src}")
    try:
        states = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle and zip errors of every kind
        raise SAEError(f"{src} is not a readable torch checkpoint: {_one_line(exc)}") from exc
    if not isinstance(states, dict) or not isinstance(states.get("weight"), dict) or not isinstance(states.get("config"), dict):
        raise SAEError(f"{src} is not the authors' format: expected a dict with 'weight' and 'config'")
    weight, config = states["weight"], states["config"]
    try:
        d_in, d_sae = int(config["d_inp"]), int(config["d_hide"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SAEError(f"{src}: config must hold integers d_inp and d_hide") from exc
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "b_dec": (d_in,)}
    for key, shape in expected.items():
        tensor = weight.get(key)
        if not isinstance(tensor, Tensor):
            raise SAEError(f"{src}: weight has no tensor {key!r}")
        if tuple(tensor.shape) != shape:
            raise SAEError(f"{src}: {key} has shape {list(tensor.shape)}, expected {list(shape)} from config")
    mask = weight.get("mask")
    if isinstance(mask, Tensor) and not bool(torch.all(mask == 1)):
        log.warning("%s: mask is not all ones; it only gates edited activations and is not carried over", src)
    if k is None:
        k = int(config.get("topK", AUTHORS_DEFAULT_K))
    if not 1 <= k <= d_sae:
        raise SAEError(f"k must be between 1 and the SAE width {d_sae}, got {k}")
    if layer is not None and layer < 0:
        raise SAEError(f"layer must be a 0-based block index, got {layer}")

    metadata = SAEMetadata(
        model_name=model_name,
        hook_name=f"model.layers.{layer}" if layer is not None else None,
        model_class_name="AutoModelForCausalLM",
        source=f"authors' TopK checkpoint {src.name}",
    )
    cfg = TopKSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        apply_b_dec_to_input=True,
        rescale_acts_by_decoder_norm=False,  # the authors' decoder rows are not unit norm
        dtype="float32",
        device="cpu",
        metadata=metadata,
    )
    sae = TopKSAE(cfg)
    w_enc = weight["W_enc"].detach().to(torch.float32)
    state = {
        "W_enc": w_enc.clone().contiguous(),
        "W_dec": w_enc.T.clone().contiguous(),
        "b_enc": weight["b_enc"].detach().to(torch.float32).clone(),
        "b_dec": weight["b_dec"].detach().to(torch.float32).clone(),
    }
    sae.load_state_dict(state, strict=True)
    out.mkdir(parents=True, exist_ok=True)
    sae.save_model(out)
    write_sidecar(
        out,
        {
            "source": f"authors' TopK checkpoint {src.name} (sha256 {file_hash(src)})",
            "model": model_name,
            "layer": layer,
            "width": d_sae,
            "k": k,
            "activation": "relu",
            "recommended_delta": 0.0,
        },
    )
    return out


# -- helpers ---------------------------------------------------------------------


def layer_from_hook_name(hook_name: str | None) -> int | None:
    """The 0-based block index whose output a hook reads.

    ``model.layers.15`` (HookedProxyLM) and ``blocks.15.hook_resid_post`` give 15;
    ``blocks.15.hook_resid_pre`` (the input of block 15) gives 14.
    """
    if not hook_name:
        return None
    match = re.search(r"(?:^|\.)(?:layers|blocks|h)\.(\d+)(?:\.|$)", hook_name)
    if not match:
        return None
    layer = int(match.group(1))
    if hook_name.endswith("hook_resid_pre"):
        return layer - 1 if layer > 0 else None
    return layer


def file_hash(file: Path) -> str:
    """sha256 of a file, first 16 hex digits."""
    h = hashlib.sha256()
    with Path(file).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def tensor_hash(state: dict[str, Tensor]) -> str:
    """sha256 over a state dict's tensors in key order, first 16 hex digits."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _has_linear_encoder(sae: Any) -> bool:
    return isinstance(getattr(sae, "W_enc", None), Tensor) and isinstance(getattr(sae, "b_enc", None), Tensor)


def _same_model(a: str, b: str) -> bool:
    def norm(name: str) -> str:
        return re.sub(r"[^a-z0-9]", "", Path(name).name.lower().removesuffix(".gguf"))

    return norm(a) == norm(b) or norm(a) in norm(b) or norm(b) in norm(a)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
