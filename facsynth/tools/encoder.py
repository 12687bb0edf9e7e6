"""Read samples through the subject model and the SAE, in batches.

For every sample the encoder

1. renders it (chat template for messages and plain prompts, or raw text) and
   tokenizes it, marking which tokens belong to message *contents*: every template
   token (system header, role markers, end-of-turn) is excluded from pooling, as the
   authors skip the template's system tokens;
2. runs the model only up to the hooked block. Layer ``L`` means the output of decoder
   block ``L`` (0-based, so ``L=15`` is ``hidden_states[16]`` in transformers'
   ``output_hidden_states`` numbering); a forward hook captures it and stops the pass,
   so no block after ``L`` is computed;
3. encodes the content tokens with the SAE and keeps, per feature, the max over the
   sample's content tokens: a_i(x) = max_t f_i(h_t).

Samples are batched by length (right padding with an attention mask, so a sample's
numbers do not depend on its batch) and streamed: memory is bounded by one chunk.

The template's fixed prefix (SmolLM2's default system header is 24 of a demo prompt's
44 tokens) is the same for every sample that shares it and never pooled, so it is run
through the model once: its keys and values, up to the hooked block, are kept in a
small cache and every batch continues from them. Attention is causal, so each content
token sees exactly what a full forward would show it; only float rounding differs.
"""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Literal

import numpy as np
import torch
from transformers import DynamicCache

from facsynth.errors import InputError, ModelError
from facsynth.records import SampleFeatures
from facsynth.tools.datasets import Sample
from facsynth.tools.model import SubjectModel
from facsynth.tools.sae import FeatureSAE

log = logging.getLogger(__name__)

TemplateMode = Literal["auto", "chat", "raw"]
Progress = Callable[[int, int], None]
"""Called after each batch with (samples done in the batch, content tokens in the batch)."""


class _StopForward(Exception):
    """Raised by the capture hook: nothing past the hooked block is computed."""


@dataclass
class Tokenized:
    """One rendered and tokenized sample."""

    input_ids: list[int]
    content: list[bool]
    """True where the token belongs to a message's content (template tokens are False)."""
    truncated: bool = False

    @property
    def n_content(self) -> int:
        return sum(self.content)

    @property
    def n_prefix(self) -> int:
        """Leading template tokens, before the first content token: never pooled."""
        return self.content.index(True) if True in self.content else 0


def tokenize_messages(tokenizer: object, messages: list[dict], plain_text: str, *, chat: bool, max_tokens: int) -> Tokenized:
    """Render a sample and mark its content tokens: the one rendering ``measure`` and ``sae train`` share.

    ``chat``: apply the chat template and keep only tokens inside message contents
    (found through the offset mapping, so every template token is excluded). Otherwise
    tokenize ``plain_text`` with the tokenizer's special tokens, which never count.
    """
    if chat:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
        spans, cursor = [], 0
        for m in messages:
            start = rendered.find(m["content"], cursor)
            if start < 0:  # a template that rewrites contents: count the whole render
                spans, cursor = [(0, len(rendered))], len(rendered)
                break
            spans.append((start, start + len(m["content"])))
            cursor = start + len(m["content"])
        enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        content = [e > s and any(s < e2 and e > s2 for s2, e2 in spans) for s, e in enc["offset_mapping"]]
    else:
        enc = tokenizer(plain_text, add_special_tokens=True, return_special_tokens_mask=True)
        ids = list(enc["input_ids"])
        content = [not special for special in enc["special_tokens_mask"]]
    truncated = len(ids) > max_tokens
    return Tokenized(ids[:max_tokens], content[:max_tokens], truncated)


MIN_PREFIX = 4
"""A shared prefix shorter than this is run with every sample: a cache would not pay."""
PREFIX_CACHE_SIZE = 8
_KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Keys and values per block 0..L of one prefix, batch 1."""


class FeatureEncoder:
    """Batched reader of SAE features at one layer of a subject model.

    ``reuse_prefix`` (default on) runs a shared template prefix once instead of with
    every sample (see the module docstring); off, every token of every sample is run.
    """

    def __init__(
        self,
        subject: SubjectModel,
        sae: FeatureSAE | None,
        layer: int | None = None,
        *,
        template: TemplateMode = "auto",
        batch_size: int = 32,
        max_tokens: int = 512,
        chunk_size: int = 512,
        keep_pooled: bool = True,
        reuse_prefix: bool = True,
    ) -> None:
        if layer is None:
            if sae is None or sae.layer is None:
                named = "no SAE" if sae is None else f"SAE {sae.name} records no layer"
                raise ModelError(f"{named}: give the layer to read")
            layer = sae.layer
        self.layer = subject.check_layer(layer)
        if sae is not None:
            sae.check_fits(subject.d_model, subject.name)
            if sae.layer is not None and sae.layer != self.layer:
                log.warning("SAE %s was trained on block %d but block %d is read", sae.name, sae.layer, self.layer)
        if batch_size < 1 or max_tokens < 1 or chunk_size < 1:
            raise InputError("batch_size, max_tokens and chunk_size must be positive")
        self.subject = subject
        self.sae = sae.to(subject.device, subject.dtype) if sae is not None else None
        """None: the encoder only gives pooled hidden states (:meth:`pooled`)."""
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.chunk_size = max(chunk_size, batch_size)
        self.keep_pooled = keep_pooled
        tok = subject.tokenizer
        has_template = bool(getattr(tok, "chat_template", None))
        if template == "chat" and not has_template:
            raise ModelError(f"model {subject.name} has no chat template; use template 'raw'")
        self.template: Literal["chat", "raw"] = "chat" if template == "chat" or (template == "auto" and has_template) else "raw"
        self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        window = getattr(subject.model.config.get_text_config(decoder=True), "sliding_window", None)
        # a prefix longer than a sliding window would be cropped in the cache: never reuse one
        self._max_prefix = min(int(window or max_tokens), max_tokens) - 1
        self.reuse_prefix = reuse_prefix
        self._prefixes: OrderedDict[tuple[int, ...], _KV] = OrderedDict()
        base = getattr(subject.model, subject.model.base_model_prefix, subject.model)
        # transformers renamed the argument (``past_key_values`` until 5.x, then ``cache``)
        self._cache_kwarg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    # -- tokenization ------------------------------------------------------------

    def tokenize(self, sample: Sample) -> Tokenized:
        """Render and tokenize one sample, marking content tokens."""
        messages = [{"role": m["role"], "content": m["content"]} for m in sample.as_messages]
        return tokenize_messages(
            self.subject.tokenizer, messages, sample.plain_text, chat=self.template == "chat", max_tokens=self.max_tokens
        )

    # -- model -------------------------------------------------------------------

    @torch.inference_mode()
    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, past_key_values: DynamicCache | None = None
    ) -> torch.Tensor:
        """Output of the hooked block, [batch, seq, d_model]; blocks after it never run.

        With ``past_key_values`` (a cache filled for blocks 0..L), ``input_ids`` continue
        it and ``attention_mask`` covers the cached positions too.
        """
        captured: list[torch.Tensor] = []

        def capture(_module: torch.nn.Module, _args: object, output: object) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _StopForward

        model = self.subject.model
        base = getattr(model, model.base_model_prefix, model)
        handle = self.subject.layers[self.layer].register_forward_hook(capture)
        try:
            if past_key_values is None:
                base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            else:
                cache = {self._cache_kwarg: past_key_values}
                base(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **cache)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ModelError(f"block {self.layer} of {self.subject.name} was never reached")
        return captured[0]

    def _shared_prefix(self, batch: Sequence[Tokenized]) -> int:
        """Length of the template prefix every sample of ``batch`` shares (0: none worth caching)."""
        if not self.reuse_prefix:
            return 0
        n = min(t.n_prefix for t in batch)
        first = batch[0].input_ids
        for t in batch[1:]:
            while n and t.input_ids[:n] != first[:n]:
                n -= 1
        n = min(n, self._max_prefix)
        return n if n >= MIN_PREFIX else 0

    def _prefix(self, ids: tuple[int, ...]) -> _KV:
        """The cached keys and values of a prefix, computed on first use (LRU)."""
        hit = self._prefixes.get(ids)
        if hit is not None:
            self._prefixes.move_to_end(ids)
            return hit
        device = self.subject.device
        cache = DynamicCache(config=self.subject.model.config)
        t = torch.tensor([ids], device=device)
        self.hidden_states(t, torch.ones_like(t), past_key_values=cache)
        kv = [(cache.layers[i].keys, cache.layers[i].values) for i in range(self.layer + 1)]
        self._prefixes[ids] = kv
        if len(self._prefixes) > PREFIX_CACHE_SIZE:
            self._prefixes.popitem(last=False)
        return kv

    def forward_batch(self, batch: Sequence[Tokenized]) -> tuple[torch.Tensor, int]:
        """Hidden states of the hooked block for a batch, right-padded: ``(h, skipped)``.

        ``h`` is ``[batch, width, d_model]`` for positions ``skipped..`` of every sample;
        the first ``skipped`` positions are the shared template prefix, read from the
        prefix cache (never pooled, so never returned).
        """
        device = self.subject.device
        skip = self._shared_prefix(batch)
        width = max(len(t.input_ids) for t in batch) - skip
        ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        attn = torch.zeros((len(batch), skip + width), dtype=torch.long)
        for row, t in enumerate(batch):
            n = len(t.input_ids)
            ids[row, : n - skip] = torch.tensor(t.input_ids[skip:])
            attn[row, :n] = 1
        if not skip:
            return self.hidden_states(ids.to(device), attn.to(device)), 0
        cache = DynamicCache(config=self.subject.model.config)
        for layer, (k, v) in enumerate(self._prefix(tuple(batch[0].input_ids[:skip]))):
            cache.update(k.expand(len(batch), -1, -1, -1), v.expand(len(batch), -1, -1, -1), layer)
        return self.hidden_states(ids.to(device), attn.to(device), past_key_values=cache), skip

    def batches(self, toks: Sequence[Tokenized]) -> Iterator[list[int]]:
        """Indices of ``toks`` in batches: samples sharing a template prefix together, then by length."""
        def key(i: int) -> tuple[tuple[int, ...], int]:
            t = toks[i]
            return (tuple(t.input_ids[: t.n_prefix]) if self.reuse_prefix else (), len(t.input_ids))

        order = sorted(range(len(toks)), key=key)
        batch: list[int] = []
        for i in order:
            if batch and (len(batch) == self.batch_size or key(i)[0] != key(batch[0])[0]):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    # -- encoding ----------------------------------------------------------------

    def encode(self, samples: Iterable[Sample], progress: Progress | None = None) -> Iterator[SampleFeatures]:
        """Yield one :class:`SampleFeatures` per sample, in input order, streamed by chunks."""
        it = iter(samples)
        while chunk := list(islice(it, self.chunk_size)):
            yield from self._encode_chunk(chunk, progress)

    def encode_one(self, sample: Sample) -> SampleFeatures:
        return next(self.encode([sample]))

    def pooled(self, samples: Sequence[Sample], progress: Progress | None = None) -> np.ndarray:
        """Hidden states of the hooked block mean-pooled over content tokens, [n, d_model] float32.

        The same forward and pooling as :meth:`encode`'s ``pooled`` but without the SAE, so it
        works with no SAE at all (frozen features for a downstream probe).
        """
        out = np.zeros((len(samples), self.subject.d_model), dtype=np.float32)
        for start in range(0, len(samples), self.chunk_size):
            chunk = samples[start : start + self.chunk_size]
            toks = self._tokenize_checked(chunk)
            for idx in self.batches(toks):
                h, skip = self.forward_batch([toks[i] for i in idx])
                with torch.inference_mode():
                    for row, i in enumerate(idx):
                        t = toks[i]
                        mask = torch.zeros(h.shape[1], dtype=torch.bool, device=h.device)
                        mask[: len(t.content) - skip] = torch.tensor(t.content[skip:], device=h.device)
                        out[start + i] = h[row][mask].float().mean(dim=0).cpu().numpy()
                if progress is not None:
                    progress(len(idx), sum(toks[i].n_content for i in idx))
        return out

    def _tokenize_checked(self, chunk: Sequence[Sample]) -> list[Tokenized]:
        toks = [self.tokenize(s) for s in chunk]
        for i, t in enumerate(toks):
            if t.n_content == 0:
                raise InputError(f"sample {i + 1} of a chunk has no content tokens: {chunk[i].plain_text[:60]!r}")
        return toks

    def _encode_chunk(self, chunk: Sequence[Sample], progress: Progress | None) -> list[SampleFeatures]:
        if self.sae is None:
            raise ModelError("this encoder has no SAE: it reads pooled hidden states only")
        toks = self._tokenize_checked(chunk)
        out: list[SampleFeatures | None] = [None] * len(chunk)
        for idx in self.batches(toks):
            results = self._encode_batch([toks[i] for i in idx])
            for i, (n_tok, ids, acts, pooled) in zip(idx, results):
                out[i] = SampleFeatures(chunk[i].sample_hash, n_tok, ids, acts, pooled)
            if progress is not None:
                progress(len(idx), sum(toks[i].n_content for i in idx))
        return out  # type: ignore[return-value]

    def _encode_batch(self, batch: Sequence[Tokenized]) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
        h, skip = self.forward_batch(batch)
        content = torch.zeros(h.shape[:2], dtype=torch.bool)
        for row, t in enumerate(batch):
            content[row, : len(t.content) - skip] = torch.tensor(t.content[skip:])
        content = content.to(h.device)
        lengths = content.sum(dim=1)
        with torch.inference_mode():
            tokens = h[content]  # [n_content_tokens, d_model], row-major: samples stay contiguous
            acts = self.sae.encode(tokens).float()
            per_sample = torch.split(acts, lengths.tolist())
            maxes = torch.stack([a.amax(dim=0) for a in per_sample]).cpu()
            pooled = None
            if self.keep_pooled:
                pooled = torch.stack([x.mean(dim=0) for x in torch.split(tokens.float(), lengths.tolist())]).cpu().numpy()
        results = []
        for row in range(len(batch)):
            m = maxes[row]
            nz = torch.nonzero(m > 0).squeeze(1)
            results.append(
                (
                    int(lengths[row]),
                    nz.numpy().astype(np.int32),
                    m[nz].numpy().astype(np.float32),
                    None if pooled is None else pooled[row].astype(np.float32),
                )
            )
        return results

    def token_activations(self, sample: Sample) -> tuple[list[str], torch.Tensor]:
        """Per content token: its text and its SAE activations [n_content, d_sae] (for spans)."""
        return self.token_activations_batch([sample])[0]

    def token_activations_batch(self, samples: Sequence[Sample]) -> list[tuple[list[str], torch.Tensor]]:
        """:meth:`token_activations` for a batch: one padded forward, then the SAE per sample."""
        if self.sae is None:
            raise ModelError("this encoder has no SAE: it reads pooled hidden states only")
        toks = [self.tokenize(s) for s in samples]
        h, skip = self.forward_batch(toks)
        decode = self.subject.tokenizer.decode
        out = []
        with torch.inference_mode():
            for row, t in enumerate(toks):
                mask = torch.zeros(h.shape[1], dtype=torch.bool, device=h.device)
                mask[: len(t.content) - skip] = torch.tensor(t.content[skip:], device=h.device)
                acts = self.sae.encode(h[row][mask]).float().cpu()
                out.append(([decode([i]) for i, c in zip(t.input_ids, t.content) if c], acts))
        return out
