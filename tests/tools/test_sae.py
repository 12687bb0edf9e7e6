"""SAE loading, reading, import and training.

Numerics are real: activations are checked against the formulas computed by hand on
the weight tensors themselves, the shipped SAE is read from the package, and the
training test runs sae-lens on the real default model. Mocking any of these would
hide exactly the mistakes (a transposed weight, a missing b_dec) these tests exist
to catch.
"""

from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from facsynth import paths
from facsynth.cli import app
from facsynth.errors import FacsynthError, InputError, SAEError
from facsynth.tools.sae import (
    DEFAULT_SAE,
    FeatureSAE,
    file_hash,
    import_authors_checkpoint,
    layer_from_hook_name,
    load_sae,
)
from facsynth.tools.sae_train import read_corpus, tokenize_row

runner = CliRunner()


def _authors_checkpoint(path: Path, d_in: int = 24, d_sae: int = 96, *, seed: int = 0, top_k: int | None = None) -> dict:
    """A random checkpoint in the authors' torch.save format (as SparseAutoencoder.dump_disk writes it)."""
    gen = torch.Generator().manual_seed(seed)
    weight = {
        "mask": torch.ones(d_sae),
        "W_enc": torch.randn(d_in, d_sae, generator=gen) / d_in**0.5,
        "b_enc": torch.randn(d_sae, generator=gen) * 0.2,
        "b_dec": torch.randn(d_in, generator=gen),
    }
    config: dict = {"d_inp": d_in, "d_hide": d_sae}
    if top_k is not None:
        config["topK"] = top_k
    torch.save({"weight": weight, "config": config}, path)
    return weight


def _topk_by_hand(pre: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros_like(pre)
    values, idx = pre.topk(k, dim=-1)
    return out.scatter_(-1, idx, values.relu())


# -- the authors' checkpoints ----------------------------------------------------


def test_authors_checkpoint_converts_and_gives_the_same_activations(tmp_path):
    w = _authors_checkpoint(tmp_path / "TopK7_l16_h96.pth")
    out = import_authors_checkpoint(tmp_path / "TopK7_l16_h96.pth", tmp_path / "sae", model_name="m", layer=16)
    sae = load_sae(out)
    assert (sae.d_in, sae.d_sae, sae.k, sae.layer, sae.model_name) == (24, 96, 20, 16, "m")
    assert sae.activation == "relu"

    h = torch.randn(3, 7, 24, generator=torch.Generator().manual_seed(1)) * 3
    pre = (h - w["b_dec"]) @ w["W_enc"] + w["b_enc"]  # the authors' _encode
    torch.testing.assert_close(sae.encode(h), torch.relu(pre), rtol=1e-5, atol=1e-5)
    assert (sae.encode(h) > 0).sum(-1).float().mean() > 20  # TopK is really off

    topk = load_sae(out, activation="sae").encode(h)  # the authors' TopK encode with k = 20
    torch.testing.assert_close(topk, _topk_by_hand(pre, 20), rtol=1e-5, atol=1e-5)

    saved = load_file(str(out / "sae_weights.safetensors"))
    torch.testing.assert_close(saved["W_dec"], w["W_enc"].T)  # tied decoder


def test_authors_checkpoint_k_comes_from_option_or_checkpoint(tmp_path):
    _authors_checkpoint(tmp_path / "a.pth", top_k=7)
    assert load_sae(import_authors_checkpoint(tmp_path / "a.pth", tmp_path / "one")).k == 7
    assert load_sae(import_authors_checkpoint(tmp_path / "a.pth", tmp_path / "two", k=5)).k == 5


def test_sae_import_cli(tmp_path):
    _authors_checkpoint(tmp_path / "a.pth")
    result = runner.invoke(app, ["sae", "import", str(tmp_path / "a.pth"), str(tmp_path / "out"), "--model", "m", "--layer", "3", "--k", "4"])
    assert result.exit_code == 0, result.output
    sae = load_sae(tmp_path / "out")
    assert (sae.k, sae.layer, sae.model_name) == (4, 3, "m")


@pytest.mark.parametrize(
    "states, message",
    [
        ({"weight": {}, "config": {"d_inp": 4, "d_hide": 8}}, "no tensor 'W_enc'"),
        (
            {"weight": {"W_enc": torch.zeros(8, 4), "b_enc": torch.zeros(8), "b_dec": torch.zeros(4)}, "config": {"d_inp": 4, "d_hide": 8}},
            r"W_enc has shape \[8, 4\], expected \[4, 8\]",
        ),
        ({"state_dict": {}}, "not the authors' format"),
    ],
)
def test_bad_authors_checkpoint_fails_with_one_line(tmp_path, states, message):
    torch.save(states, tmp_path / "bad.pth")
    with pytest.raises(SAEError, match=message) as err:
        import_authors_checkpoint(tmp_path / "bad.pth", tmp_path / "out")
    assert "\n" not in str(err.value)


def test_not_a_checkpoint_fails(tmp_path):
    (tmp_path / "x.pth").write_text("not a torch file")
    with pytest.raises(SAEError, match="not a readable torch checkpoint"):
        import_authors_checkpoint(tmp_path / "x.pth", tmp_path / "out")


# -- reading -----------------------------------------------------------------------


def test_relu_reading_is_relu_of_the_affine_encoder(default_sae):
    """On the shipped SAE, relu mode is exactly ReLU((h - b_dec) W_enc + b_enc) of the saved tensors."""
    weights = load_file(str(default_sae.path / "sae_weights.safetensors"))
    h = torch.randn(4, 9, default_sae.d_in, generator=torch.Generator().manual_seed(0)) * 4
    relu = load_sae(activation="relu")
    expected = torch.relu((h - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"])
    torch.testing.assert_close(relu.encode(h), expected, rtol=1e-5, atol=1e-4)
    own = load_sae(activation="sae").encode(h)
    assert ((own > 0).sum(-1) <= relu.k).all()  # the SAE's own TopK keeps at most k
    torch.testing.assert_close(own, _topk_by_hand(expected, relu.k), rtol=1e-5, atol=1e-4)


def test_width_mismatch_fails_with_one_clear_line(default_sae):
    with pytest.raises(SAEError) as err:
        default_sae.check_fits(768, "some-model")
    message = str(err.value)
    assert "\n" not in message
    assert f"SAE {default_sae.name} reads vectors of width {default_sae.d_in} but model some-model has hidden size 768" == message
    default_sae.check_fits(default_sae.d_in, "smollm2-135m-instruct")  # the right width passes
    with pytest.raises(SAEError, match="width"):
        default_sae.encode(torch.zeros(2, 768))


@pytest.mark.slow
def test_width_mismatch_against_the_real_model(subject, tmp_path):
    _authors_checkpoint(tmp_path / "a.pth", d_in=4096)
    sae = load_sae(import_authors_checkpoint(tmp_path / "a.pth", tmp_path / "big", model_name="llama-3.1-8b", layer=16))
    with pytest.raises(SAEError, match=f"width 4096 but model {subject.name} has hidden size {subject.d_model}"):
        sae.check_fits(subject.d_model, subject.name)


def test_model_name_mismatch_warns(default_sae, caplog):
    with caplog.at_level("WARNING"):
        default_sae.check_fits(default_sae.d_in, "another-model")
    assert "another-model" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        default_sae.check_fits(default_sae.d_in, "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert caplog.text == ""


def test_to_moves_dtype(tmp_path):
    _authors_checkpoint(tmp_path / "a.pth")
    sae = load_sae(import_authors_checkpoint(tmp_path / "a.pth", tmp_path / "s"))
    assert sae.to("cpu", "float16").dtype == torch.float16
    assert sae.encode(torch.randn(2, 24)).dtype == torch.float16


# -- loading errors ---------------------------------------------------------------------


def test_missing_sae_dir_fails(tmp_path):
    with pytest.raises(SAEError, match="SAE not found"):
        load_sae(tmp_path / "nowhere")


def test_dir_without_weights_fails(tmp_path):
    (tmp_path / "cfg.json").write_text("{}")
    with pytest.raises(SAEError, match="lacks sae_weights.safetensors"):
        load_sae(tmp_path)


def test_corrupt_cfg_json_fails(tmp_path):
    _authors_checkpoint(tmp_path / "a.pth")
    out = import_authors_checkpoint(tmp_path / "a.pth", tmp_path / "s")
    (out / "cfg.json").write_text('{"d_in": 24, "d_sae":')
    with pytest.raises(SAEError, match="cfg.json is not valid JSON") as err:
        load_sae(out)
    assert "\n" not in str(err.value)


def test_corrupt_weights_fail(tmp_path):
    _authors_checkpoint(tmp_path / "a.pth")
    out = import_authors_checkpoint(tmp_path / "a.pth", tmp_path / "s")
    (out / "sae_weights.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(SAEError, match="cannot load SAE") as err:
        load_sae(out)
    assert "\n" not in str(err.value)


def test_unknown_activation_fails():
    with pytest.raises(SAEError, match="unknown activation"):
        load_sae(activation="topk")  # type: ignore[arg-type]


def test_cli_info_on_missing_sae_is_an_expected_error(tmp_path):
    result = runner.invoke(app, ["sae", "info", str(tmp_path / "nowhere")])
    assert isinstance(result.exception, FacsynthError)


def test_layer_from_hook_name():
    assert layer_from_hook_name("model.layers.15") == 15
    assert layer_from_hook_name("blocks.7.hook_resid_post") == 7
    assert layer_from_hook_name("blocks.7.hook_resid_pre") == 6
    assert layer_from_hook_name("model.norm") is None


# -- the shipped default ----------------------------------------------------------------


def test_default_sae_loads_offline_with_its_facts(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sae = load_sae()
    assert isinstance(sae, FeatureSAE)
    assert sae.name == DEFAULT_SAE
    assert sae.model_name == "smollm2-135m-instruct"
    assert sae.layer == 15 and sae.hook_name == "model.layers.15"
    assert sae.d_in == 576 and sae.d_sae == 4096 and sae.k == 32
    assert sae.activation == sae.facts["activation"]
    assert sae.recommended_delta is not None and sae.recommended_delta >= 0
    quality = sae.facts["quality"]
    assert quality["explained_variance"] > 0.5
    assert quality["dead_fraction"] < 0.5
    total = sum(f.stat().st_size for f in sae.path.iterdir())
    assert total < 25 * 2**20


def test_cli_info_shows_the_default():
    result = runner.invoke(app, ["sae", "info"])
    assert result.exit_code == 0, result.output
    for text in ("4096", "576", "smollm2-135m-instruct", "model.layers.15", "recommended delta", "explained_variance"):
        assert text in result.output


def test_shipped_corpus_is_the_one_the_default_sae_records():
    corpus = paths.shipped("corpus", "corpus.jsonl.gz")
    rows = read_corpus(corpus)
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)
    with gzip.open(corpus, "rt", encoding="utf-8") as f:
        genres = collections.Counter(json.loads(line)["genre"] for line in f)
    assert len(genres) >= 50
    recorded = load_sae().facts["corpus"]
    assert recorded["samples"] == len(rows)
    assert recorded["sha256"] == file_hash(corpus)  # the SAE was trained on exactly this file


def test_the_real_text_sae_ships_under_its_name_and_never_read_the_tweet_splits():
    sae = load_sae("smollm2-135m-l15-w4096-k32-real")  # a shipped SAE's name, not a path
    assert (sae.d_sae, sae.d_in, sae.layer, sae.model_name) == (4096, 576, 15, "smollm2-135m-instruct")
    files = [paths.shipped("corpus", "corpus.jsonl.gz"), paths.shipped("corpus", "real_snippets.jsonl.gz")]
    assert sae.facts["corpus"]["sha256"] == " + ".join(file_hash(f) for f in files)
    real = read_corpus(files[1])
    assert len(real) > 20_000
    norm = {" ".join(r["text"].lower().split()) for r in real}
    for split in ("seed", "more", "test", "anchor"):
        with open(paths.shipped("tweet_sentiment", f"{split}.jsonl"), encoding="utf-8") as f:
            tweets = [" ".join(json.loads(line)["text"].lower().split()) for line in f if line.strip()]
        assert tweets and not norm.intersection(tweets), f"the SAE's corpus holds tweets of {split}.jsonl"
    with pytest.raises(SAEError):
        load_sae("no-such-shipped-sae")


# -- FAC with the default reading on the shipped demo prompts ----------------------------

@pytest.fixture(scope="module")
def demo_pre(subject, default_sae):
    """SAE pre-activations, per prompt, of the shipped demo anchor and seeds (content tokens only)."""
    from facsynth.tools.sae_train import collect_activations

    groups = {"anchor": "anchor.jsonl", "few": "seed.jsonl", "many": "seed_broad.jsonl"}
    out = {}
    for group, name in groups.items():
        rows = [json.loads(line) for line in paths.shipped("demo", name).read_text(encoding="utf-8").splitlines() if line.strip()]
        samples = [tokenize_row(subject.tokenizer, {"text": r["text"]}, 512) for r in rows]
        acts = collect_activations(subject, default_sae.layer, samples, batch_size=16)
        pre, start = [], 0
        for _, content in samples:
            n = sum(content)
            pre.append(default_sae.pre_activations(acts[start : start + n]))
            start += n
        out[group] = pre
    return out


def _fac(demo_pre: dict, reading: str, k: int, delta: float) -> tuple[float, float, float]:
    """(share of features active on the anchor, FAC of the narrow seed, FAC of the broad seed)."""

    def pooled(group: str) -> torch.Tensor:
        out = []
        for pre in demo_pre[group]:
            acts = torch.relu(pre) if reading == "relu" else _topk_by_hand(pre, k)
            out.append(acts.max(0).values)  # a_i(x): max over the prompt's content tokens
        return torch.stack(out)

    on_anchor = (pooled("anchor") > delta).any(0)
    n = float(on_anchor.sum())
    fac = {g: float(((pooled(g) > delta).any(0) & on_anchor).sum()) / n for g in ("few", "many")}
    return n / on_anchor.numel(), fac["few"], fac["many"]


@pytest.mark.slow
def test_default_reading_does_not_saturate(demo_pre, default_sae):
    """TopK off at delta 0 fires nearly every feature on the demo data; the recommended delta must not.

    (That the narrow seed then covers clearly less than the broad one is tests/tools/test_discrimination.py.)
    """
    share, few, many = _fac(demo_pre, "relu", default_sae.k, 0.0)
    assert share > 0.99 and few > 0.95  # the saturation the recommended reading avoids
    share, few, many = _fac(demo_pre, default_sae.activation, default_sae.k, default_sae.recommended_delta)
    assert share < 0.9, share
    assert max(few, many) < 0.8, (few, many)


# -- training -------------------------------------------------------------------------------


def test_read_corpus_formats(tmp_path):
    (tmp_path / "c.txt").write_text("first doc\nstill first\n\nsecond doc\n")
    assert read_corpus(tmp_path / "c.txt") == [{"text": "first doc\nstill first"}, {"text": "second doc"}]
    (tmp_path / "c.jsonl").write_text('{"text": "a"}\n{"messages": [{"role": "user", "content": "b"}]}\n')
    assert len(read_corpus(tmp_path / "c.jsonl")) == 2
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"title": "b"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: a row needs 'text' or 'messages'"):
        read_corpus(tmp_path / "bad.jsonl")
    with pytest.raises(InputError, match="corpus not found"):
        read_corpus(tmp_path / "none.jsonl")


@pytest.mark.slow
def test_training_reads_only_message_contents(subject):
    ids, content = tokenize_row(subject.tokenizer, {"text": "Hello there"}, 512)
    kept = subject.tokenizer.decode([t for t, c in zip(ids, content) if c])
    assert kept == "Hello there"
    assert not content[0]  # the system header is skipped


@pytest.mark.slow
def test_sae_train_end_to_end(tmp_path):
    # two corpora, read as one: 16 chats and 8 real snippets
    rows = read_corpus(paths.shipped("corpus", "corpus.jsonl.gz"))[:16]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    real = tmp_path / "real.jsonl"
    real.write_text("".join(json.dumps(r) + "\n" for r in read_corpus(paths.shipped("corpus", "real_snippets.jsonl.gz"))[:8]))
    out = tmp_path / "sae"
    result = runner.invoke(
        app,
        ["sae", "train", "--corpus", str(corpus), "--corpus", str(real), "--out", str(out), "--layer", "3", "--width", "64",
         "--k", "8", "--tokens", "20000", "--batch-size", "128", "--context-size", "48"],
    )
    assert result.exit_code == 0, result.output
    assert "explained variance" in result.output
    sae = load_sae(out)
    assert (sae.d_sae, sae.d_in, sae.k, sae.layer) == (64, 576, 8, 3)
    assert sae.model_name == "smollm2-135m-instruct" and sae.hook_name == "model.layers.3"
    facts = json.loads((out / "facsynth.json").read_text())
    quality = facts["quality"]
    assert 0.05 < quality["explained_variance"] <= 1  # learned something: an untrained SAE scores <= 0
    assert quality["l0_topk"] == pytest.approx(8, abs=0.5)
    assert quality["l0_relu"] >= quality["l0_topk"]
    assert 0 <= quality["dead_fraction"] <= 1
    assert facts["corpus"]["samples"] == 24 and facts["training"]["tokens"] >= 19900
    assert facts["corpus"]["file"] == "corpus.jsonl + real.jsonl"
    assert facts["corpus"]["sha256"] == f"{file_hash(corpus)} + {file_hash(real)}"
