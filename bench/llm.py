"""LLM calls per second against the embedded llama.cpp server, and what a cached re-run costs.

    python bench/llm.py [--prompts 24] [--concurrency 4] [--instances 2] [--threads-per-instance 1]
                        [--max-tokens 24] [--rounds 2]

Everything goes through :class:`facsynth.agent.llm.LLMClient` (retries, recording in a
real SQLite store, cache lookups), so the figures are what facsynth's own calls get:

- ``c1`` and ``cN``: the same prompts (the shipped demo prompts, temperature 0) at
  concurrency 1 and at ``--concurrency``, alternated ``--rounds`` times with the cache
  bypassed; the median of each is reported.
  The CPU time the server processes used per wall second (``server_cores_used``) shows
  how much of the machine the runs actually got: on a shared box the speedup is bounded
  by the cores other work leaves free, not by facsynth.
- ``cache``: one run at ``--concurrency`` that fills a fresh store's cache, then a new
  client on that store (a re-run) asks again; its HTTP requests are counted at the
  transport and must be zero.

The server is started once for all runs; each instance answers one request at a time, so
concurrency gains come from ``--instances``. The last lines are ``name=value`` figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facsynth.agent.config import LLMConfig, ServerConfig
from facsynth.agent.llm import LLMClient
from facsynth.agent.server import EmbeddedServer
from facsynth.db import Store

PROMPTS = ROOT / "facsynth" / "data" / "demo" / "prompts.jsonl"


def load_prompts(n: int) -> list[str]:
    lines = [json.loads(line)["text"] for line in PROMPTS.read_text().splitlines() if line.strip()]
    step = max(1, len(lines) // n)  # spread over the topics
    return [lines[(i * step) % len(lines)] for i in range(n)]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the server processes so far (Linux /proc; NaN elsewhere)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def run_all(client: LLMClient, prompts: list[str], *, cache: bool) -> float:
    """Seconds to answer every prompt (the client's semaphore bounds concurrency)."""
    start = time.perf_counter()
    await asyncio.gather(*(client.ainvoke(p, purpose="bench", cache=cache) for p in prompts))
    elapsed = time.perf_counter() - start
    await client.aclose()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=LLMConfig().max_concurrency)
    parser.add_argument("--instances", type=int, default=ServerConfig().instances)
    parser.add_argument("--threads-per-instance", type=int, default=ServerConfig().threads_per_instance)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    prompts = load_prompts(args.prompts)
    server_cfg = ServerConfig(instances=args.instances, threads_per_instance=args.threads_per_instance, n_ctx=1024)
    base = LLMConfig(max_tokens=args.max_tokens, timeout_s=300.0, server=server_cfg)
    tmp = tempfile.TemporaryDirectory(prefix="facsynth-bench-llm-")
    stores: list[Store] = []

    def fresh_store() -> Store:
        store = Store(f"sqlite:///{Path(tmp.name) / f'bench-{len(stores)}.db'}")
        stores.append(store)
        return store

    rates: dict[int, list[float]] = {1: [], args.concurrency: []}
    cores: dict[int, list[float]] = {1: [], args.concurrency: []}  # server CPU seconds per wall second
    tokens: dict[int, int] = {}
    try:
        with EmbeddedServer(server_cfg, model_alias=base.model) as server:
            def client(concurrency: int, store: Store) -> LLMClient:
                cfg = base.model_copy(update={"max_concurrency": concurrency})
                return LLMClient(cfg, store=store, endpoints=server.base_urls, llama_cpp=True)

            warm = client(args.instances, fresh_store())  # page the model in on every instance
            asyncio.run(run_all(warm, [f"Say {i}." for i in range(args.instances)], cache=False))

            for _ in range(args.rounds):
                for concurrency, measured in rates.items():
                    c = client(concurrency, fresh_store())
                    cpu = cpu_seconds(server.pids)
                    seconds = asyncio.run(run_all(c, prompts, cache=False))
                    cpu = cpu_seconds(server.pids) - cpu
                    measured.append(len(prompts) / seconds)
                    cores[concurrency].append(cpu / seconds)
                    tokens[concurrency] = c.stats.tokens_out
                    print(f"c{concurrency}: {len(prompts)} calls in {seconds:.2f} s, {c.stats.tokens_out} tokens out, "
                          f"server CPU {cpu:.2f} s ({cpu / seconds:.2f} cores), load {os.getloadavg()[0]:.2f}",
                          file=sys.stderr)

            store = fresh_store()
            first = client(args.concurrency, store)
            first_s = asyncio.run(run_all(first, prompts, cache=True))
            rerun = client(args.concurrency, store)
            rerun_s = asyncio.run(run_all(rerun, prompts, cache=True))
            totals = store.llm_totals()
    finally:
        for s in stores:
            s.close()
        tmp.cleanup()

    c1 = statistics.median(rates[1])
    cn = statistics.median(rates[args.concurrency])
    print(f"prompts={len(prompts)} max_tokens={args.max_tokens} instances={args.instances} "
          f"threads_per_instance={args.threads_per_instance} cpus={os.cpu_count()} rounds={args.rounds}")
    print(f"tokens_out_c1={tokens[1]}")
    print(f"tokens_out_c{args.concurrency}={tokens[args.concurrency]}")
    print(f"calls_per_s_c1={c1:.2f}")
    print(f"calls_per_s_c{args.concurrency}={cn:.2f}")
    print(f"calls_per_s_cN={cn:.2f}")
    print(f"speedup={cn / c1:.2f}")
    print(f"server_cores_used_c1={statistics.median(cores[1]):.2f}")
    print(f"server_cores_used_cN={statistics.median(cores[args.concurrency]):.2f}")
    print(f"cache_fill_s={first_s:.2f}")
    print(f"cache_rerun_s={rerun_s:.3f}")
    print(f"cache_rerun_cached_calls={totals['by_outcome']['cached']}")
    print(f"cache_rerun_server_calls={rerun.stats.http_requests}")


if __name__ == "__main__":
    main()
