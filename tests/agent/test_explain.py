"""Explain, check, detect and task-judge features: the real local server, and unparseable replies.

The catalog here is built by hand (spans of real sentences, a random-span pool whose
samples have stored readings), so the LLM steps are tested without the subject model.
Replies come from the real SmolLM2-135M server; it is weak, so its tests assert the
structure of what is stored, not the quality of what it says. Unparseable replies, which
a grammar-constrained server will not produce on command, come from the scripted
loopback endpoint of ``conftest.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from facsynth.agent.explain import (
    Detection,
    ExplainConfig,
    StepContext,
    explain_features,
    format_span,
    judge_features,
)
from facsynth.agent.config import LLMConfig
from facsynth.agent.llm import LLMClient
from facsynth.agent.server import EmbeddedServer
from facsynth.agent.tasks import PRESETS, store_tasks
from facsynth.db.catalog import CANNOT_TELL, Catalog, CollectionInfo, Explanation, Span
from facsynth.db.models import LABELS
from facsynth.records import SampleFeatures

from endpoints import FakeOpenAI, Reply

READER = ("smollm2-135m-instruct", "0123456789abcdef", 15, "sae-test", "f" * 64, "relu", "chat")
TOPICS = {
    11: ["Knead the dough and let it rise", "Bake the bread in a hot oven", "Slice the onions and fry them",
         "Simmer the soup for an hour", "Whisk the eggs with sugar", "Roast the chicken with garlic"],
    12: ["The meeting starts at 9 and ends at 11", "She paid 45 dollars for 3 books", "Add 12 and 30 to get 42",
         "The train leaves in 15 minutes", "He ran 5 kilometres in 27 minutes", "Chapter 7 begins on page 112"],
    13: ["The cat sat on the warm mat", "A dog barked at the mailman", "The horse galloped across the field",
         "An owl hooted in the dark forest", "The rabbit hid under a bush", "A fox crept toward the henhouse"],
}
OTHER = ["Please explain how tides work", "Write a haiku about winter light", "What is the capital of Peru",
         "Summarize the plot of Hamlet"]


def _tokens(sentence: str) -> list[str]:
    words = sentence.split()
    return [words[0]] + [" " + w for w in words[1:]]


def build_catalog(store: Any) -> tuple[Catalog, int, int]:
    """Three features with 4 top and 2 held-out spans each, and 4 random spans from unrelated samples."""
    rid = store.reader(*READER)
    texts = [t for group in TOPICS.values() for t in group] + OTHER
    samples = [(f"{i:064x}", {"text": t}) for i, t in enumerate(texts)]
    did = store.register_dataset("corpus", "corpus.jsonl", samples)
    hash_of = {t: h for h, t in ((h, p["text"]) for h, p in samples)}
    spans = []
    for f, group in TOPICS.items():
        for rank, sentence in enumerate(group):
            toks = _tokens(sentence)
            spans.append(Span(f, "top" if rank < 4 else "held_out", rank, hash_of[sentence], 6.0 - rank * 0.5,
                              len(toks) - 1, toks, [0.0] * (len(toks) - 1) + [6.0 - rank * 0.5]))
    spans += [Span(None, "random", i, hash_of[t], 0.0, 2, _tokens(t)[:3]) for i, t in enumerate(OTHER)]
    catalog = Catalog(store)
    catalog.save_collection(
        CollectionInfo(rid, did, "corpus", top_n=4, window=32, held_out=2, n_random=4, delta=0.0, seed=0,
                       n_samples=len(texts), n_features=3),
        [], spans,
    )
    # the random samples' readings: none of the three features fires on them
    store.save_features(rid, [SampleFeatures(hash_of[t], 6, np.array([1, 2], np.int32), np.array([1.0, 2.0], np.float32))
                              for t in OTHER])
    return catalog, rid, did


def llm_rows(store: Any) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text("SELECT * FROM llm_calls ORDER BY id"))]


async def _closing(client: LLMClient, coro: Any) -> Any:
    try:
        return await coro
    finally:
        await client.aclose()


def test_format_span_trims_and_marks_the_peak() -> None:
    span = Span(1, "top", 0, "h", 3.0, 11, [f" w{i}" for i in range(11)] + [" peak\nline"])
    assert format_span(span, trim=3) == "w9 w10<< peak\\nline>>"
    assert format_span(span, trim=2, mark=False) == "w10 peak\\nline"


def test_balanced_accuracy() -> None:
    assert Detection(truth=[1, 1, 0, 0], said=[1, 1, 0, 0]).balanced_accuracy == 1.0
    assert Detection(truth=[1, 1, 0, 0], said=[1, 1, 1, 1]).balanced_accuracy == 0.5  # says yes to all: chance
    assert Detection(truth=[1, 0, 0, 0], said=[1, 0, 1, 1]).balanced_accuracy == pytest.approx(0.5 * (1 + 1 / 3))


@pytest.mark.llm_server
def test_explain_check_detect_and_judge_on_the_real_server(llama_server: EmbeddedServer, store: Any) -> None:
    catalog, rid, did = build_catalog(store)
    catalog.save_explanation(rid, Explanation(13, "animals doing things", "seeded-by-test"))  # so every judge runs
    client = LLMClient(LLMConfig(max_tokens=96, timeout_s=120.0), store=store, endpoints=llama_server.base_urls,
                       llama_cpp=True)
    ctx = StepContext(client, catalog, rid, did, ExplainConfig(n_explain=4, max_detect=2), run_id="catalog-1")
    explain, check, detect = asyncio.run(_closing(client, explain_features(ctx, [11, 12, 13])))

    model = "smollm2-135m-instruct"
    assert explain.skipped == {13: "already explained"}
    assert sorted(explain.ok + list(explain.failed)) == [11, 12]
    for f in explain.ok:
        e = catalog.explanation(rid, f)
        assert e is not None and e.explainer_model == model and e.dataset_id == did and e.text
        assert "\n" not in e.text and (e.text == CANNOT_TELL or not e.cannot_tell)
        assert e.words == [_tokens(s)[-1].strip() for s in TOPICS[f][:4]]
    for f in explain.failed:
        assert catalog.explanation(rid, f) is None

    for report in (check, detect):  # feature 13 is always tried; 11 and 12 when they got a real explanation
        assert 13 in report.ok or 13 in report.failed
    e13 = catalog.explanation(rid, 13)
    if 13 in check.ok:
        assert e13.check_label in LABELS and e13.check_model == model
    if 13 in detect.ok:
        assert 0.0 <= e13.detection_score <= 1.0 and e13.detection_n == 4 and e13.detection_model == model

    store_tasks(catalog)
    judge = asyncio.run(_closing(client, judge_features(ctx, PRESETS["toxicity"], [11, 12, 13])))
    assert 13 in judge.ok or 13 in judge.failed
    rows = {r.feature: r for r in catalog.relevance(rid, "toxicity")}
    assert set(rows) == set(judge.ok)
    for r in rows.values():
        assert r.method == "llm_judge" and r.model == model and r.label in LABELS and r.analysis

    reports = [explain, check, detect, judge]
    assert sum(len(r.ok) for r in reports) >= 3  # grammar-constrained replies parse nearly always
    calls = llm_rows(store)
    assert {c["purpose"] for c in calls} >= {"check", "detect", "task_judge"}
    assert all(c["model"] == model and c["run_id"] == "catalog-1" for c in calls)
    for r in reports:  # every success has an ok call of its purpose, every failure two parse_errors
        ok_calls = [c for c in calls if c["purpose"] == r.step and c["outcome"] == "ok"]
        assert len(ok_calls) >= len(r.ok)
        assert len([c for c in calls if c["purpose"] == r.step and c["outcome"] == "parse_error"]) >= 2 * len(r.failed)

    # a re-run skips what is done and pays nothing
    sent = client.stats.http_requests
    again = asyncio.run(_closing(client, explain_features(ctx, explain.ok)))
    assert all(not r.ok and not r.failed for r in again) and client.stats.http_requests == sent


def test_unparseable_reply_fails_only_that_feature(fake_llm: FakeOpenAI, store: Any) -> None:
    catalog, rid, did = build_catalog(store)
    cfg = LLMConfig(base_url=fake_llm.url, model="scripted-model", structured_output="prompt", max_concurrency=1,
                    timeout_s=5.0)
    client = LLMClient(cfg, store=store)
    fake_llm.queue(  # one request at a time, first come first served: 12's repair queues behind 13
        Reply(content='{"explanation": "cooking steps"}'),         # feature 11
        Reply(content="This feature is about numbers."),          # feature 12: not JSON
        Reply(content='{"explanation": "cannot tell."}'),         # feature 13
        Reply(content='{"explanation": ""}'),                     # feature 12, repair: still invalid
    )
    ctx = StepContext(client, catalog, rid, did, run_id="r")
    (explain,) = asyncio.run(_closing(client, explain_features(ctx, [11, 12, 13], steps=("explain",))))
    assert explain.ok == [11, 13] and list(explain.failed) == [12]
    assert "does not fit ExplanationReply" in explain.failed[12]
    assert catalog.explanation(rid, 12) is None  # no default, no placeholder
    assert catalog.explanation(rid, 11).text == "cooking steps"
    assert catalog.explanation(rid, 11).explainer_model == "scripted-model"
    assert catalog.explanation(rid, 13).text == CANNOT_TELL
    outcomes = [(c["purpose"], c["outcome"]) for c in llm_rows(store)]
    assert outcomes.count(("explain", "parse_error")) == 2 and outcomes.count(("explain", "ok")) == 2

    # the judges skip what has nothing to judge, and a bad detection reply fails only its feature
    fake_llm.queue(Reply(content='{"label": "Probably"}'), Reply(content='{"matches": [1, 0]}'),
                   Reply(content='{"matches": [1, 0, 1, 0, 1]}'))  # 4 snippets: wrong length, twice
    fake_llm.default = Reply(content='{"matches": [1]}')
    ctx = StepContext(client, catalog, rid, did, ExplainConfig(max_detect=2), run_id="r")
    check, detect = asyncio.run(_closing(client, explain_features(ctx, [11, 12, 13], steps=("check", "detect"))))
    assert check.ok == [11] and check.skipped == {12: "no explanation", 13: "explanation is Cannot tell"}
    assert catalog.explanation(rid, 11).check_label == "Probably"
    assert detect.ok == [] and list(detect.failed) == [11]
    assert catalog.explanation(rid, 11).detection_score is None


def test_cli_explain_prints_totals_and_failures(fake_llm: FakeOpenAI, tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from facsynth.cli import app
    from facsynth.db import Store

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = Store(url)
    catalog, rid, _ = build_catalog(store)
    fake_llm.queue(Reply(content='{"explanation": "cooking steps"}'), Reply(content="no JSON here"), Reply(content="nor here"))
    result = CliRunner().invoke(app, [
        "features", "explain", "--db", url, "--base-url", fake_llm.url, "--llm-model", "scripted-model",
        "--features", "11,12", "--steps", "explain", "--concurrency", "1",
    ], env={"COLUMNS": "200"})
    assert result.exit_code == 0, (result.output, result.exception)
    assert "explain: 1 ok, 1 failed, 0 skipped" in result.output
    assert "feature 12 failed" in result.output
    assert "LLM: 3 calls (ok 1, cached 0, parse errors 2, errors 0)" in result.output
    assert "1 feature step(s) failed" in result.output
    assert catalog.explanation(rid, 11).explainer_model == "scripted-model" and catalog.explanation(rid, 12) is None
