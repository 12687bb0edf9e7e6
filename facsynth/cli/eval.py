"""``facsynth eval``: does the data help? A probe on frozen hidden states, seed alone vs seed + each added set."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from facsynth.cli.from_config import config_command
from facsynth.tools.downstream import EvalConfig

console = Console()


EVAL_FLAGS = {"c": ("--C",), "layer": ("--layer", "-l")}
"""Flags of :class:`~facsynth.tools.downstream.EvalConfig` fields that are not ``--field-name``."""


@config_command(EvalConfig, EVAL_FLAGS, own_first=True)
def eval_command(
    train: Path = typer.Option(..., "--train", help="The seed: a labelled set (JSONL, CSV/TSV, ... with a label field)."),
    test: Path = typer.Option(..., "--test", help="The labelled test set the probe is scored on."),
    add: Optional[list[Path]] = typer.Option(None, "--add", help="A set added to the seed (e.g. a `facsynth export` JSONL); repeat for several arms."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON (atomically)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Subject model: hub id, model dir, .gguf file. Default: bundled SmolLM2-135M-Instruct."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    **fields: Any,
) -> None:
    """Does the data help? AUPRC and accuracy of a probe trained on the seed alone and on seed + each --add set."""
    from facsynth.cli.measure import _write_atomic
    from facsynth.tools.datasets import load_dataset
    from facsynth.tools.downstream import evaluate

    cfg = EvalConfig.make(**fields)
    # read every input before the model loads: bad input fails in a second
    seed_ds, test_ds = load_dataset(train), load_dataset(test)
    add_ds = [load_dataset(a) for a in add or []]
    with console.status("reading the sets through the model and training the probe"):
        report = evaluate(seed_ds, test_ds, add_ds, model=model, config=cfg, device=device, dtype=dtype)
    if json_out is not None:
        _write_atomic(json_out, report.model_dump_json(indent=2))
    print_report(report)


def _fmt(i) -> str:  # noqa: ANN001 - Interval
    return f"{i.value:.3f} [{i.low:.3f}, {i.high:.3f}]"


def print_report(report) -> None:  # noqa: ANN001 - EvalReport, imported lazily
    console.print(
        f"test [bold]{report.test}[/]: {report.n_test} samples, {report.n_test_positive} positive "
        f"({'/'.join(report.positive)} in {report.label_column!r}; chance AUPRC {report.chance_auprc:.3f})"
    )
    console.print(f"model {report.model}, block {report.layer}; {report.classifier}")
    over = (
        f"mean over {report.draws} draws of {report.seed_size} seed samples, {report.confidence:.0%} t interval over draws"
        if report.seed_size is not None
        else f"{report.confidence:.0%} bootstrap interval over {report.bootstrap} test resamples"
    )
    table = Table(title=f"Does the data help? ({over})")
    for col in ("arm", "n_train", "positive", "AUPRC", "accuracy", "AUPRC gain (paired)"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for a in report.arms:
        label = a.name if a is report.arms[0] else f"seed + {a.name}"
        g = a.auprc_gain
        gain = "" if g is None else f"{g.value:+.3f} [{g.low:+.3f}, {g.high:+.3f}]"
        table.add_row(label, str(a.n_train), str(a.n_train_positive), _fmt(a.auprc), _fmt(a.accuracy), gain)
    console.print(table)
    console.print("gain: AUPRC minus the seed arm's on the same test resamples (and seed draws); "
                  "an interval across 0 is no evidence either way")
    for a in report.arms:
        if a.overlap:
            console.print(f"[yellow]warning:[/] {a.name}: {a.overlap} training samples are also in the test set")
    console.print(f"{report.seconds:.1f}s")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
