"""Several synthesis workers on one run (PostgreSQL): started here, or on other machines.

``facsynth run --workers N`` (and ``resume --workers N``) measures and stores the run as
usual, then starts N ``facsynth worker RUN`` processes and watches the store until they
end. Each worker is :func:`facsynth.graph.runner.execute` in its own process: a LangGraph
thread with the Postgres checkpointer that claims its features through the store
(:mod:`facsynth.db.claims`), so more can join from anywhere that reaches the database
(``facsynth worker RUN --db URL``), any can die (its features go to the others, its LLM
replies stay in the shared cache), and a run started with N resumes with any number.
The processes are the operating system's, the scheduling is PostgreSQL's row and
advisory locks, the loop is LangGraph's.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from facsynth.agent.llm import LLMClient, open_client
from facsynth.db.claims import require_workers
from facsynth.db.runs import Runs, Summary
from facsynth.db.store import Store
from facsynth.errors import FacsynthError, InputError
from facsynth.graph.config import RunConfig
from facsynth.graph.runner import OnStep, execute
from facsynth.tools.reader import Reader

log = logging.getLogger(__name__)

POLL_S = 1.0


def check_workers(store: Store, cfg: RunConfig, n: int) -> None:
    """One clear error before anything is measured when ``n`` workers cannot run."""
    if n < 1:
        raise InputError(f"--workers must be at least 1, got {n}")
    if n == 1:
        return
    require_workers(store, f"--workers {n}")
    if cfg.review:
        raise InputError("--review runs in one process (one batch waits for you at a time); drop --workers or --review")


def work(store: Store, run_name: str, *, endpoints: Sequence[str] | None = None, reader: Reader | None = None,
         on_step: OnStep | None = None) -> Summary:
    """One worker on a stored run, until the run's planner stops it (the body of ``facsynth worker``).

    ``endpoints``: base URLs of an LLM server already running (the embedded one that
    ``run --workers`` started); None: the run's own endpoint, the embedded server started
    here when the run has no ``base_url``."""
    require_workers(store, "facsynth worker")
    run = Runs(store).get(run_name)
    cfg = RunConfig.model_validate(run.config["config"])
    if cfg.review:
        raise InputError(f"run {run_name} is in review mode, which runs in one process: continue it with `facsynth resume {run_name}`")
    with ExitStack() as stack:
        if endpoints:
            client = LLMClient(cfg.llm, store=store, endpoints=list(endpoints), llama_cpp=cfg.llm.base_url is None)
        else:
            client = stack.enter_context(open_client(cfg.llm, store=store))
        return execute(store, run_name, llm=client, reader=reader, on_step=on_step)


def execute_workers(store: Store, run_name: str, n: int, client: LLMClient, *,
                    on_poll: Callable[[Summary], Any] | None = None, quiet: bool = True) -> Summary:
    """``n`` worker processes on a stored run, until they end; the run's summary (the body of
    ``run --workers N``, ``resume --workers N`` and ``synthesize(..., workers=N)``).

    ``client``: the run's LLM client, opened here; when it runs the embedded server, the workers
    share that server instead of starting one each. ``on_poll`` gets the run's summary, read
    from the store, about once a second. Raises :class:`FacsynthError` when a worker failed
    and the others did not finish the run; a failure the others made up for is logged."""
    from facsynth.graph.runner import setup_checkpoints

    require_workers(store, f"--workers {n}")
    setup_checkpoints(store)  # LangGraph's tables exist before the workers start
    runs = Runs(store)
    endpoints = client.urls if client.cfg.base_url is None else None
    url = store.engine.url.render_as_string(hide_password=False)
    poll = None if on_poll is None else (lambda: on_poll(runs.summary(run_name)))
    ended = run_workers(url, run_name, n, endpoints=endpoints, on_poll=poll, quiet=quiet)
    summary = runs.summary(run_name)
    if ended.failed:
        if summary.run.status not in ("done", "paused"):
            raise FacsynthError(f"worker {ended.describe()}; run {run_name} is {summary.run.status}")
        log.warning("worker %s; the other workers finished the run", ended.describe())
    return summary


@dataclass
class Ended:
    """How the worker processes started here ended."""

    codes: list[int]
    """Exit status of each (negative: killed by that signal)."""

    @property
    def failed(self) -> list[tuple[int, int]]:
        return [(i, c) for i, c in enumerate(self.codes) if c != 0]

    def describe(self) -> str:
        return ", ".join(f"process {i + 1} " + (f"killed by signal {-c}" if c < 0 else f"exited with {c}") for i, c in self.failed)


def threads_per_worker(n: int) -> int:
    """Torch threads for each of ``n`` workers on one machine: the cores shared out. Left at the
    default, every process spins one thread per core and ``n`` of them thrash."""
    return max(1, (os.cpu_count() or 1) // max(n, 1))


def run_workers(db_url: str, run_name: str, n: int, *, endpoints: Sequence[str] | None = None,
                on_poll: Callable[[], Any] | None = None, quiet: bool = True) -> Ended:
    """Start ``n`` ``facsynth worker`` processes on the run and wait for them, calling ``on_poll``
    about once a second. The store's URL reaches them through ``$FACSYNTH_DB`` (never on a
    command line); they die with this process. Ctrl-C stops them as it stops a run."""
    cmd = [sys.executable, "-m", "facsynth", "worker", run_name, "--parent", str(os.getpid())]
    for url in endpoints or []:
        cmd += ["--endpoint", url]
    if quiet:
        cmd.append("--quiet")
    env = {"OMP_NUM_THREADS": str(threads_per_worker(n)), **os.environ, "FACSYNTH_DB": db_url}  # a user's setting wins
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL if quiet else None))
        while any(p.poll() is None for p in procs):
            if on_poll is not None:
                on_poll()
            time.sleep(POLL_S)
    except BaseException:
        for p in procs:  # Ctrl-C reached them from the terminal already; anything else did not
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        raise
    if on_poll is not None:
        on_poll()
    return Ended([p.returncode for p in procs])
