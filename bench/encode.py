"""Encoder throughput and memory, measured side by side in one run.

    python bench/encode.py [--samples 720] [--rss-samples 10000] [--threads 2]

Same model, SAE and real samples (the shipped demo prompts) for every contender:

- ``facsynth``: the batched encoder (length-bucketed batches, the shared template
  prefix run once and reused from a cache, forward stopped at the hooked block, SAE on
  content tokens only).
- ``reference``: a loop written the way the authors' span collector works: one sample
  at a time, a full forward through every block, the SAE on every position.
- ``bare``: the same batches as facsynth through the same truncated forward (prefix
  reuse included) only, no SAE and no bookkeeping: the floor facsynth's overhead is
  measured against. ``bare_no_prefix_reuse`` runs every token of every sample, to show
  what the prefix cache buys.
- peak RSS of a child process that streams ``--rss-samples`` samples through
  ``Reader.count`` (no store), the default model and SAE.

The last lines are ``name=value`` figures; ratios come from this one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "facsynth" / "data" / "demo" / "prompts.jsonl"


def load_samples(n: int):
    from facsynth.tools.datasets import load_dataset

    base = load_dataset(PROMPTS).samples
    return [base[i % len(base)] for i in range(n)]


def bench_facsynth(encoder, samples) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = sum(sf.n_tokens for sf in encoder.encode(samples))
    return time.perf_counter() - start, tokens


def bench_bare(encoder, samples) -> float:
    """The encoder's own batches through its truncated forward, nothing else."""
    toks = [encoder.tokenize(s) for s in samples]
    batches = [[toks[i] for i in idx] for idx in encoder.batches(toks)]
    encoder.forward_batch(batches[0])  # the prefix cache is warm for facsynth too
    start = time.perf_counter()
    for batch in batches:
        encoder.forward_batch(batch)
    return time.perf_counter() - start


@torch.inference_mode()
def bench_reference(encoder, samples) -> float:
    """One sample at a time, full forward, SAE on every position, max over content tokens."""
    model, sae = encoder.subject.model, encoder.sae
    start = time.perf_counter()
    for s in samples:
        t = encoder.tokenize(s)
        out = model(input_ids=torch.tensor([t.input_ids]), output_hidden_states=True)
        acts = sae.encode(out.hidden_states[encoder.layer + 1][0])
        acts[torch.tensor(t.content)].amax(dim=0)
    return time.perf_counter() - start


def child_rss(n: int, threads: int) -> None:
    """Stream n unique samples through Reader.count; print peak RSS in MB as JSON."""
    torch.set_num_threads(threads)
    from facsynth.tools.datasets import Dataset, Sample
    from facsynth.tools.reader import Reader

    base = load_samples(720)
    samples = [Sample(text=f"{base[i % 720].plain_text} (variant {i})", messages=None, meta={}) for i in range(n)]
    reader = Reader(use_store=False, batch_size=32)
    start = time.perf_counter()
    counted = reader.count(Dataset(name="rss", source="bench", samples=samples), [reader.default_delta])
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak_mb, "samples": counted.counter.n_samples, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=720)
    parser.add_argument("--reference-samples", type=int, default=240, help="the slow loop reads this many (tokens/s is compared)")
    parser.add_argument("--rss-samples", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--child-rss", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rss:
        child_rss(args.child_rss, args.threads)
        return

    torch.set_num_threads(args.threads)
    from facsynth.tools import model
    from facsynth.tools.encoder import FeatureEncoder
    from facsynth.tools.sae import load_sae

    subject, sae = model.load(), load_sae()
    encoder = FeatureEncoder(subject, sae, batch_size=args.batch_size)
    samples = load_samples(args.samples)
    ref_samples = samples[: args.reference_samples]
    list(encoder.encode(samples[:8]))  # warm-up
    ref_tokens = sum(encoder.tokenize(s).n_content for s in ref_samples)

    fac_s, tokens = bench_facsynth(encoder, samples)
    bare_s = bench_bare(encoder, samples)
    encoder.reuse_prefix = False
    bare_full_s = bench_bare(encoder, samples)
    encoder.reuse_prefix = True
    ref_s = bench_reference(encoder, ref_samples)
    fac_tps, bare_tps, ref_tps = tokens / fac_s, tokens / bare_s, ref_tokens / ref_s
    bare_full_tps = tokens / bare_full_s

    rss = {"peak_rss_mb": float("nan"), "seconds": float("nan")}
    if args.rss_samples:
        out = subprocess.run(
            [sys.executable, __file__, "--child-rss", str(args.rss_samples), "--threads", str(args.threads)],
            capture_output=True, text=True, check=True,
        )
        rss = json.loads(out.stdout.strip().splitlines()[-1])

    print(f"model={subject.name} layer={encoder.layer} sae={sae.name} d_sae={sae.d_sae} threads={args.threads}")
    print(f"samples={len(samples)}")
    print(f"content_tokens={tokens}")
    print(f"facsynth_tokens_per_s={fac_tps:.0f}")
    print(f"reference_tokens_per_s={ref_tps:.0f}")
    print(f"bare_forward_tokens_per_s={bare_tps:.0f}")
    print(f"bare_no_prefix_reuse_tokens_per_s={bare_full_tps:.0f}")
    print(f"speedup_vs_reference={fac_tps / ref_tps:.2f}")
    print(f"ratio_vs_bare_forward={fac_tps / bare_tps:.2f}")
    print(f"rss_samples={args.rss_samples}")
    print(f"rss_seconds={rss['seconds']:.1f}")
    print(f"peak_rss_mb={rss['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
