"""How facsynth scales out, measured side by side in one run: synthesis workers on one
PostgreSQL run (``--part workers``) and reading a corpus on Ray (``--part measure``).

    python bench/scale.py [--part workers|measure|all] [--workers 1,2,4] [--latency 6.0] [--calls 32]
                          [--pg-url URL] [--base-url URL --llm-model NAME]
                          [--samples N] [--max-tokens 64] [--threads 2]

``workers``: the same run (the shipped demo seed and anchor, the default model and SAE, the
agent strategy, batch 2, ``--calls`` generator calls) synthesized by 1, 2 and 4 workers,
side by side in one invocation, each on a fresh run in one fresh PostgreSQL database
(dropped afterwards). Each worker is a process running :func:`facsynth.graph.runner.execute`
(its claims, its LangGraph thread in the Postgres saver), as ``facsynth worker`` does; the
processes load the model first and start together, so the timed window is synthesis only.
The endpoint is a loopback OpenAI-compatible fake that sleeps ``--latency`` seconds per call,
like a remote model, and answers with the prompt's first snippet (so samples are accepted
through the real SAE and features get covered): the runs are latency-bound, which is
where workers pay, and which a 2-core machine can show. ``--base-url`` points them at a real
endpoint instead. Every run gets its own sampling seed, so no run reads another's replies
from the shared cache.

Reported per worker count: generator calls per second and run features covered per
minute over the window (all workers start together, after loading; the window ends when
the last one stops), and the most calls the endpoint had in flight at once. Each worker
gets the machine's cores divided by the worker count as torch threads, as ``run --workers``
gives them. ``FACSYNTH_BENCH_TRACE=1`` prints every worker's step times. The last lines are
``name=value`` figures; ``workers2_vs_1`` and ``workers4_vs_1`` are the calls-per-second
ratios (the target: 4 workers reach at least 3x one against a latency-bound endpoint).

``measure`` (:func:`measure_section`): the same corpus read single-process and with
``--ray`` on a local Ray instance of this machine's cores, the default model and SAE,
no store (both paths read every sample). The corpus is every shipped prompt (demo,
corpus and topic prompts), the shipped chat corpus, and each of its replies' paragraphs
as a prompt of its own, all cut at ``--max-tokens``: 6,970 distinct samples, minutes of
reading, the size from which a user would reach for ``--ray`` (``--samples N``: an even
spread of N of them), so Ray's start is a part of the run, not all of it. Figures:

- ``single_tokens_per_s``: ``Reader.count`` in this process (model loaded, warm);
- ``ray_init_seconds``: ``ray.init`` of a local instance;
- ``ray_actors_seconds``: the actors' start (each loads the model and SAE once);
- ``ray_tokens_per_s``: everything ``--ray`` adds included (init, actors, read);
- ``ray_read_tokens_per_s``: the read alone, on the started actors;
- ``ray_vs_single_incl_start`` and ``ray_vs_single_steady``: the two tokens/s ratios, side
  by side (the target: Ray's overhead under 15% on this machine);
- ``ray_identical``: whether every reading (feature ids, max activations, pooled
  vector) is bit-identical to the single-process one.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's facsynth, here and in the Ray workers started from here
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
DATA = ROOT / "facsynth" / "data"
CORPUS = [DATA / "demo" / "prompts.jsonl", DATA / "corpus" / "prompts.jsonl", DATA / "corpus" / "topic_prompts.jsonl",
          DATA / "corpus" / "corpus.jsonl.gz"]

DEMO = ROOT / "facsynth" / "data" / "demo"
PG_URL = os.environ.get("FACSYNTH_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


# --------------------------------------------------------------------------- the slow endpoint


class SlowModel:
    """A loopback ``/v1/chat/completions`` that answers after ``latency`` seconds, concurrently,
    with the prompt's first marked snippet as the positive and a plain sentence as the negative."""

    def __init__(self, latency: float) -> None:
        self.calls = 0
        self.in_flight = 0
        self.peak = 0
        """Most requests in flight at once (reset per run)."""
        self._lock = threading.Lock()
        model = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._send({"object": "list", "data": [{"id": "slow-model", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with model._lock:
                    model.calls += 1
                    n = model.calls
                    model.in_flight += 1
                    model.peak = max(model.peak, model.in_flight)
                try:
                    time.sleep(latency)
                finally:
                    with model._lock:
                        model.in_flight -= 1
                content = json.dumps(_reply(body, n))
                self._send({
                    "id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "slow-model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop", "logprobs": None}],
                    "usage": {"prompt_tokens": 300, "completion_tokens": 60, "total_tokens": 360},
                })

            def _send(self, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


PLAIN = [
    "Our neighbour paints the fence every spring, always the same pale green colour.",
    "The library opens at nine, but the reading room fills up well before ten.",
    "Rain drummed on the tin roof of the shed all through the long afternoon.",
    "She labelled every jar in the pantry with the date it was filled.",
]


def _reply(body: dict[str, Any], n: int) -> dict[str, str]:
    from facsynth.graph.prompts import NEGATIVE, POSITIVE

    user = next((m["content"] for m in body.get("messages", []) if m.get("role") == "user"), "")
    marked = next((ln for ln in str(user).splitlines() if "<<" in ln and ">>" in ln and "like this" not in ln), "")
    snippet = marked.split(". ", 1)[-1].replace("<<", "").replace(">>", "").strip() or "a question about planning a trip"
    keys = list(body.get("response_format", {}).get("json_schema", {}).get("schema", {}).get("properties", {}))
    positive, negative = (keys + [POSITIVE, NEGATIVE])[:2]
    return {positive: f"Tell me about this: {snippet}", negative: PLAIN[n % len(PLAIN)]}


# --------------------------------------------------------------------------- workers


def _worker(db_url: str, run: str, threads: int, start: Any, done: Any) -> None:
    """One worker process: load the model, wait for the others, run until the planner stops."""
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(threads)  # as `run --workers` shares the cores out (OMP_NUM_THREADS)
    from facsynth.agent.llm import LLMClient
    from facsynth.db import Store
    from facsynth.db.runs import Runs
    from facsynth.graph.config import RunConfig
    from facsynth.graph.runner import execute
    from facsynth.tools.reader import Reader

    with Store(db_url) as store:
        cfg = RunConfig.model_validate(Runs(store).get(run).config["config"])
        reader = Reader(cfg.model, cfg.sae, cfg.layer, store=store)
        client = LLMClient(cfg.llm, store=store)
        start.wait()
        last = [time.time()]

        def trace(node: str, _: Any) -> None:  # --trace: how long each step took, per worker
            now = time.time()
            print(f"[{os.getpid()}] {node} {now - last[0]:.2f} s", file=sys.stderr, flush=True)
            last[0] = now

        execute(store, run, llm=client, reader=reader, on_step=trace if os.environ.get("FACSYNTH_BENCH_TRACE") else None)
        done.put(time.time())


def _fresh_database(url: str) -> tuple[str, Any]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(make_url(url), isolation_level="AUTOCOMMIT")
    name = f"facsynth_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(url).set(database=name).render_as_string(hide_password=False), drop


def workers_section(args: argparse.Namespace) -> dict[str, float]:
    """Calls/s and features covered per minute with each of ``--workers``; prints ``name=value`` lines."""
    from facsynth.db import Store
    from facsynth.db.runs import Runs
    from facsynth.graph.api import validated
    from facsynth.graph.budget import spent
    from facsynth.graph.runner import prepare_run
    from facsynth.graph.workers import threads_per_worker
    from facsynth.tools.reader import Reader

    counts = [int(x) for x in str(args.workers).split(",")]
    endpoint = None if args.base_url else SlowModel(args.latency)
    base_url = args.base_url or endpoint.url  # type: ignore[union-attr]
    db_url, drop = _fresh_database(args.pg_url)
    ctx = mp.get_context("spawn")
    out: dict[str, float] = {}
    try:
        with Store(db_url) as store:
            reader = Reader(store=store)
            for n in counts:
                cfg = validated({
                    "task": "instruction-following", "seed": str(DEMO / "seed.jsonl"), "anchor": str(DEMO / "anchor.jsonl"),
                    "budget": {"calls": args.calls}, "batch": 2, "max_features": args.max_features, "target_fac": 0.99,
                    "llm": {"base_url": base_url, "model": args.llm_model, "temperature": 0.8, "top_p": 0.9,
                            "max_tokens": 320, "max_concurrency": 2, "seed": n, "timeout_s": max(60.0, 4 * args.latency)},
                })
                name = f"scale-w{n}"
                prepare_run(cfg, name, store, reader)
                if endpoint is not None:
                    endpoint.peak = 0
                start, done = ctx.Barrier(n + 1), ctx.Queue()
                threads = threads_per_worker(n)
                procs = [ctx.Process(target=_worker, args=(db_url, name, threads, start, done)) for _ in range(n)]
                for p in procs:
                    p.start()
                start.wait(timeout=600)  # every worker has its model loaded
                t0 = time.time()
                ends: list[float] = []
                while len(ends) < n:
                    try:
                        ends.append(done.get(timeout=5))
                    except queue.Empty:
                        if any(p.exitcode not in (None, 0) for p in procs):
                            raise SystemExit(f"a worker of {name} failed (its traceback is above)") from None
                for p in procs:
                    p.join()
                    if p.exitcode != 0:
                        raise SystemExit(f"a worker of {name} exited with {p.exitcode}")
                window = max(ends) - t0
                s = Runs(store).summary(name)
                calls = spent(store, name, 0.0).calls
                out[f"workers{n}_calls"] = calls
                out[f"workers{n}_seconds"] = window
                out[f"workers{n}_calls_per_s"] = calls / window
                out[f"workers{n}_covered_per_min"] = 60.0 * s.covered / window
                peak = endpoint.peak if endpoint is not None else "-"
                print(f"{n} worker(s): {calls} calls, {s.covered} features covered, {s.samples} samples in {window:.1f} s "
                      f"({s.run.stop_reason}); peak {peak} calls in flight; load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    finally:
        drop()
        if endpoint is not None:
            endpoint.stop()
    print(f"latency_s={args.latency if endpoint is not None else 'remote'} calls_budget={args.calls} batch=2 "
          f"cpus={os.cpu_count()}")
    for key, value in out.items():
        print(f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}")
    base = out.get("workers1_calls_per_s")
    if base:
        for n in counts:
            if n != 1:
                print(f"workers{n}_vs_1={out[f'workers{n}_calls_per_s'] / base:.2f}")
                if out["workers1_covered_per_min"]:
                    print(f"covered_per_min_workers{n}_vs_1="
                          f"{out[f'workers{n}_covered_per_min'] / out['workers1_covered_per_min']:.2f}")
    return out


# --------------------------------------------------------------------------- measure on Ray


def corpus(n: int | None):
    """Shipped prompts and chats, and every paragraph of the chats' replies as a prompt (distinct texts)."""
    from facsynth.tools.datasets import Dataset, Sample, load_dataset

    samples = [s for f in CORPUS for s in load_dataset(f).samples]
    seen = {s.sample_hash for s in samples}
    for chat in load_dataset(CORPUS[-1]).samples:
        for m in chat.messages or ():
            if m.role != "assistant":
                continue
            for para in m.content.split("\n"):
                para = para.strip()
                if len(para.split()) >= 12:
                    s = Sample(text=para)
                    if s.sample_hash not in seen:
                        seen.add(s.sample_hash)
                        samples.append(s)
    if n and n < len(samples):  # an even spread over the kinds, not the first file's prompts
        samples = [samples[i * len(samples) // n] for i in range(n)]
    return Dataset("scale", "shipped prompts, chats and reply paragraphs", samples)


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
    from facsynth.tools.reader import Reader
    from facsynth.tools.ray_read import EncoderPool, ray_session

    torch.set_num_threads(args.threads)
    data = corpus(args.samples)
    reader = Reader(use_store=False, max_tokens=args.max_tokens, batch_size=args.batch_size)
    list(reader.encoder.encode(data.samples[:8]))  # warm-up

    single_s, single = read_all(reader, data)
    tokens = sum(sf.n_tokens for sf in single)
    print(f"samples={len(data)}", flush=True)
    print(f"content_tokens={tokens}", flush=True)
    print(f"single_seconds={single_s:.1f}", flush=True)

    start = time.perf_counter()
    with ray_session(num_cpus=os.cpu_count()):
        init_s = time.perf_counter() - start
        pool = EncoderPool(reader.encoder)
        start = time.perf_counter()
        pool.start()  # the actors load the model and SAE, once each
        actors_s = time.perf_counter() - start
        reader.pool = pool
        read_s, rayed = read_all(reader, data)
        actors, threads, _ = pool.layout()
        pool.close()
    reader.pool = None
    ray_s = init_s + actors_s + read_s

    single_tps, ray_tps, read_tps = tokens / single_s, tokens / ray_s, tokens / read_s
    print(f"model={reader.subject.name} layer={reader.encoder.layer} sae={reader.sae.name} threads={args.threads} "
          f"cores={os.cpu_count()} ray_actors={actors} ray_threads_per_actor={threads}")
    print(f"ray_init_seconds={init_s:.1f}")
    print(f"ray_actors_seconds={actors_s:.1f}")
    print(f"ray_read_seconds={read_s:.1f}")
    print(f"single_tokens_per_s={single_tps:.0f}")
    print(f"ray_tokens_per_s={ray_tps:.0f}")
    print(f"ray_read_tokens_per_s={read_tps:.0f}")
    print(f"ray_identical={identical(single, rayed)}")
    print(f"ray_vs_single_incl_start={ray_tps / single_tps:.2f}")  # ray.init, actors' start and read
    print(f"ray_vs_single_steady={read_tps / single_tps:.2f}")  # the read alone, actors started


SECTIONS = {"workers": workers_section, "measure": measure_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["workers", "measure", "all"], default="all")
    parser.add_argument("--workers", default="1,2,4", help="Worker counts, comma-separated (workers part).")
    parser.add_argument("--latency", type=float, default=6.0, help="Seconds the fake endpoint takes per call.")
    parser.add_argument("--calls", type=int, default=32, help="Generator-call budget of each run.")
    parser.add_argument("--max-features", type=int, default=200, help="Missing features each run may target.")
    parser.add_argument("--pg-url", default=PG_URL, help="PostgreSQL to create the bench database in.")
    parser.add_argument("--base-url", default=None, help="A real OpenAI-compatible endpoint instead of the fake.")
    parser.add_argument("--llm-model", default="slow-model")
    parser.add_argument("--samples", type=int, default=None, help="measure: read only the first N samples of the corpus")
    parser.add_argument("--max-tokens", type=int, default=64, help="measure: tokens read per sample")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="measure: torch threads of the single-process read (and of each Ray actor)")
    args = parser.parse_args()
    parts = list(SECTIONS) if args.part == "all" else [args.part]
    for part in parts:
        if part not in SECTIONS:
            parser.error(f"--part {part}: this checkout has no {part} section")
        SECTIONS[part](args)


if __name__ == "__main__":
    main()
