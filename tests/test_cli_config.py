"""The options of ``facsynth run`` and ``facsynth eval`` come from RunConfig and EvalConfig, and
``facsynth resume``'s from the RunConfig and Budget fields it overrides: one field, one option,
one default (and one help)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import typer

from facsynth.cli import app
from facsynth.cli.eval import EVAL_FLAGS
from facsynth.cli.from_config import REPEATABLE, field_help
from facsynth.cli.run import KEEP, RUN_FLAGS
from facsynth.graph.config import Budget, RunConfig
from facsynth.tools.downstream import EvalConfig
from cli_process import facsynth, one_line_error


def run_params() -> dict[str, click.Parameter]:
    command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params}


def test_every_config_field_is_one_option_with_the_configs_default() -> None:
    params = run_params()
    for name, field in RunConfig.model_fields.items():
        if name in ("budget", "llm"):  # the Budget fields' options (below), and the LLM options
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


# --- facsynth eval: EvalConfig ----------------------------------------------------------


def params_of(name: str) -> dict[str, click.Parameter]:
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params}


def test_every_eval_config_field_is_one_option_with_the_configs_default() -> None:
    params = params_of("eval")
    for name, field in EvalConfig.model_fields.items():
        p = params[name]
        flag = EVAL_FLAGS.get(name, ("--" + name.replace("_", "-"),))[0]
        assert flag in p.opts, (name, p.opts)
        many = isinstance(field.default, tuple)
        assert p.multiple is many, name
        assert p.default == (list(field.default) if many else field.default), (name, p.default, field.default)
        assert field.description, f"EvalConfig.{name} has no docstring (the option's help)"
        assert p.help == field_help(field.description) + (f" {REPEATABLE}" if many else ""), name
    own = {"train", "test", "add", "json_out", "model", "device", "dtype"}
    assert set(params) == set(EvalConfig.model_fields) | own  # nothing re-typed by hand, nothing left out
    assert "--C" in params["c"].opts and "-l" in params["layer"].opts and "--label-column" in params["label_column"].opts


def test_eval_help_lists_every_field_with_its_help(tmp_path: Path) -> None:
    proc = facsynth("eval", "--help", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.replace("│", " ").split())
    for name, field in EvalConfig.model_fields.items():
        flag = EVAL_FLAGS.get(name, ("--" + name.replace("_", "-"),))[0]
        assert flag in text, flag
        assert field_help(field.description) in text, name
    for flag in ("--train", "--test", "--add", "--json", "--model", "--device", "--dtype"):
        assert flag in text


def test_eval_repeatable_positive_and_the_other_fields_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from facsynth.tools import downstream

    seen: list[EvalConfig] = []

    class Stop(Exception):
        pass

    def make(**values: object) -> EvalConfig:
        seen.append(EvalConfig(**values))  # type: ignore[arg-type]
        raise Stop

    monkeypatch.setattr(downstream.EvalConfig, "make", make)
    result = CliRunner().invoke(app, [
        "eval", "--train", "a.jsonl", "--test", "b.jsonl", "--positive", "spam", "--positive", "junk", "--C", "0.5",
        "--seed-size", "8", "--draws", "3", "--bootstrap", "200", "--rng-seed", "7", "-l", "4", "--batch-size", "8",
        "--max-tokens", "64", "--confidence", "0.9", "--label-column", "kind",
    ])
    assert isinstance(result.exception, Stop), result.output
    assert seen == [EvalConfig(positive=("spam", "junk"), c=0.5, seed_size=8, draws=3, bootstrap=200, rng_seed=7, layer=4,
                               batch_size=8, max_tokens=64, confidence=0.9, label_column="kind")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--draws", "0"], r"invalid eval option: draws: Input should be greater than or equal to 1"),
        (["--C", "0"], r"invalid eval option: c: Input should be greater than 0"),
        (["--confidence", "1.5"], r"invalid eval option: confidence: Input should be less than 1"),
    ],
)
def test_a_bad_eval_value_is_one_line_before_any_input_is_read(tmp_path: Path, args: list[str], message: str) -> None:
    proc = facsynth("eval", "--train", "missing.jsonl", "--test", "missing.jsonl", "--json", "out.json", *args,
                    cwd=tmp_path, timeout=120)
    assert re.search(message, one_line_error(proc)), proc.stderr
    assert list(tmp_path.iterdir()) == []


# --- facsynth resume: overrides of the stored RunConfig and Budget -----------------------

RESUME_FIELDS = {"target_fac": RunConfig.model_fields["target_fac"],
                 **{f"budget_{k}": f for k, f in Budget.model_fields.items()}}


def test_resume_options_are_the_fields_with_none_keeping_the_stored_value() -> None:
    params = params_of("resume")
    for name, field in RESUME_FIELDS.items():
        p = params[name]
        assert "--" + name.replace("_", "-") in p.opts, (name, p.opts)
        assert p.default is None and not p.required, name
        assert p.help.startswith(field_help(field.description)) and p.help.endswith(KEEP), (name, p.help)
    assert set(params) == set(RESUME_FIELDS) | {"run_name", "workers", "db", "report_dir"}


def test_run_budget_options_are_the_budget_fields() -> None:
    params = run_params()
    for name, field in Budget.model_fields.items():
        p = params[f"budget_{name}"]
        assert f"--budget-{name}" in p.opts and p.default is None
        assert p.help == field_help(field.description)


def test_resume_help_lists_every_override_with_its_help(tmp_path: Path) -> None:
    proc = facsynth("resume", "--help", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.replace("│", " ").split())
    for name, field in RESUME_FIELDS.items():
        assert "--" + name.replace("_", "-") in text, name
        assert field_help(field.description) in text, name
    assert KEEP in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-fac", "2"], r"bad option target_fac: Input should be less than or equal to 1"),
        (["--budget-calls", "0"], r"bad option budget.calls: Input should be greater than or equal to 1"),
        (["--budget-seconds", "-1"], r"bad option budget.seconds: Input should be greater than 0"),
    ],
)
def test_a_bad_resume_value_is_one_line_before_the_store_is_opened(tmp_path: Path, args: list[str], message: str) -> None:
    proc = facsynth("resume", "r1", *args, cwd=tmp_path, timeout=120)
    assert re.search(message, one_line_error(proc)), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_override_parameters_and_sequences_from_a_model() -> None:
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field

    from facsynth.cli.from_config import check_overrides, field_parameters, override_parameters
    from facsynth.errors import InputError

    class M(BaseModel):
        model_config = ConfigDict(use_attribute_docstrings=True)

        names: tuple[str, ...] = ("a",)
        """Names. More."""
        mode: Literal["x", "y"] = "x"
        """Mode."""
        n: int = Field(3, ge=1)
        """Count."""

    names, mode, n = field_parameters(M, {})
    assert n.default.default == 3 and n.default.help == "Count."
    assert names.annotation == list[str] and names.default.default == ["a"] and names.default.help == f"Names. {REPEATABLE}"
    assert mode.default.metavar == "x|y"
    over = {p.name: p for p in override_parameters(M, ("n",), prefix="m_", note="Keep.")}
    assert list(over) == ["m_n"] and over["m_n"].default.default is None and over["m_n"].default.help == "Count. Keep."
    check_overrides(M, {"m_n": None, "other": 0}, prefix="m_")
    check_overrides(M, {"m_n": 2}, prefix="m_")
    with pytest.raises(InputError, match="bad option m.n: Input should be greater than or equal to 1"):
        check_overrides(M, {"m_n": 0}, prefix="m_", where="m.")
