"""Generate the SAE training corpus: the default model answers the shipped corpus prompts.

    python scripts/make_corpus.py [--max-minutes 30] [--threads 1]

Reads ``facsynth/data/corpus/prompts.jsonl`` (``{"text", "genre"}`` rows) and has
SmolLM2-135M-Instruct (the GGUF file the default model spec resolves to, run with
llama-cpp-python) answer each prompt with its own chat template: temperature 0.8,
top-p 0.95, at most 200 new tokens, seed ``--seed + prompt index`` so every answer is
reproducible on its own. Writes ``facsynth/data/corpus/corpus.jsonl.gz`` with rows

    {"messages": [{"role": "user", ...}, {"role": "assistant", ...}], "genre": ..., "id": <prompt index>}

in prompt order. Prompts are visited round-robin over genres, so a run stopped by
``--max-minutes`` leaves a corpus balanced over genres. Answers are appended to a
work file as they come; a second run resumes from it (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "facsynth" / "data" / "corpus"
log = logging.getLogger("make_corpus")


def load_prompts(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def round_robin(prompts: list[dict]) -> list[int]:
    """Prompt indices, one genre after another: 0th of every genre, then the 1st, ..."""
    by_genre: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_genre[p["genre"]].append(i)
    genres = sorted(by_genre)
    depth = max(len(v) for v in by_genre.values())
    return [by_genre[g][d] for d in range(depth) for g in genres if d < len(by_genre[g])]


def read_done(work: Path) -> dict[int, dict]:
    done: dict[int, dict] = {}
    if work.is_file():
        for line in work.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interrupted run
                continue
            done[int(row["id"])] = row
    return done


def write_corpus(done: dict[int, dict], out: Path) -> None:
    """Write the gzip corpus in prompt order, byte-for-byte reproducible (mtime 0)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for i in sorted(done):
            gz.write((json.dumps(done[i], ensure_ascii=False) + "\n").encode("utf-8"))
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=Path, default=CORPUS / "prompts.jsonl")
    parser.add_argument("--out", type=Path, default=CORPUS / "corpus.jsonl.gz")
    parser.add_argument("--work", type=Path, default=None, help="work file (default: FACSYNTH_HOME/corpus-work.jsonl)")
    parser.add_argument("--seed", type=int, default=20260221)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1 is fastest on a busy 2-core box)")
    parser.add_argument("--max-minutes", type=float, default=30.0, help="stop generating after this much wall time")
    parser.add_argument("--fresh", action="store_true", help="ignore the work file and start over")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from llama_cpp import Llama

    from facsynth import paths
    from facsynth.tools.model import resolve

    work = args.work or paths.home() / "corpus-work.jsonl"
    if args.fresh and work.exists():
        work.unlink()
    prompts = load_prompts(args.prompts)
    done = read_done(work)
    todo = [i for i in round_robin(prompts) if i not in done]
    log.info("%d prompts, %d already answered, %d to go", len(prompts), len(done), len(todo))
    source = resolve()
    llm = Llama(
        model_path=str(Path(source.path) / source.gguf_file),
        n_ctx=2048,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        seed=args.seed,
        verbose=False,
    )
    deadline = time.monotonic() + args.max_minutes * 60
    try:
        with work.open("a", encoding="utf-8") as f:
            for n, i in enumerate(todo, start=1):
                if time.monotonic() > deadline:
                    log.info("time cap of %.0f minutes reached", args.max_minutes)
                    break
                prompt = prompts[i]
                answer = ""
                for attempt in range(3):  # an empty answer is retried with another seed
                    reply = llm.create_chat_completion(
                        [{"role": "user", "content": prompt["text"]}],
                        temperature=args.temperature,
                        top_p=args.top_p,
                        max_tokens=args.max_tokens,
                        seed=args.seed + i + 100_000 * attempt,
                    )
                    answer = (reply["choices"][0]["message"]["content"] or "").strip()
                    if answer:
                        break
                if not answer:
                    log.warning("prompt %d: no answer after 3 tries; skipped", i)
                    continue
                row = {
                    "messages": [
                        {"role": "user", "content": prompt["text"]},
                        {"role": "assistant", "content": answer},
                    ],
                    "genre": prompt["genre"],
                    "id": i,
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                done[i] = row
                if n % 25 == 0:
                    write_corpus(done, args.out)
                    log.info("%d / %d answered", len(done), len(prompts))
    finally:
        llm.close()
        write_corpus(done, args.out)
        log.info("wrote %s: %d samples", args.out, len(done))


if __name__ == "__main__":
    main()
