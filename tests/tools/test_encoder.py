"""The batched encoder against a by-hand reading of the real default model and SAE.

Nothing here is mocked: the reference is transformers' own ``output_hidden_states``
forward through the whole model and the SAE formula written out with tensors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facsynth.errors import ModelError, SAEError
from facsynth.tools.datasets import Sample
from facsynth.tools.encoder import FeatureEncoder

SAMPLES = [
    Sample(text="How do I caramelize onions without burning them?", messages=None, meta={}),
    Sample(text="Explain the Pythagorean theorem to a ten year old in three sentences.", messages=None, meta={}),
    Sample(
        text=None,
        messages=(
            {"role": "user", "content": "My car makes a grinding noise when I brake."},
            {"role": "assistant", "content": "That usually means the brake pads are worn down to the metal."},
        ),
        meta={},
    ),
    Sample(text="hi", messages=None, meta={}),
    # its own system prompt: a different template prefix from the default header above
    Sample(
        text=None,
        messages=({"role": "system", "content": "Answer like a pirate."}, {"role": "user", "content": "Where is the treasure?"}),
        meta={},
    ),
]


def by_hand(encoder: FeatureEncoder, sample: Sample) -> np.ndarray:
    """a_i(x) = max over content tokens of ReLU((h - b_dec) W_enc + b_enc), full forward."""
    t = encoder.tokenize(sample)
    ids = torch.tensor([t.input_ids])
    with torch.no_grad():
        out = encoder.subject.model(input_ids=ids, output_hidden_states=True)
    h = out.hidden_states[encoder.layer + 1][0][torch.tensor(t.content)]
    sae = encoder.sae.sae
    with torch.no_grad():
        pre = (h - sae.b_dec) @ sae.W_enc + sae.b_enc
    return torch.relu(pre).amax(dim=0).numpy()


def dense(sf, d_sae: int) -> np.ndarray:
    v = np.zeros(d_sae, dtype=np.float32)
    v[sf.feature_ids] = sf.max_acts
    return v


def test_encoding_matches_the_sae_formula_on_the_real_model(encoder):
    assert encoder.sae.activation == "relu"
    got = list(encoder.encode(SAMPLES))
    for sample, sf in zip(SAMPLES, got):
        want = by_hand(encoder, sample)
        np.testing.assert_allclose(dense(sf, encoder.sae.d_sae), want, rtol=1e-4, atol=1e-4)
        assert sf.sample_hash == sample.sample_hash
        assert sf.n_tokens == encoder.tokenize(sample).n_content


def test_padding_and_batch_composition_do_not_change_a_sample(encoder):
    alone = encoder.encode_one(SAMPLES[1])
    mixed = list(encoder.encode([SAMPLES[3], SAMPLES[1], SAMPLES[2], SAMPLES[0]]))[1]
    np.testing.assert_array_equal(alone.feature_ids, mixed.feature_ids)
    np.testing.assert_allclose(alone.max_acts, mixed.max_acts, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(alone.pooled, mixed.pooled, rtol=1e-4, atol=1e-4)


def test_the_shared_template_prefix_is_run_once_and_changes_no_number(subject, default_sae):
    """Same activations with and without prefix reuse; the default system header runs once, not per sample."""
    samples = [Sample(text=f"Tell me one fact about the number {i}.", messages=None, meta={}) for i in range(12)]
    samples += SAMPLES
    embed = subject.model.get_input_embeddings()
    runs = {}
    for reuse in (False, True):
        # batches of one: no padding, so the positions run are exactly the tokens run
        enc = FeatureEncoder(subject, default_sae, batch_size=1, reuse_prefix=reuse)
        positions: list[int] = []
        handle = embed.register_forward_hook(lambda _m, args, _o: positions.append(int((args[0] != -1).sum())))
        try:
            runs[reuse] = (list(enc.encode(samples)), sum(positions))
        finally:
            handle.remove()
    (full, full_positions), (reused, reused_positions) = runs[False], runs[True]
    for a, b in zip(full, reused):
        np.testing.assert_allclose(dense(a, default_sae.d_sae), dense(b, default_sae.d_sae), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(a.pooled, b.pooled, rtol=1e-4, atol=1e-4)
    toks = [FeatureEncoder(subject, default_sae).tokenize(s) for s in samples]
    header = toks[0].n_prefix
    assert header >= 20  # SmolLM2's default system header and the user turn's opening
    shared = [t for t in toks if t.input_ids[:header] == toks[0].input_ids[:header]]
    assert len(shared) == len(samples) - 1  # all but the pirate
    assert full_positions == sum(len(t.input_ids) for t in toks)
    # every sample that shares the header skips it, and the header itself runs once
    assert reused_positions == full_positions - (len(shared) - 1) * header


def test_template_tokens_do_not_count(encoder):
    t = encoder.tokenize(SAMPLES[2])
    tok = encoder.subject.tokenizer
    content_text = tok.decode([i for i, c in zip(t.input_ids, t.content) if c])
    assert content_text == SAMPLES[2].messages[0]["content"] + SAMPLES[2].messages[1]["content"]
    template_text = tok.decode([i for i, c in zip(t.input_ids, t.content) if not c])
    assert "You are a helpful AI assistant" in template_text and "<|im_start|>" in template_text
    # the same words after a different system prompt give the same content-token count
    other = Sample(text=None, messages=({"role": "system", "content": "Be brief."},) + SAMPLES[2].messages, meta={})
    assert encoder.tokenize(other).n_content == t.n_content + len(tok("Be brief.", add_special_tokens=False)["input_ids"])


def test_blocks_after_the_hooked_layer_never_run_and_hooks_are_removed(encoder):
    hooks_before = [len(layer._forward_hooks) for layer in encoder.subject.layers]
    later = encoder.subject.layers[encoder.layer + 1]
    calls = []
    handle = later.register_forward_hook(lambda *a: calls.append(1))
    try:
        encoder.encode_one(SAMPLES[0])
    finally:
        handle.remove()
    assert calls == []
    assert [len(layer._forward_hooks) for layer in encoder.subject.layers] == hooks_before


def test_long_samples_are_truncated_to_max_tokens(subject, default_sae):
    enc = FeatureEncoder(subject, default_sae, max_tokens=16)
    t = enc.tokenize(Sample(text="word " * 200, messages=None, meta={}))
    assert len(t.input_ids) == 16 and t.truncated


def test_bad_layer_is_a_clear_error(subject, default_sae):
    with pytest.raises(ModelError, match="layer 99 is out of range.*30 decoder blocks"):
        FeatureEncoder(subject, default_sae, layer=99)


def test_sae_width_mismatch_is_a_clear_error(subject, tmp_path):
    from sae_lens import SAE
    from sae_lens.saes.topk_sae import TopKSAEConfig

    from facsynth.tools.sae import load_sae

    SAE.from_dict(TopKSAEConfig(d_in=64, d_sae=128, k=8).to_dict()).save_model(tmp_path)
    sae = load_sae(str(tmp_path))
    with pytest.raises(SAEError, match="width 64.*hidden size 576") as err:
        FeatureEncoder(subject, sae, layer=3)
    assert "\n" not in str(err.value)
