"""Steering a run: the typed operations behind ``facsynth chat`` (its tools and its slash commands).

:class:`RunControl` wraps the store (and, for ``test``, the verifier) for one run. Every
change is a steering directive stored with the run (:meth:`facsynth.db.runs.Runs.add_directive`:
time, the user's words, a kind and the parsed arguments): the planner applies focus,
exclude, target, budget and pause at its next step, the generator puts style lines in its
prompt, ``facsynth status`` lists them, and :meth:`RunControl.undo` reverts any of them.
A rejected sample is withdrawn with the coverage only it gave (undo restores it). Because
everything goes through the store, the same calls work on a stopped run and on one that
another process is executing.

Each operation takes a pydantic model of its arguments (the tool-calling schema) and
returns a :class:`Reply`: what it found or changed, in words.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from facsynth.db.catalog import Catalog
from facsynth.db.runs import Directive, RunRecord, Runs
from facsynth.db.store import Store
from facsynth.errors import InputError
from facsynth.graph import directives
from facsynth.graph.config import RunConfig
from facsynth.tools.datasets import Sample, sample_from_row
from facsynth.tools.candidates import span_text


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeaturesArgs(_Args):
    """Features by id, or by a description matched against their explanations and spans."""

    features: list[int] = Field(default_factory=list, description="SAE feature ids")
    description: str | None = Field(None, description="words describing the features, e.g. 'weapons' or 'code'")

    @model_validator(mode="after")
    def _one(self) -> FeaturesArgs:
        if not self.features and not (self.description or "").strip():
            raise ValueError("give feature ids or a description")
        return self


class StyleArgs(_Args):
    text: str = Field(min_length=1, description="a generation constraint: length, turns, tone, language, format, labels")


class TargetArgs(_Args):
    fac: float = Field(gt=0.0, le=1.0, description="the new FAC target, a fraction (0.8 = 80%)")


class BudgetArgs(_Args):
    calls: int | None = Field(None, ge=1, description="generator calls in total over the run")
    tokens: int | None = Field(None, ge=1, description="LLM tokens in total")
    seconds: float | None = Field(None, gt=0, description="synthesis wall time in total")

    @model_validator(mode="after")
    def _some(self) -> BudgetArgs:
        if self.calls is None and self.tokens is None and self.seconds is None:
            raise ValueError("give calls, tokens or seconds")
        return self


class FeatureArgs(_Args):
    feature: int = Field(description="an SAE feature id")


class TestArgs(_Args):
    text: str = Field(min_length=1, description="the text to read through the model and SAE")
    feature: int | None = Field(None, description="the feature to check (default: report the run's features it fires)")


class SamplesArgs(_Args):
    samples: list[int] = Field(min_length=1, description="accepted sample ids")


class LatestArgs(_Args):
    n: int = Field(5, ge=1, le=100, description="how many of the latest accepted samples")


class MissingArgs(_Args):
    limit: int = Field(20, ge=1, le=500)


class UndoArgs(_Args):
    directive: int | None = Field(None, description="the directive id (default: the latest still in force)")


class NoArgs(_Args):
    pass


class ReviewArgs(_Args):
    candidates: list[int] = Field(default_factory=list, description="candidate ids (default: every one still undecided)")


class EditArgs(_Args):
    candidate: int = Field(description="the candidate id")
    text: str = Field(min_length=1, description="the corrected sample text (it is read through the SAE again)")


@dataclass
class Reply:
    text: str
    directive: int | None = None
    """The directive this call stored, if it changed something."""
    data: dict[str, Any] = field(default_factory=dict)


_STOP = {
    "the", "and", "any", "anything", "about", "all", "features", "feature", "related", "that", "with", "skip",
    "focus", "exclude", "on", "more", "less", "please", "stuff", "things", "like", "some", "only",
}


def keywords(description: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]{3,}", description.lower()) if w not in _STOP]


class RunControl:
    """The steering operations on one run."""

    def __init__(self, store: Store, run: str, *, reader: Any = None) -> None:
        self.store = store
        self.runs = Runs(store)
        self.name = self.runs.get(run).name
        self._reader = reader

    # ------------------------------------------------------------------ reading

    @property
    def run(self) -> RunRecord:
        return self.runs.get(self.name)

    def config(self) -> RunConfig:
        return directives.current(self.runs, self.name)[1].cfg

    @property
    def delta(self) -> float:
        return float(self.run.config["setup"]["delta"])

    @property
    def threshold(self) -> float:
        return float(self.run.config["setup"]["threshold"])

    def status(self, words: str = "", args: NoArgs | None = None) -> Reply:
        s = self.runs.summary(self.name)
        steer = directives.current(self.runs, self.name)[1]
        cfg = steer.cfg
        rate = "-" if s.acceptance_rate is None else f"{s.acceptance_rate:.0%}"
        lines = [
            f"run {s.run.name} ({s.run.strategy}, task {s.run.task}): {s.run.status}"
            + (f" - {s.run.stop_reason}" if s.run.stop_reason else ""),
            f"FAC {s.fac:.1%} (seed {s.fac_before:.1%}), target {cfg.target_fac:.1%}; +{s.covered} features from "
            f"{s.samples} accepted samples (acceptance {rate})",
            "features: " + ", ".join(f"{k} {v}" for k, v in s.by_status.items()),
        ]
        b = cfg.budget
        if b.calls or b.tokens or b.seconds:
            lines.append("budget: " + ", ".join(f"{k} {v}" for k, v in b.model_dump().items() if v is not None))
        if steer.paused:
            lines.append("paused by the user (/resume to continue)")
        active = self.runs.directives(s.run.id)
        if active:
            lines.append("directives in force: " + "; ".join(f"#{d.id} {d.kind} {json.dumps(d.args)}" for d in active))
        return Reply("\n".join(lines), data={"fac": s.fac, "covered": s.covered, "samples": s.samples})

    def missing(self, words: str = "", args: MissingArgs | None = None) -> Reply:
        args = args or MissingArgs()
        run = self.run
        todo = self.runs.features(run.id, ["pending", "in_progress"])
        exps = Catalog(self.store).explanations(run.reader_id, [f.feature for f in todo[: args.limit]])
        lines = [f"{len(todo)} features still to cover (highest priority first):"]
        for f in todo[: args.limit]:
            e = exps.get(f.feature)
            what = e.text if e is not None and not e.cannot_tell else "(no explanation)"
            lines.append(f"  {f.feature}: {what}; {f.attempts} attempt(s), priority {f.priority:g}")
        return Reply("\n".join(lines), data={"features": [f.feature for f in todo]})

    def show(self, words: str = "", args: FeatureArgs | None = None) -> Reply:
        assert args is not None
        run = self.run
        f = self.runs.feature(run.id, args.feature)
        cat = Catalog(self.store)
        e = cat.explanation(run.reader_id, args.feature)
        lines = [f"feature {args.feature}: " + (e.text if e is not None else "no explanation in the catalog")]
        if f is None:
            lines.append(f"not one of run {run.name}'s missing features (the seed covers it, or it is outside F)")
            return Reply("\n".join(lines))
        best = "-" if f.best_act is None else f"{f.best_act:.2f}"
        lines.append(f"status {f.status}" + (f" ({f.reason})" if f.reason else "") + f"; {f.attempts} attempt(s); "
                     f"best activation {best} (needs > {self.threshold:g})")
        if f.covered_by is not None:
            lines.append(f"covered by accepted sample {f.covered_by}")
        setup = run.config.get("setup", {})
        anchor_id = setup.get("anchor_dataset_id")
        if anchor_id is not None:
            spans = cat.spans(run.reader_id, int(anchor_id), [args.feature]).get(args.feature, [])[:3]
            lines += [f"  anchor span ({s.activation:.1f}): {span_text({'tokens': s.tokens[-12:]})}" for s in spans]
        for c in self.runs.candidates(run.id, args.feature)[-4:]:
            text = Sample(**c.payload).plain_text.replace("\n", " ")
            lines.append(f"  attempt {c.attempt} {c.role}: {c.verdict or 'unverified'} ({c.reason or '-'}): {text[:90]!r}")
        return Reply("\n".join(lines), data={"status": f.status, "reason": f.reason})

    def latest(self, words: str = "", args: LatestArgs | None = None) -> Reply:
        args = args or LatestArgs()
        samples = self.runs.samples(self.run.id)[-args.n :]
        if not samples:
            return Reply(f"run {self.name} has no accepted sample yet")
        lines = [f"the latest {len(samples)} accepted samples (/reject ID to withdraw one):"]
        for s in samples:
            text = Sample(**s.candidate.payload).plain_text.replace("\n", " ")
            lines.append(f"  #{s.id} feature {s.candidate.feature} at {s.activation:.1f}, +{len(s.covered)} features: {text[:100]!r}")
        return Reply("\n".join(lines), data={"samples": [s.id for s in samples]})

    def test(self, words: str = "", args: TestArgs | None = None) -> Reply:
        """Read a text through the run's model and SAE: does it fire the feature, what would it cover?"""
        assert args is not None
        from facsynth.tools.candidates import Verifier

        reader = self.reader()
        sample = Sample(text=args.text)
        verifier = Verifier(reader.encoder, delta=self.delta, threshold=self.threshold, window=12)
        sf = reader.encoder.encode_one(sample)
        fired = dict(zip(sf.feature_ids.tolist(), sf.max_acts.tolist()))
        open_ids = {f.feature for f in self.runs.features(self.run.id) if f.covered_by is None}
        would = sorted(f for f in sf.active(self.delta).tolist() if f in open_ids)
        lines = []
        if args.feature is not None:
            act = float(fired.get(args.feature, 0.0))
            verdict = "fires" if act > self.threshold else "does not fire"
            lines.append(f"it {verdict} feature {args.feature}: {act:.2f} (threshold {self.threshold:g})")
            if act > 0:
                lines.append(f"  peak: {span_text(verifier.span(sample, args.feature))}")
        lines.append(f"it would cover {len(would)} of the run's uncovered features" + (f": {would[:20]}" if would else ""))
        return Reply("\n".join(lines), data={"activation": fired.get(args.feature, 0.0) if args.feature is not None else None,
                                               "would_cover": would})

    def directives(self, words: str = "", args: NoArgs | None = None) -> Reply:
        ds = self.runs.directives(self.run.id, active_only=False)
        if not ds:
            return Reply("no steering directives yet")
        return Reply("\n".join(_describe(d) for d in ds))

    # ------------------------------------------------------------------ changing

    def focus(self, words: str, args: FeaturesArgs) -> Reply:
        return self._features("focus", words, args)

    def exclude(self, words: str, args: FeaturesArgs) -> Reply:
        return self._features("exclude", words, args)

    def style(self, words: str, args: StyleArgs) -> Reply:
        d = self._add(words, "style", {"text": args.text.strip()})
        return Reply(f"#{d}: the generator is now asked for: {args.text.strip()}", d)

    def target(self, words: str, args: TargetArgs) -> Reply:
        before = self.config().target_fac
        d = self._add(words, "target", {"fac": args.fac})
        return Reply(f"#{d}: FAC target {before:.1%} -> {args.fac:.1%}", d)

    def budget(self, words: str, args: BudgetArgs) -> Reply:
        given = {k: v for k, v in args.model_dump().items() if v is not None}
        d = self._add(words, "budget", given)
        return Reply(f"#{d}: budget now " + ", ".join(f"{k} {v}" for k, v in self.config().budget.model_dump().items()
                                                       if v is not None), d)

    def pause(self, words: str, args: NoArgs | None = None) -> Reply:
        d = self._add(words, "pause", {"paused": True})
        return Reply(f"#{d}: paused; the run stops before its next batch (/resume to continue)", d)

    def resume(self, words: str, args: NoArgs | None = None) -> Reply:
        d = self._add(words, "pause", {"paused": False})
        running = self.run.status == "running"
        tail = "" if running else f"; it is {self.run.status}: continue it with `facsynth resume {self.name}`"
        return Reply(f"#{d}: not paused any more{tail}", d)

    def reject(self, words: str, args: SamplesArgs) -> Reply:
        uncovered = self.runs.withdraw_samples(self.run.id, args.samples, delta=self.delta)
        d = self._add(words, "reject", {"samples": sorted(set(args.samples))})
        ids = ", ".join(f"#{i}" for i in sorted(set(args.samples)))
        return Reply(f"#{d}: withdrew sample {ids}; {len(uncovered)} feature(s) are uncovered again"
                     + (f": {uncovered[:20]}" if uncovered else ""), d, {"uncovered": uncovered})

    def undo(self, words: str, args: UndoArgs | None = None) -> Reply:
        args = args or UndoArgs()
        active = self.runs.directives(self.run.id)
        if not active:
            return Reply("nothing to undo: no directive is in force")
        target = active[-1] if args.directive is None else next((d for d in active if d.id == args.directive), None)
        if target is None:
            raise InputError(f"directive #{args.directive} is not in force; in force: {', '.join(f'#{d.id}' for d in active)}")
        extra = ""
        if target.kind == "review":
            waiting = {c.id for c in self.runs.pending_review(self.run.id)}
            for i in target.args["candidates"]:
                if i in waiting:
                    if target.args.get("before") is not None:
                        from facsynth.tools.candidates import text_hash

                        old = Sample(**target.args["before"])
                        self.runs.decide(self.run.id, i, None, sample=old.payload, text_hash=text_hash(old))
                    else:
                        self.runs.decide(self.run.id, i, None)
            extra = "; those candidates wait for a decision again"
        elif target.kind == "reject":
            back = self.runs.restore_samples(self.run.id, target.args["samples"], delta=self.delta)
            extra = f"; the samples count again ({len(back)} feature(s) covered again)"
        self.runs.revert_directive(self.run.id, target.id)
        return Reply(f"undid #{target.id} {target.kind} {json.dumps(target.args)} ({target.words!r}){extra}", target.id)

    # ------------------------------------------------------------------ review (facsynth run --review)

    def review(self, words: str = "", args: NoArgs | None = None) -> Reply:
        waiting = self.runs.pending_review(self.run.id)
        if not waiting:
            return Reply(f"nothing waits for review in run {self.name}"
                         + ("" if self.config().review else " (start runs with --review to review each batch)"))
        lines = [f"{len(waiting)} candidate(s) the verifier would accept; /approve [IDS], /deny IDS, /edit ID TEXT:"]
        for c in waiting:
            text = Sample(**c.payload).plain_text.replace("\n", " ")
            decided = f" [{c.review}]" if c.review else ""
            lines.append(f"  candidate {c.id}{decided}: feature {c.feature}, attempt {c.attempt}: {text[:160]!r}")
        return Reply("\n".join(lines), data={"candidates": [c.id for c in waiting]})

    def approve(self, words: str, args: ReviewArgs) -> Reply:
        return self._decide(words, "approve", args.candidates)

    def deny(self, words: str, args: ReviewArgs) -> Reply:
        if not args.candidates:
            raise InputError("name the candidates to deny: /deny ID ...")
        return self._decide(words, "deny", args.candidates)

    def edit(self, words: str, args: EditArgs) -> Reply:
        from facsynth.tools.candidates import text_hash

        run_id = self.run.id
        before = next((c for c in self.runs.pending_review(run_id) if c.id == args.candidate), None)
        if before is None:
            raise InputError(f"candidate {args.candidate} is not waiting for review; /review lists those that are")
        sample = Sample(text=args.text.strip())
        self.runs.decide(run_id, args.candidate, "edit", sample=sample.payload, text_hash=text_hash(sample))
        d = self._add(words, "review", {"action": "edit", "candidates": [args.candidate], "before": before.payload})
        return Reply(f"#{d}: candidate {args.candidate} edited; it is read through the SAE again when the run goes on"
                     + self._review_left(), d)

    def _decide(self, words: str, action: str, ids: list[int]) -> Reply:
        run_id = self.run.id
        waiting = {c.id: c for c in self.runs.pending_review(run_id)}
        chosen = ids or [i for i, c in waiting.items() if c.review is None]
        if not chosen:
            return Reply("nothing left to decide" + self._review_left())
        for i in chosen:
            self.runs.decide(run_id, i, action)
        d = self._add(words, "review", {"action": action, "candidates": sorted(chosen)})
        done = {"approve": "approved", "deny": "denied"}[action]
        return Reply(f"#{d}: {done} candidate(s) {sorted(chosen)}" + self._review_left(), d)

    def _review_left(self) -> str:
        left = [c.id for c in self.runs.pending_review(self.run.id) if c.review is None]
        if left:
            return f"; still to decide: {left}"
        waiting = self.run.status == "reviewing"
        return "; the batch is decided" + ("" if waiting else f" (continue with `facsynth resume {self.name}`)")

    # ------------------------------------------------------------------ internals

    def reader(self) -> Any:
        """The run's model and SAE, loaded on first use."""
        if self._reader is None:
            from facsynth.tools.reader import Reader

            cfg = RunConfig.model_validate(self.run.config["config"])
            self._reader = Reader(cfg.model, cfg.sae, cfg.layer, store=self.store)
        return self._reader

    def _add(self, words: str, kind: str, args: dict[str, Any]) -> int:
        return self.runs.add_directive(self.run.id, words, kind, args)

    def _features(self, kind: str, words: str, args: FeaturesArgs) -> Reply:
        run = self.run
        own = {f.feature: f for f in self.runs.features(run.id)}
        ids = set(args.features)
        matched: list[int] = []
        if args.description:
            matched = self.match(args.description)
            if not matched and not ids:
                return Reply(f"no feature of run {run.name} has an explanation or anchor span matching "
                             f"{args.description!r}; give ids, or explain features first (`facsynth features explain`)")
            ids |= set(matched)
        outside = sorted(ids - set(own))
        ids &= set(own)
        if not ids:
            return Reply(f"none of {sorted(outside)} is a missing feature of run {run.name}; /missing lists them")
        d = self._add(words, kind, {"features": sorted(ids), **({"description": args.description} if args.description else {})})
        verb = "focus on" if kind == "focus" else "leave out"
        text = f"#{d}: {verb} {len(ids)} feature(s): {sorted(ids)[:20]}"
        if outside:
            text += f" (not missing features of this run, ignored: {outside[:10]})"
        return Reply(text, d, {"features": sorted(ids)})

    def match(self, description: str) -> list[int]:
        """The run's features whose explanation or stored anchor spans contain a keyword."""
        words = keywords(description)
        if not words:
            return []
        run = self.run
        feats = [f.feature for f in self.runs.features(run.id)]
        cat = Catalog(self.store)
        texts: dict[int, list[str]] = {f: [] for f in feats}
        for f, e in cat.explanations(run.reader_id, feats).items():
            if not e.cannot_tell:
                texts[f].append(e.text.lower())
        anchor_id = run.config.get("setup", {}).get("anchor_dataset_id")
        if anchor_id is not None:
            stored = cat.spans(run.reader_id, int(anchor_id), feats)
            for f, spans in stored.items():
                if f in texts:
                    texts[f] += ["".join(s.tokens).lower() for s in spans[:5]]
            if not any(stored.values()):  # no span collection: the anchor sample each feature fires most on
                texts = _merge(texts, self._top_anchor_texts(int(anchor_id), run.reader_id, feats))
        pattern = re.compile(r"\b(" + "|".join(re.escape(w[:6]) for w in words) + r")")
        return sorted(f for f, ts in texts.items() if any(pattern.search(t) for t in ts))


    def _top_anchor_texts(self, anchor_id: int, reader_id: int, feats: list[int]) -> dict[int, list[str]]:
        rows = self.store.dataset_samples(anchor_id)
        readings = self.store.stored_features(reader_id, [h for h, _ in rows])
        best: dict[int, tuple[float, str]] = {}
        wanted = set(feats)
        for h, payload in rows:
            sf = readings.get(h)
            if sf is None:
                continue
            text = sample_from_row(payload).plain_text.lower()
            for f, act in zip(sf.feature_ids.tolist(), sf.max_acts.tolist()):
                if f in wanted and act > best.get(f, (0.0, ""))[0]:
                    best[f] = (act, text)
        return {f: [t] for f, (_, t) in best.items()}


def _merge(a: dict[int, list[str]], b: dict[int, list[str]]) -> dict[int, list[str]]:
    return {f: a.get(f, []) + b.get(f, []) for f in set(a) | set(b)}


def _describe(d: Directive) -> str:
    state = "in force" if d.active else "undone"
    return f"#{d.id} {d.kind} {json.dumps(d.args)} ({state}; {d.created_at:%Y-%m-%d %H:%M}; {d.words!r})"
