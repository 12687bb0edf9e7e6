"""The paper's experiment on this machine: does FAC-guided data help downstream, and does FAC
track the gain better than text metrics?

    python bench/proof.py [--task sms-spam|tweet-sentiment] [--seed-size 6] [--draws 3] [--calls 16]
                          [--size N --max-calls 60] [--writer NAME] [--relevance anchor|contrast [--both-sides]]
                          [--delta D|anchor[:Q]] [--sae SAE] [--negative-min-new N] [--arms agent,unguided]
                          [--label-pairs] [--fac-by-label] [--mixes K]

Setup: a shipped labelled set: ``--task sms-spam`` (``facsynth/data/sms_spam``: real SMS,
spam/ham, positive class spam) or ``--task tweet-sentiment`` (``facsynth/data/tweet_sentiment``:
human-rated tweets, negative/positive, positive class negative). For each draw, a small real
seed of ``--seed-size`` messages (class-stratified, rng = draw) is the data to extend. From
it, the same generator (the embedded llama.cpp server: SmolLM2-135M, or ``--writer``) and the
same call budget produce three synthetic sets:

- ``agent``: FAC-guided synthesis (contrastive pairs, across the label boundary the target
  marks with ``--label-pairs``; verifier feedback, retries);
- ``paper``: the authors' fixed two steps per feature;
- ``unguided``: self-instruct from seed examples, no features.

With ``--size N`` each arm keeps calling, ``--calls`` at a time (at most ``--max-calls``),
until it has N usable labelled samples: sets of one size, as in the paper, whatever each
cost (the calls each arm spent are printed). ``--cut label`` compares the arms at their common
count of each label instead of their common size, so that no arm wins by holding more of the
scored class. ``--keep DIR`` keeps the store and sets; ``--rescore DIR`` scores them again.

Every candidate passes the same quality rule (on this labelled task: the label check too);
a set kept by an older rule (``--rescore``) is checked again with today's text checks (a copy
of a seed or anchor text, an AI model's voice, one word repeated) and the end check (cut off
mid-sentence), and what they refuse is left out and counted
(``<arm>_left_out_by_todays_checks``).
Only samples with a label count; the agent and unguided sets are cut to their common size
(in acceptance order; or label by label, ``--cut label``), and the paper set joins the
comparison when it has that many. Then:

- downstream: ``facsynth.evaluate`` trains the head-only probe (logistic regression on
  frozen mean-pooled hidden states) on the seed alone and on seed + each set, scored on the
  shipped test set: AUPRC with the paired gain over the seed and its bootstrap interval;
- FAC of seed + set over the anchor's features, and of the set alone; FAC of seed + set
  over the runs' own F and delta, by any sample (``fac_f_grown``) and by label
  (``fac_by_label_grown``: a feature that marks a label on the anchor counts only on a
  sample with that label, :mod:`facsynth.tools.sides`); ``--fac-by-label`` makes the runs
  count coverage that way (here off unless given, so the README's earlier commands keep
  their reading; ``facsynth run`` counts by label by default on a labelled task);
- text metrics of the set: distinct-2, self-BLEU, mean pairwise cosine distance of pooled
  hidden states;
- across every (draw, arm) point, the Pearson r of each metric with the AUPRC gain, pooled
  and within draws (each draw's mean taken out: a weak seed gives every arm a large gain).
- ``--mixes K``: with two points a draw, "does FAC track the gain" rests on 12 signs. So
  each draw also scores K random sets of the same size drawn from the agent's and
  unguided's usable samples pooled (rng 10000 + draw), and prints the within-draw r of
  each metric, of the agent's share of the set and of the scored class's share, with the
  gain over those mixes (``mix_pearson_within_draw_gain_*``): a test of the metric's
  reading with K points a draw, and a dose-response test of the agent's samples; and each
  metric's partial r given the scored class's share (``mix_partial_r_given_scored_share_*``).

Ends with ``name=value`` lines. Whatever it shows is the result: with a tiny writer the
synthetic sets are small and noisy, and the intervals say how much that matters.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import facsynth  # noqa: E402
from facsynth.agent.llm import open_client  # noqa: E402
from facsynth.db import Store  # noqa: E402
from facsynth.agent.tasks import resolve_task  # noqa: E402
from facsynth.db.catalog import Catalog  # noqa: E402
from facsynth.tools.export import records  # noqa: E402
from facsynth.tools.relevance import anchor_delta, contrast_relevance, task_features  # noqa: E402
from facsynth.graph.config import RunConfig  # noqa: E402
from facsynth.graph.prompts import REPLY_ECHOES, task_labels  # noqa: E402
from facsynth.tools.datasets import Dataset, Sample, load_dataset  # noqa: E402
from facsynth.tools.downstream import EvalConfig  # noqa: E402
from facsynth.tools.reader import Reader  # noqa: E402
from facsynth.tools.quality import CopyIndex, calibrate_on, end_logprobs, text_problem  # noqa: E402
from facsynth.tools.sides import covers, label_sides, labels_of  # noqa: E402

ARMS = ("agent", "paper", "unguided")
LABELLED = {"sms-spam": ("sms_spam", "spam"), "tweet-sentiment": ("tweet_sentiment", "negative")}
"""Task preset -> (its shipped data directory, the class whose AUPRC is scored)."""


def stratified(seed: Dataset, n: int, rng: np.random.Generator) -> list[Sample]:
    """``n`` samples keeping the class proportions (at least one of each class)."""
    by_label: dict[str, list[Sample]] = {}
    for s in seed:
        by_label.setdefault(str(s.meta.get("label")), []).append(s)
    labels = sorted(by_label)
    counts = {lab: max(1, round(n * len(by_label[lab]) / len(seed))) for lab in labels}
    while sum(counts.values()) > n:
        counts[max(counts, key=counts.get)] -= 1
    out: list[Sample] = []
    for lab in labels:
        pool = by_label[lab]
        out += [pool[int(i)] for i in rng.choice(len(pool), size=counts[lab], replace=False)]
    return out


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows), encoding="utf-8")
    return path


def usable(store: Store, run: str, copies: CopyIndex, dropped: dict[str, int] | None = None,
           unfinished: Callable[[list[str]], list[bool]] | None = None) -> list[tuple[str, str]]:
    """(text, label) of the run's accepted samples that carry a label, in acceptance order,
    less any the text checks of today's rule refuse (a copy of a seed or anchor text, an AI
    model's voice, the reply's JSON inside a text, most of an earlier sample's words) and,
    when rescoring, any ``unfinished`` finds cut off mid-sentence: a run kept by an older rule is scored on what this one would keep, and ``dropped[run]``
    counts what it left out."""
    rows = records(store, run)
    out = [(r["messages"][-1]["content"] if r["messages"] else "", r["label"]) for r in rows if r["label"]]
    kept = [(t, lab) for t, lab in out
            if text_problem(Sample(text=t), min_words=1, echoes=REPLY_ECHOES) is None and copies.problem(t) is None]
    earlier = CopyIndex()  # most of an earlier sample's words in a row: a near duplicate, as the run now refuses it
    own = []
    for i, (t, lab) in enumerate(kept):
        if earlier.problem(t) is None:
            own.append((t, lab))
            earlier.add(f"sample {i + 1}", t)
    kept = own
    if unfinished is not None and kept:
        kept = [row for row, cut_off in zip(kept, unfinished([t for t, _ in kept])) if not cut_off]
    if dropped is not None:
        dropped[run] = len(out) - len(kept)
    return kept


def cut(sets: dict[str, list[tuple[str, str]]], how: str) -> tuple[dict[str, list[tuple[str, str]]], str]:
    """The arms cut to one size: ``size``, agent and unguided to their common size (in
    acceptance order), or ``label``, to their common count of each label (so that no arm
    wins by holding more of the scored class). The paper arm joins when it has as many."""
    if how == "size":
        size = min(len(sets["agent"]), len(sets["unguided"]))
        return {arm: rows[:size] for arm, rows in sets.items() if len(rows) >= size and size}, f"{size}"
    labels = sorted({lab for rows in sets.values() for _, lab in rows})
    count = {lab: min(sum(r[1] == lab for r in sets[arm]) for arm in ("agent", "unguided")) for lab in labels}
    out = {}
    for arm, rows in sets.items():
        if all(sum(r[1] == lab for r in rows) >= n for lab, n in count.items()) and sum(count.values()):
            out[arm] = [r for lab in labels for r in [r for r in rows if r[1] == lab][: count[lab]]]
    return out, " + ".join(f"{n} {lab}" for lab, n in count.items())


class Reading:
    """The run's own reading of FAC, by label and not: F (the task's features, as the runs
    chose them), delta, and the label each feature of F marks on the anchor
    (:func:`facsynth.tools.sides.label_sides`, as ``--fac-by-label`` runs count)."""

    def __init__(self, reader: Reader, features: np.ndarray, delta: float, anchor: Dataset, labels: tuple[str, ...]) -> None:
        self.reader, self.features, self.delta = reader, {int(f) for f in features}, delta
        read = [(lab, set(sf.active(delta).tolist())) for lab, (sf, _) in zip(labels_of(anchor), reader.read(anchor))]
        self.sides = label_sides(read, sorted(self.features), labels)

    def fac(self, dataset: Dataset, by_label: bool) -> float:
        """The share of F that some sample of ``dataset`` covers (by label: with its own label)."""
        covered = {int(f) for lab, (sf, _) in zip(labels_of(dataset), self.reader.read(dataset)) for f in sf.active(self.delta)
                   if int(f) in self.features and (not by_label or covers(int(f), lab, self.sides))}
        return len(covered) / len(self.features)


def set_metrics(seed_file: Path, path: Path, anchor: Path, reader: Reader, deltas: dict,
                reading: Reading | None = None) -> dict[str, float]:
    """FAC of seed + set and of the set alone (over the features active on the anchor), the
    run's own reading of FAC of seed + set, by label and not (``reading``), and the set's
    text metrics."""
    grown = Dataset("grown", "proof", list(load_dataset(seed_file)) + list(load_dataset(path)))
    alone = facsynth.measure(path, anchor=anchor, reader=reader, **deltas)
    own = {"fac_f_grown": reading.fac(grown, by_label=False), "fac_by_label_grown": reading.fac(grown, by_label=True)} \
        if reading is not None else {}
    return {
        "fac_grown": facsynth.measure(grown, anchor=anchor, reader=reader, **deltas).coverage[0].fac,
        "fac_set": alone.coverage[0].fac, **own, "distinct_2": alone.diversity["distinct_2"],
        "self_bleu": alone.diversity["self_bleu"], "cosine_distance": alone.diversity["cosine_distance"],
    }


def score_mixes(args: argparse.Namespace, draw: int, seed_file: Path, test: Path, sets: dict[str, list[tuple[str, str]]],
                size: int, tmp: Path, anchor: Path, reader: Reader, deltas: dict, reading: Reading) -> list[dict[str, object]]:
    """``--mixes``: K random sets of ``size`` drawn from the agent's and unguided's usable
    samples pooled, each scored like an arm (gain, FAC, text metrics, the agent's share)."""
    pool = [(row, "agent") for row in sets["agent"]] + [(row, "unguided") for row in sets["unguided"]]
    rng = np.random.default_rng(10_000 + draw)
    picks = [sorted(int(i) for i in rng.choice(len(pool), size=size, replace=False)) for _ in range(args.mixes)]
    files = [write_jsonl(tmp / f"mix-{draw}-{k}.jsonl", [pool[i][0] for i in pick]) for k, pick in enumerate(picks)]
    ev = facsynth.evaluate(seed_file, test, add=files, model=reader.subject,
                           config=EvalConfig(bootstrap=args.bootstrap, rng_seed=draw, positive=[args.positive]))
    gains = {arm.name: arm.auprc_gain for arm in ev.arms if arm.auprc_gain is not None}
    out = []
    for pick, path in zip(picks, files):
        out.append({
            "draw": draw, "gain": gains[path.stem].value, "agent_share": sum(pool[i][1] == "agent" for i in pick) / size,
            "scored_share": sum(pool[i][0][1].lower() == args.positive.lower() for i in pick) / size,
            **set_metrics(seed_file, path, anchor, reader, deltas, reading),
        })
    r = pearson([float(m["fac_grown"]) for m in out], [float(m["gain"]) for m in out])
    r_label = pearson([float(m["fac_by_label_grown"]) for m in out], [float(m["gain"]) for m in out])
    print(f"  {args.mixes} mixes of {size}: gain {min(m['gain'] for m in out):+.3f} .. {max(m['gain'] for m in out):+.3f}, "
          f"r(FAC seed+set, gain) {r:+.2f}, r(FAC by label, gain) {r_label:+.2f}", flush=True)
    return out


def within_draw(points: list[dict[str, object]], key: str) -> list[float]:
    """``key`` of every point minus the mean of its draw's points."""
    by_draw: dict[object, list[float]] = {}
    for p in points:
        by_draw.setdefault(p["draw"], []).append(float(p[key]))
    return [float(p[key]) - float(np.mean(by_draw[p["draw"]])) for p in points]


def residual(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """What is left of ``y`` after its least-squares line on ``x`` (both centred)."""
    return y - (float(x @ y) / float(x @ x) if float(x @ x) > 0 else 0.0) * x


def pearson(x: list[float], y: list[float]) -> float:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean of paired per-draw differences with its t interval (nan with fewer than 2 draws)."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return float("nan"), float("nan")
    half = float(stats.t.ppf((1 + confidence) / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return float(v.mean() - half), float(v.mean() + half)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sms-spam", help=f"the task; its shipped data unless --data ({', '.join(LABELLED)})")
    ap.add_argument("--data", default=None, help="a directory with seed/test/anchor.jsonl (default: the task's shipped set)")
    ap.add_argument("--seed-size", type=int, default=6)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--first-draw", type=int, default=0, help="number of the first draw (add draws to a --keep directory)")
    ap.add_argument("--calls", type=int, default=16, help="generator calls per arm and draw")
    ap.add_argument("--size", type=int, default=0, help="keep calling, --calls at a time, until each arm has this many "
                    "usable labelled samples (sets of one size, not of one cost; 0: one --calls budget per arm)")
    ap.add_argument("--max-calls", type=int, default=60, help="with --size: the most calls an arm may spend in a draw")
    ap.add_argument("--writer", default=None, help="a local writer (facsynth.agent.writers) instead of SmolLM2-135M")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--mixes", type=int, default=0, help="per draw, also score this many random sets of the cut size "
                    "drawn from the agent's and unguided's samples pooled (the metrics' within-draw r over them)")
    ap.add_argument("--relevance", choices=("anchor", "contrast"), default="anchor",
                    help="F: every feature active on the anchor, or those whose activation separates the anchor's "
                    "positive class from the rest (AUROC >= --auroc; facsynth features relevance --method contrast)")
    ap.add_argument("--auroc", type=float, default=0.7)
    ap.add_argument("--both-sides", action="store_true", help="with --relevance contrast: F also holds the features that "
                    "mark the other class (AUROC <= 1 - --auroc), the cues of both labels")
    ap.add_argument("--delta", default=None, help="activation above which a feature counts as active, for the runs and "
                    "every FAC figure: a number, or 'anchor[:Q]', the Q quantile (default 0.5) of F's activations on "
                    "the anchor (default: the SAE's recommended delta)")
    ap.add_argument("--negative-min-new", type=int, default=None, help="missing features an accepted negative, or a "
                    "usable positive that missed its target, must cover to join a guided arm's data (default: the run's, 3)")
    ap.add_argument("--sae", default=None, help="the SAE: a folder, a shipped SAE's name or release:id (default: the "
                    "shipped default)")
    ap.add_argument("--cut", choices=("size", "label"), default="size", help="compare the arms at their common size, "
                    "or at their common count of each label")
    ap.add_argument("--keep", default=None, help="keep the store and the sets in this directory (to --rescore later)")
    ap.add_argument("--rescore", default=None, help="score the runs kept by --keep in this directory again (another "
                    "--cut); generates nothing")
    ap.add_argument("--arms", default=",".join(ARMS), help="the arms to run, agent and unguided among them (leave "
                    "paper out to save its calls)")
    ap.add_argument("--label-pairs", action="store_true", help="the agent writes each pair across the label "
                    "boundary the target marks (run option --label-pairs; default: the writer picks both labels)")
    ap.add_argument("--fac-by-label", action="store_true", help="the runs count a feature of F as covered only by a "
                    "sample with the label it marks on the anchor (run option --fac-by-label)")
    ap.add_argument("--positive", default=None, help="the positive label (contrast relevance and AUPRC; default: "
                    "the task's rarer class)")
    args = ap.parse_args()
    if args.delta is not None and not str(args.delta).startswith("anchor"):
        try:  # before any model is loaded: a bad --delta stops at once, with one line
            args.delta = float(args.delta)
        except ValueError:
            sys.exit(f"--delta: a number or anchor[:Q], not {args.delta!r}")
    arms = tuple(a for a in ARMS if a in {x.strip() for x in args.arms.split(",")})
    if not {"agent", "unguided"} <= set(arms) or len(arms) != len(args.arms.split(",")):
        sys.exit(f"--arms: agent and unguided, and optionally paper; not {args.arms!r}")
    shipped, rare = LABELLED.get(args.task, (None, None))
    if args.data is None and shipped is None:
        sys.exit(f"--task {args.task} has no shipped labelled set: give --data and --positive")
    data = Path(args.data or ROOT / "facsynth" / "data" / shipped)
    args.positive = args.positive or rare
    if args.positive is None:
        sys.exit("--positive: which label is the positive class?")
    test, anchor = data / "test.jsonl", data / "anchor.jsonl"
    full_seed = load_dataset(data / "seed.jsonl")
    anchor_set = load_dataset(anchor)
    anchor_texts = [(f"anchor {i}", s.plain_text) for i, s in enumerate(anchor_set)]  # for each draw's copy check

    points: list[dict[str, object]] = []
    mixes: list[dict[str, object]] = []
    used: dict[str, list[int]] = {arm: [] for arm in ARMS}
    dropped: dict[str, int] = {}
    started = time.monotonic()
    keep = args.rescore or args.keep
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="facsynth-proof-")) as tmp_name, \
            Store(f"sqlite:///{tmp_name}/proof.db") as store:
        tmp = Path(tmp_name)
        reader = Reader(sae=args.sae, store=store)
        unfinished = None
        if args.rescore:  # the end check (a model check, applied by today's runs) on runs kept before it existed
            bar = calibrate_on(reader, anchor_set, full_seed, pass_rate=0.95).min_end
            if bar is not None:
                def unfinished(texts: list[str]) -> list[bool]:
                    return [bool(e < bar) for e in end_logprobs(reader.encoder, [Sample(text=t) for t in texts])]
                print(f"rescoring with today's end check: end log-probability >= {bar:.2f} (calibrated on the anchor)")
        if args.relevance == "contrast" and not args.rescore:
            resolve_task(Catalog(store), args.task)
            rel = contrast_relevance(reader, anchor_set, args.task, threshold=args.auroc, positive=[args.positive],
                                     both_sides=args.both_sides)
            other = sum(1 for f in rel.selected if rel.scores[f] < 0.5)
            print(f"F by contrast on the anchor: {len(rel.selected)} features with {rel.rule}"
                  + (f" ({other} of them mark the other class)" if args.both_sides else "") + " "
                  f"({rel.n_positive} {args.positive} vs {rel.n_other} other; {rel.by_chance} with shuffled labels)", flush=True)
        if args.delta is not None and str(args.delta).startswith("anchor"):
            q = float(str(args.delta).partition(":")[2] or 0.5)
            if args.relevance == "contrast":  # F as stored by contrast_relevance (this run's or the kept one's)
                features = task_features(reader, args.task)
            else:
                features = np.unique(np.concatenate([sf.feature_ids for sf, _ in reader.read(anchor_set)]))
            args.delta = round(anchor_delta(reader, anchor_set, features, quantile=q), 3)
            print(f"delta from the anchor: the {q:g} quantile of F's activations there = {args.delta:g}", flush=True)
        task_spec = resolve_task(Catalog(store), args.task)
        run_f = task_features(reader, args.task) if args.relevance == "contrast" else \
            np.unique(np.concatenate([sf.feature_ids[sf.max_acts > (args.delta if args.delta is not None else reader.default_delta)]
                                      for sf, _ in reader.read(anchor_set)]))
        reading = Reading(reader, run_f, float(args.delta) if args.delta is not None else reader.default_delta, anchor_set,
                          task_labels(task_spec) or ())
        print(f"the runs' reading: F {len(reading.features)} features, {len(reading.sides)} of them mark a label on the anchor",
              flush=True)
        llm = {"temperature": 0.8, "top_p": 0.9, "max_tokens": 320, "max_concurrency": 2, "server": {"instances": 2}}
        if args.writer:
            llm |= {"model": args.writer, "server": {"instances": 2, "gguf": args.writer}}
        base = {"task": args.task, "anchor": str(anchor), "target_fac": 1.0, "batch": 2, "budget": {"calls": args.calls}, "llm": llm}
        if args.sae:
            base["sae"] = args.sae
        if args.negative_min_new is not None:
            base["negative_min_new"] = args.negative_min_new
        if args.label_pairs:
            base["label_pairs"] = True
        base["fac_by_label"] = args.fac_by_label  # off unless asked: the commands in the README keep their reading
        if args.delta is not None:
            base["delta"] = args.delta
        deltas = {"deltas": [args.delta]} if args.delta is not None else {}
        client_cfg = RunConfig.model_validate({**base, "seed": str(data / "seed.jsonl")}).llm
        with (contextlib.nullcontext() if args.rescore else open_client(client_cfg, store=store)) as client:
            for draw in range(args.first_draw, args.first_draw + args.draws):
                seed_rows = [(s.plain_text, str(s.meta["label"])) for s in stratified(full_seed, args.seed_size, np.random.default_rng(draw))]
                seed_file = write_jsonl(tmp / f"seed-{draw}.jsonl", seed_rows)
                copies = CopyIndex([(f"seed {i}", t) for i, (t, _) in enumerate(seed_rows)] + anchor_texts)
                sets: dict[str, list[tuple[str, str]]] = {}
                for arm in arms:
                    name = f"{arm}-{draw}"
                    if args.rescore:
                        sets[arm] = usable(store, name, copies, dropped, unfinished)
                        continue
                    rep = facsynth.synthesize(seed_file, run=name, store=store, reader=reader, client=client, strategy=arm,
                                              **{k: v for k, v in base.items() if k != "llm"}, llm=llm)
                    sets[arm] = usable(store, name, copies, dropped)
                    calls = args.calls
                    # --size: more calls, --calls at a time, until the arm has that many usable samples
                    while (args.size and len(sets[arm]) < args.size and calls < args.max_calls
                           and rep.stop_reason.startswith("budget spent")):
                        calls = min(args.max_calls, calls + args.calls)
                        rep = facsynth.resume(name, store=store, reader=reader, client=client, budget={"calls": calls})
                        sets[arm] = usable(store, name, copies, dropped)
                    used[arm].append(rep.llm_calls)
                kept, shown = cut(sets, args.cut)
                labels = sorted({lab for rows in sets.values() for _, lab in rows})
                print(f"draw {draw}: usable labelled samples " + ", ".join(
                      f"{a} {len(v)} ({', '.join(f'{sum(r[1] == lab for r in v)} {lab}' for lab in labels)})"
                      for a, v in sets.items()) + f"; arms cut to {shown}"
                      + "".join(f", {a} left out (too few)" for a in sets if a not in kept), flush=True)
                if not kept:
                    continue
                size = len(kept["agent"])
                files = {arm: write_jsonl(tmp / f"{arm}-{draw}.jsonl", rows) for arm, rows in kept.items()}
                ev = facsynth.evaluate(seed_file, test, add=list(files.values()), model=reader.subject,
                                       config=EvalConfig(bootstrap=args.bootstrap, rng_seed=draw, positive=[args.positive]))
                gains = {arm.name: arm.auprc_gain for arm in ev.arms if arm.auprc_gain is not None}
                seed_auprc = next(a.auprc.value for a in ev.arms if a.name == "seed")
                for arm, path in files.items():
                    gain = gains[path.stem]
                    metrics = set_metrics(seed_file, path, anchor, reader, deltas, reading)
                    points.append({"draw": draw, "arm": arm, "n": size, "seed_auprc": seed_auprc, "gain": gain.value,
                                   "gain_low": gain.low, "gain_high": gain.high, **metrics})
                    print(f"  {arm}: seed AUPRC {seed_auprc:.3f}, gain {gain.value:+.3f} [{gain.low:+.3f}, "
                          f"{gain.high:+.3f}], FAC seed+set {metrics['fac_grown']:.1%}, the runs' F: "
                          f"{metrics['fac_f_grown']:.1%}, by label {metrics['fac_by_label_grown']:.1%}", flush=True)
                if args.mixes and {"agent", "unguided"} <= set(sets):
                    mixes.extend(score_mixes(args, draw, seed_file, test, sets, size, tmp, anchor, reader, deltas, reading))

    print(f"\n{'draw':>4} {'arm':9} {'n':>3} {'seed AUPRC':>10} {'gain':>7} {'95% CI':>17} {'FAC s+set':>9} "
          f"{'FAC set':>7} {'dist-2':>6} {'sBLEU':>6} {'cos':>6}")
    for p in points:
        print(f"{p['draw']:>4} {p['arm']:9} {p['n']:>3} {p['seed_auprc']:>10.3f} {p['gain']:>+7.3f} "
              f"[{p['gain_low']:+.3f}, {p['gain_high']:+.3f}] {p['fac_grown']:>9.1%} {p['fac_set']:>7.1%} "
              f"{p['distinct_2']:>6.3f} {p['self_bleu']:>6.3f} {p['cosine_distance']:>6.3f}")
    print(f"\ntask={args.task}\nseed_size={args.seed_size}\ndraws={args.draws}\ncut={args.cut}")
    if args.rescore:
        print(f"rescored={args.rescore}")
    else:
        print(f"calls_per_arm={args.calls}\nwriter={args.writer or 'smollm2-135m-instruct'}")
    print(f"relevance={args.relevance}" + (f" auroc={args.auroc:g} both_sides={args.both_sides}" if args.relevance == "contrast" else ""))
    print(f"size={args.size}\nmax_calls={args.max_calls}\ndelta={args.delta if args.delta is not None else 'default'}")
    print(f"arms={','.join(arms)}\nlabel_pairs={args.label_pairs}\nfac_by_label={args.fac_by_label}")
    print(f"sae={args.sae or 'default'}\nnegative_min_new={args.negative_min_new if args.negative_min_new is not None else 'default'}")
    print(f"points={len(points)}\nseconds={time.monotonic() - started:.0f}")
    for arm in ARMS:
        if used[arm]:
            print(f"{arm}_mean_calls={np.mean(used[arm]):.1f}")
    for arm in arms:  # accepted by the run, refused by today's checks (runs kept by an older rule)
        print(f"{arm}_left_out_by_todays_checks={sum(v for k, v in dropped.items() if k.rsplit('-', 1)[0] == arm)}")
    for arm in ARMS:
        mine = [p for p in points if p["arm"] == arm]
        if mine:
            print(f"{arm}_mean_gain={np.mean([p['gain'] for p in mine]):.4f}")
            print(f"{arm}_mean_fac_grown={np.mean([p['fac_grown'] for p in mine]):.4f}")
            print(f"{arm}_mean_fac_by_label_grown={np.mean([p['fac_by_label_grown'] for p in mine]):.4f}")
            print(f"{arm}_mean_n={np.mean([p['n'] for p in mine]):.1f}")
    for guided in ("agent", "paper"):
        diffs = [a["gain"] - u["gain"] for a in points for u in points
                 if a["arm"] == guided and u["arm"] == "unguided" and a["draw"] == u["draw"]]
        if diffs:
            low, high = t_interval(diffs)
            print(f"{guided}_minus_unguided_gain={np.mean(diffs):.4f}")
            print(f"{guided}_minus_unguided_ci95=[{low:.4f}, {high:.4f}]  # t interval over {len(diffs)} draws")
            ahead = sum(d > 0 for d in diffs)
            wilcoxon = stats.wilcoxon(diffs).pvalue if len(diffs) > 1 and any(diffs) else float("nan")
            print(f"{guided}_ahead={ahead}/{len(diffs)}\n{guided}_wilcoxon_p={wilcoxon:.3f}")
    gains = [float(p["gain"]) for p in points]
    metrics = ("fac_grown", "fac_set", "fac_f_grown", "fac_by_label_grown", "distinct_2", "self_bleu", "cosine_distance")
    for metric in metrics:
        print(f"pearson_gain_{metric}={pearson([float(p[metric]) for p in points], gains):.3f}")
    # within draws: each draw's mean taken out, so that a seed's own headroom (large gains and
    # low FAC for every arm of a weak seed) does not pass for an effect of the metric
    for metric in metrics:
        print(f"pearson_within_draw_gain_{metric}={pearson(within_draw(points, metric), within_draw(points, 'gain')):.3f}")
    if mixes:
        print(f"mixes={len(mixes)}  # {args.mixes} a draw")
        for metric in (*metrics, "agent_share", "scored_share"):
            r = pearson(within_draw(mixes, metric), within_draw(mixes, "gain"))
            per_draw = [pearson([float(m[metric]) for m in mixes if m["draw"] == d], [float(m["gain"]) for m in mixes if m["draw"] == d])
                        for d in sorted({m["draw"] for m in mixes})]
            positive = sum(1 for x in per_draw if x > 0)
            print(f"mix_pearson_within_draw_gain_{metric}={r:.3f}  # r > 0 in {positive} of {len(per_draw)} draws")
        # the label mix moves the gain; what each metric says beyond it (both sides' linear fit on the
        # scored class's share, within draws, taken out)
        share = np.asarray(within_draw(mixes, "scored_share"))
        gain_left = residual(np.asarray(within_draw(mixes, "gain")), share)
        for metric in (*metrics, "agent_share"):
            left = residual(np.asarray(within_draw(mixes, metric)), share)
            print(f"mix_partial_r_given_scored_share_{metric}={pearson(list(left), list(gain_left)):.3f}")


if __name__ == "__main__":
    main()
