"""``facsynth measure`` end to end, as a user runs it: a subprocess on shipped data."""

from __future__ import annotations

import json

import pytest

from cli_process import facsynth as run
from cli_process import one_line_error

from facsynth.paths import shipped

DEMO = shipped("demo")


def test_measure_demo_end_to_end_and_reuse(tmp_path):
    out = tmp_path / "report.json"
    first = run("measure", str(DEMO / "seed.jsonl"), "--anchor", str(DEMO / "anchor.jsonl"), "--json", str(out), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Feature Activation Coverage" in first.stdout and "self_bleu" in first.stdout
    report = json.loads(out.read_text())
    cov = report["coverage"][0]
    assert 0.0 < cov["fac"] < 1.0
    assert cov["covered"] + len(cov["missing"]) == cov["total"]
    assert report["data"]["n_samples"] == 60 and report["anchor"]["n_samples"] == 240
    assert report["data"]["encoded"] == 60 and report["data"]["reused"] == 0
    assert set(report["diversity"]) >= {"distinct_1", "distinct_2", "entropy_2", "self_bleu", "cosine_distance"}
    assert report["by_label"] is None and "FAC by label" not in first.stdout  # unlabelled: by any sample only

    # the same data again with the same SAE: nothing is read through the model, same numbers
    second = run("measure", str(DEMO / "seed.jsonl"), "--anchor", str(DEMO / "anchor.jsonl"), "--json", str(out), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    again = json.loads(out.read_text())
    assert again["data"]["encoded"] == 0 and again["data"]["reused"] == 60
    assert again["anchor"]["reused"] == 240
    assert again["coverage"][0]["missing"] == cov["missing"]


def test_delta_sweep_and_feature_file(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("0\n1\n2\n3\n4\n5\n6\n7\n")
    out = tmp_path / "r.json"
    proc = run(
        "measure", str(DEMO / "seed_broad.jsonl"), "--features", str(ids), "--delta", "0", "--delta", "2",
        "--json", str(out), "--no-store", cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    covs = json.loads(out.read_text())["coverage"]
    assert [c["delta"] for c in covs] == [0.0, 2.0]
    assert all(c["total"] == 8 for c in covs)
    assert covs[0]["covered"] >= covs[1]["covered"]  # a higher threshold never covers more
    assert not (tmp_path / "store.db").exists()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p / "missing.jsonl", "no such file"),
        (lambda p: (p / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n') and p / "bad.jsonl", "line 2"),
        (lambda p: (p / "empty.jsonl").write_text("\n\n") and p / "empty.jsonl", "no samples"),
        (lambda p: (p / "latin.txt").write_bytes(b"caf\xe9 au lait\n") and p / "latin.txt", "not UTF-8"),
    ],
    ids=["missing", "malformed", "empty", "non-utf8"],
)
def test_bad_data_is_one_clear_line_and_writes_nothing(tmp_path, make, expected):
    out = tmp_path / "report.json"
    proc = run("measure", str(make(tmp_path)), "--json", str(out), cwd=tmp_path)
    assert expected in one_line_error(proc)
    assert not out.exists()


def test_width_mismatch_and_bad_layer_are_one_clear_line(tmp_path):
    from sae_lens import SAE
    from sae_lens.saes.topk_sae import TopKSAEConfig

    SAE.from_dict(TopKSAEConfig(d_in=64, d_sae=128, k=8).to_dict()).save_model(tmp_path / "narrow")
    proc = run("measure", str(DEMO / "seed.jsonl"), "--sae", str(tmp_path / "narrow"), "--layer", "3", cwd=tmp_path)
    assert "576" in one_line_error(proc)
    proc = run("measure", str(DEMO / "seed.jsonl"), "--layer", "42", cwd=tmp_path)
    assert "layer 42 is out of range" in one_line_error(proc)


def test_by_label_a_cue_counts_only_on_a_sample_with_the_label_it_marks(tmp_path):
    tweets = shipped("tweet_sentiment")
    rows = [json.loads(line) for line in (tweets / "seed.jsonl").read_text(encoding="utf-8").splitlines()]
    flipped = tmp_path / "flipped.jsonl"  # the same texts with every label swapped
    flipped.write_text("".join(json.dumps({"text": r["text"], "label": "positive" if r["label"] == "negative" else "negative"})
                               + "\n" for r in rows), encoding="utf-8")
    reports = {}
    # asked for, by default where both files carry labels, and turned off
    for name, data, flag in (("seed", tweets / "seed.jsonl", ["--by-label"]), ("flipped", flipped, []),
                             ("off", tweets / "seed.jsonl", ["--no-by-label"])):
        out = tmp_path / f"{name}.json"
        proc = run("measure", str(data), "--anchor", str(tweets / "anchor.jsonl"), *flag, "--delta", "6",
                   "--json", str(out), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert ("FAC by label at delta 6" in proc.stdout) is (name != "off")
        reports[name] = json.loads(out.read_text())
    assert reports["off"]["by_label"] is None and reports["off"]["coverage"] == reports["seed"]["coverage"]
    seed, flipped_rep = reports["seed"], reports["flipped"]
    blind, by_label = seed["coverage"][0], seed["by_label"][0]
    assert set(by_label["marks"]) == {"negative", "positive"} and by_label["coverage"]["total"] == blind["total"]
    # a labelled set covers by label at most what it covers by any sample; with wrong labels, far less
    assert by_label["coverage"]["covered"] < blind["covered"]
    assert flipped_rep["coverage"][0]["covered"] == blind["covered"]  # the same texts fire the same features
    assert flipped_rep["by_label"][0]["coverage"]["covered"] < by_label["coverage"]["covered"]


def test_by_label_without_labels_is_one_clear_line_before_the_model_loads(tmp_path):
    tweets = shipped("tweet_sentiment")
    proc = run("measure", str(DEMO / "seed.jsonl"), "--anchor", str(tweets / "anchor.jsonl"), "--by-label", cwd=tmp_path)
    assert "has no 'label' field" in one_line_error(proc)
    proc = run("measure", str(tweets / "seed.jsonl"), "--by-label", cwd=tmp_path)
    assert "give --anchor" in one_line_error(proc)
