"""What the graph's nodes run with: the run's context and its resources.

LangGraph passes :class:`RunContext` to every node (``context_schema``). It names the
run and the database; the heavy parts (store, model + SAE reader, verifier, LLM client)
travel in :class:`Resources`. ``facsynth run`` builds those once and puts them in the
context; LangGraph Studio, which can only pass the two strings, gets them built from
the run's stored configuration on first use (:func:`resources`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facsynth.agent.llm import LLMClient
from facsynth.agent.tasks import TaskSpec, resolve_task
from facsynth.db.catalog import Catalog
from facsynth.db.claims import Claims
from facsynth.db.runs import RunRecord, Runs
from facsynth.db.store import Store
from facsynth.graph.config import RunConfig
from facsynth.graph.prompts import task_labels
from facsynth.records import SampleFeatures
from facsynth.tools.datasets import Sample, sample_from_row
from facsynth.tools.reader import Reader
from facsynth.tools.quality import Calibration, CopyIndex, TopicIndex
from facsynth.tools.candidates import DuplicateIndex, Verifier, span_text, text_hash
from facsynth.tools.sides import LabelSide, label_side

log = logging.getLogger(__name__)


@dataclass
class Resources:
    """A run's store, reader, verifier and LLM client, plus what it reads from the anchor."""

    store: Store
    run: RunRecord
    cfg: RunConfig
    reader: Reader
    llm: LLMClient | None
    task: TaskSpec
    delta: float
    threshold: float
    anchor: list[tuple[Sample, SampleFeatures]] = field(default_factory=list)
    anchor_dataset_id: int | None = None
    base_elapsed_s: float = 0.0
    """Wall time the run spent in earlier sessions."""
    started: float = field(default_factory=time.monotonic)
    """When this session began (wall-time budget and progress)."""
    calibration: Calibration | None = None
    """The quality thresholds calibrated when the run was created (None: model checks off)."""
    claims: Claims | None = None
    """This worker's slot and claims on a PostgreSQL store (None: SQLite, one process)."""
    _spans: dict[int, list[tuple[str, float]]] = field(default_factory=dict)
    _dups: DuplicateIndex | None = None
    _dups_seen: int = 0
    """Highest sample id read into the duplicate index (workers: the others' samples come later)."""
    _dups_own: set[int] = field(default_factory=set)
    _topic: TopicIndex | None = None
    _seed: list[tuple[str, str | None]] | None = None
    _copies: CopyIndex | None = None
    _sides: dict[int, LabelSide | None] = field(default_factory=dict)
    _labels: dict[str, str] | None = None

    @property
    def runs(self) -> Runs:
        return Runs(self.store)

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.store)

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.reader.encoder, delta=self.delta, threshold=self.threshold)

    def elapsed_s(self) -> float:
        """Wall time spent synthesizing, over every session of the run."""
        return self.base_elapsed_s + time.monotonic() - self.started

    def explanation(self, feature: int) -> str | None:
        exp = self.catalog.explanation(self.run.reader_id, feature)
        return None if exp is None or exp.cannot_tell else exp.text

    def top_spans(self, feature: int, n: int = 3) -> list[str]:
        """The feature's strongest spans on one line each, peak marked (see :meth:`anchor_spans`)."""
        return [text for text, _ in self.anchor_spans(feature, n)]

    def anchor_spans(self, feature: int, n: int = 3) -> list[tuple[str, float]]:
        """The feature's strongest (span, activation) pairs: from a stored span collection over
        the anchor, else read now from the anchor samples that fire it most (cached)."""
        if feature in self._spans:
            return self._spans[feature][:n]
        spans: list[tuple[str, float]] = []
        if self.anchor_dataset_id is not None:
            stored = self.catalog.spans(self.run.reader_id, self.anchor_dataset_id, [feature]).get(feature, [])
            spans = [(span_text({"tokens": s.tokens[-12:]}), float(s.activation)) for s in stored[:n]]
        if not spans and self.anchor:
            acts = []
            for i, (_, sf) in enumerate(self.anchor):
                hit = np.flatnonzero(sf.feature_ids == feature)
                if hit.size:
                    acts.append((float(sf.max_acts[hit[0]]), i))
            acts.sort(reverse=True)
            verifier = Verifier(self.reader.encoder, delta=self.delta, threshold=self.threshold, window=12)
            spans = [(span_text(verifier.span(self.anchor[i][0], feature)), act) for act, i in acts[:n]]
        self._spans[feature] = [(text, act) for text, act in spans if text]
        return self._spans[feature]

    @property
    def sides(self) -> dict[int, str] | None:
        """With ``fac_by_label``: the label each feature of F marks, as the run stored it at
        creation (features that mark none are absent); None for a run that counts by any sample."""
        stored = self.run.config.get("setup", {}).get("sides")
        return None if stored is None else {int(f): str(lab) for f, lab in stored.items()}

    def label_side(self, feature: int) -> LabelSide | None:
        """On a labelled task, the label the feature marks (:func:`label_side`: which label's
        anchor samples it fires on above delta; cached), or None: no labelled anchor, or no
        label stands out."""
        if feature not in self._sides:
            labels = task_labels(self.task)
            named = self._anchor_labels() if labels else {}
            self._sides[feature] = label_side(
                [(named.get(s.sample_hash), bool(np.isin(feature, sf.active(self.delta)))) for s, sf in self.anchor], labels
            ) if labels and named else None
        return self._sides[feature]

    def _anchor_labels(self) -> dict[str, str]:
        """The anchor's labels by sample hash, read from the anchor file (the store keeps each
        sample's payload, not its label); empty where the file is gone or has none."""
        if self._labels is None:
            from facsynth.errors import InputError
            from facsynth.tools.datasets import load_dataset

            try:
                anchor = load_dataset(self.cfg.anchor) if self.cfg.anchor else []
            except InputError:
                anchor = []
            self._labels = {s.sample_hash: lab for s in anchor if (lab := _label(s.meta)) is not None}
        return self._labels

    def quality(self) -> tuple[Calibration | None, TopicIndex | None]:
        """The run's calibrated thresholds and the topic index of its calibration corpus (the
        anchor's stored pooled states, or the seed's), or (None, None) when the checks are off."""
        cal = self.calibration
        if cal is None or not self.cfg.quality:
            return None, None
        if self._topic is None:
            if cal.corpus == "anchor":
                pooled = [sf.pooled for _, sf in self.anchor if sf.pooled is not None]
            else:
                seed_id = self.run.config.get("setup", {}).get("seed_dataset_id")
                rows = self.store.dataset_samples(int(seed_id)) if seed_id is not None else []
                feats = self.store.stored_features(self.run.reader_id, [h for h, _ in rows])
                pooled = [feats[h].pooled for h, _ in rows if h in feats and feats[h].pooled is not None]
            if len(pooled) < 2:
                log.warning("run %s: no pooled states to read topics against; the model checks are off", self.run.name)
                self.calibration = None
                return None, None
            self._topic = TopicIndex(np.stack(pooled), k=cal.k)
        return cal, self._topic

    def copies(self) -> CopyIndex:
        """The seed's and the anchor's texts, for the copy check (a candidate that repeats a
        run of their words is no new sample)."""
        if self._copies is None:
            setup = self.run.config.get("setup", {})
            seed_id = setup.get("seed_dataset_id")
            rows = self.store.dataset_samples(int(seed_id)) if seed_id is not None else []
            self._copies = CopyIndex(
                [(f"seed sample {i + 1}", sample_from_row(p).plain_text) for i, (_, p) in enumerate(rows)]
                + [(f"anchor sample {i + 1}", s.plain_text) for i, (s, _) in enumerate(self.anchor)]
            )
        return self._copies

    def seed_examples(self, slot: int, n: int = 3) -> list[tuple[str, str | None]]:
        """``n`` seed samples (text, label) for the unguided strategy's call ``slot``: drawn
        without replacement by a generator seeded with the slot, so a resumed run shows the
        same ones. Read from the seed file (labels included) or, where it is gone, the store."""
        if self._seed is None:
            from facsynth.errors import InputError
            from facsynth.tools.datasets import load_dataset

            try:
                self._seed = [(s.plain_text, _label(s.meta)) for s in load_dataset(self.cfg.seed)]
            except InputError:
                seed_id = self.run.config.get("setup", {}).get("seed_dataset_id")
                rows = self.store.dataset_samples(int(seed_id)) if seed_id is not None else []
                self._seed = [(sample_from_row(p).plain_text, None) for _, p in rows]
        if not self._seed:
            return []
        rng = np.random.default_rng(slot)
        pick = rng.choice(len(self._seed), size=min(n, len(self._seed)), replace=False)
        return [self._seed[int(i)] for i in pick]

    def duplicates(self) -> DuplicateIndex:
        """Seed samples and the run's accepted samples, for the duplicate checks."""
        if self._dups is None:
            index = DuplicateIndex(self.reader.sae.d_sae, self.cfg.near_duplicate_cosine)
            setup = self.run.config.get("setup", {})
            seed_id = setup.get("seed_dataset_id")
            if seed_id is not None:
                rows = self.store.dataset_samples(int(seed_id))
                feats = self.store.stored_features(self.run.reader_id, [h for h, _ in rows])
                for i, (h, payload) in enumerate(rows):
                    if h in feats:
                        index.add(f"seed sample {i + 1}", text_hash(sample_from_row(payload)), feats[h])
            self._dups = index
            fresh = True
        else:
            fresh = False
        if fresh or self.claims is not None:  # other workers accept samples too: read theirs as they come
            for s in self.runs.samples(self.run.id, after=self._dups_seen):
                self._dups_seen = max(self._dups_seen, s.id)
                c = s.candidate
                if s.id not in self._dups_own and c.feature_ids is not None and c.max_acts is not None:
                    sf = SampleFeatures("", 0, c.feature_ids, c.max_acts)
                    self._dups.add(f"accepted sample {s.id}", c.text_hash, sf, text=Sample(**c.payload).plain_text)
        return self._dups

    def add_duplicate(self, sample_id: int, text_hash: str, features: SampleFeatures, text: str | None = None) -> None:
        """A sample this process accepted joins the duplicate index at once."""
        self._dups_own.add(sample_id)
        self.duplicates().add(f"accepted sample {sample_id}", text_hash, features, text=text)


def _label(meta: dict[str, Any]) -> str | None:
    value = meta.get("label")
    return None if value is None else str(value)


def open_resources(
    store: Store, run: RunRecord, *, llm: LLMClient | None, reader: Reader | None = None
) -> Resources:
    """Resources for a stored run: its reader (model, SAE, layer from the run's config),
    its task, and the anchor's stored readings."""
    payload = run.config
    cfg = RunConfig.model_validate(payload["config"])
    setup: dict[str, Any] = payload.get("setup", {})
    if reader is None:
        reader = Reader(cfg.model, cfg.sae, cfg.layer, store=store)
    task = resolve_task(Catalog(store), cfg.task, cfg.tasks_file)
    res = Resources(
        store=store, run=run, cfg=cfg, reader=reader, llm=llm, task=task,
        delta=float(setup["delta"]), threshold=float(setup["threshold"]),
        anchor_dataset_id=setup.get("anchor_dataset_id"), base_elapsed_s=run.elapsed_s,
        calibration=Calibration.model_validate(setup["quality"]) if setup.get("quality") else None,
    )
    if res.anchor_dataset_id is not None:
        rows = store.dataset_samples(int(res.anchor_dataset_id))
        feats = store.stored_features(run.reader_id, [h for h, _ in rows])
        res.anchor = [(sample_from_row(p), feats[h]) for h, p in rows if h in feats]
    return res


@dataclass
class RunContext:
    """The graph's runtime context: which run, in which database, with what resources."""

    run: str = ""
    """The run's name."""
    db: str | None = None
    """The store's SQLAlchemy URL (``$FACSYNTH_DB`` or ``sqlite:///facsynth.db`` when None)."""
    res: Resources | None = None
    """Built by ``facsynth run``; None: built from the stored run on first use."""


_built: dict[tuple[str, str | None], Resources] = {}


def resources(ctx: RunContext) -> Resources:
    """The context's resources, building them from the store when the caller gave none
    (LangGraph Studio). Those are kept for the life of the process."""
    if ctx.res is not None:
        return ctx.res
    key = (ctx.run, ctx.db)
    if key not in _built:
        from facsynth.agent.llm import LLMClient
        from facsynth.agent.server import EmbeddedServer
        from facsynth.db.store import open_store

        store = open_store(ctx.db)
        run = Runs(store).get(ctx.run)
        cfg = RunConfig.model_validate(run.config["config"])
        if cfg.llm.base_url is None:
            server = EmbeddedServer(cfg.llm.server, model_alias=cfg.llm.model).start()
            llm = LLMClient(cfg.llm, store=store, endpoints=server.base_urls, llama_cpp=True)
        else:
            llm = LLMClient(cfg.llm, store=store)
        _built[key] = open_resources(store, run, llm=llm)
    return _built[key]
