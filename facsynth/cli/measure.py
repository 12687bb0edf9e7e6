"""``facsynth measure``: FAC of a dataset, what it misses, and text diversity beside it."""

from __future__ import annotations

import os
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from facsynth.cli.on_ray import RAY, RAY_ACTORS, join_ray, ray_pool
from facsynth.cli.options import DB

console = Console()


def measure_command(
    data: Path = typer.Argument(..., help="JSONL (text or messages), CSV/TSV, plain text (one sample a line) or a saved HF dataset dir."),
    anchor: Optional[Path] = typer.Option(None, "--anchor", "-a", help="Anchor corpus: F = features active on it; the report lists what DATA misses."),
    features: Optional[Path] = typer.Option(None, "--features", "-f", help="File of feature ids (one a line, JSON list, or TSV with FeatureID)."),
    task_name: Optional[str] = typer.Option(None, "--task", "-t", help="F = the task's relevant features in the store (see `facsynth features`); with --anchor, those that fire on it."),
    delta: Optional[list[float]] = typer.Option(None, "--delta", "-d", help="Activation threshold; repeat for a sweep in one pass. Default: the SAE's recommended delta."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report (with missing ids and per-feature stats) as JSON."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Subject model: hub id, model dir, .gguf file. Default: bundled SmolLM2-135M-Instruct."),
    sae: Optional[str] = typer.Option(None, "--sae", help="SAE dir (sae-lens format) or release:sae_id. Default: the shipped SAE."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Decoder block whose output is read (0-based). Default: the SAE's recorded layer."),
    activation: Optional[str] = typer.Option(None, "--activation", help="relu (TopK off, the authors' reading) or sae (the SAE's own activation)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    batch_size: int = typer.Option(32, "--batch-size", help="Samples per forward pass."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Tokens read per sample (longer samples are truncated)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Read only the first N samples of each file."),
    db: Optional[str] = DB,
    no_store: bool = typer.Option(False, "--no-store", help="Do not read or write stored activations."),
    show_missing: int = typer.Option(20, "--show-missing", help="Missing feature ids to print (all are in --json)."),
    by_label: Optional[bool] = typer.Option(None, "--by-label/--no-by-label", help="Also FAC by label: a feature that marks a label on the (labelled) anchor counts as covered only by a sample with that label. Default: on where the data and an anchor with two labels or more carry labels."),
    label_column: str = typer.Option("label", "--label-column", help="With --by-label: the field that holds each sample's label."),
    ray: Optional[str] = RAY,
    ray_actors: Optional[int] = RAY_ACTORS,
) -> None:
    """Measure Feature Activation Coverage of DATA over a feature set."""
    from facsynth.errors import InputError
    from facsynth.tools.datasets import load_dataset
    from facsynth.tools.fac import read_feature_ids
    from facsynth.tools.reader import Reader

    if activation not in (None, "relu", "sae"):
        raise InputError(f"unknown activation {activation!r}; choose relu or sae")
    # read every input before loading the model: bad input fails in a second, not after the load
    data_ds = load_dataset(data, limit=limit)
    anchor_ds = load_dataset(anchor, limit=limit) if anchor is not None else None
    feature_ids = read_feature_ids(features) if features is not None else None
    if task_name is not None and features is not None:
        raise InputError("give either --task or --features, not both")
    if by_label:  # asked for: one line before the model loads where it cannot be read (None: measure decides)
        from facsynth.tools.measure import check_labelled

        check_labelled(data_ds, anchor_ds, label_column)
    with ExitStack() as on_ray:
        with_ray = join_ray(on_ray, ray, console)
        with console.status("loading model and SAE"):
            reader = Reader(
                model, sae, layer, activation=activation, device=device, dtype=dtype,  # type: ignore[arg-type]
                batch_size=batch_size, max_tokens=max_tokens, store=db, use_store=not no_store,
            )
        if with_ray:
            reader.pool = ray_pool(reader, ray_actors, console)
        report = _measure(reader, data_ds, anchor_ds, feature_ids, task_name, delta, by_label, label_column)
    if json_out is not None:
        _write_atomic(json_out, report.model_dump_json(indent=2))
    print_report(report, show_missing)


def _measure(reader, data_ds, anchor_ds, feature_ids, task_name, delta, by_label=None, label_column="label"):  # noqa: ANN001, ANN202
    """:func:`facsynth.tools.measure.measure` under a progress bar."""
    from facsynth.tools.measure import measure

    with Progress(
        TextColumn("reading"), BarColumn(), TaskProgressColumn(), TextColumn("{task.completed:.0f} samples"),
        TextColumn("{task.fields[tps]:>8.0f} tok/s"), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("read", total=None, tps=0.0)
        tokens = [0]

        def progress(n: int, t: int) -> None:
            tokens[0] += t
            elapsed = bar.tasks[0].elapsed or 1e-9
            bar.update(task, advance=n, tps=tokens[0] / elapsed)

        return measure(
            data_ds, anchor=anchor_ds, features=feature_ids, task=task_name, deltas=delta, reader=reader, progress=progress,
            by_label=by_label, label_column=label_column,
        )


def _write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: a temp file beside it, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def print_report(report, show_missing: int = 20) -> None:  # noqa: ANN001 - MeasureReport, imported lazily
    r, d = report.reader, report.data
    console.print(
        f"[bold]{d.name}[/]: {d.n_samples} samples ({d.n_unique} unique), {d.n_tokens} content tokens; "
        f"read {d.encoded}, reused {d.reused} from the store"
    )
    if report.anchor:
        a = report.anchor
        console.print(f"anchor [bold]{a.name}[/]: {a.n_samples} samples, {a.n_tokens} tokens")
    console.print(f"model {r.model}, block {r.layer}, SAE {r.sae} ({r.d_sae} features, {r.activation}); F = {report.feature_set}")
    table = Table(title="Feature Activation Coverage")
    for col in ("delta", "FAC", "covered / |F|", "missing", "F-features / 1k tok", "active / sample", "active / 1k tok"):
        table.add_column(col, justify="right")
    for c in report.coverage:
        table.add_row(
            f"{c.delta:g}", f"{c.fac:.1%}", f"{c.covered} / {c.total}", str(len(c.missing)),
            f"{c.features_per_1k_tokens:.1f}", f"{c.mean_active_per_sample:.1f}", f"{c.mean_active_per_1k_tokens:.1f}",
        )
    console.print(table)
    for lc in report.by_label or []:
        c = lc.coverage
        marks = ", ".join(f"{n} mark {lab}" for lab, n in lc.marks.items())
        console.print(f"FAC by label at delta {c.delta:g}: [bold]{c.fac:.1%}[/] ({c.covered} / {c.total}; {marks}, "
                      f"{c.total - sum(lc.marks.values())} mark none): a feature that marks a label counts only on a sample with it")
    div = Table(title="Text diversity (for comparison)")
    div.add_column("metric")
    div.add_column("value", justify="right")
    for k, v in report.diversity.items():
        div.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(div)
    for c in report.coverage:
        if c.missing and show_missing:
            shown = ", ".join(map(str, c.missing[:show_missing]))
            more = f" ... (+{len(c.missing) - show_missing}, see --json)" if len(c.missing) > show_missing else ""
            console.print(f"missing at delta {c.delta:g}: {shown}{more}")
    for lc in report.by_label or []:
        c = lc.coverage
        if c.missing and show_missing:
            shown = ", ".join(map(str, c.missing[:show_missing]))
            more = f" ... (+{len(c.missing) - show_missing}, see --json)" if len(c.missing) > show_missing else ""
            console.print(f"missing by label at delta {c.delta:g}: {shown}{more}")
    console.print(f"{report.seconds:.1f}s, {report.tokens_per_s:.0f} tokens/s")


def register(app: typer.Typer) -> None:
    app.command("measure")(measure_command)
