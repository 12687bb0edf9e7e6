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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Literal

import numpy as np
import torch

from facsynth.errors import InputError, ModelError
from facsynth.tools.activations import SampleFeatures
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


class FeatureEncoder:
    """Batched reader of SAE features at one layer of a subject model."""

    def __init__(
        self,
        subject: SubjectModel,
        sae: FeatureSAE,
        layer: int | None = None,
        *,
        template: TemplateMode = "auto",
        batch_size: int = 32,
        max_tokens: int = 512,
        chunk_size: int = 512,
        keep_pooled: bool = True,
    ) -> None:
        if layer is None:
            if sae.layer is None:
                raise ModelError(f"SAE {sae.name} records no layer: give the layer to read")
            layer = sae.layer
        self.layer = subject.check_layer(layer)
        sae.check_fits(subject.d_model, subject.name)
        if sae.layer is not None and sae.layer != self.layer:
            log.warning("SAE %s was trained on block %d but block %d is read", sae.name, sae.layer, self.layer)
        if batch_size < 1 or max_tokens < 1 or chunk_size < 1:
            raise InputError("batch_size, max_tokens and chunk_size must be positive")
        self.subject = subject
        self.sae = sae.to(subject.device, subject.dtype)
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

    # -- tokenization ------------------------------------------------------------

    def tokenize(self, sample: Sample) -> Tokenized:
        """Render and tokenize one sample, marking content tokens."""
        messages = [{"role": m["role"], "content": m["content"]} for m in sample.as_messages]
        return tokenize_messages(
            self.subject.tokenizer, messages, sample.plain_text, chat=self.template == "chat", max_tokens=self.max_tokens
        )

    # -- model -------------------------------------------------------------------

    @torch.inference_mode()
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Output of the hooked block, [batch, seq, d_model]; blocks after it never run."""
        captured: list[torch.Tensor] = []

        def capture(_module: torch.nn.Module, _args: object, output: object) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _StopForward

        model = self.subject.model
        base = getattr(model, model.base_model_prefix, model)
        handle = self.subject.layers[self.layer].register_forward_hook(capture)
        try:
            base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ModelError(f"block {self.layer} of {self.subject.name} was never reached")
        return captured[0]

    # -- encoding ----------------------------------------------------------------

    def encode(self, samples: Iterable[Sample], progress: Progress | None = None) -> Iterator[SampleFeatures]:
        """Yield one :class:`SampleFeatures` per sample, in input order, streamed by chunks."""
        it = iter(samples)
        while chunk := list(islice(it, self.chunk_size)):
            yield from self._encode_chunk(chunk, progress)

    def encode_one(self, sample: Sample) -> SampleFeatures:
        return next(self.encode([sample]))

    def _encode_chunk(self, chunk: Sequence[Sample], progress: Progress | None) -> list[SampleFeatures]:
        toks = [self.tokenize(s) for s in chunk]
        for i, t in enumerate(toks):
            if t.n_content == 0:
                raise InputError(f"sample {i + 1} of a chunk has no content tokens: {chunk[i].plain_text[:60]!r}")
        order = sorted(range(len(chunk)), key=lambda i: len(toks[i].input_ids))
        out: list[SampleFeatures | None] = [None] * len(chunk)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            results = self._encode_batch([toks[i] for i in idx])
            for i, (n_tok, ids, acts, pooled) in zip(idx, results):
                out[i] = SampleFeatures(chunk[i].sample_hash, n_tok, ids, acts, pooled)
            if progress is not None:
                progress(len(idx), sum(toks[i].n_content for i in idx))
        return out  # type: ignore[return-value]

    def _encode_batch(self, batch: Sequence[Tokenized]) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
        device = self.subject.device
        width = max(len(t.input_ids) for t in batch)
        ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        content = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, t in enumerate(batch):
            n = len(t.input_ids)
            ids[row, :n] = torch.tensor(t.input_ids)
            attn[row, :n] = 1
            content[row, :n] = torch.tensor(t.content)
        h = self.hidden_states(ids.to(device), attn.to(device))
        content = content.to(device)
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
        t = self.tokenize(sample)
        ids = torch.tensor([t.input_ids], device=self.subject.device)
        h = self.hidden_states(ids, torch.ones_like(ids))[0]
        mask = torch.tensor(t.content, device=h.device)
        with torch.inference_mode():
            acts = self.sae.encode(h[mask]).float().cpu()
        words = [self.subject.tokenizer.decode([i]) for i, c in zip(t.input_ids, t.content) if c]
        return words, acts
