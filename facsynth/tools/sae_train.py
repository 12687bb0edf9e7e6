"""Train a TopK SAE with sae-lens on a local corpus, and report its quality.

The corpus is a text file (documents separated by blank lines) or JSONL (``.jsonl`` or
``.jsonl.gz``) whose rows hold ``messages`` (a chat) or ``text``. When the model has
a chat template, rows are rendered with it, ``text`` as one user message, so the SAE
sees what ``facsynth measure`` reads; only tokens inside message contents are kept
(template tokens such as the system header never reach the SAE, as in ``measure``).

The model is wrapped in sae-lens's ``HookedProxyLM`` hooked on the output of decoder
block ``layer`` (the module ``model.layers.<layer>``; a block that returns a tuple is
read at its first element). Activations of the whole corpus are computed once, a
share of the samples is held out, and sae-lens's ``SAETrainer`` runs over the rest
for as many epochs as ``tokens`` asks: on a CPU, running the language model once is
the expensive part. The held-out tokens give the reported figures: explained
variance, L0 under the SAE's TopK and under the relu reading, dead-feature fraction.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from facsynth.errors import InputError, SAEError
from facsynth.tools.encoder import tokenize_messages
from facsynth.tools.sae import FeatureSAE, file_hash, load_sae, write_sidecar

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""Called as (stage, done, total); stage is "activations" or "training"."""


@dataclass
class TrainConfig:
    """What ``facsynth sae train`` does; one field per CLI option."""

    corpus: Path | list[Path]
    """Text file (documents split by blank lines) or JSONL with ``text`` or ``messages`` rows;
    or a list of such files, read in order as one corpus (kept as a list)."""
    out: Path
    """Directory to write the SAE to (sae-lens format plus facsynth.json)."""
    model: str = "default"
    """Subject model spec for ``facsynth.tools.model.load``."""
    layer: int = 15
    """0-based decoder block whose output the SAE reads."""
    width: int = 4096
    """Number of SAE features (d_sae)."""
    k: int = 32
    """Active features per token under TopK."""
    tokens: int = 1_500_000
    """Training tokens: activation vectors the trainer sees (epochs over the corpus as needed)."""
    context_size: int = 256
    """Tokens per sample at most (longer samples are truncated)."""
    lr: float = 1e-3
    batch_size: int = 256
    """Activation vectors per training step."""
    device: str = "cpu"
    holdout: float = 0.1
    """Share of samples held out for the reported figures."""
    seed: int = 0
    model_batch_size: int = 16
    """Samples per language-model forward pass when collecting activations."""

    def __post_init__(self) -> None:
        files = self.corpus if isinstance(self.corpus, (list, tuple)) else [self.corpus]
        self.corpus = [Path(f).expanduser() for f in files]
        self.out = Path(self.out).expanduser()
        problems = []
        if self.width < 1:
            problems.append(f"width must be positive, got {self.width}")
        if not 1 <= self.k <= max(self.width, 1):
            problems.append(f"k must be between 1 and width ({self.width}), got {self.k}")
        if self.tokens < 1:
            problems.append(f"tokens must be positive, got {self.tokens}")
        if self.context_size < 8:
            problems.append(f"context size must be at least 8, got {self.context_size}")
        if self.batch_size < 1:
            problems.append(f"batch size must be positive, got {self.batch_size}")
        if not self.lr > 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if not 0 < self.holdout < 1:
            problems.append(f"holdout must be between 0 and 1, got {self.holdout}")
        if not self.corpus:
            problems.append("at least one corpus file is needed")
        if problems:
            raise InputError("; ".join(problems))


@dataclass
class Quality:
    """Figures on held-out corpus tokens."""

    explained_variance: float
    """1 - sum |x - x_hat|^2 / sum |x - mean x|^2 under the SAE's own (TopK) reconstruction."""
    l0_topk: float
    """Mean non-zero features per token under the SAE's TopK."""
    l0_relu: float
    """Mean non-zero features per token under the relu reading (TopK off)."""
    dead_fraction: float
    """Share of features that never fire under TopK on the held-out tokens."""
    dead_fraction_relu: float
    """Share of features that never fire under the relu reading."""
    eval_tokens: int
    eval_samples: int


@dataclass
class TrainReport:
    out: Path
    sae: FeatureSAE
    quality: Quality
    corpus_samples: int
    corpus_tokens: int
    train_tokens: int
    """Activation vectors the trainer saw."""
    epochs: float
    seconds: float
    facts: dict[str, Any] = field(default_factory=dict)


# -- corpus ----------------------------------------------------------------------


def read_corpus(path: Path) -> list[dict[str, Any]]:
    """Rows of a corpus file: ``{"messages": [...]}`` or ``{"text": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"corpus not found: {path}")
    name = path.name.lower()
    opener = gzip.open if name.endswith(".gz") else open
    base = name.removesuffix(".gz")
    rows: list[dict[str, Any]] = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            if base.endswith(".jsonl"):
                for n, line in enumerate(f, start=1):
                    if line.strip():
                        rows.append(_corpus_row(line, path, n))
            else:
                for doc in f.read().split("\n\n"):
                    if doc.strip():
                        rows.append({"text": doc.strip()})
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise InputError(f"cannot read corpus {path}: {exc}") from exc
    if not rows:
        raise InputError(f"corpus {path} holds no samples")
    return rows


def _corpus_row(line: str, path: Path, n: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
    if isinstance(row, dict) and isinstance(row.get("messages"), list):
        msgs = row["messages"]
        if msgs and all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in msgs):
            return {"messages": [{"role": str(m["role"]), "content": m["content"]} for m in msgs]}
        raise InputError(f"{path}:{n}: messages must be a list of {{role, content}} objects")
    if isinstance(row, dict) and isinstance(row.get("text"), str) and row["text"].strip():
        return {"text": row["text"]}
    raise InputError(f"{path}:{n}: a row needs 'text' or 'messages'")


def tokenize_row(tokenizer: Any, row: dict[str, Any], max_tokens: int) -> tuple[list[int], list[bool]]:
    """Render one row as ``measure`` reads it; return token ids and the content-token mask."""
    messages = row.get("messages") or [{"role": "user", "content": row["text"]}]
    plain = row.get("text") or "\n".join(m["content"] for m in messages)
    t = tokenize_messages(
        tokenizer, messages, plain, chat=bool(getattr(tokenizer, "chat_template", None)), max_tokens=max_tokens
    )
    return t.input_ids, t.content


# -- activations -------------------------------------------------------------------


@torch.inference_mode()
def collect_activations(
    subject: Any,
    layer: int,
    samples: list[tuple[list[int], list[bool]]],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> Tensor:
    """Output of block ``layer`` at every content token, via sae-lens's HookedProxyLM.

    Returns Float[Tensor, "n_content_tokens d_model"] (float32, CPU), samples in order.
    """
    from sae_lens.load_model import HookedProxyLM

    hook = subject.hook_name(layer)
    block = subject.layers[subject.check_layer(layer)]
    before = set(block._forward_hooks)
    pad = subject.tokenizer.pad_token_id if subject.tokenizer.pad_token_id is not None else 0
    chunks: list[Tensor] = []
    order = sorted(range(len(samples)), key=lambda i: len(samples[i][0]))
    by_index: dict[int, Tensor] = {}
    try:
        # HookedProxyLM registers a permanent forward hook on the block: removed in finally
        proxy = HookedProxyLM(subject.model, subject.tokenizer, hook_names=[hook])
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(samples[i][0]) for i in idx)
            tokens = torch.full((len(idx), width), pad, dtype=torch.long)
            for row, i in enumerate(idx):
                ids = samples[i][0]
                tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            # right padding and a causal model: real positions never see the pads
            _, cache = proxy.run_with_cache(tokens.to(subject.device), names_filter=[hook], stop_at_layer=layer + 1)
            acts = cache[hook]
            for row, i in enumerate(idx):
                mask = torch.tensor(samples[i][1], dtype=torch.bool)
                by_index[i] = acts[row, : len(mask)][mask.to(acts.device)].to("cpu", torch.float32)
            if progress:
                progress("activations", min(start + batch_size, len(order)), len(order))
    finally:
        for key in set(block._forward_hooks) - before:
            del block._forward_hooks[key]
    chunks = [by_index[i] for i in range(len(samples))]
    if not chunks:
        return torch.zeros(0, subject.d_model)
    return torch.cat(chunks)


def _batches(acts: Tensor, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless shuffled batches over the training activations (one shuffle per epoch)."""
    gen = torch.Generator().manual_seed(seed)
    n = acts.shape[0]
    while True:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):
            yield acts[perm[start : start + batch_size]]


# -- training ----------------------------------------------------------------------


@dataclass
class CorpusActivations:
    """A corpus read at one layer: training and held-out activation vectors."""

    train: Tensor
    """Float[Tensor, "n_train d_model"]"""
    eval: Tensor
    """Float[Tensor, "n_eval d_model"]"""
    model_name: str
    model_fingerprint: str
    layer: int
    hook_name: str
    samples: int
    eval_samples: int
    corpus_file: str
    corpus_sha256: str


def corpus_activations(cfg: TrainConfig, subject: Any, *, progress: Progress | None = None) -> CorpusActivations:
    """Read ``cfg.corpus`` through the model once; split samples into training and held-out."""
    rows = [row for file in cfg.corpus for row in read_corpus(file)]
    names = ", ".join(str(f) for f in cfg.corpus)
    layer = subject.check_layer(cfg.layer)
    hook = subject.hook_name(layer)
    samples = [tokenize_row(subject.tokenizer, row, cfg.context_size) for row in rows]
    samples = [s for s in samples if any(s[1])]
    if len(samples) < 2:
        raise InputError(f"corpus {names} has fewer than two samples with content tokens")
    rng = random.Random(cfg.seed)
    order = list(range(len(samples)))
    rng.shuffle(order)
    n_eval = max(1, round(len(samples) * cfg.holdout))
    eval_ids, train_ids = sorted(order[:n_eval]), sorted(order[n_eval:])
    log.info("corpus %s: %d samples (%d held out); collecting block %d activations", names, len(samples), n_eval, layer)
    acts = collect_activations(subject, layer, samples, batch_size=cfg.model_batch_size, progress=progress)
    offsets = [0]
    for _, content in samples:
        offsets.append(offsets[-1] + sum(content))
    return CorpusActivations(
        train=torch.cat([acts[offsets[i] : offsets[i + 1]] for i in train_ids]),
        eval=torch.cat([acts[offsets[i] : offsets[i + 1]] for i in eval_ids]),
        model_name=subject.name,
        model_fingerprint=subject.source.fingerprint,
        layer=layer,
        hook_name=hook,
        samples=len(samples),
        eval_samples=len(eval_ids),
        corpus_file=" + ".join(f.name for f in cfg.corpus),
        corpus_sha256=" + ".join(file_hash(f) for f in cfg.corpus),
    )


def train_sae(cfg: TrainConfig, *, progress: Progress | None = None, subject: Any = None) -> TrainReport:
    """Train a TopK SAE on ``cfg.corpus`` and save it to ``cfg.out``; see the module doc."""
    from facsynth.tools import model as model_mod

    started = time.monotonic()
    if subject is None:
        subject = model_mod.load(cfg.model, device=cfg.device)
    data = corpus_activations(cfg, subject, progress=progress)
    return fit_sae(cfg, data, progress=progress, started=started)


def fit_sae(
    cfg: TrainConfig, data: CorpusActivations, *, progress: Progress | None = None, started: float | None = None
) -> TrainReport:
    """Train the SAE on ``data.train`` with sae-lens, save it, evaluate it on ``data.eval``."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    started = time.monotonic() if started is None else started
    train_acts = data.train
    d_model = train_acts.shape[1]
    batch_size = min(cfg.batch_size, train_acts.shape[0])
    if batch_size < cfg.batch_size:
        log.warning("only %d training tokens: batch size lowered to %d", train_acts.shape[0], batch_size)
    steps = max(1, cfg.tokens // batch_size)

    torch.manual_seed(cfg.seed)
    sae_cfg = TopKTrainingSAEConfig(
        d_in=d_model,
        d_sae=cfg.width,
        k=cfg.k,
        apply_b_dec_to_input=True,
        normalize_activations="expected_average_only_in",  # folded into the weights after training
        dtype="float32",
        device=cfg.device,
    )
    sae = TopKTrainingSAE(sae_cfg)
    with torch.no_grad():  # start b_dec at the data mean: a better centre than zero
        sae.b_dec.copy_(train_acts.mean(0) / _mean_norm_scale(train_acts, d_model))
    meta = sae.cfg.metadata
    meta.model_name = data.model_name
    meta.hook_name = data.hook_name
    meta.model_class_name = "AutoModelForCausalLM"
    meta.context_size = cfg.context_size
    meta.dataset_path = data.corpus_file
    meta.prepend_bos = False
    meta.exclude_special_tokens = True
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=max(1, steps // 20),
        lr_decay_steps=max(1, steps // 5) if steps >= 10 else 0,
        device=cfg.device,
        dead_feature_window=max(10, min(1000, steps // 10)),
        feature_sampling_window=max(steps + 1, 2),
        n_batches_for_norm_estimate=min(50, max(1, train_acts.shape[0] // batch_size)),
        logger=LoggingConfig(log_to_wandb=False),
    )
    provider = _batches(train_acts, batch_size, cfg.seed)
    if progress:  # the trainer first reads some batches to estimate the activation scale
        provider = _counting(provider, steps, progress, skip=trainer_cfg.n_batches_for_norm_estimate)
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=provider)
    log.info("training a TopK SAE (width %d, k %d) for %d steps of %d tokens", cfg.width, cfg.k, steps, batch_size)
    sae = trainer.fit()

    cfg.out.mkdir(parents=True, exist_ok=True)
    sae.save_inference_model(cfg.out)
    _fix_folded_norms(cfg.out)
    feature_sae = load_sae(cfg.out, activation="sae")
    quality = evaluate(feature_sae, data.eval, eval_samples=data.eval_samples)
    train_tokens = steps * batch_size
    epochs = train_tokens / max(1, train_acts.shape[0])
    corpus_tokens = int(train_acts.shape[0] + data.eval.shape[0])
    facts = {
        "model": data.model_name,
        "model_fingerprint": data.model_fingerprint,
        "layer": data.layer,
        "hook_name": data.hook_name,
        "width": cfg.width,
        "k": cfg.k,
        "corpus": {
            "file": data.corpus_file,
            "sha256": data.corpus_sha256,
            "samples": data.samples,
            "content_tokens": corpus_tokens,
            "held_out_samples": data.eval_samples,
        },
        "training": {
            "tokens": train_tokens,
            "epochs": round(epochs, 2),
            "batch_size": batch_size,
            "lr": cfg.lr,
            "context_size": cfg.context_size,
            "seed": cfg.seed,
            "seconds": round(time.monotonic() - started, 1),
            "trainer": "sae-lens SAETrainer (TopKTrainingSAE), activations from HookedProxyLM",
        },
        "quality": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(quality).items()},
        "activation": "relu",
        "recommended_delta": None,
    }
    write_sidecar(cfg.out, facts)
    return TrainReport(
        out=cfg.out,
        sae=load_sae(cfg.out),
        quality=quality,
        corpus_samples=data.samples,
        corpus_tokens=corpus_tokens,
        train_tokens=train_tokens,
        epochs=epochs,
        seconds=time.monotonic() - started,
        facts=facts,
    )


@torch.no_grad()
def evaluate(sae: FeatureSAE, acts: Tensor, *, eval_samples: int = 0, chunk: int = 4096) -> Quality:
    """Quality figures of ``sae`` on activation vectors ``acts`` [n, d_in]."""
    if acts.shape[0] == 0:
        raise InputError("no held-out tokens to evaluate the SAE on")
    mean = acts.mean(0)
    resid = total = l0_topk = l0_relu = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    fired_relu = torch.zeros(sae.d_sae, dtype=torch.bool)
    for start in range(0, acts.shape[0], chunk):
        x = acts[start : start + chunk].to(sae.device, sae.dtype)
        feats = sae.sae.encode(x)
        recon = sae.sae.decode(feats)
        resid += float(((x - recon) ** 2).sum())
        total += float(((x - mean.to(x)) ** 2).sum())
        on = feats > 0
        l0_topk += float(on.sum())
        fired |= on.any(0).cpu()
        on_relu = sae.pre_activations(x) > 0
        l0_relu += float(on_relu.sum())
        fired_relu |= on_relu.any(0).cpu()
    n = acts.shape[0]
    return Quality(
        explained_variance=1.0 - resid / total if total > 0 else float("nan"),
        l0_topk=l0_topk / n,
        l0_relu=l0_relu / n,
        dead_fraction=1.0 - float(fired.float().mean()),
        dead_fraction_relu=1.0 - float(fired_relu.float().mean()),
        eval_tokens=n,
        eval_samples=eval_samples,
    )


def _mean_norm_scale(acts: Tensor, d_in: int) -> float:
    """The factor sae-lens's expected_average_only_in normalisation divides by."""
    return float(acts.norm(dim=-1).mean()) / math.sqrt(d_in)


def _fix_folded_norms(folder: Path) -> None:
    """Saved TopK SAEs have unit decoder rows (folded): record that no rescaling is left.

    Then the saved pre-activation is exactly (h - b_dec) @ W_enc + b_enc.
    """
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(folder))
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        norms = sae.W_dec.norm(dim=-1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
            raise SAEError(f"decoder rows of the trained SAE are not unit norm (max |norm-1| {float((norms - 1).abs().max()):.2e})")
        sae.cfg.rescale_acts_by_decoder_norm = False
        sae.save_model(folder)


def _counting(it: Iterator[Tensor], steps: int, progress: Progress, *, skip: int = 0) -> Iterator[Tensor]:
    done = -skip
    for batch in it:
        done += 1
        if done > 0 and (done % 25 == 0 or done == steps):
            progress("training", min(done, steps), steps)
        yield batch
