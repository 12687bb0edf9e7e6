"""The planner node: picks the next target features, or stops the run.

It stops when FAC over the run's feature set reaches the target, when the budget
(generator calls, tokens, wall time) is spent, when the user paused the run, or when no
feature is left that is neither covered, exhausted nor excluded.

Order of the agent strategy: features left in progress by an earlier stop first, then
the user's focus, then priority (task relevance, explanation score, how readily the
anchor fires the feature), then fewest attempts. The agent also learns from the run
itself: while its retries (with feedback) are accepted less often than first attempts on
fresh features, fresh features come first, and a rejected feature goes back to the queue
instead of straight back to the generator. The paper strategy walks the missing
list as it was computed at the start, in the same priority order (so the two strategies
compare on the same features), including features another sample has covered meanwhile:
the authors' pipeline does not look back. The unguided strategy walks the same list, one
generator call per feature, but only as a call slot: its prompt names no feature.

A worker (several processes on one PostgreSQL store, :mod:`facsynth.db.claims`) ranks the
features no other live worker holds the same way, then claims its batch from that ranking;
while the others hold every feature left, it waits for one to come free (a rejected
feature sent back to the queue, or the features of a worker that died).
"""

from __future__ import annotations

import asyncio
import logging

from langgraph.runtime import Runtime

from facsynth.db.runs import EXCLUDED_BY_USER, HELD_BACK, FeatureState, Runs
from facsynth.graph import directives
from facsynth.graph.budget import batch_size, retries_pay, spent, stop_reason
from facsynth.graph.context import RunContext, resources
from facsynth.graph.state import SynthState

log = logging.getLogger(__name__)


def choose(
    features: list[FeatureState], n: int, *, strategy: str, focus: set[int], exclude: set[int], prefer_fresh: bool = False
) -> list[int]:
    """The next ``n`` targets among ``features`` (pure: no store access).

    ``prefer_fresh``: features never tried come before retries (the run's retries pay less
    than first attempts, see :func:`facsynth.graph.budget.retries_pay`)."""
    if strategy == "unguided":  # the features are only call slots: one call each, on what is still missing
        todo = [f for f in features if f.attempts == 0 and f.status == "pending" and f.feature not in exclude]
        return [f.feature for f in sorted(todo, key=lambda f: (-f.priority, f.feature))[:n]]
    if strategy == "paper":
        # the run's own missing list, covered meanwhile or not; never a held-back or excluded one
        todo = [f for f in features if f.attempts == 0 and f.feature not in exclude
                and (f.status == "pending" or (f.status == "covered" and f.reason is None))]
        return [f.feature for f in sorted(todo, key=lambda f: (-f.priority, f.feature))[:n]]
    todo = [f for f in features if f.status in ("pending", "in_progress") and f.feature not in exclude]
    todo.sort(key=lambda f: (f.status != "in_progress", f.feature not in focus, prefer_fresh and f.attempts > 0,
                             -f.priority, f.attempts, f.feature))
    return [f.feature for f in todo[:n]]


WAIT_POLL_S = 0.5
"""How often a worker with nothing to claim looks again while other workers hold features."""


async def planner(state: SynthState, runtime: Runtime[RunContext]) -> SynthState:
    res = resources(runtime.context)
    runs = Runs(res.store)
    claims = res.claims
    if claims is not None:
        claims.release()  # the last batch is settled: its features are free for any worker
    while True:
        run, steer = directives.current(runs, res.run.name)
        cfg = steer.cfg
        if steer.paused:
            return {"batch": [], "stop_reason": "paused by the user"}
        summary = runs.summary(run.id)
        used = spent(res.store, run.name, res.elapsed_s())
        reason = stop_reason(summary, cfg, used)
        if reason is not None:
            return {"batch": [], "stop_reason": reason}
        features = runs.features(run.id)
        excluded_now = [f.feature for f in features if f.feature in steer.exclude and f.status in ("pending", "in_progress")]
        if excluded_now:
            runs.set_feature_status(run.id, excluded_now, "excluded", EXCLUDED_BY_USER, only_from=("pending", "in_progress"))
        restored = [
            f.feature for f in features
            if f.status == "excluded" and f.covered_by is None and f.feature not in steer.exclude
            and (f.reason == EXCLUDED_BY_USER or f.feature in steer.focus)
        ]
        if restored:
            runs.set_feature_status(run.id, restored, "pending", only_from=("excluded",))
        # covered while excluded, exclusion undone since: a plain covered feature again
        unmarked = [f.feature for f in features if f.status == "covered" and f.reason == EXCLUDED_BY_USER
                    and f.feature not in steer.exclude]
        if unmarked:
            runs.set_feature_status(run.id, unmarked, "covered", only_from=("covered",))
        if excluded_now or restored or unmarked:
            features = runs.features(run.id)
        fresh = not retries_pay(*runs.yields(run.id))
        if claims is None:
            pick = choose(features, batch_size(cfg, used), strategy=cfg.strategy, focus=steer.focus, exclude=steer.exclude,
                          prefer_fresh=fresh)
            if pick:
                runs.set_feature_status(run.id, pick, "in_progress", only_from=("pending", "in_progress", "covered"))
        else:  # a worker: rank what no live worker holds, then claim the first of those still free
            busy = claims.held_by_others()
            free = [f for f in features if f.feature not in busy]
            order = choose(free, len(free), strategy=cfg.strategy, focus=steer.focus, exclude=steer.exclude,
                           prefer_fresh=fresh)
            pick = claims.claim(order, batch_size(cfg, used))
        if pick:
            log.debug("planner picked %s", pick)
            return {"batch": pick, "stop_reason": None, "loop_step": state.get("loop_step", 0) + 1}
        if claims is not None and (claims.contended or claims.held_by_others()):
            await asyncio.sleep(WAIT_POLL_S)  # other workers hold the rest: a rejected feature or a dead worker's may come free
            continue
        s = runs.summary(run.id)
        held = sum(1 for f in features if f.status == "excluded" and f.reason == HELD_BACK)
        return {
            "batch": [],
            "stop_reason": (
                f"nothing left to target: {s.by_status['covered']} covered, {s.by_status['exhausted']} exhausted, "
                f"{s.by_status['excluded']} excluded" + (f" ({held} held back by max_features)" if held else "")
            ),
        }
