"""Starting, executing and resuming synthesis runs.

:func:`prepare_run` measures the seed and the anchor, chooses the feature set F (the
task's relevant features in the store, active on the anchor; else every feature active
on the anchor), stores the run with its missing features and their priorities.
:func:`aexecute` streams the graph (async nodes on one event loop, sharing the run's one
LLM client; :func:`execute` is its blocking form) under LangGraph's async checkpointer
(SQLite file or PostgreSQL, whichever the store is) with the run's name as thread id, so a stopped run, even one
killed with SIGKILL, continues where its last step ended: everything a step produced is
in the store before the step's checkpoint is written, and a step that runs again finds
its stored work (candidates, verdicts, LLM replies) instead of redoing it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from langgraph.types import Command
from sqlalchemy import text

from facsynth.agent.llm import LLMClient
from facsynth.agent.tasks import TaskSpec, resolve_task
from facsynth.db.catalog import Catalog
from facsynth.db.claims import Claims, supports_workers
from facsynth.db.runs import Candidate, RunRecord, Runs, Summary
from facsynth.db.store import Store
from facsynth.errors import InputError, StoreError
from facsynth.graph.config import RunConfig, check_run_name
from facsynth.graph.context import RunContext, open_resources
from facsynth.graph.graph import build_graph
from facsynth.graph.prompts import task_labels
from facsynth.records import SampleFeatures
from facsynth.tools.datasets import Dataset, load_dataset
from facsynth.tools.reader import Reader
from facsynth.tools.quality import calibrate_on
from facsynth.tools.sides import covers, label_sides, labels_of, unreadable_by_label

log = logging.getLogger(__name__)

LABEL_WEIGHT = {"Yes": 3.0, "Probably": 2.0, "Maybe": 1.0, "No": 0.0}


def default_run_name(cfg: RunConfig) -> str:
    return f"{cfg.task}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def _priorities(catalog: Catalog, reader_id: int, task: str, missing: list[int], anchor_freq: np.ndarray) -> dict[int, float]:
    """Task relevance first, then the explanation's scores, then how readily the anchor fires it."""
    labels: dict[int, float] = {}
    for r in catalog.relevance(reader_id, task, missing):
        labels[r.feature] = max(labels.get(r.feature, 0.0), LABEL_WEIGHT.get(r.label, 0.0))
    exps = catalog.explanations(reader_id, missing)
    out = {}
    for f in missing:
        e = exps.get(f)
        exp_score = 0.0
        if e is not None and not e.cannot_tell:
            exp_score = 0.5 + (e.detection_score or 0.0)
        out[f] = round(10.0 * labels.get(f, 0.0) + exp_score + float(anchor_freq[f]), 6)
    return out


def _sides_of(task: TaskSpec, anchor: Dataset | None, anchor_read: list[SampleFeatures], seed: Dataset, fset: np.ndarray,
              delta: float, asked: bool | None) -> dict[int, str] | None:
    """``fac_by_label``: the label each feature of F marks on the labelled anchor. Asked for,
    one clear error where the task, the anchor or the seed has no labels; by default (None),
    None there (coverage by any sample)."""
    if asked is False:
        return None
    labels = task_labels(task)
    why = (f"a labelled task; task {task.name!r} defines no labels" if labels is None
           else unreadable_by_label(seed, anchor, data_name="the seed"))
    if why is not None:
        if asked:
            raise InputError(f"--fac-by-label needs {why}" if labels is None else f"--fac-by-label: {why}")
        return None
    assert anchor is not None and labels is not None
    read = [(lab, set(sf.active(delta).tolist())) for lab, sf in zip(labels_of(anchor), anchor_read)]
    return label_sides(read, fset, labels)


def prepare_run(cfg: RunConfig, name: str | None, store: Store, reader: Reader | None = None,
                progress: Any = None, before_create: Callable[[], Any] | None = None) -> tuple[RunRecord, Reader]:
    """Measure, find the missing features and create the run (nothing is stored on bad input).

    ``before_create`` runs once every input has been read and measured, just before the run
    is stored: the place to start the LLM endpoint, so that one which cannot generate leaves
    no run behind."""
    name = check_run_name(name) if name else default_run_name(cfg)
    runs = Runs(store)
    if any(r.name == name for r in runs.all()):
        raise InputError(f"a run named {name!r} exists in {store.url}; resume it with `facsynth resume {name}` or pick another --run")
    catalog = Catalog(store)
    task = resolve_task(catalog, cfg.task, cfg.tasks_file)
    seed = load_dataset(cfg.seed)
    anchor: Dataset | None = load_dataset(cfg.anchor) if cfg.anchor else None
    reader = reader or Reader(cfg.model, cfg.sae, cfg.layer, store=store)
    if reader.store is not store:
        raise StoreError("the reader must use the run's store")
    delta = reader.default_delta if cfg.delta is None else float(cfg.delta)
    threshold = delta if cfg.threshold is None else float(cfg.threshold)
    if threshold < delta:
        raise InputError(f"threshold {threshold:g} is below delta {delta:g}: an accepted positive would not count as active")
    rid = reader.reader_id
    assert rid is not None
    seed_read: list[SampleFeatures] = []  # kept for coverage by label: no second read
    anchor_read: list[SampleFeatures] = []
    seed_counted = reader.count(seed, [delta], progress, keep=seed_read)
    seed_active = seed_counted.counter.active(delta)
    d_sae = reader.sae.d_sae
    anchor_freq = np.zeros(d_sae, dtype=np.float64)
    anchor_id = None
    relevant = catalog.relevant_features(rid, task.name)
    if anchor is not None:
        anchor_counted = reader.count(anchor, [delta], progress, keep=anchor_read)
        anchor_active = anchor_counted.counter.active(delta)
        hits = anchor_counted.counter.hits[0]
        anchor_freq = hits / max(len(anchor), 1)
        anchor_id = store.register_dataset(anchor.name, anchor.source, [(s.sample_hash, s.payload) for s in anchor])
        if relevant:
            fset = np.intersect1d(np.asarray(relevant, dtype=np.int64), np.flatnonzero(anchor_active))
            how = f"features relevant to task {task.name} ({len(relevant)}) that fire on anchor {anchor.name}"
        else:
            fset = np.flatnonzero(anchor_active)
            how = (
                f"features that fire on anchor {anchor.name} (task {task.name} has no relevant set for this model "
                "and SAE in the store; select one with `facsynth features relevance` or `features judge`)"
            )
    elif relevant:
        fset = np.asarray(relevant, dtype=np.int64)
        how = f"features relevant to task {task.name}"
    else:
        raise InputError(
            f"no feature set: task {task.name!r} has no relevant features in {store.url} for this model and SAE; "
            "give --anchor (F = features active on it) or select features with `facsynth features relevance`"
        )
    if fset.size == 0:
        raise InputError("the feature set is empty: the anchor fires no feature above delta")
    sides = _sides_of(task, anchor, anchor_read, seed, fset, delta, cfg.fac_by_label)
    cfg = cfg.model_copy(update={"fac_by_label": sides is not None})  # the run stores what it chose
    if sides is not None:  # a feature is covered by a sample with the label it marks on the anchor
        seed_by_label = [(lab, set(sf.active(delta).tolist())) for lab, sf in zip(labels_of(seed), seed_read)]
        seed_covers = {int(f) for f in fset if any(f in active and covers(f, lab, sides) for lab, active in seed_by_label)}
        missing = [int(f) for f in fset if int(f) not in seed_covers]
        how += f"; coverage by label ({len(sides)} of F's {fset.size} features mark a label on the anchor)"
    else:
        missing = [int(f) for f in fset if not seed_active[f]]
    pri = _priorities(catalog, rid, task.name, missing, anchor_freq)
    held_back: list[int] = []
    if cfg.max_features is not None and len(missing) > cfg.max_features:
        ranked = sorted(missing, key=lambda f: (-pri[f], f))
        held_back = ranked[cfg.max_features :]
        how += f"; synthesis targets its {cfg.max_features} highest-priority missing features"
    if before_create is not None:
        before_create()
    seed_id = store.register_dataset(seed.name, seed.source, [(s.sample_hash, s.payload) for s in seed])
    quality = (calibrate_on(reader, anchor, seed, pass_rate=cfg.quality_pass, labelled=task_labels(task) is not None)
               if cfg.quality else None)
    payload = {
        "config": cfg.model_dump(mode="json"),
        "setup": {
            "delta": delta, "threshold": threshold, "seed_dataset_id": seed_id, "anchor_dataset_id": anchor_id,
            "seed_samples": len(seed), "anchor_samples": len(anchor) if anchor is not None else 0,
            "quality": quality.model_dump(mode="json") if quality is not None else None,
            **({"sides": {str(f): lab for f, lab in sorted(sides.items())}} if sides is not None else {}),
        },
    }
    run = runs.create(
        name, strategy=cfg.strategy, task=task.name, reader_id=rid, config=payload, feature_set=how,
        n_relevant=int(fset.size), n_seed_covered=int(fset.size) - len(missing), missing={f: pri[f] for f in missing},
        held_back=held_back,
    )
    runs.add_progress(run.id, llm_calls=0, tokens=0, elapsed_s=0.0)
    return run, reader


# --------------------------------------------------------------------------- checkpointers


def checkpoint_path(store: Store) -> Path | None:
    """The SQLite file of the run checkpoints: beside the store's file (None: in memory)."""
    url = store.engine.url
    if not url.database or url.database == ":memory:":
        return None
    db = Path(url.database)
    return db.with_name(db.name + ".checkpoints")


_PG_SAVER_LOCK = 0x66616374  # serializes LangGraph's Postgres saver set-up across workers


@asynccontextmanager
async def open_checkpointer(store: Store) -> AsyncIterator[Any]:
    """LangGraph's async saver beside a SQLite store (a ``.checkpoints`` file), the async
    Postgres saver in a PostgreSQL store; its tables are set up on the way in."""
    dialect = store.engine.dialect.name
    if dialect == "sqlite":
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        path = checkpoint_path(store)
        async with aiosqlite.connect(str(path) if path else ":memory:", timeout=30) as conn:
            await conn.execute("PRAGMA journal_mode=WAL")
            saver = AsyncSqliteSaver(conn)
            await saver.setup()
            yield saver
    elif dialect == "postgresql":
        try:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        except ImportError as exc:
            raise StoreError("PostgreSQL runs need `pip install 'facsynth[postgres]'` (langgraph-checkpoint-postgres)") from exc
        conninfo = store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        async with AsyncPostgresSaver.from_conn_string(conninfo) as saver:
            with store.engine.connect() as conn:  # workers starting at once: one creates the tables, the rest wait
                # with no transaction open while waiting: the set-up's CREATE INDEX CONCURRENTLY waits for every
                # open transaction of the database, so a waiter blocked inside one would never be let in
                while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _PG_SAVER_LOCK}).scalar_one():
                    conn.commit()
                    await asyncio.sleep(0.2)
                conn.commit()  # the session keeps the lock
                try:
                    await saver.setup()
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_SAVER_LOCK})
                    conn.commit()
            yield saver
    else:
        raise StoreError(f"runs need a SQLite or PostgreSQL store to checkpoint; {dialect} has no LangGraph saver")


def setup_checkpoints(store: Store) -> None:
    """Create LangGraph's checkpoint tables now (before several workers start at once)."""

    async def once() -> None:
        async with open_checkpointer(store):
            pass

    asyncio.run(once())


# --------------------------------------------------------------------------- executing


OnStep = Callable[[str, Summary], None]
OnReview = Callable[[list[Candidate]], None]
REVIEW_POLL_S = 1.0


def execute(store: Store, run_name: str, *, llm: LLMClient, reader: Reader | None = None,
            on_step: OnStep | None = None, checkpointer: Any = None, on_review: OnReview | None = None,
            wait_review: bool = True) -> Summary:
    """Run (or continue) the graph of ``run_name`` until the planner stops it: :func:`aexecute`
    on an event loop of its own (call that from code that already runs one)."""
    return asyncio.run(aexecute(store, run_name, llm=llm, reader=reader, on_step=on_step, checkpointer=checkpointer,
                                on_review=on_review, wait_review=wait_review))


async def aexecute(store: Store, run_name: str, *, llm: LLMClient, reader: Reader | None = None,
                   on_step: OnStep | None = None, checkpointer: Any = None, on_review: OnReview | None = None,
                   wait_review: bool = True) -> Summary:
    """Run (or continue) the graph of ``run_name`` until the planner stops it.

    The graph's nodes are coroutines on the caller's event loop and share ``llm``: one HTTP
    connection pool for the whole run, closed when the run ends.

    Sets the run's status: ``running`` while it executes, ``reviewing`` while a batch waits
    for the user's decisions (review mode: ``on_review`` gets the candidates; with
    ``wait_review`` the call polls the store until each is decided, else it returns),
    ``done`` with the planner's reason, ``paused`` when the user paused it, ``stopped`` on
    Ctrl-C or an error (then re-raised). The run's wall time is kept either way.

    On PostgreSQL the call is one *worker* of the run (:mod:`facsynth.db.claims`): it takes a
    free slot ``k``, runs the LangGraph thread ``<run>:w<k>`` (continuing it when the slot's
    last session stopped mid-batch and nobody took that batch over), claims its features
    through the store, and leaves the run's status to the last worker that ends. On SQLite it
    is the run's only process and its thread is the run's name.
    """
    runs = Runs(store)
    run = runs.get(run_name)
    claims = Claims(store, run.id).start() if supports_workers(store) else None
    try:
        res = open_resources(store, run, llm=llm, reader=reader)
    except BaseException:
        if claims is not None:
            claims.stop()
        raise
    res.claims = claims
    thread = run.name if claims is None else f"{run.name}:{claims.name}"
    ctx = RunContext(run=run.name, db=store.url, res=res)
    config = {"configurable": {"thread_id": thread}, "recursion_limit": 1_000_000}
    fresh = {"run": run.name, "batch": [], "loop_step": 0, "stop_reason": None}
    try:
        async with (open_checkpointer(store) if checkpointer is None else _given(checkpointer)) as saver:
            graph = build_graph(saver)
            snapshot = await graph.aget_state(config)
            inp: Any = None if snapshot.next else fresh
            if snapshot.next and claims is not None and not claims.reclaim(snapshot.values.get("batch") or []):
                if snapshot.interrupts:
                    log.warning("run %s: the batch waiting for review is held by another worker", run.name)
                else:  # another worker took this thread's batch over: start a new cycle
                    inp = fresh
            reason: str | None = None
            try:
                while True:
                    if snapshot.interrupts:
                        waiting = runs.pending_review(run.id)
                        runs.set_status(run.id, "reviewing", f"waiting for the review of {len(waiting)} candidate(s)",
                                        elapsed_s=res.elapsed_s())
                        if on_review is not None:
                            on_review(waiting)
                        if not await _review_done(runs, run.id, wait_review):
                            return runs.summary(run.id)
                        inp = Command(resume=True)
                    runs.set_status(run.id, "running")
                    async for update in graph.astream(inp, config, context=ctx, stream_mode="updates"):
                        for node, values in update.items():
                            if node == "planner" and values and values.get("stop_reason"):
                                reason = values["stop_reason"]
                            if on_step is not None and not node.startswith("__"):
                                on_step(node, runs.summary(run.id))
                    snapshot = await graph.aget_state(config)
                    if not snapshot.interrupts:
                        break
            except BaseException as exc:
                ctrl_c = isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError))  # asyncio.run cancels on Ctrl-C
                why = "interrupted (Ctrl-C)" if ctrl_c else f"stopped by an error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                _end(runs, run.id, claims, "stopped", why, res.elapsed_s())
                claims = None
                raise
            status = "paused" if reason == "paused by the user" else "done"
            _end(runs, run.id, claims, status, reason or "finished", res.elapsed_s())
            claims = None
    finally:
        if claims is not None:
            claims.stop()
        await llm.aclose()
    return runs.summary(run.id)


def _end(runs: Runs, run_id: int, claims: Claims | None, status: str, reason: str, elapsed_s: float) -> None:
    """Set the run's final status, unless other workers still work on it (the last one sets it).

    A worker gives its slot back first, then looks: of two ending at once, at least the later
    one sees nobody left."""
    if claims is not None:
        claims.stop()
        others = claims.live()
        if others:
            log.info("run %d: worker %s ends (%s); %s still at work", run_id, claims.name, reason, ", ".join(sorted(others)))
            return
    runs.set_status(run_id, status, reason, elapsed_s=elapsed_s)


async def _review_done(runs: Runs, run_id: int, wait: bool) -> bool:
    """True once every candidate waiting for review has the user's decision."""
    while True:
        if all(c.review is not None for c in runs.pending_review(run_id)):
            return True
        if not wait:
            return False
        await asyncio.sleep(REVIEW_POLL_S)


@asynccontextmanager
async def _given(saver: Any) -> AsyncIterator[Any]:
    yield saver


def eta_s(summary: Summary, cfg: RunConfig, elapsed_s: float) -> float | None:
    """Seconds to the FAC target at the rate so far (None before any gain)."""
    gained = summary.covered
    if gained <= 0 or elapsed_s <= 0 or summary.run.n_relevant == 0:
        return None
    need = math.ceil(cfg.target_fac * summary.run.n_relevant) - summary.run.n_seed_covered - gained
    return max(0.0, need * elapsed_s / gained)
