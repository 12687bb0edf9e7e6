"""Split the shipped demo prompts into the demo anchor and seeds (deterministic).

    python scripts/make_demo.py

- anchor.jsonl: the first 10 prompts of each of the 24 topics (240): the task domain.
- seed.jsonl: 60 other prompts from 3 topics: a narrow seed, the typical gap.
- seed_broad.jsonl: 60 other prompts drawn at random (seeded) over all 24 topics.

The narrow topics are ones whose prompts have about the average length, so the two
seeds are about as large in tokens too: longer samples fire more features, and a fair
comparison must not hand either seed more text.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "facsynth" / "data" / "demo"
NARROW_TOPICS = ("car_maintenance", "gardening", "home_repair")
ANCHOR_PER_TOPIC = 10
SEED_SIZE = 60


def main() -> None:
    by_topic: dict[str, list[dict]] = defaultdict(list)
    for line in (DEMO / "prompts.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        by_topic[row["topic"]].append(row)
    topics = sorted(by_topic)
    anchor = [r for t in topics for r in by_topic[t][:ANCHOR_PER_TOPIC]]
    rest = {t: by_topic[t][ANCHOR_PER_TOPIC:] for t in topics}
    narrow = [r for t in NARROW_TOPICS for r in rest[t][: SEED_SIZE // len(NARROW_TOPICS)]]
    broad = random.Random(0).sample([r for t in topics for r in rest[t]], SEED_SIZE)
    for name, rows in (("anchor", anchor), ("seed", narrow), ("seed_broad", broad)):
        with (DEMO / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
