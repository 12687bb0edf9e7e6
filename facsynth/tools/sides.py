"""Which label a feature marks, and coverage by label.

On a labelled task a feature of F often marks one label: it fires on that label's anchor
samples far more often than on the others' (a cue of negative tweets, of spam). FAC by label
counts such a feature as covered only by a sample with the label it marks (a cue of negative
tweets fired by a positive tweet teaches a classifier nothing about negatives); a feature
that marks no label is covered by any sample. On real tweets this is the reading of FAC that
tracks the downstream gain of added data, where FAC by any sample does not (README,
``bench/reading.py``). Runs count this way with ``fac_by_label``; ``facsynth measure
--by-label`` measures a labelled dataset this way; the agent's label pairs name the label.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from facsynth.records import SampleFeatures


@dataclass(frozen=True)
class LabelSide:
    """On a labelled task, the label whose samples carry a feature (from the anchor's labels)."""

    label: str
    """The label the feature marks: the agent's positive is written with it."""
    other: str | None
    """The contrast sample's label: the other label of a two-label task (None: any other)."""
    hits: int = 0
    """Anchor samples of ``label`` the feature shows in ..."""
    total: int = 0
    """... of this many."""


LABEL_LIFT = 1.5
"""A feature marks a label when it shows in that label's anchor samples at least this many
times as often as in any other label's."""


def label_side(fired: list[tuple[str | None, bool]], labels: tuple[str, ...], lift: float = LABEL_LIFT) -> LabelSide | None:
    """The label a feature marks (pure): ``fired`` holds each anchor sample's label and whether
    the feature shows in it. The label whose samples show it most often marks it when that
    rate is at least ``lift`` times every other label's and it shows in 2+ of its samples; the
    contrast label is the other one of a two-label task (None with more labels). None: fewer
    than two of ``labels`` on the anchor, or no label stands out."""
    keys = {lab.lower(): lab for lab in labels}
    seen: dict[str, list[int]] = {}
    for lab, hit in fired:
        key = (lab or "").strip().lower()
        if key in keys:
            n = seen.setdefault(keys[key], [0, 0])
            n[0] += 1
            n[1] += int(hit)
    if len(seen) < 2:
        return None
    rate = {lab: hits / total for lab, (total, hits) in seen.items()}
    top = max(rate, key=lambda lab: (rate[lab], lab))
    if seen[top][1] < 2 or any(rate[top] < lift * r for lab, r in rate.items() if lab != top):
        return None
    others = [lab for lab in labels if lab != top]
    return LabelSide(top, others[0] if len(others) == 1 else None, seen[top][1], seen[top][0])


def label_sides(
    anchor: list[tuple[str | None, set[int]]], features: Iterable[int], labels: tuple[str, ...], lift: float = LABEL_LIFT
) -> dict[int, str]:
    """The label each of ``features`` marks (pure; :func:`label_side` per feature), from each
    anchor sample's label and the features active on it; features that mark none are left out."""
    out = {}
    for f in features:
        side = label_side([(lab, f in active) for lab, active in anchor], labels, lift)
        if side is not None:
            out[int(f)] = side.label
    return out


def covers(feature: int, label: str | None, sides: dict[int, str] | None) -> bool:
    """Whether a sample with ``label`` that fires ``feature`` covers it (pure): always where
    coverage is by any sample (``sides`` None) or the feature marks no label; else only when
    the sample carries the label the feature marks."""
    marked = None if sides is None else sides.get(int(feature))
    return marked is None or (label is not None and label.strip().lower() == marked.strip().lower())


def labels_of(samples: Iterable[object], field: str = "label") -> list[str | None]:
    """Each sample's ``field`` (kept in its meta) as a string, None where it has none."""
    out: list[str | None] = []
    for s in samples:
        value = getattr(s, "meta", {}).get(field)
        out.append(None if value is None else str(value))
    return out


def credited_by_label(
    features: Iterable[tuple[str | None, SampleFeatures]], sides: dict[int, str], delta: float
) -> Iterable[SampleFeatures]:
    """Each sample's features less those it does not cover by label at ``delta`` (a feature
    that marks another label than the sample's): fold them into a coverage counter and its
    FAC is FAC by label."""
    for label, sf in features:
        keep = np.array([sf.max_acts[i] <= delta or covers(int(f), label, sides) for i, f in enumerate(sf.feature_ids)],
                        dtype=bool)
        yield SampleFeatures(sf.sample_hash, sf.n_tokens, sf.feature_ids[keep], sf.max_acts[keep])


def unreadable_by_label(data: Iterable[object], anchor: Iterable[object] | None, field: str = "label",
                        data_name: str = "the data") -> str | None:
    """Why coverage by label cannot be read for ``data`` against ``anchor`` (None: it can):
    which label each feature marks is read off a labelled anchor with two labels or more,
    and each sample of the data needs its own label."""
    if anchor is None:
        return "which label each feature marks is read off a labelled anchor: give --anchor"
    for ds, what in ((anchor, "the anchor"), (data, data_name)):
        if not any(v is not None for v in labels_of(ds, field)):
            source = getattr(ds, "source", None)
            return f"{what}{f' ({source})' if source else ''} has no {field!r} field; label its samples"
    if len({v.strip().lower() for v in labels_of(anchor, field) if v is not None}) < 2:
        source = getattr(anchor, "source", None)
        return f"the anchor{f' ({source})' if source else ''} has one label only; a feature marks a label against the others"
    return None
