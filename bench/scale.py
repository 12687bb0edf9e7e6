"""Scaling out, measured side by side in one run.

    python bench/scale.py [--part workers|measure|all] [--samples N] [--max-tokens 64] [--threads 2]

``measure`` (:func:`measure_section`): the same corpus read single-process and with
``--ray`` on a local Ray instance of this machine's cores, the default model and SAE,
no store (both paths read every sample). The corpus is every shipped prompt (demo,
corpus and topic prompts) and the shipped chat corpus cut at ``--max-tokens``: about
3,400 samples, enough that Ray's start is a small part of the run. Figures:

- ``single_tokens_per_s``: ``Reader.count`` in this process (model loaded, warm);
- ``ray_tokens_per_s``: everything ``--ray`` adds included: ``ray.init`` of a local
  instance, the actors' start (each loads the model and SAE) and the read;
- ``ray_read_tokens_per_s``: the same read in an already running Ray (actor start
  included, ``ray.init`` not);
- ``ray_identical``: whether every reading (feature ids, max activations, pooled
  vector) is bit-identical to the single-process one.

The last lines are ``name=value`` figures; ratios come from this one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's facsynth, here and in the Ray workers started from here
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
DATA = ROOT / "facsynth" / "data"
CORPUS = [DATA / "demo" / "prompts.jsonl", DATA / "corpus" / "prompts.jsonl", DATA / "corpus" / "topic_prompts.jsonl",
          DATA / "corpus" / "corpus.jsonl.gz"]


def corpus(n: int | None):
    from facsynth.tools.datasets import Dataset, load_dataset

    samples = [s for f in CORPUS for s in load_dataset(f).samples]
    return Dataset("scale", "shipped prompts and corpus", samples[:n] if n else samples)


def read_all(reader, data) -> tuple[float, list]:
    start = time.perf_counter()
    out = [sf for sf, _ in reader.read(data)]
    return time.perf_counter() - start, out


def identical(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x.sample_hash == y.sample_hash and np.array_equal(x.feature_ids, y.feature_ids)
        and np.array_equal(x.max_acts, y.max_acts) and np.array_equal(x.pooled, y.pooled)
        for x, y in zip(a, b)
    )


def measure_section(args: argparse.Namespace) -> None:
    """Single-process vs ``--ray`` (local instance) tokens/s on the same corpus."""
    from facsynth.tools.measure import Reader
    from facsynth.tools.ray_read import EncoderPool, ray_session

    torch.set_num_threads(args.threads)
    data = corpus(args.samples)
    reader = Reader(use_store=False, max_tokens=args.max_tokens, batch_size=args.batch_size)
    list(reader.encoder.encode(data.samples[:8]))  # warm-up

    single_s, single = read_all(reader, data)
    tokens = sum(sf.n_tokens for sf in single)

    start = time.perf_counter()
    with ray_session(num_cpus=os.cpu_count()):
        init_s = time.perf_counter() - start
        reader.pool = pool = EncoderPool(reader.encoder)
        read_s, rayed = read_all(reader, data)
        actors, threads, _ = pool.layout()
    reader.pool = None
    ray_s = init_s + read_s

    single_tps, ray_tps, read_tps = tokens / single_s, tokens / ray_s, tokens / read_s
    print(f"model={reader.subject.name} layer={reader.encoder.layer} sae={reader.sae.name} threads={args.threads} "
          f"cores={os.cpu_count()} ray_actors={actors} ray_threads_per_actor={threads}")
    print(f"samples={len(data)}")
    print(f"content_tokens={tokens}")
    print(f"single_seconds={single_s:.1f}")
    print(f"ray_init_seconds={init_s:.1f}")
    print(f"ray_read_seconds={read_s:.1f}")
    print(f"single_tokens_per_s={single_tps:.0f}")
    print(f"ray_tokens_per_s={ray_tps:.0f}")
    print(f"ray_read_tokens_per_s={read_tps:.0f}")
    print(f"ray_identical={identical(single, rayed)}")
    print(f"ray_vs_single_tokens_per_s={ray_tps / single_tps:.2f}")  # startup included
    print(f"ray_read_vs_single_tokens_per_s={read_tps / single_tps:.2f}")  # ray.init excluded, actor start included


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("workers", "measure", "all"), default="all")
    parser.add_argument("--samples", type=int, default=None, help="measure: read only the first N samples of the corpus")
    parser.add_argument("--max-tokens", type=int, default=64, help="measure: tokens read per sample")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the single-process read (and of each Ray actor)")
    args = parser.parse_args()
    sections = {"measure": measure_section, "workers": globals().get("workers_section")}
    for name in ("workers", "measure") if args.part == "all" else (args.part,):
        if sections[name] is None:
            print(f"# part {name}: not in this checkout", file=sys.stderr)
            continue
        sections[name](args)


if __name__ == "__main__":
    main()
