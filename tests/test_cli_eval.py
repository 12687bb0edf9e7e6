"""``facsynth eval`` end to end, as a user runs it: a subprocess on the shipped real SMS spam set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_process import facsynth as run
from cli_process import one_line_error

from facsynth.paths import shipped

SMS = shipped("sms_spam")


def _head(src: Path, dst: Path, n: int) -> Path:
    lines = [ln for ln in src.read_text(encoding="utf-8").splitlines() if ln.strip()][:n]
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


def test_eval_seed_and_an_added_set_end_to_end(tmp_path):
    seed = _head(SMS / "seed.jsonl", tmp_path / "seed.jsonl", 40)
    test = _head(SMS / "test.jsonl", tmp_path / "test.jsonl", 40)
    more = _head(SMS / "more.jsonl", tmp_path / "more.jsonl", 20)
    out = tmp_path / "eval.json"
    proc = run("eval", "--train", str(seed), "--test", str(test), "--add", str(more), "--json", str(out),
               "--bootstrap", "200", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Does the data help?" in proc.stdout and "seed + more" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report["auprc"]) == {"seed", "more"}
    arms = {a["name"]: a for a in report["arms"]}
    assert arms["seed"]["n_train"] == 40 and arms["more"]["n_train"] == 60
    for arm in arms.values():
        for metric in ("auprc", "accuracy"):
            i = arm[metric]
            assert 0.0 <= i["low"] <= i["value"] <= i["high"] <= 1.0
    assert report["n_test"] == 40 and report["positive"] == ["spam"]
    assert not (tmp_path / "store.db").exists()  # eval stores nothing


def _unlabelled(d: Path) -> Path:
    p = d / "test.jsonl"
    p.write_text('{"text": "see you at six"}\n{"text": "WIN a free prize, text CLAIM to 80086"}\n')
    return p


def _one_class(d: Path) -> Path:
    p = d / "test.jsonl"
    p.write_text('{"text": "see you at six", "label": "ham"}\n{"text": "ok lar", "label": "ham"}\n')
    return p


def _malformed(d: Path) -> Path:
    p = d / "test.jsonl"
    p.write_text('{"text": "ok", "label": "ham"}\n{oops\n')
    return p


@pytest.mark.parametrize(
    ("make", "extra", "expected"),
    [
        (_unlabelled, [], "has no 'label' field"),
        (_one_class, [], "one class only"),
        (lambda d: SMS / "test.jsonl", ["--label-column", "sentiment"], "has no 'sentiment' field"),
        (_malformed, [], "line 2"),
        (lambda d: d / "missing.jsonl", [], "no such file"),
    ],
    ids=["test-without-labels", "single-class", "no-such-label-column", "malformed", "missing"],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, make, extra, expected):
    out = tmp_path / "eval.json"
    proc = run("eval", "--train", str(SMS / "seed.jsonl"), "--test", str(make(tmp_path)), "--json", str(out), *extra,
               cwd=tmp_path)
    assert expected in one_line_error(proc)
    assert not out.exists()


def test_single_class_training_set_is_one_clear_line(tmp_path):
    seed = tmp_path / "seed.jsonl"
    seed.write_text('{"text": "see you at six", "label": "ham"}\n{"text": "ok lar", "label": "ham"}\n')
    proc = run("eval", "--train", str(seed), "--test", str(SMS / "test.jsonl"), cwd=tmp_path)
    assert "training set" in (line := one_line_error(proc)) and "one class only" in line
