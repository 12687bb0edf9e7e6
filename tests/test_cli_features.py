"""``facsynth features ...`` as a user runs it (in-process through the real CLI app).

The catalog for export/import/show is built by hand in a store; the end-to-end test
collects, selects and measures on the real default model and shipped SAE.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facsynth.agent.tasks import store_tasks
from facsynth.cli import app
from facsynth.db import Store
from facsynth.db.catalog import Catalog, CollectionInfo, Explanation, FeatureStats, Relevance, Span
from facsynth.errors import InputError
from facsynth.paths import shipped

runner = CliRunner()
READER = ("smollm2-135m-instruct", "0123456789abcdef", 15, "sae-test", "f" * 64, "relu", "chat")


def invoke(*args: str):
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result


def ok(*args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def _catalog(url: str) -> tuple[Catalog, int]:
    store = Store(url)
    catalog = Catalog(store)
    rid = store.reader(*READER)
    store_tasks(catalog)
    catalog.save_explanation(rid, Explanation(5, "baking and ovens", "gpt-4o-mini", words=["bake", "oven", ","]))
    catalog.set_check(rid, 5, "Probably", "gpt-4o-mini")
    catalog.set_detection(rid, 5, 0.85, 10, "gpt-4o-mini")
    catalog.save_explanation(rid, Explanation(9, "insults aimed at the reader", "gpt-4o-mini", words=["idiot"]))
    catalog.set_check(rid, 9, "Yes", "gpt-4o-mini")
    catalog.save_explanation(rid, Explanation(12, "Cannot tell", "gpt-4o-mini"))
    catalog.save_relevance(rid, [
        Relevance(9, "toxicity", "llm_judge", "Yes", "insults are toxic", model="gpt-4o-mini"),
        Relevance(5, "toxicity", "llm_judge", "No", "cooking is not toxic", model="gpt-4o-mini"),
        Relevance(5, "helpfulness", "contrast", "Yes", "AUROC 0.8", score=0.8),
    ])
    return catalog, rid


def test_export_import_round_trip_tsv_and_json(tmp_path: Path) -> None:
    a = f"sqlite:///{tmp_path / 'a.db'}"
    _catalog(a)
    tsv = tmp_path / "catalog.tsv"
    assert "wrote 2 feature(s)" in ok("features", "export", str(tsv), "--db", a)  # Cannot tell is left out
    lines = tsv.read_text().splitlines()
    assert lines == ["FeatureID\tSummary\tWords", "5\tbaking and ovens\tbake, oven, ,", "9\tinsults aimed at the reader\tidiot"]

    # into another store, under a reader that exists there: same file back
    b = f"sqlite:///{tmp_path / 'b.db'}"
    rid_b = Store(b).reader(*READER[:3], "other-sae", "e" * 64, "relu", "chat")
    ok("features", "import", str(tsv), "--db", b, "--reader", str(rid_b), "--task", "toxicity")
    again = tmp_path / "again.tsv"
    ok("features", "export", str(again), "--db", b)
    assert again.read_text() == tsv.read_text()
    imported = Catalog(Store(b))
    assert imported.explanation(rid_b, 5).explainer_model == "import:catalog.tsv"
    assert imported.selected_by(rid_b, "toxicity") == {5: ["import"], 9: ["import"]}

    # JSON: scores, methods and tasks survive, under the same reader identity in a fresh store
    out = tmp_path / "catalog.json"
    ok("features", "export", str(out), "--db", a)
    c = f"sqlite:///{tmp_path / 'c.db'}"
    assert "imported 3 feature(s)" in ok("features", "import", str(out), "--db", c)
    back = tmp_path / "back.json"
    ok("features", "export", str(back), "--db", c)
    first, second = json.loads(out.read_text()), json.loads(back.read_text())
    assert first == second
    five = next(f for f in first["features"] if f["id"] == 5)
    assert five["explanation"]["detection_score"] == 0.85 and five["explanation"]["check_label"] == "Probably"
    assert {(r["task"], r["method"]) for r in five["relevance"]} == {("toxicity", "llm_judge"), ("helpfulness", "contrast")}
    assert {t["name"] for t in first["tasks"]} == {"toxicity", "helpfulness"}

    # --task exports only the relevant set: 9 (judged Yes, check Yes), not 5 (judged No)
    only = tmp_path / "toxicity.tsv"
    ok("features", "export", str(only), "--task", "toxicity", "--db", a)
    assert [line.split("\t")[0] for line in only.read_text().splitlines()[1:]] == ["9"]


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    result = invoke("features", "explain", "--db", empty)
    assert isinstance(result.exception, InputError) and "facsynth features collect" in str(result.exception)
    bad = tmp_path / "bad.tsv"
    bad.write_text("FeatureID\tWords\n1\tx\n")
    a = f"sqlite:///{tmp_path / 'a.db'}"
    _catalog(a)
    result = invoke("features", "import", str(bad), "--db", a)
    assert isinstance(result.exception, InputError) and "missing column(s) Summary" in str(result.exception)
    result = invoke("features", "export", str(tmp_path / "x.csv"), "--db", a)
    assert isinstance(result.exception, InputError) and ".tsv or .json" in str(result.exception)
    # two readers with catalogs: the user must pick one
    store = Store(a)
    other = store.reader(*READER[:3], "sae-2", "d" * 64, "relu", "chat")
    Catalog(store).save_explanation(other, Explanation(1, "x", "m"))
    result = invoke("features", "show", "1", "--db", a)
    assert isinstance(result.exception, InputError) and "--reader" in str(result.exception)


def test_show_prints_stats_spans_explanation_scores_and_relevance(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    catalog, rid = _catalog(url)
    store = catalog.store
    samples = [(f"{i:064x}", {"text": t}) for i, t in enumerate(["Bake the bread [well]", "Preheat the oven"])]
    did = store.register_dataset("corpus", "corpus.jsonl", samples)
    catalog.save_collection(
        CollectionInfo(rid, did, "corpus", 2, 32, 1, 0, 0.0, 0, 2, 1),
        [FeatureStats(5, 2, 2, 1.0, 7.5, {"0.5": 6.0})],
        [Span(5, "top", 0, samples[0][0], 7.5, 1, ["Bake", " the bread [well]"]),
         Span(5, "held_out", 1, samples[1][0], 4.5, 1, ["Preheat", " the oven"])],
    )
    out = ok("features", "show", "5", "--db", url)
    assert "active on 2/2 samples" in out and "q0.5=6" in out
    assert "Bake<< the bread [well]>>" in out  # rich markup escaped, peak marked
    assert "1 held-out span(s)" in out
    assert "baking and ovens" in out and "check: Probably" in out and "balanced accuracy 0.85 over 10" in out
    assert "task helpfulness: Yes by contrast 0.800 (relevant)" in out
    assert "task toxicity: No by llm_judge, gpt-4o-mini: cooking is not toxic" in out
    assert "never active" in ok("features", "show", "77", "--db", url)


@pytest.mark.slow
def test_collect_relevance_and_measure_task_end_to_end(tmp_path: Path) -> None:
    """The no-LLM path: collect spans, select features from a labeled set, measure FAC over them."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    rows = [json.loads(line) for line in shipped("demo", "prompts.jsonl").read_text().splitlines()]
    cooking = [r for r in rows if r["topic"] == "cooking"][:6]
    other = [r for r in rows if r["topic"] not in ("cooking",)][:6]
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text("".join(json.dumps({"text": r["text"], "label": int(r in cooking)}) + "\n" for r in cooking + other))
    seed = tmp_path / "seed.jsonl"
    seed.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in other[:3]))

    out = ok("features", "collect", str(labeled), "--top-n", "2", "--held-out", "1", "--random-spans", "2", "--delta", "0", "--db", url)
    assert "12 samples" in out and "read 12 samples" in out
    out = ok("features", "relevance", str(labeled), "--task", "toxicity", "--threshold", "0.8", "--db", url)
    assert "6 task-positive vs 6 other samples" in out
    catalog = Catalog(Store(url))
    (rid, _), = catalog.readers()
    chosen = catalog.relevant_features(rid, "toxicity")
    assert chosen, out
    shown = ok("features", "show", str(chosen[0]), "--db", url)
    assert "by contrast" in shown and "<<" in shown

    report = tmp_path / "r.json"
    ok("measure", str(seed), "--task", "toxicity", "--json", str(report), "--db", url)
    cov = json.loads(report.read_text())["coverage"][0]
    assert cov["total"] == len(chosen) and cov["covered"] + len(cov["missing"]) == len(chosen)
    assert json.loads(report.read_text())["data"]["reused"] == 3  # read once, by collect

    # --both-sides: the cues of the other samples join F (and replace the one-sided contrast rows)
    out = ok("features", "relevance", str(labeled), "--task", "toxicity", "--threshold", "0.8", "--both-sides", "--db", url)
    assert "AUROC >= 0.8 or <= 0.2" in out, out
    both = catalog.relevant_features(rid, "toxicity")
    assert set(chosen) < set(both), (chosen, both)
