"""Split labelled pools into the shipped files (seed, more, test, anchor), deterministically.

Shared by ``make_sms_spam.py`` and ``make_tweet_sentiment.py``."""

from __future__ import annotations

import json
import random
from pathlib import Path


def write_splits(out: Path, pools: dict[str, list[str]], splits: tuple[tuple[str, int, int], ...]) -> None:
    """Shuffle each label's pool with seed 0, then write each ``(file, n_first, n_second)`` of
    ``splits`` in order, taking the next texts of the two labels (in ``pools``' order), so no
    text is in two files; each file's rows are shuffled too."""
    rng = random.Random(0)
    for label in pools:
        rng.shuffle(pools[label])
    out.mkdir(parents=True, exist_ok=True)
    first, second = pools
    used = dict.fromkeys(pools, 0)
    for name, n_first, n_second in splits:
        rows = []
        for label, n in ((first, n_first), (second, n_second)):
            rows += [{"text": t, "label": label} for t in pools[label][used[label] : used[label] + n]]
            used[label] += n
        rng.shuffle(rows)
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{name}.jsonl: {len(rows)} ({n_first} {first}, {n_second} {second})")
