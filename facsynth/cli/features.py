"""``facsynth features ...``: the feature catalog.

collect (spans and stats over a corpus), explain (explanation, check, detection score),
judge (task relevance by an LLM), relevance (task relevance from a labeled set, no LLM),
show (one feature), export and import (the authors' TSV, or JSON).

The LLM verbs talk to ``--base-url`` (any OpenAI-compatible endpoint, key from
``$--api-key-env``) or, by default, to the embedded llama.cpp server. They need no
subject model: the catalog in the store names the reader (``--reader`` picks one when
the store holds several).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from facsynth.cli.on_ray import RAY, RAY_ACTORS, join_ray, ray_pool
from facsynth.cli.options import API_KEY_ENV, DB

if TYPE_CHECKING:
    from facsynth.db import Store
    from facsynth.db.catalog import Catalog

app = typer.Typer(no_args_is_help=True)
console = Console()

# -- shared options --------------------------------------------------------------------------------

READER = typer.Option(None, "--reader", help="Reader id (model, layer, SAE) whose catalog to use; needed when the store holds several.")
CORPUS = typer.Option(None, "--corpus", help="Name of the collected corpus whose spans to use (default: the latest).")
FEATURES = typer.Option(None, "--features", "-f", help="Feature ids: a comma list (1,2,3) or a file (one a line, JSON list, TSV).")
TASKS_FILE = typer.Option(None, "--tasks", help="TOML or YAML file with your own tasks (stored; presets are always there).")
MODEL = typer.Option(None, "--model", "-m", help="Subject model (default: bundled SmolLM2-135M-Instruct).")
SAE = typer.Option(None, "--sae", help="SAE dir or release:sae_id (default: the shipped SAE).")
LAYER = typer.Option(None, "--layer", "-l", help="Decoder block read (default: the SAE's layer).")
ACTIVATION = typer.Option(None, "--activation", help="relu (TopK off, the authors' reading) or sae.")
DEVICE = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto.")
BASE_URL = typer.Option(None, "--base-url", help="OpenAI-compatible base URL (default: the embedded llama.cpp server).")
LLM_MODEL = typer.Option(None, "--llm-model", help="Model name sent to the endpoint (default: smollm2-135m-instruct).")
CONCURRENCY = typer.Option(4, "--concurrency", min=1, help="LLM requests in flight at once.")
FORCE = typer.Option(False, "--force", help="Redo features that already have a result.")


def _store(db: str | None) -> Store:
    from facsynth.db import open_store

    return open_store(db)


def _reader(model: str | None, sae: str | None, layer: int | None, activation: str | None, device: str, db: str | None) -> Any:
    from facsynth.errors import InputError
    from facsynth.tools.reader import Reader

    if activation not in (None, "relu", "sae"):
        raise InputError(f"unknown activation {activation!r}; choose relu or sae")
    with console.status("loading model and SAE"):
        return Reader(model, sae, layer, activation=activation, device=device, store=db)  # type: ignore[arg-type]


def _catalog_reader(catalog: Catalog, reader: int | None) -> int:
    """The reader whose catalog a verb works on: ``--reader`` or the only one in the store."""
    from facsynth.errors import InputError

    readers = catalog.readers()
    if reader is not None:
        catalog.reader_identity(reader)  # raises when absent
        return reader
    if not readers:
        raise InputError(f"no feature catalog in {catalog.store.url}: run `facsynth features collect CORPUS` first")
    if len(readers) > 1:
        listed = "; ".join(f"{i}: {d}" for i, d in readers)
        raise InputError(f"the store holds catalogs of several readers ({listed}); pick one with --reader ID")
    return readers[0][0]


def _corpus(catalog: Catalog, reader_id: int, name: str | None) -> int | None:
    from facsynth.errors import InputError

    collections = catalog.collections(reader_id)
    if name is None:
        return collections[0].dataset_id if collections else None
    for c in collections:
        if c.dataset_name == name:
            return c.dataset_id
    known = ", ".join(c.dataset_name for c in collections) or "none"
    raise InputError(f"no span collection of a corpus named {name!r} (collected: {known})")


def _feature_list(spec: str | None) -> list[int] | None:
    from facsynth.errors import InputError
    from facsynth.tools.fac import read_feature_ids

    if spec is None:
        return None
    if Path(spec).is_file():
        return [int(f) for f in read_feature_ids(spec)]
    try:
        return sorted({int(x) for x in spec.replace(" ", "").split(",") if x})
    except ValueError:
        raise InputError(f"--features takes ids like 1,2,3 or a file; got {spec!r}") from None


def _llm_config(base_url: str | None, llm_model: str | None, api_key_env: str, concurrency: int) -> Any:
    from facsynth.agent.config import DEFAULT_MODEL, LLMConfig, ServerConfig

    server = ServerConfig(instances=max(1, min(concurrency, os.cpu_count() or 1, 16)))  # one request per instance
    return LLMConfig(
        base_url=base_url, model=llm_model or DEFAULT_MODEL, api_key_env=api_key_env, max_concurrency=concurrency,
        server=server,
    )


def _print_totals(store: Store, run_id: str, reports: list[Any]) -> None:
    totals = store.llm_totals(run_id)
    by = totals["by_outcome"]
    for r in reports:
        console.print(r.line())
        for f, err in list(r.failed.items())[:5]:
            console.print(f"  feature {f} failed: {err}", style="red", highlight=False)
    console.print(
        f"LLM: {totals['calls']} calls (ok {by['ok']}, cached {by['cached']}, parse errors {by['parse_error']}, "
        f"errors {by['error']}), {totals['tokens_in']} tokens in, {totals['tokens_out']} out; "
        f"{sum(len(r.failed) for r in reports)} feature step(s) failed"
    )


# -- verbs -----------------------------------------------------------------------------------------


@app.callback()
def _features() -> None:
    """The feature catalog: spans, explanations, task relevance."""


@app.command("collect")
def collect_command(
    corpus: Path = typer.Argument(..., help="Corpus to collect spans over (any format `facsynth measure` reads)."),
    top_n: int = typer.Option(20, "--top-n", min=1, help="Top-activating samples kept per feature."),
    window: int = typer.Option(32, "--window", min=1, help="Tokens per span, ending at the peak token."),
    held_out: int = typer.Option(5, "--held-out", min=0, help="Further activating spans per feature kept for the detection score."),
    n_random: int = typer.Option(100, "--random-spans", min=0, help="Random context spans (non-activating examples for detection)."),
    delta: Optional[float] = typer.Option(None, "--delta", "-d", help="Activation threshold (default: the SAE's recommended delta)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Read only the first N samples."),
    force: bool = FORCE,
    model: Optional[str] = MODEL, sae: Optional[str] = SAE, layer: Optional[int] = LAYER,
    activation: Optional[str] = ACTIVATION, device: str = DEVICE, db: Optional[str] = DB,
    ray: Optional[str] = RAY, ray_actors: Optional[int] = RAY_ACTORS,
) -> None:
    """Collect each feature's top spans, activation frequency and quantiles over CORPUS."""
    from facsynth.tools.datasets import load_dataset
    from facsynth.tools.spans import SpanConfig

    cfg = SpanConfig(top_n=top_n, window=window, held_out=held_out, n_random=n_random, delta=delta)
    data = load_dataset(corpus, limit=limit)
    with ExitStack() as on_ray:
        with_ray = join_ray(on_ray, ray, console)
        reader = _reader(model, sae, layer, activation, device, db)
        if with_ray:  # the scan reads on Ray; the spans of the samples it keeps are cut here
            reader.pool = ray_pool(reader, ray_actors, console)
        report = _collect(reader, data, cfg, force)
    how = "reused the stored collection" if report.from_store else (
        f"read {report.encoded} samples, reused {report.reused} from the store, cut spans from {report.cut}"
    )
    console.print(
        f"[bold]{report.dataset}[/]: {report.n_samples} samples, {report.n_features} active features, "
        f"{report.n_spans} spans ({how}); reader {reader.reader_id}, {report.seconds:.1f}s"
    )


def _collect(reader: Any, data: Any, cfg: Any, force: bool) -> Any:
    """:func:`facsynth.tools.spans.collect_spans` under a progress bar."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from facsynth.tools.spans import collect_spans

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    ) as bar:
        stages: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in stages:
                stages[stage] = bar.add_task(stage, total=total)
            bar.update(stages[stage], advance=done)

        return collect_spans(reader, data, cfg, force=force, progress=progress)


@app.command("explain")
def explain_command(
    features: Optional[str] = FEATURES,
    limit: Optional[int] = typer.Option(None, "--limit", help="Explain only the N features with the strongest activations."),
    steps: str = typer.Option("explain,check,detect", "--steps", help="Which of explain,check,detect to run."),
    n_explain: int = typer.Option(10, "--n-explain", min=1, help="Top spans the explainer reads."),
    trim: int = typer.Option(10, "--trim", min=1, help="Tokens kept from the end of each span."),
    force: bool = FORCE, reader: Optional[int] = READER, corpus: Optional[str] = CORPUS,
    base_url: Optional[str] = BASE_URL, llm_model: Optional[str] = LLM_MODEL, api_key_env: str = API_KEY_ENV,
    concurrency: int = CONCURRENCY, db: Optional[str] = DB,
) -> None:
    """Explain features from their top spans, check each explanation and score it by detection."""
    from facsynth.agent.explain import ExplainConfig, StepContext, explain_features
    from facsynth.agent.llm import open_client
    from facsynth.db.catalog import Catalog
    from facsynth.errors import InputError

    store = _store(db)
    catalog = Catalog(store)
    rid = _catalog_reader(catalog, reader)
    did = _corpus(catalog, rid, corpus)
    if did is None:
        raise InputError("no span collection for this reader: run `facsynth features collect CORPUS` first")
    chosen = _feature_list(features) or catalog.span_features(rid, did)
    if limit is not None:
        chosen = chosen[:limit]
    wanted = tuple(s.strip() for s in steps.split(",") if s.strip())
    bad = [s for s in wanted if s not in ("explain", "check", "detect")]
    if bad:
        raise InputError(f"unknown step(s) {', '.join(bad)}; choose from explain, check, detect")
    run_id = uuid.uuid4().hex
    cfg = ExplainConfig(n_explain=n_explain, trim=trim, force=force)
    with open_client(_llm_config(base_url, llm_model, api_key_env, concurrency), store=store) as client:
        ctx = StepContext(client, catalog, rid, did, cfg, run_id=run_id)
        with console.status(f"explaining {len(chosen)} feature(s) with {client.cfg.model}"):
            reports = asyncio.run(_closing(client, explain_features(ctx, chosen, wanted)))
    _print_totals(store, run_id, reports)


@app.command("judge")
def judge_command(
    task: str = typer.Option(..., "--task", "-t", help="Task name (a preset or one from --tasks)."),
    tasks_file: Optional[Path] = TASKS_FILE, features: Optional[str] = FEATURES, force: bool = FORCE,
    reader: Optional[int] = READER, corpus: Optional[str] = CORPUS,
    base_url: Optional[str] = BASE_URL, llm_model: Optional[str] = LLM_MODEL, api_key_env: str = API_KEY_ENV,
    concurrency: int = CONCURRENCY, db: Optional[str] = DB,
) -> None:
    """Label explained features Yes / Probably / Maybe / No for a task, with a short analysis."""
    from facsynth.agent.explain import ExplainConfig, StepContext, judge_features
    from facsynth.agent.llm import open_client
    from facsynth.agent.tasks import resolve_task
    from facsynth.db.catalog import Catalog

    store = _store(db)
    catalog = Catalog(store)
    spec = resolve_task(catalog, task, tasks_file)
    rid = _catalog_reader(catalog, reader)
    did = _corpus(catalog, rid, corpus)
    chosen = _feature_list(features) or sorted(catalog.explanations(rid))
    run_id = uuid.uuid4().hex
    with open_client(_llm_config(base_url, llm_model, api_key_env, concurrency), store=store) as client:
        ctx = StepContext(client, catalog, rid, did, ExplainConfig(force=force), run_id=run_id)
        with console.status(f"judging {len(chosen)} feature(s) for {task} with {client.cfg.model}"):
            report = asyncio.run(_closing(client, judge_features(ctx, spec, chosen)))
    _print_totals(store, run_id, [report])
    console.print(f"{len(catalog.relevant_features(rid, task))} feature(s) now relevant to {task}")


async def _closing(client: Any, coro: Any) -> Any:
    try:
        return await coro
    finally:
        await client.aclose()


@app.command("relevance")
def relevance_command(
    labeled: Path = typer.Argument(..., help="Labeled samples: a 'label' field, task-positive vs anything else."),
    task: str = typer.Option(..., "--task", "-t", help="Task name (a preset or one from --tasks)."),
    tasks_file: Optional[Path] = TASKS_FILE,
    threshold: float = typer.Option(0.7, "--threshold", help="Select features whose AUROC is at least this."),
    both_sides: bool = typer.Option(False, "--both-sides", help="Also select the features that mark the other samples "
                                    "(AUROC at most 1 - threshold): the cues of every class of a labelled task."),
    field: str = typer.Option("label", "--label-field", help="The field holding the label."),
    positive: Optional[list[str]] = typer.Option(None, "--positive", help="Label value(s) meaning task-positive (default: 1, true, yes, positive, or the task name)."),
    show: int = typer.Option(15, "--show", help="Selected features to list."),
    model: Optional[str] = MODEL, sae: Optional[str] = SAE, layer: Optional[int] = LAYER,
    activation: Optional[str] = ACTIVATION, device: str = DEVICE, db: Optional[str] = DB,
) -> None:
    """Select task-relevant features without an LLM: AUROC of max activation, positives vs others."""
    from facsynth.agent.tasks import resolve_task
    from facsynth.db.catalog import Catalog
    from facsynth.tools.datasets import load_dataset
    from facsynth.tools.relevance import contrast_relevance, positive_mask

    data = load_dataset(labeled)
    reader = _reader(model, sae, layer, activation, device, db)
    catalog = Catalog(reader.store)
    resolve_task(catalog, task, tasks_file)
    positive_mask(data, task, field=field, positive=positive)  # label problems fail before any reading
    with console.status(f"reading {len(data)} labeled samples"):
        report = contrast_relevance(reader, data, task, threshold=threshold, field=field, positive=positive,
                                    both_sides=both_sides)
    console.print(
        f"[bold]{task}[/]: {report.n_positive} task-positive vs {report.n_other} other samples; "
        f"{len(report.selected)} of {report.scored} active features have {report.rule} (with shuffled labels: {report.by_chance}); stored as method 'contrast' under reader {reader.reader_id}"
    )
    explanations = catalog.explanations(reader.reader_id, report.selected[:show])
    table = Table()
    for col in ("feature", "AUROC", "explanation"):
        table.add_column(col)
    for f in report.selected[:show]:
        e = explanations.get(f)
        table.add_row(str(f), f"{report.scores[f]:.3f}", e.text if e else "")
    if report.selected:
        console.print(table)


@app.command("show")
def show_command(
    feature: int = typer.Argument(..., help="Feature id."),
    spans: int = typer.Option(5, "--spans", help="Top spans to print."),
    reader: Optional[int] = READER, corpus: Optional[str] = CORPUS, db: Optional[str] = DB,
) -> None:
    """Print one feature: stats, top spans, explanation and scores, task relevance."""
    from rich.markup import escape

    from facsynth.agent.explain import format_span
    from facsynth.db.catalog import Catalog

    catalog = Catalog(_store(db))
    rid = _catalog_reader(catalog, reader)
    did = _corpus(catalog, rid, corpus)
    console.print(f"[bold]feature {feature}[/] (reader {rid})")
    if did is not None:
        info = next(c for c in catalog.collections(rid) if c.dataset_id == did)
        st = catalog.stats(rid, did, [feature]).get(feature)
        if st is None:
            console.print(f"never active on {info.dataset_name} ({info.n_samples} samples, delta {info.delta:g})")
        else:
            q = ", ".join(f"q{k}={v:.3g}" for k, v in st.quantiles.items())
            console.print(
                f"{info.dataset_name}: active on {st.active_count}/{st.n_samples} samples "
                f"({st.frequency:.2%}), max {st.max_act:.3g}; {q}"
            )
        found = catalog.spans(rid, did, [feature], kinds=("top", "held_out")).get(feature, [])
        for s in [s for s in found if s.kind == "top"][:spans]:
            console.print(f"  {s.rank + 1:>2}. {s.activation:7.3f}  {escape(format_span(s, trim=0))}", highlight=False)
        held = sum(s.kind == "held_out" for s in found)
        if held:
            console.print(f"  ({held} held-out span(s) for the detection score)")
    e = catalog.explanation(rid, feature)
    if e is None:
        console.print("explanation: none yet (`facsynth features explain`)")
    else:
        console.print(f"explanation: [bold]{escape(e.text)}[/] ({e.explainer_model})", highlight=False)
        if e.check_label:
            console.print(f"  check: {e.check_label} ({e.check_model})")
        if e.detection_score is not None:
            console.print(f"  detection: balanced accuracy {e.detection_score:.2f} over {e.detection_n} spans ({e.detection_model})")
        if e.words:
            console.print(f"  words: {escape(', '.join(e.words))}", highlight=False)
    rows = catalog.relevance(rid, features=[feature])
    for r in rows:
        score = f" {r.score:.3f}" if r.score is not None else ""
        by = f", {r.model}" if r.model else ""
        chosen = feature in catalog.relevant_features(rid, r.task)
        console.print(
            f"task {r.task}: {r.label} by {r.method}{score}{by}{' (relevant)' if chosen else ''}: {escape(r.analysis)}",
            highlight=False,
        )


@app.command("export")
def export_command(
    out: Path = typer.Argument(..., help="Output file: .tsv (FeatureID, Summary, Words) or .json."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Only the task's relevant features."),
    spans: int = typer.Option(0, "--spans", help="JSON: top spans per feature and corpus to include."),
    reader: Optional[int] = READER, db: Optional[str] = DB,
) -> None:
    """Export the catalog as the authors' TSV or as JSON."""
    from facsynth.db.catalog import Catalog
    from facsynth.errors import InputError
    from facsynth.tools.catalog_files import export_json, export_tsv

    catalog = Catalog(_store(db))
    rid = _catalog_reader(catalog, reader)
    chosen = catalog.relevant_features(rid, task) if task is not None else None
    if task is not None and not chosen:
        raise InputError(f"no relevant features for task {task!r}; select them with `facsynth features judge` or `relevance`")
    suffix = out.suffix.lower()
    if suffix == ".tsv":
        n = export_tsv(catalog, rid, out, chosen)
    elif suffix == ".json":
        n = export_json(catalog, rid, out, features=chosen, task=task, spans=spans)
    else:
        raise InputError(f"{out}: export writes .tsv or .json")
    console.print(f"wrote {n} feature(s) to {out}")


@app.command("import")
def import_command(
    path: Path = typer.Argument(..., help="A .tsv with FeatureID, Summary[, Words] or a facsynth .json catalog."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="TSV: mark the imported features relevant to this task."),
    tasks_file: Optional[Path] = TASKS_FILE, reader: Optional[int] = READER,
    model: Optional[str] = MODEL, sae: Optional[str] = SAE, layer: Optional[int] = LAYER,
    activation: Optional[str] = ACTIVATION, db: Optional[str] = DB,
) -> None:
    """Import explanations (and task relevance) from the authors' TSV or a facsynth JSON catalog."""
    from facsynth.agent.tasks import resolve_task
    from facsynth.db.catalog import Catalog
    from facsynth.errors import InputError
    from facsynth.tools.catalog_files import import_json, import_tsv

    store = _store(db)
    catalog = Catalog(store)
    suffix = path.suffix.lower()
    if suffix == ".json":
        rid, n = import_json(catalog, path, reader)
    elif suffix == ".tsv":
        if task is not None:
            resolve_task(catalog, task, tasks_file)
        if reader is not None or catalog.readers():
            rid = _catalog_reader(catalog, reader)
        else:  # a fresh store: the features belong to the model and SAE given (or the defaults)
            rid = _reader(model, sae, layer, activation, "cpu", db).reader_id
        n = import_tsv(catalog, rid, path, task)
    else:
        raise InputError(f"{path}: import reads .tsv or .json")
    console.print(f"imported {n} feature(s) under reader {rid}")
