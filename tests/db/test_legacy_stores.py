"""Stores written before Alembic (a ``_migrations`` table listing m001..m005) open with their data.

They are built by a frozen copy of the old migrations (``legacy_migrations.py``) and filled
with rows as the old code wrote them (JSON as canonical text, ``NaN`` included), then opened
by the current :class:`Store`: it stamps them at the revision of their last migration,
upgrades them, and every record reads back as it was written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, inspect, text

from facsynth.db import Store, migrations
from facsynth.db.catalog import Catalog
from facsynth.db.runs import Runs
from facsynth.db.store import make_engine
from facsynth.errors import StoreError

from . import legacy_migrations
from .test_store import ALL_MIGRATIONS, schema_differences

NOW = "2026-01-02 03:04:05.000000"


def _json(value: object) -> str:
    """JSON as the old code wrote it (``canonical_json``)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def old_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """An empty database the old code would open: a SQLite file (with the store's hooks) or a PostgreSQL schema."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
        request.addfinalizer(engine.dispose)
        return engine
    return request.getfixturevalue("pg_engine")


def _fill(engine: Engine) -> None:
    blob = {"feature_ids": np.array([7], "<i4").tobytes(), "max_acts": np.array([2.5], "<f4").tobytes()}
    rows = {
        "readers": {
            "id": 1, "key": "k" * 64, "model_name": "m", "model_fingerprint": "f", "layer": 3, "sae_name": "s",
            "sae_hash": "h", "activation_mode": "relu", "template_mode": "chat", "created_at": NOW,
        },
        "datasets": {
            "id": 1, "name": "seed", "source": "seed.jsonl", "content_hash": "c" * 64, "n_samples": 1,
            "created_at": NOW,
        },
        "samples": {
            "id": 1, "sample_hash": "a" * 64, "payload": _json({"text": "héllo", "meta": {"z": 1, "a": 2}}),
            "created_at": NOW,
        },
        "dataset_samples": {"dataset_id": 1, "position": 0, "sample_id": 1},
        "feature_stats": {
            "id": 1, "reader_id": 1, "dataset_id": 1, "feature_id": 7, "n_samples": 1, "active_count": 1,
            "frequency": 1.0, "max_act": 2.5, "quantiles": _json({"0.5": 1.25, "0.9": 2.0}), "created_at": NOW,
        },
        "feature_spans": {
            "id": 1, "reader_id": 1, "dataset_id": 1, "feature_id": 7, "kind": "top", "rank": 0, "sample_id": 1,
            "activation": 2.5, "peak_token": 1, "tokens": json.dumps(["hé", "llo"], ensure_ascii=False),
            "acts": json.dumps([0.5, 2.5]), "text": "héllo",
        },
        "span_collections": {
            "id": 1, "reader_id": 1, "dataset_id": 1, "top_n": 1, "window": 2, "held_out": 0, "n_random": 0,
            "delta": 0.0, "seed": 0, "n_samples": 1, "n_features": 1, "created_at": NOW,
        },
        "explanations": {
            "id": 1, "reader_id": 1, "feature_id": 7, "dataset_id": 1, "text": "greetings",
            "words": json.dumps(["llo"]), "explainer_model": "x", "created_at": NOW,
        },
        "tasks": {
            "id": 1, "name": "t", "definition": "d", "criteria": "c", "format": _json({"kind": "text"}),
            "source": "preset", "created_at": NOW,
        },
        "runs": {
            "id": 1, "name": "r1", "status": "stopped", "strategy": "agent", "task": "t", "reader_id": 1,
            "config": _json({"config": {"b": 1, "a": [1, 2]}, "setup": {}}), "feature_set": "all", "n_relevant": 4,
            "n_seed_covered": 1, "elapsed_s": 1.0, "created_at": NOW, "updated_at": NOW,
        },
        "run_features": {
            "id": 1, "run_id": 1, "feature_id": 7, "status": "covered", "attempts": 1, "priority": 1.0,
            "covered_by": 1, "updated_at": NOW,
        },
        "run_candidates": {
            "id": 1, "run_id": 1, "feature_id": 7, "attempt": 1, "step": 1, "idx": 0, "role": "positive",
            "payload": _json({"text": "héllo"}), "text_hash": "t" * 64, "prompt_hash": "p" * 64, "model": "g",
            "target_act": 2.5, "span": _json({"tokens": ["llo"], "acts": [2.5]}), **blob,
            "verdict": "accepted", "reason": "ok", "reason_code": "joined",
            "checks": _json({"loss": math.nan, "distance": 0.5, "request": False}), "created_at": NOW,
        },
        "run_samples": {
            "id": 1, "run_id": 1, "candidate_id": 1, "feature_id": 7, "text_hash": "t" * 64, "activation": 2.5,
            "covered": _json([7]), "created_at": NOW,
        },
        "run_directives": {
            "id": 1, "run_id": 1, "words": "focus on 7", "kind": "focus", "args": _json({"features": [7]}),
            "active": 1, "created_at": NOW,
        },
    }
    with engine.begin() as conn:
        for table, row in rows.items():
            cols = ", ".join(f'"{c}"' for c in row)
            conn.execute(text(f"INSERT INTO {table} ({cols}) VALUES ({', '.join(':' + c for c in row)})"), row)
        if conn.dialect.name == "postgresql":  # the ids above were given, not drawn from the sequences
            for table in ("samples", "run_candidates", "run_samples", "runs", "run_directives"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 100)"))


def test_a_store_written_before_alembic_opens_with_its_data(old_engine: Engine) -> None:
    assert legacy_migrations.migrate(old_engine) == ALL_MIGRATIONS[:5]
    _fill(old_engine)

    store = Store(old_engine)
    assert store.schema_version() == ALL_MIGRATIONS
    assert "_migrations" not in inspect(old_engine).get_table_names()
    assert schema_differences(old_engine) == []

    assert store.dataset_samples(1) == [("a" * 64, {"meta": {"a": 2, "z": 1}, "text": "héllo"})]
    runs, catalog = Runs(store), Catalog(store)
    run = runs.get("r1")
    assert run.config == {"config": {"a": [1, 2], "b": 1}, "setup": {}}
    assert list(run.config["config"]) == ["a", "b"]  # keys in the order they were stored
    [cand] = runs.candidates(run.id)
    assert cand.payload == {"text": "héllo"} and cand.span == {"acts": [2.5], "tokens": ["llo"]}
    assert cand.checks is not None and math.isnan(cand.checks["loss"]) and cand.checks["distance"] == 0.5
    np.testing.assert_array_equal(cand.feature_ids, [7])
    [sample] = runs.samples(run.id)
    assert sample.covered == [7]
    [directive] = runs.directives(run.id)
    assert directive.args == {"features": [7]}
    assert catalog.stats(1, 1)[7].quantiles == {"0.5": 1.25, "0.9": 2.0}
    [span] = catalog.spans(1, 1)[7]
    assert span.tokens == ["hé", "llo"] and span.acts == [0.5, 2.5]
    assert catalog.explanation(1, 7).words == ["llo"]
    assert catalog.task("t").format == {"kind": "text"}

    # the old rows and new ones live side by side
    runs.add_directive(run.id, "exclude 8", "exclude", {"features": [8], "why": float("inf")})
    assert [d.args for d in runs.directives(run.id)] == [{"features": [7]}, {"features": [8], "why": float("inf")}]
    store.close()
    assert Store(old_engine).schema_version() == ALL_MIGRATIONS  # reopening changes nothing


def test_a_store_left_at_an_older_migration_is_upgraded(old_engine: Engine,
            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(legacy_migrations, "MIGRATIONS", legacy_migrations.MIGRATIONS[:3])
    assert legacy_migrations.migrate(old_engine) == ALL_MIGRATIONS[:3]
    with Store(old_engine) as store:
        assert store.schema_version() == ALL_MIGRATIONS
    assert schema_differences(old_engine) == []


def test_a_legacy_migration_from_the_future_is_refused(old_engine: Engine) -> None:
    legacy_migrations.migrate(old_engine)
    with old_engine.begin() as conn:
        conn.execute(text("INSERT INTO _migrations (name, applied_at) VALUES ('m900_from_the_future', :t)"),
            {"t": NOW})
    with pytest.raises(StoreError, match="m900_from_the_future"):
        Store(old_engine)
    assert migrations.LEGACY_TABLE in inspect(old_engine).get_table_names()  # left as it was
