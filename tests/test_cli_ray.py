"""``--ray`` on the command line, as a user runs it: the same report and store rows as without, one-line errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from store_rows import dump

from cli_process import env_for, one_line_error
from cli_process import facsynth as run

from facsynth.cli import _fill_optional_values
from facsynth.paths import shipped

DEMO = shipped("demo")
SPAM = shipped("sms_spam") / "seed.jsonl"


def test_a_bare_ray_flag_means_a_local_instance() -> None:
    assert _fill_optional_values(["measure", "d", "--ray"]) == ["measure", "d", "--ray=local"]
    assert _fill_optional_values(["measure", "d", "--ray", "--json", "o"]) == ["measure", "d", "--ray=local", "--json", "o"]
    assert _fill_optional_values(["measure", "d", "--ray", "auto"]) == ["measure", "d", "--ray", "auto"]


@pytest.mark.slow
def test_measure_and_collect_on_ray_store_what_they_store_without(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]' (the test extra brings it too)")
    reports = {}
    for name, ray_args in (("single", []), ("ray", ["--ray"])):
        cwd = tmp_path / name
        cwd.mkdir()
        measured = run(
            "measure", str(DEMO / "seed.jsonl"), *ray_args, "--anchor", str(DEMO / "anchor.jsonl"), "--limit", "30",
            "--delta", "0", "--delta", "1", "--json", str(cwd / "report.json"), cwd=cwd,
        )
        assert measured.returncode == 0, measured.stderr
        assert ("reading on Ray: up to" in measured.stdout) == bool(ray_args)
        collected = run(
            "features", "collect", str(SPAM), "--limit", "24", "--top-n", "3", "--random-spans", "4",
            *(["--ray", "local"] if ray_args else []), cwd=cwd,
        )
        assert collected.returncode == 0, collected.stderr
        assert "24 samples" in collected.stdout and "read 24 samples" in collected.stdout
        report = json.loads((cwd / "report.json").read_text())
        for volatile in ("seconds", "tokens_per_s"):
            report.pop(volatile)
        reports[name] = (report, dump(create_engine(f"sqlite:///{cwd / 'store.db'}")))
    assert reports["ray"][0]["data"]["encoded"] == 30 and reports["ray"][0]["coverage"][0]["covered"] > 0
    assert reports["ray"][0] == reports["single"][0]  # FAC, missing ids, per-feature hits, diversity
    assert reports["ray"][1] == reports["single"][1]  # every stored reading, stat and span


def test_ray_asked_but_not_installed_names_the_extra(tmp_path: Path) -> None:
    fake = tmp_path / "no_ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    env = env_for(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(fake.parent), env.get("PYTHONPATH")]))
    for verb in (["measure", str(DEMO / "seed.jsonl")], ["features", "collect", str(SPAM)]):
        proc = subprocess.run(
            [sys.executable, "-m", "facsynth", *verb, "--ray"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        line = one_line_error(proc)
        assert "--ray needs Ray, which is not installed" in line and "pip install 'facsynth[ray]'" in line


def test_an_unreachable_ray_cluster_is_one_line_in_seconds(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]' (the test extra brings it too)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        proc = run("measure", str(DEMO / "seed.jsonl"), "--ray", address, cwd=tmp_path, timeout=120)
        assert one_line_error(proc).startswith(f"error: cannot reach the Ray cluster at {address}: ")
    proc = run("features", "collect", str(SPAM), "--ray", "seed.jsonl", cwd=tmp_path, timeout=120)
    assert "'seed.jsonl' is not HOST:PORT, ray://HOST:PORT, auto or local" in one_line_error(proc)
