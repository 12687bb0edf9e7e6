"""Split the shipped demo prompts into the demo anchor and seeds (deterministic).

    python scripts/make_demo.py

- anchor.jsonl: the first 10 prompts of each of the 24 topics (240): the task domain.
- seed.jsonl: 60 other prompts from 3 topics: a narrow seed, the typical gap.
- seed_broad.jsonl: 60 other prompts spread over all 24 topics: as large, broader.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "facsynth" / "data" / "demo"
NARROW_TOPICS = ("cooking", "python_programming", "personal_finance")
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
    broad = [rest[t][i] for i in range(len(rest[topics[0]])) for t in topics][:SEED_SIZE]
    for name, rows in (("anchor", anchor), ("seed", narrow), ("seed_broad", broad)):
        with (DEMO / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
