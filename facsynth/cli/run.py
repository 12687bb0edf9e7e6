"""``facsynth run|resume|status|runs|export``: synthesis runs from the command line."""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from facsynth.cli.from_config import check_overrides, field_parameters, override_parameters, with_parameters
from facsynth.cli.options import API_KEY_ENV, DB
from facsynth.graph.config import Budget, RunConfig

console = Console()

BASE_URL = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint of the generator; default: the embedded llama.cpp server.")
LLM_MODEL = typer.Option(None, "--llm-model", help="Generator model name sent with each request.")
WORKERS = typer.Option(
    1, "--workers", "-w", min=1,
    help="Worker processes synthesizing at once (PostgreSQL --db only; add more later with `facsynth worker RUN`).",
)
REPORT_DIR = typer.Option(Path("facsynth-runs"), "--report-dir", help="Where the coverage report (JSON + PNG) of each run goes.")


BUDGET = "budget_"
"""Prefix of the :class:`~facsynth.graph.config.Budget` options: ``--budget-calls``, ..."""
KEEP = "Default: the stored value."
"""Help note of ``facsynth resume``'s options: not given, the run keeps what it has."""


def _budget(options: dict[str, Any]) -> dict[str, Any]:
    """The budget options given (``budget_calls``, ...; popped from ``options``) as Budget fields."""
    names = [k for k in options if k.startswith(BUDGET)]
    given = {k.removeprefix(BUDGET): options.pop(k) for k in names}
    return {k: v for k, v in given.items() if v is not None}


def _llm(base_url: str | None, llm_model: str | None, api_key_env: str, batch: int, seed: int = 0,
         writer: str | None = None, workers: int = 1) -> dict[str, Any]:
    from facsynth.agent.config import DEFAULT_MODEL
    from facsynth.agent.writers import WRITERS
    from facsynth.errors import InputError

    if writer is not None:
        if base_url is not None:
            raise InputError("--writer runs a local model on the embedded server; it cannot go with --base-url")
        if writer not in WRITERS:
            raise InputError(f"unknown writer {writer!r}; choose one of: {', '.join(WRITERS)}")
        from facsynth.agent.writers import part_files

        part_files(WRITERS[writer])  # not installed: one line with the extra to install, before any measuring
    instances = max(1, min(batch * workers, os.cpu_count() or 1, 16))  # every worker's batch in flight at once
    return {
        "base_url": base_url, "model": llm_model or writer or DEFAULT_MODEL, "api_key_env": api_key_env,
        "temperature": 0.8, "top_p": 0.9, "max_tokens": 320, "max_concurrency": max(batch, 1), "seed": seed,
        "server": {"instances": instances, "gguf": writer},
    }


def _panel(summary: Any, cfg: Any, started: float, spent_calls: int, tokens: int) -> Group:
    from facsynth.graph.runner import eta_s

    s = summary
    elapsed = time.monotonic() - started
    eta = eta_s(s, cfg, elapsed)
    rate = "-" if s.acceptance_rate is None else f"{s.acceptance_rate:.0%}"
    b = cfg.budget
    lines = [
        f"[bold]FAC[/] {s.fac:.1%} (seed {s.fac_before:.1%}) / target {cfg.target_fac:.0%}    "
        f"+{s.covered} features ({s.covered_by_negatives} from negatives) from {s.samples} accepted samples",
        f"covered {s.by_status['covered']}  exhausted {s.by_status['exhausted']}  in progress {s.by_status['in_progress']}  "
        f"pending {s.by_status['pending']}  excluded {s.by_status['excluded']}",
        f"acceptance {rate}   generator calls {spent_calls}{'' if b.calls is None else f'/{b.calls}'}   tokens {tokens}   "
        f"elapsed {elapsed:.0f} s   ETA to target {'-' if eta is None else f'{eta:.0f} s'}",
    ]
    return Group(*(Text.from_markup(x) for x in lines))


def _execute(store: Any, run_name: str, cfg: Any, *, reader: Any = None, client: Any = None, quiet: bool = False) -> Any:
    from facsynth.agent.llm import open_client
    from facsynth.graph.budget import spent
    from facsynth.graph.runner import execute

    started = time.monotonic()

    def on_review(waiting: list[Any]) -> None:
        console.print(
            f"batch waiting for review: {len(waiting)} candidate(s) the verifier would accept. In another terminal: "
            f"[bold]facsynth chat {run_name}[/] then /review, /approve [IDS], /deny IDS, /edit ID TEXT"
        )

    with nullcontext(client) if client is not None else open_client(cfg.llm, store=store) as client:
        if quiet or not console.is_terminal:
            last = [0.0]

            def on_step(node: str, s: Any) -> None:
                if node == "verifier" and time.monotonic() - last[0] > 5:
                    last[0] = time.monotonic()
                    used = spent(store, run_name, 0.0)
                    console.print(
                        f"FAC {s.fac:.1%} (+{s.covered}, {s.covered_by_negatives} from negatives) | covered {s.by_status['covered']} exhausted "
                        f"{s.by_status['exhausted']} pending {s.by_status['pending']} | accepted {s.samples} | "
                        f"calls {used.calls}", highlight=False,
                    )

            return execute(store, run_name, llm=client, reader=reader, on_step=on_step, on_review=on_review)
        with Live(console=console, refresh_per_second=4, transient=False) as live:

            def on_live(node: str, s: Any) -> None:
                used = spent(store, run_name, 0.0)
                live.update(_panel(s, cfg, started, used.calls, used.tokens))

            return execute(store, run_name, llm=client, reader=reader, on_step=on_live, on_review=on_review)


def _execute_workers(store: Any, run_name: str, cfg: Any, n: int, client: Any) -> Any:
    """``n`` worker processes on the run; this process shows the progress from the store."""
    from facsynth.graph.budget import spent
    from facsynth.graph.workers import execute_workers

    started = time.monotonic()
    console.print(f"starting {n} workers on run [bold]{run_name}[/] (add more from anywhere with `facsynth worker {run_name} --db ...`)")
    with ExitStack() as stack:
        if console.is_terminal:
            live = stack.enter_context(Live(console=console, refresh_per_second=2, transient=False))

            def on_poll(s: Any) -> None:
                used = spent(store, run_name, 0.0)
                live.update(_panel(s, cfg, started, used.calls, used.tokens))
        else:
            last = [0.0]

            def on_poll(s: Any) -> None:
                if time.monotonic() - last[0] > 5:
                    last[0] = time.monotonic()
                    used = spent(store, run_name, 0.0)
                    console.print(f"FAC {s.fac:.1%} (+{s.covered}) | covered {s.by_status['covered']} in progress "
                                  f"{s.by_status['in_progress']} pending {s.by_status['pending']} | accepted {s.samples} | "
                                  f"calls {used.calls}", highlight=False)

        return execute_workers(store, run_name, n, client, on_poll=on_poll)


def _finish(store: Any, run_name: str, report_dir: Path, target: float) -> None:
    from facsynth.graph.report import coverage_report, plot_curve

    rep = coverage_report(store, run_name)
    out = report_dir / run_name
    out.mkdir(parents=True, exist_ok=True)
    png = plot_curve(rep, out / "fac_curve.png", target)
    tmp = out / ".report.json.tmp"
    tmp.write_text(rep.model_dump_json(indent=2), encoding="utf-8")
    os.replace(tmp, out / "report.json")
    _print_report(rep)
    console.print(f"report: {out / 'report.json'}   plot: {png}")
    console.print(f"export: facsynth export {run_name} --out {run_name}.jsonl")


def _print_report(rep: Any) -> None:
    t = Table(title=f"run {rep.run} ({rep.strategy}, task {rep.task}): {rep.status}", show_header=False)
    t.add_row("feature set", f"{rep.n_relevant}: {rep.feature_set}")
    t.add_row("FAC before", f"{rep.fac_before:.1%}")
    t.add_row("FAC after", f"{rep.fac_after:.1%}  (+{rep.covered_by_run} features, verified through the SAE; "
                           f"{rep.covered_by_negatives} of them from negatives)")
    t.add_row("features", "  ".join(f"{k} {v}" for k, v in rep.by_status.items()))
    rate = "-" if rep.acceptance_rate is None else f"{rep.acceptance_rate:.0%}"
    roles = ", ".join(f"{n} {role}s" for role, n in sorted(rep.samples_by_role.items()))
    t.add_row("samples", f"{rep.samples} accepted ({roles or 'none'}) of {rep.candidates} candidates (acceptance {rate})")
    t.add_row("verdicts by reason", "  ".join(
        f"{code} {sum(by.values())}" + (f" ({', '.join(f'{n} {r}' for r, n in sorted(by.items()))})" if len(by) > 1 else "")
        for code, by in sorted(rep.by_reason.items(), key=lambda kv: -sum(kv[1].values()))
    ) or "-")
    q = rep.quality
    if q is None:
        t.add_row("quality", "model checks off (text checks only)")
    else:
        th = q.thresholds
        t.add_row("quality rule", (
            f"loss <= {th['max_loss']:.2f}, words >= {th['min_words']:.0%}"
            + (f", end log-prob >= {th['min_end']:.1f}" if "min_end" in th else "")
            + f", topic distance <= {th['max_distance']:.3f}"
            f"{', a request' if th['request_check'] else ''}: calibrated on the {th['corpus']} ({th['n']} samples, "
            f"{th['pass_rate']:.0%} pass)"))

        def rates(r: dict[str, float]) -> str:
            return "  ".join(f"{k} {v:.0%}" for k, v in r.items()) or "-"

        t.add_row("quality: anchor", rates(q.anchor))
        t.add_row("quality: seed", rates(q.seed))
        t.add_row("quality: joined", rates(q.joined))
        if q.label:
            t.add_row("label check", (
                f"probe on the anchor's labels ({q.label['labels']}; {q.label['n']} samples, cross-validated accuracy "
                f"{float(q.label['cv_accuracy']):.0%}): a label needs p >= {float(q.label['min_prob']):.2f}; "
                f"the anchor's own labels pass {float(q.label['anchor_pass']):.0%}"))
        if q.judged:
            t.add_row("LLM judge", "  ".join(f"{k} {v}" for k, v in sorted(q.judged.items())))
    t.add_row("LLM", f"{rep.llm_calls} generator calls, {rep.tokens} tokens, {rep.elapsed_s:.0f} s")
    t.add_row("stopped", rep.stop_reason or "-")
    console.print(t)


RUN_FLAGS = {
    "task": ("--task", "-t"), "seed": ("--seed", "-s"), "anchor": ("--anchor", "-a"), "model": ("--model", "-m"),
    "layer": ("--layer", "-l"), "near_duplicate_cosine": ("--near-dup",), "quality": ("--quality/--no-quality",),
    "quality_judge": ("--judge/--no-judge",), "label_pairs": ("--label-pairs/--no-label-pairs",),
    "fac_by_label": ("--fac-by-label/--no-fac-by-label",),
}
"""Flags of :class:`~facsynth.graph.config.RunConfig` fields that are not ``--field-name``."""


@with_parameters(field_parameters(RunConfig, RUN_FLAGS, skip=("budget", "llm")), field_parameters(Budget, {}, prefix=BUDGET))
def run_command(
    run_name: Optional[str] = typer.Option(None, "--run", help="Run name (default: TASK-DATE-TIME)."),
    base_url: Optional[str] = BASE_URL, llm_model: Optional[str] = LLM_MODEL, api_key_env: str = API_KEY_ENV,
    llm_seed: int = typer.Option(0, "--llm-seed", min=0, help="Sampling seed: the same seed and data give the same run; vary it to see the spread."),
    writer: Optional[str] = typer.Option(None, "--writer", help="A stronger local generator on the embedded server: qwen2.5-coder-1.5b (extra: writer) or qwen2.5-coder-0.5b (extra: writer-small)."),
    workers: int = WORKERS,
    db: Optional[str] = DB, report_dir: Path = REPORT_DIR,
    **fields: Any,
) -> None:
    """Measure DATA's gaps over the task's features, then synthesize until the FAC target or the budget."""
    from facsynth.db.store import open_store
    from facsynth.errors import InputError
    from facsynth.graph.api import validated
    from facsynth.graph.config import check_run_name
    from facsynth.graph.runner import prepare_run

    if run_name is not None:
        try:
            check_run_name(run_name)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    budget = _budget(fields)
    cfg = validated({
        **fields, "budget": budget,
        "llm": _llm(base_url, llm_model, api_key_env, fields["batch"], llm_seed, writer, workers),
    })
    with open_store(db) as store, ExitStack() as stack:
        from facsynth.graph.workers import check_workers

        check_workers(store, cfg, workers)
        clients: list[Any] = []

        def start_llm() -> None:  # after the inputs are measured, before the run is stored
            from facsynth.agent.llm import open_client

            if cfg.llm.base_url is None:
                console.print("starting the embedded LLM server and checking that it generates ...")
            clients.append(stack.enter_context(open_client(cfg.llm, store=store)))

        console.print("measuring the seed and the anchor ...")
        run, reader = prepare_run(cfg, run_name, store, before_create=start_llm)
        console.print(
            f"run [bold]{run.name}[/]: F = {run.n_relevant} {run.feature_set}\n"
            f"seed FAC {run.n_seed_covered / run.n_relevant:.1%}; {run.n_relevant - run.n_seed_covered} missing features to target"
        )
        if workers > 1:
            reader = None  # each worker loads its own
        _go(store, run.name, cfg, report_dir, reader=reader, client=clients[0], workers=workers)


def _go(store: Any, name: str, cfg: Any, report_dir: Path, reader: Any = None, client: Any = None, workers: int = 1) -> None:
    from facsynth.errors import FacsynthError

    try:
        if workers > 1:
            _execute_workers(store, name, cfg, workers, client)
        else:
            _execute(store, name, cfg, reader=reader, client=client)
    except KeyboardInterrupt:
        console.print(f"\nstopped. Everything accepted so far is stored; continue with: [bold]facsynth resume {name}[/]")
        raise
    except FacsynthError as exc:
        exc.args = (f"{exc} (run {name} is stopped with everything accepted so far; continue with `facsynth resume {name}`)",)
        raise
    _finish(store, name, report_dir, cfg.target_fac)


@with_parameters(override_parameters(RunConfig, ("target_fac",), note=KEEP),
                 override_parameters(Budget, prefix=BUDGET, note=f"A total over the run. {KEEP}"))
def resume_command(
    run_name: str = typer.Argument(..., help="The run to continue."),
    workers: int = WORKERS,
    db: Optional[str] = DB, report_dir: Path = REPORT_DIR,
    **overrides: Any,
) -> None:
    """Continue a stopped run (Ctrl-C, kill -9, budget spent) exactly where it stopped."""
    from facsynth.db.runs import Runs
    from facsynth.db.store import open_store
    from facsynth.graph.api import update_run
    from facsynth.graph.workers import check_workers

    check_overrides(RunConfig, overrides)
    check_overrides(Budget, overrides, prefix=BUDGET, where="budget.")
    with open_store(db) as store:
        run = Runs(store).get(run_name)
        check_workers(store, RunConfig.model_validate(run.config["config"]), workers)
        budget = _budget(overrides)
        cfg = update_run(store, run.name, budget=budget, **overrides)
        console.print(f"resuming run [bold]{run.name}[/] ({run.status}: {run.stop_reason or '-'})")
        if workers > 1:
            from facsynth.agent.llm import open_client

            with open_client(cfg.llm, store=store) as client:
                _go(store, run.name, cfg, report_dir, client=client, workers=workers)
        else:
            _go(store, run.name, cfg, report_dir)


def worker_command(
    run_name: str = typer.Argument(..., help="The run to work on (stored in --db, a PostgreSQL store)."),
    db: Optional[str] = DB,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    endpoint: Optional[list[str]] = typer.Option(None, "--endpoint", hidden=True, help="Base URL of an LLM server already running (run --workers passes its own)."),
    parent: Optional[int] = typer.Option(None, "--parent", hidden=True, help="Exit when this process does."),
) -> None:
    """Join a run as one more worker (PostgreSQL): claims features no other worker holds, until the run stops."""
    from facsynth.db.store import open_store
    from facsynth.graph.budget import spent
    from facsynth.agent.server import die_with_parent
    from facsynth.graph.workers import work

    if parent is not None:
        die_with_parent(parent)
    with open_store(db) as store:
        last = [0.0]

        def on_step(node: str, s: Any) -> None:
            if not quiet and node == "verifier" and time.monotonic() - last[0] > 5:
                last[0] = time.monotonic()
                console.print(f"FAC {s.fac:.1%} (+{s.covered}) | accepted {s.samples} | calls {spent(store, run_name, 0.0).calls}",
                              highlight=False)

        summary = work(store, run_name, endpoints=endpoint or None, on_step=on_step)
        if not quiet:
            console.print(f"worker done: run {run_name} is {summary.run.status} ({summary.run.stop_reason or '-'}), "
                          f"FAC {summary.fac:.1%}", highlight=False)


def status_command(
    run_name: Optional[str] = typer.Argument(None, help="A run (default: the latest)."),
    db: Optional[str] = DB,
    as_json: bool = typer.Option(False, "--json", help="Print the coverage report as JSON."),
) -> None:
    """Where a run stands: FAC, features by status, samples, calls, directives."""
    from facsynth.db.runs import Runs
    from facsynth.db.store import open_store
    from facsynth.errors import InputError
    from facsynth.graph.report import coverage_report

    with open_store(db) as store:
        runs = Runs(store)
        if run_name is None:
            latest = runs.latest()
            if latest is None:
                raise InputError(f"no runs in {store.url}; start one with `facsynth run`")
            run_name = latest.name
        rep = coverage_report(store, run_name)
        if as_json:
            typer.echo(rep.model_dump_json(indent=2))
            return
        _print_report(rep)
        run = runs.get(run_name)
        _print_workers(store, run.id)
        waiting = runs.pending_review(run.id)
        if waiting:
            console.print(f"{len(waiting)} candidate(s) wait for review: `facsynth chat {run.name}`, then /review")
        ds = runs.directives(run.id, active_only=False)
        if ds:
            t = Table(title="steering directives")
            for col in ("id", "kind", "args", "words", "active"):
                t.add_column(col)
            for d in ds:
                t.add_row(str(d.id), d.kind, json.dumps(d.args), d.words, "yes" if d.active else "undone")
            console.print(t)


def _print_workers(store: Any, run_id: int) -> None:
    """The run's live workers (PostgreSQL), when it has any."""
    from facsynth.db.claims import live_workers
    from facsynth.db.models import utcnow

    workers = live_workers(store, run_id)
    if not workers:
        return
    now = utcnow()

    def ago(t: Any) -> str:
        return "-" if t is None else f"{max(0.0, (now - t).total_seconds()):.0f} s ago"

    t = Table(title=f"{len(workers)} live worker(s)")
    for col in ("slot", "host", "pid", "started", "claims held", "last claim"):
        t.add_column(col)
    for w in workers:
        t.add_row(w.name, w.host, str(w.pid), f"{w.started_at:%H:%M:%S} ({ago(w.started_at)})", str(w.claims), ago(w.last_claim_at))
    console.print(t)


def runs_command(db: Optional[str] = DB) -> None:
    """List the runs in the store, newest first."""
    from facsynth.db.runs import Runs
    from facsynth.db.store import open_store

    with open_store(db) as store:
        runs = Runs(store)
        t = Table(title=f"runs in {store.url}")
        for col in ("run", "task", "strategy", "status", "FAC before", "FAC now", "samples", "updated"):
            t.add_column(col)
        for r in runs.all():
            s = runs.summary(r.id)
            t.add_row(r.name, r.task, r.strategy, r.status, f"{s.fac_before:.1%}", f"{s.fac:.1%}", str(s.samples),
                      r.updated_at.strftime("%Y-%m-%d %H:%M"))
        console.print(t)


def export_command(
    run_name: str = typer.Argument(..., help="The run whose accepted samples are exported."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (jsonl/parquet) or directory (hf). Default: RUN.FORMAT"),
    fmt: str = typer.Option("jsonl", "--format", "-f", help="jsonl, parquet or hf (a saved HF dataset dir)."),
    with_seed: bool = typer.Option(False, "--with-seed", help="Put the seed's samples first (source: seed)."),
    db: Optional[str] = DB,
) -> None:
    """Export a run's accepted samples with provenance, as chat messages and Alpaca-style records."""
    from facsynth.tools.export import export_run
    from facsynth.db.store import open_store

    target = out or Path(f"{run_name}.{ 'hf' if fmt == 'hf' else fmt}")
    with open_store(db) as store:
        n = export_run(store, run_name, target, fmt, with_seed=with_seed)  # type: ignore[arg-type]
    console.print(f"wrote {n} records to {target}")


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("resume")(resume_command)
    app.command("worker")(worker_command)
    app.command("status")(status_command)
    app.command("runs")(runs_command)
    app.command("export")(export_command)
