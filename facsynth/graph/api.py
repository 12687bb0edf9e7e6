"""The Python twins of ``facsynth run`` and ``facsynth resume``.

::

    import facsynth

    report = facsynth.synthesize(
        "seed.jsonl", task="instruction-following", anchor="anchor.jsonl",
        target_fac=0.6, budget={"calls": 120}, run="demo",
    )
    print(report.fac_before, report.fac_after)
    report = facsynth.resume("demo", budget={"calls": 200})   # after any stop

    # several worker processes on a PostgreSQL store, as `run --workers 4`; resume with any number
    report = facsynth.synthesize(..., store="postgresql+psycopg://USER@HOST/DB", workers=4)
    report = facsynth.resume("demo", store="postgresql+psycopg://USER@HOST/DB", workers=2)

Both return the run's :class:`~facsynth.graph.report.CoverageReport`. With no ``client``
the run's own endpoint is used (``llm={"base_url": ..., "model": ...}``; the embedded
llama.cpp server when ``base_url`` is None, started and stopped around the run); pass an
:class:`~facsynth.agent.llm.LLMClient` as ``client`` to reuse one, and a :class:`~facsynth.tools.reader.Reader` to reuse a loaded model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from facsynth.agent.llm import LLMClient, open_client
from facsynth.db.runs import Runs
from facsynth.db.store import Store, open_store
from facsynth.errors import InputError
from facsynth.graph.config import RunConfig
from facsynth.graph.report import CoverageReport, coverage_report
from facsynth.graph.runner import OnStep, execute, prepare_run
from facsynth.graph.workers import check_workers, execute_workers
from facsynth.tools.reader import Reader


def validated(data: dict[str, Any]) -> RunConfig:
    """A :class:`RunConfig`, or :class:`InputError` naming the first bad field."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        where = ".".join(str(x) for x in e["loc"]) or "options"
        raise InputError(f"bad option {where}: {e['msg']}") from None


def synthesize(
    seed: str | Path,
    *,
    task: str,
    anchor: str | Path | None = None,
    run: str | None = None,
    store: Store | str | None = None,
    reader: Reader | None = None,
    client: LLMClient | None = None,
    on_step: OnStep | None = None,
    workers: int = 1,
    **options: Any,
) -> CoverageReport:
    """Measure ``seed`` against ``anchor`` over ``task``'s features, then synthesize until the
    FAC target or the budget. ``options`` are :class:`RunConfig` fields (``target_fac``,
    ``budget``, ``strategy``, ``max_attempts``, ``max_features``, ``llm``, ...).

    ``workers``: worker processes synthesizing at once, as ``facsynth run --workers N``
    (a PostgreSQL ``store`` only: anything else raises :class:`~facsynth.errors.StoreError`
    before anything is measured). ``reader`` then serves the measuring here, each worker loads
    its own model, and ``on_step`` gets ``("workers", summary)`` about once a second."""
    cfg = validated({"task": task, "seed": str(seed), "anchor": None if anchor is None else str(anchor), **options})
    with _store(store) as st, ExitStack() as stack:
        check_workers(st, cfg, workers)
        opened: list[LLMClient] = []

        def start_llm() -> None:  # after the inputs are measured, before the run is stored
            opened.append(stack.enter_context(_client(cfg, st, client)))

        record, reader = prepare_run(cfg, run, st, reader, before_create=start_llm)
        _execute(st, record.name, opened[0], reader, on_step, workers)
        return coverage_report(st, record.name)


def update_run(store: Store, name: str, *, target_fac: float | None = None, budget: dict[str, Any] | None = None) -> RunConfig:
    """Change a stored run's target or budget (totals over the run); its new config."""
    runs = Runs(store)
    record = runs.get(name)
    payload = dict(record.config)
    cfg = RunConfig.model_validate(payload["config"])
    changes: dict[str, Any] = {}
    if target_fac is not None:
        changes["target_fac"] = target_fac
    if budget:
        changes["budget"] = cfg.budget.model_dump() | budget
    if changes:
        cfg = validated(cfg.model_dump(mode="json") | changes)
        payload["config"] = cfg.model_dump(mode="json")
        runs.update_config(record.id, payload)
    return cfg


def resume(
    run: str,
    *,
    store: Store | str | None = None,
    reader: Reader | None = None,
    client: LLMClient | None = None,
    on_step: OnStep | None = None,
    target_fac: float | None = None,
    budget: dict[str, Any] | None = None,
    workers: int = 1,
) -> CoverageReport:
    """Continue a stopped run where it stopped (Ctrl-C, SIGKILL, budget spent), optionally
    with a new target or budget, with any number of ``workers`` (as :func:`synthesize`; a run
    started with N workers resumes with any number, one included)."""
    with _store(store) as st:
        check_workers(st, RunConfig.model_validate(Runs(st).get(run).config["config"]), workers)
        cfg = update_run(st, run, target_fac=target_fac, budget=budget)
        with _client(cfg, st, client) as llm:
            _execute(st, run, llm, reader, on_step, workers)
        return coverage_report(st, run)


def _execute(store: Store, run: str, llm: LLMClient, reader: Reader | None, on_step: OnStep | None, workers: int) -> None:
    if workers == 1:
        execute(store, run, llm=llm, reader=reader, on_step=on_step)
        return
    poll = None if on_step is None else (lambda summary: on_step("workers", summary))
    execute_workers(store, run, workers, llm, on_poll=poll)


@contextmanager
def _store(store: Store | str | None) -> Iterator[Store]:
    if isinstance(store, Store):
        yield store
        return
    with open_store(store) as st:
        yield st


@contextmanager
def _client(cfg: RunConfig, store: Store, client: LLMClient | None) -> Iterator[LLMClient]:
    if client is not None:
        yield client
        return
    with open_client(cfg.llm, store=store) as opened:
        yield opened
