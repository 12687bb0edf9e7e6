"""FAC must discriminate on real text with the shipped defaults, or it is useless.

Two seeds of the same size (60 prompts) are measured against the demo anchor (24
topics): one drawn from 3 topics, one from all 24. With the default model, SAE,
reading and delta, the narrow seed must cover clearly fewer anchor features, and
neither may saturate.
"""

from __future__ import annotations

import pytest

from facsynth.paths import shipped
from facsynth.tools.measure import measure
from facsynth.tools.reader import Reader


@pytest.fixture(scope="module")
def reader(subject, default_sae):
    return Reader(subject, default_sae, use_store=False)


def test_narrow_seed_covers_clearly_less_than_a_broad_one(reader):
    demo = shipped("demo")
    narrow = measure(demo / "seed.jsonl", anchor=demo / "anchor.jsonl", reader=reader)
    broad = measure(demo / "seed_broad.jsonl", anchor=demo / "anchor.jsonl", reader=reader)
    n, b = narrow.coverage[0], broad.coverage[0]
    assert n.total == b.total > 100, "the anchor should fire a sizeable feature set"
    assert b.fac < 0.97, f"FAC saturates: broad seed covers {b.fac:.1%}"
    assert b.fac - n.fac >= 0.05, f"narrow {n.fac:.1%} vs broad {b.fac:.1%}"
    assert len(n.missing) > len(b.missing)
