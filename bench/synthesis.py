"""Agent vs the paper's fixed pipeline vs unguided generation at equal generator-call budgets, in one run.

    python bench/synthesis.py [--calls 40] [--batch 2] [--seed FILE] [--anchor FILE] [--task T] [--writer NAME]

Same setup for both: the shipped demo seed (3 topics) and anchor (24 topics), the default
model and SAE, the embedded llama.cpp server (SmolLM2-135M), one fresh SQLite store, the
same missing-feature list in the same priority order. Each strategy gets ``--calls``
generator calls:

- ``agent``: a contrastive pair per call, verifier feedback and retries (up to 4 per
  feature), covered features skipped;
- ``paper``: the authors' two steps per feature (2 samples from the explanation and spans,
  then 2 with the strong/weak pair), no feedback, no retry, features taken in order even
  when another sample covered them meanwhile; only step-2 samples join the data;
- ``unguided``: the baseline users would otherwise pick (self-instruct style): each call
  shows 3 seed samples and asks for 2 new ones; no features, no target check.

Every strategy's candidates pass the same quality rule (fluent, on the anchor's topic, a
request; calibrated on the anchor) and duplicate checks, so only usable samples count.

Reported per strategy: missing features covered (every missing feature an accepted
sample fires counts, in both; for the agent, how many of them came with accepted
negatives), covered per 100 generator calls, FAC at half and at the
full budget, acceptance rate per step (verified positives whose target fired, not a
copy, not a stub), and the quality of what joined (share of joined samples passing each
check, beside the anchor's own rates). The last lines are ``name=value`` figures;
``covered_per_call_ratio`` is agent / paper, ``covered_per_call_vs_unguided`` agent / unguided.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facsynth.agent.llm import open_client
from facsynth.db import Store
from facsynth.db.runs import Runs
from facsynth.graph.config import RunConfig
from facsynth.graph.report import CoverageReport, coverage_report
from facsynth.graph.runner import execute, prepare_run
from facsynth.tools.reader import Reader

DEMO = ROOT / "facsynth" / "data" / "demo"


def fac_at(report: CoverageReport, calls: int) -> float:
    """FAC at the last progress point within ``calls`` generator calls."""
    points = [fac for c, fac in report.curve if c <= calls]
    return points[-1] if points else report.fac_before


def acceptance_by_step(runs: Runs, run_id: int) -> dict[int, float | None]:
    out: dict[int, float | None] = {}
    cands = [c for c in runs.candidates(run_id) if c.role != "negative" and c.verdict is not None]
    for step in (1, 2):
        mine = [c for c in cands if c.step == step]
        out[step] = sum(c.verdict == "accepted" for c in mine) / len(mine) if mine else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=40, help="generator calls per strategy")
    ap.add_argument("--batch", type=int, default=2, help="features worked on at once (server instances too)")
    ap.add_argument("--seed", default=str(DEMO / "seed.jsonl"))
    ap.add_argument("--anchor", default=str(DEMO / "anchor.jsonl"))
    ap.add_argument("--task", default="instruction-following")
    ap.add_argument("--writer", default=None, help="a local writer (facsynth.agent.writers) instead of SmolLM2-135M")
    ap.add_argument("--strategies", default="agent,paper,unguided", help="comma-separated subset to run")
    ap.add_argument("--keep", default=None, help="keep the store in this SQLite file (to read the samples afterwards)")
    args = ap.parse_args()
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]

    rows: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="facsynth-bench-") as tmp, \
            Store(f"sqlite:///{args.keep or tmp + '/bench.db'}") as store:
        reader = Reader(store=store)
        base = {
            "task": args.task, "seed": args.seed, "anchor": args.anchor, "target_fac": 1.0, "batch": args.batch,
            "budget": {"calls": args.calls},
            "llm": {"temperature": 0.8, "top_p": 0.9, "max_tokens": 320, "max_concurrency": args.batch,
                    "server": {"instances": args.batch, "gguf": args.writer},
                    **({"model": args.writer} if args.writer else {})},
        }
        cfgs = {s: RunConfig.model_validate({**base, "strategy": s}) for s in strategies}
        with open_client(cfgs[strategies[0]].llm, store=store) as client:
            for strategy, cfg in cfgs.items():
                started = time.monotonic()
                run, _ = prepare_run(cfg, strategy, store, reader)
                execute(store, strategy, llm=client, reader=reader)
                rep = coverage_report(store, strategy)
                steps = acceptance_by_step(Runs(store), run.id)
                by_role = {"positive": 0, "negative": 0, "sample": 0}
                for sample in Runs(store).samples(run.id):
                    by_role[sample.candidate.role] += len(sample.covered)
                rows[strategy] = {
                    "calls": rep.llm_calls, "covered": rep.covered_by_run, "samples": rep.samples,
                    "per100": 100.0 * rep.covered_by_run / max(rep.llm_calls, 1),
                    "fac_before": rep.fac_before, "fac_half": fac_at(rep, args.calls // 2),
                    "fac_full": fac_at(rep, args.calls), "acc1": steps[1], "acc2": steps[2],
                    "seconds": time.monotonic() - started, "missing": run.n_relevant - run.n_seed_covered,
                    "from_negatives": by_role["negative"],
                    "quality": rep.quality.joined if rep.quality else {},
                    "anchor_quality": rep.quality.anchor if rep.quality else {},
                }

    def pct(x: object) -> str:
        return "-" if x is None else f"{100 * float(x):.1f}%"

    print(f"{'strategy':8} {'calls':>5} {'covered':>7} {'/100 calls':>10} {'samples':>7} {'FAC seed':>8} "
          f"{'FAC @1/2':>8} {'FAC @B':>8} {'acc step1':>9} {'acc step2':>9} {'seconds':>7}")
    for s, r in rows.items():
        print(f"{s:8} {r['calls']:>5} {r['covered']:>7} {r['per100']:>10.1f} {r['samples']:>7} {pct(r['fac_before']):>8} "
              f"{pct(r['fac_half']):>8} {pct(r['fac_full']):>8} {pct(r['acc1']):>9} {pct(r['acc2']):>9} {r['seconds']:>7.0f}")
    print()
    print(f"{'quality':8} " + " ".join(f"{k:>9}" for k in ("fluent", "on_topic", "request", "all")))
    anchor_q = rows[strategies[0]]["anchor_quality"]
    print(f"{'anchor':8} " + " ".join(f"{pct(anchor_q.get(k)):>9}" for k in ("fluent", "on_topic", "request", "all")))
    for s, r in rows.items():
        print(f"{s:8} " + " ".join(f"{pct(r['quality'].get(k)):>9}" for k in ("fluent", "on_topic", "request", "all")))
    print(f"budget_calls={args.calls}")
    print(f"missing_features={rows[strategies[0]]['missing']}")
    for s, r in rows.items():
        print(f"{s}_calls={r['calls']}")
        print(f"{s}_covered={r['covered']}")
        print(f"{s}_covered_per_100_calls={r['per100']:.1f}")
        print(f"{s}_covered_by_negatives={r['from_negatives']}")
        print(f"{s}_fac_at_half_budget={float(r['fac_half']):.4f}")
        print(f"{s}_fac_at_budget={float(r['fac_full']):.4f}")
        for k, v in r["quality"].items():
            print(f"{s}_joined_pass_{k}={float(v):.3f}")
        for step in (1, 2):
            acc = r[f"acc{step}"]
            print(f"{s}_acceptance_step{step}={'nan' if acc is None else f'{float(acc):.3f}'}")
    print(f"fac_seed={float(rows[strategies[0]]['fac_before']):.4f}")
    for name, other in (("covered_per_call_ratio", "paper"), ("covered_per_call_vs_unguided", "unguided")):
        if "agent" in rows and other in rows:
            a, o = float(rows["agent"]["per100"]), float(rows[other]["per100"])
            print(f"{name}={a / o if o > 0 else float('inf'):.2f}")


if __name__ == "__main__":
    main()
