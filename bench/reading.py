"""Which reading of FAC tracks the downstream gain? Tested on real data, no writer involved.

    python bench/reading.py [--task tweet-sentiment] [--seed-size 8] [--size 8] [--draws 12]
                            [--mixes 40] [--pool FILE] [--sae SAE] [--auroc 0.65] [--c 1.0] [--delta D ...]

``bench/proof.py`` asks whether FAC tracks the gain of the sets a writer produced; with a
few points a draw, and a writer whose sets differ in many ways at once, a null result
there cannot tell a reading of the features that misses what helps from a writer that
cannot write it. This script takes the writer out. Per draw (rng = draw), a real seed of
``--seed-size`` (class-stratified, from the task's ``seed.jsonl``) is grown by ``--mixes``
random sets of ``--size`` real labelled texts from ``--pool`` (default: the task's
``more.jsonl``, human-written and labelled, never in the seed, test or anchor), and each
grown set is scored as ``facsynth eval`` scores an arm: the head-only probe (standardized
logistic regression, balanced, C ``--c``) on the subject model's mean-pooled block states,
AUPRC of the positive class on ``test.jsonl``, gain over the seed alone.

Beside each gain, every reading is computed from the same SAE activations:

- ``fac``: FAC of seed + set, the paper's reading: the share of F that fires above delta
  on some sample, whatever its label;
- ``fac_by_label``: FAC that counts a feature of F as covered only by a sample of the label
  the feature marks on the anchor (``facsynth.tools.sides``, as runs with ``--fac-by-label``
  and ``facsynth measure --by-label`` count): a cue of negative tweets fired by a positive
  tweet teaches a classifier nothing about negatives;

each over F one-sided (AUROC >= ``--auroc`` for the positive class) and F both-sided (also
<= 1 - ``--auroc``), at delta = the 0.5 and 0.75 quantiles of F's activations on the anchor
(and at each ``--delta``);
and the text metrics of the set: distinct-2, self-BLEU, mean pairwise cosine distance of
pooled states; and the scored (positive) class's share of the set.

Prints, per reading, the within-draw Pearson r with the gain (each draw's mean taken out),
the draws where r > 0, and the partial r given the scored class's share (the label mix,
which moves a small probe whatever the text says). Ends with ``name=value`` lines.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facsynth.tools.datasets import Dataset, load_dataset  # noqa: E402
from facsynth.tools.diversity import distinct_n, mean_pairwise_cosine_distance, self_bleu  # noqa: E402
from facsynth.tools.downstream import average_precision, binary, draw_seed, label_values, probe_scores  # noqa: E402
from facsynth.tools.encoder import FeatureEncoder  # noqa: E402
from facsynth.tools.reader import Reader  # noqa: E402
from facsynth.tools.relevance import auroc_by_feature  # noqa: E402
from facsynth.tools.sides import label_sides  # noqa: E402

LABELLED = {"sms-spam": ("sms_spam", "spam"), "tweet-sentiment": ("tweet_sentiment", "negative")}


def within_draw(rows: list[dict[str, float]], key: str) -> np.ndarray:
    """``key`` of every row minus the mean of its draw's rows."""
    v = np.array([r[key] for r in rows], dtype=float)
    d = np.array([r["draw"] for r in rows])
    for k in np.unique(d):
        v[d == k] -= v[d == k].mean()
    return v


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def residual(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """What is left of ``y`` after its least-squares line on ``x`` (both centred)."""
    return y - (float(x @ y) / float(x @ x) if float(x @ x) > 0 else 0.0) * x


def dense(features: list, columns: np.ndarray) -> np.ndarray:
    """[n samples, len(columns)] max activations of ``columns`` (0 where a feature is silent)."""
    out = np.zeros((len(features), columns.size), dtype=np.float32)
    for i, sf in enumerate(features):
        hit = np.isin(sf.feature_ids, columns)
        out[i, np.searchsorted(columns, sf.feature_ids[hit])] = sf.max_acts[hit]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="tweet-sentiment", choices=sorted(LABELLED))
    ap.add_argument("--pool", default=None, help="labelled JSONL the added sets are drawn from (default: the task's more.jsonl)")
    ap.add_argument("--seed-size", type=int, default=8)
    ap.add_argument("--size", type=int, default=8, help="samples in each added set")
    ap.add_argument("--draws", type=int, default=12)
    ap.add_argument("--mixes", type=int, default=40, help="added sets scored per draw")
    ap.add_argument("--sae", default=None, help="the SAE (default: the shipped default)")
    ap.add_argument("--auroc", type=float, default=0.65)
    ap.add_argument("--c", type=float, default=1.0)
    ap.add_argument("--delta", type=float, action="append", default=[], help="also read F at this delta (repeatable; "
                    "besides the 0.5 and 0.75 quantiles of F's activations on the anchor)")
    args = ap.parse_args()
    started = time.monotonic()
    shipped, positive = LABELLED[args.task]
    data = ROOT / "facsynth" / "data" / shipped
    seed, test, anchor = (load_dataset(data / f"{n}.jsonl") for n in ("seed", "test", "anchor"))
    pool = load_dataset(Path(args.pool) if args.pool else data / "more.jsonl")
    pos = {positive}
    y_seed, y_test, y_pool, y_anchor = (binary(label_values(ds, "label"), pos) for ds in (seed, test, pool, anchor))

    reader = Reader(sae=args.sae, use_store=False)
    probe = FeatureEncoder(reader.subject, None, reader.subject.n_layers // 2)
    both = Dataset("both", "reading", list(seed) + list(pool))
    x_both, x_test = probe.pooled(list(both)), probe.pooled(list(test))
    read_both = [sf for sf, _ in reader.read(both)]
    read_anchor = [sf for sf, _ in reader.read(anchor)]
    auroc = auroc_by_feature(read_anchor, y_anchor, reader.sae.d_sae)
    one = np.flatnonzero(auroc >= args.auroc)
    two = np.flatnonzero((auroc >= args.auroc) | (auroc <= 1 - args.auroc))
    a_both, a_anchor = dense(read_both, two), dense(read_anchor, two)
    in_one = np.isin(two, one)
    readings: dict[str, tuple[np.ndarray, float]] = {}
    for name, cols in (("one", in_one), ("two", np.ones(two.size, dtype=bool))):
        acts = a_anchor[:, cols]
        for q in (0.5, 0.75):
            readings[f"{name}_q{int(q * 100)}"] = (cols, float(np.quantile(acts[acts > 0], q)))
        for d in args.delta:
            readings[f"{name}_d{d:g}"] = (cols, float(d))
    # the label each feature of F marks on the anchor at the reading's delta, as runs with
    # --fac-by-label read it (facsynth.tools.sides.label_sides: fires on one label's anchor
    # samples at least 1.5 times as often as on the other's, and on 2+ of them)
    names = ("other", positive)
    sides = {}
    for name, (cols, delta) in readings.items():
        act = [(names[int(y)], set(two[cols][a_anchor[i, cols] > delta].tolist())) for i, y in enumerate(y_anchor)]
        marked = label_sides(act, two[cols].tolist(), names)
        sides[name] = np.array([0 if f not in marked else (1 if marked[f] == positive else -1) for f in two[cols]])
    print(f"F: {one.size} features one-sided (AUROC >= {args.auroc:g}), {two.size} both-sided; deltas "
          + ", ".join(f"{k} {d:.2f} ({int((sides[k] != 0).sum())} mark a label)" for k, (_, d) in readings.items()), flush=True)
    texts = [s.plain_text for s in both]
    pooled_both = np.stack([sf.pooled for sf in read_both])
    y_both = np.r_[y_seed, y_pool]
    n_seed = len(seed)

    rows: list[dict[str, float]] = []
    for draw in range(args.draws):
        rng = np.random.default_rng(draw)
        s = draw_seed(y_seed, args.seed_size, rng)
        base = average_precision(y_test, probe_scores(x_both[s], y_both[s], x_test, args.c))
        for _ in range(args.mixes):
            add = n_seed + np.sort(rng.choice(len(pool), size=args.size, replace=False))
            grown = np.r_[s, add]
            gain = average_precision(y_test, probe_scores(x_both[grown], y_both[grown], x_test, args.c)) - base
            row = {"draw": draw, "seed_auprc": base, "gain": gain, "scored_share": float(y_both[add].mean()),
                   "distinct_2": distinct_n([texts[i] for i in add], 2), "self_bleu": self_bleu([texts[i] for i in add]),
                   "cosine_distance": mean_pairwise_cosine_distance(pooled_both[add])}
            for name, (cols, delta) in readings.items():
                fired = a_both[grown][:, cols] > delta
                row[f"fac_{name}"] = float(fired.any(axis=0).mean())
                side = sides[name]  # +1: marks the positive class, -1: the other, 0: no label (any sample covers it)
                own = (side[None, :] == 0) | (np.where(y_both[grown], 1, -1)[:, None] == side[None, :])
                row[f"fac_by_label_{name}"] = float((fired & own).any(axis=0).mean())
            rows.append(row)
        print(f"draw {draw}: seed AUPRC {base:.3f}, gains {min(r['gain'] for r in rows[-args.mixes:]):+.3f} .. "
              f"{max(r['gain'] for r in rows[-args.mixes:]):+.3f}", flush=True)

    metrics = [k for k in rows[0] if k not in ("draw", "seed_auprc", "gain")]
    gain = within_draw(rows, "gain")
    share = within_draw(rows, "scored_share")
    gain_left = residual(gain, share)
    print(f"\n{'reading':28} {'r within draws':>14} {'draws r>0':>9} {'partial r | share':>17}")
    out = {}
    for m in metrics:
        v = within_draw(rows, m)
        per_draw = [pearson(np.array([r[m] for r in rows if r["draw"] == d]), np.array([r["gain"] for r in rows if r["draw"] == d]))
                    for d in range(args.draws)]
        part = pearson(residual(v, share), gain_left) if m != "scored_share" else float("nan")
        out[m] = (pearson(v, gain), sum(x > 0 for x in per_draw), part)
        print(f"{m:28} {out[m][0]:>+14.3f} {out[m][1]:>6}/{args.draws} {part:>+17.3f}")
    print(f"\ntask={args.task}\npool={args.pool or 'more.jsonl'}\nseed_size={args.seed_size}\nsize={args.size}\n"
          f"draws={args.draws}\nmixes={args.mixes}\nsae={args.sae or 'default'}\nauroc={args.auroc:g}\nc={args.c:g}\n"
          f"deltas={','.join(f'{d:g}' for d in args.delta) or 'anchor quantiles'}")
    print(f"mean_gain={np.mean([r['gain'] for r in rows]):.4f}\nseconds={time.monotonic() - started:.0f}")
    for m, (r, pos_draws, part) in out.items():
        print(f"r_within_draw_{m}={r:.3f}  # r > 0 in {pos_draws} of {args.draws} draws; partial r given scored share {part:.3f}")


if __name__ == "__main__":
    main()
