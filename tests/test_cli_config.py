"""``facsynth run``'s options come from RunConfig: one field, one option, one default."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import typer

from facsynth.cli import app
from facsynth.cli.from_config import field_help
from facsynth.cli.run import RUN_FLAGS
from facsynth.graph.config import RunConfig
from cli_process import facsynth, one_line_error


def run_params() -> dict[str, click.Parameter]:
    command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params}


def test_every_config_field_is_one_option_with_the_configs_default() -> None:
    params = run_params()
    for name, field in RunConfig.model_fields.items():
        if name in ("budget", "llm"):  # their own options: --budget-*, and the LLM options
            continue
        p = params[name]
        flag = RUN_FLAGS.get(name, ("--" + name.replace("_", "-"),))[0].split("/")[0]
        assert flag in p.opts, (name, p.opts)
        if field.is_required():
            assert p.required, name
        else:
            assert p.default == field.default, (name, p.default, field.default)
        assert p.help and p.help == field_help(field.description), name
    assert "--near-dup" in params["near_duplicate_cosine"].opts and "--judge" in params["quality_judge"].opts


def test_field_help_is_the_first_sentence_without_markup() -> None:
    assert field_help("Reject it (see :mod:`facsynth.tools.quality`). Off: only ``text`` checks.") == "Reject it (see quality)."
    assert field_help("Ratio e.g. 0.95 of the anchor. More text.") == "Ratio e.g. 0.95 of the anchor."
    assert field_help(None) == ""


def test_db_comes_from_the_environment_when_not_given() -> None:
    db = run_params()["db"]
    assert db.envvar == "FACSYNTH_DB"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "greedy"], r"bad option strategy: Input should be 'agent', 'paper' or 'unguided'"),
        (["--target-fac", "1.5"], r"bad option target_fac: Input should be less than or equal to 1"),
        (["--delta", "5", "--threshold", "2"], r"threshold \(2.0\) is below delta \(5.0\)"),
    ],
)
def test_a_bad_value_is_the_configs_one_line_error_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    proc = facsynth("run", "--task", "toxicity", "--seed", "missing.jsonl", *args, cwd=tmp_path, timeout=120)
    assert re.search(message, one_line_error(proc)), proc.stderr
    assert list(tmp_path.iterdir()) == []
