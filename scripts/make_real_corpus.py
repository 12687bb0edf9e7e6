"""Extract real human-written text for SAE training from VADER's rated snippets (deterministic).

    pip download --no-deps --no-binary :all: -d /tmp/vader vaderSentiment==3.3.2
    python scripts/make_real_corpus.py /tmp/vader/vaderSentiment-3.3.2.tar.gz

The source distribution's ``additional_resources/hutto_ICWSM_2014.tar.gz`` (MIT, the data of
the VADER paper, Hutto & Gilbert, ICWSM 2014) holds four sets of short real texts: tweets
(4,200), movie-review snippets (10,605), Amazon product-review snippets (3,708) and New York
Times editorial snippets (5,190). Every text is taken, whatever its rating, HTML-unescaped,
whitespace-normalised and de-duplicated (case and spacing ignored); texts of under three
words are dropped, and so is every tweet that any file of ``facsynth/data/tweet_sentiment``
holds (seed, more, test, anchor), so that an SAE trained on this text has never read the
tweets a probe is scored on or FAC is measured against.

Writes ``facsynth/data/corpus/real_snippets.jsonl.gz``: ``{"text": ..., "source": ...}`` rows,
sources interleaved round-robin (tweets, movies, amazon, nyt) so that any prefix mixes them.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import io
import json
import re
import sys
import tarfile
from itertools import zip_longest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "facsynth" / "data" / "corpus" / "real_snippets.jsonl.gz"
TWEETS = ROOT / "facsynth" / "data" / "tweet_sentiment"
INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
SOURCES = (
    ("tweets", "hutto_ICWSM_2014/tweets_GroundTruth.txt"),
    ("movie_reviews", "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"),
    ("amazon_reviews", "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt"),
    ("nyt_editorials", "hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt"),
)
MIN_WORDS = 3


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def shipped_tweets() -> set[str]:
    out: set[str] = set()
    for file in sorted(TWEETS.glob("*.jsonl")):
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.add(_norm(json.loads(line)["text"]))
    return out


def read_snippets(sdist: Path) -> dict[str, list[str]]:
    with tarfile.open(sdist) as outer:
        inner = outer.extractfile(INNER).read()
    excluded = shipped_tweets()
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    with tarfile.open(fileobj=io.BytesIO(inner)) as t:
        for source, member in SOURCES:
            texts = out.setdefault(source, [])
            for line in t.extractfile(member).read().decode("utf-8").splitlines():
                parts = line.rstrip("\r").split("\t")
                if len(parts) != 3:
                    continue
                text = " ".join(html.unescape(parts[2]).split())
                key = _norm(text)
                if len(text.split()) < MIN_WORDS or key in seen or key in excluded:
                    continue
                seen.add(key)
                texts.append(text)
    return out


def main(sdist: Path) -> None:
    by_source = read_snippets(sdist)
    rows = [
        {"text": text, "source": source}
        for group in zip_longest(*[[(s, t) for t in texts] for s, texts in by_source.items()])
        for source, text in (g for g in group if g is not None)
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # mtime 0 and no file name in the header: the same input gives the same bytes
    with open(OUT, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
    print(", ".join(f"{s} {len(t)}" for s, t in by_source.items()) + f"; {len(rows)} texts -> {OUT.relative_to(ROOT)}")
    print(f"source sha256 {hashlib.sha256(sdist.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/make_real_corpus.py vaderSentiment-3.3.2.tar.gz")
    main(Path(sys.argv[1]))
