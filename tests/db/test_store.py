"""The SQL store on SQLite and, when it is reachable, PostgreSQL.

The core tests run once per backend (``store`` fixture). PostgreSQL tests use a fresh
schema each and drop it afterwards, so reruns start clean; they are skipped with the
reason when ``$FACSYNTH_TEST_PG_URL`` (default: the local server on 127.0.0.1:5432) is
not reachable.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, select, text
from sqlalchemy.exc import IntegrityError

from facsynth.db import Store, migrations, open_store, redact_secrets
from facsynth.db.migrations import migrate
from facsynth.db.models import OUTCOMES, Base, LLMCall, SampleFeatureRow
from facsynth.db.store import Outcome, dataset_hash, reader_key
from facsynth.errors import StoreError
from facsynth.records import SampleFeatures

READER = ("smollm2-135m-instruct", "0123456789abcdef", 16, "sae-test", "f" * 64, "relu_no_topk", "chat")


def _hash(i: int) -> str:
    return f"{i:064x}"


def _samples(n: int, start: int = 0) -> list[tuple[str, dict]]:
    return [(_hash(i), {"text": f"sample number {i}", "meta": {"i": i}}) for i in range(start, start + n)]


def _features(sample_hash: str, seed: int, d_model: int | None = 64) -> SampleFeatures:
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(65536, size=int(rng.integers(1, 40)), replace=False)).astype(np.int32)
    acts = rng.uniform(0.01, 30.0, size=ids.size).astype(np.float32)
    pooled = rng.normal(0, 3, size=d_model).astype(np.float32) if d_model else None
    return SampleFeatures(sample_hash, int(rng.integers(1, 500)), ids, acts, pooled)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def sqlite_file_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nested' / 'store.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def bare_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An engine on an empty database (in-memory SQLite or a fresh PostgreSQL schema)."""
    if request.param == "sqlite":
        engine = create_engine("sqlite://")
        yield engine
        engine.dispose()
    else:
        yield request.getfixturevalue("pg_engine")


def _count(store: Store, table: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


# --------------------------------------------------------------------------- schema

ALL_MIGRATIONS = migrations.revisions()

READER_FIELDS = [
    "model_name", "model_fingerprint", "layer", "sae_name", "sae_hash", "activation_mode", "template_mode",
]


def schema_differences(engine: Engine) -> list:
    """What Alembic's autogenerate would change to bring the database to the models (empty: they agree)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": migrations.compare_type, "include_object": migrations.include_object}
        )
        return compare_metadata(context, Base.metadata)


def test_in_memory_schema_has_every_table_and_key() -> None:
    store = Store("sqlite://")
    insp = inspect(store.engine)
    assert set(insp.get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    assert insp.get_pk_constraint("sample_features")["constrained_columns"] == ["reader_id", "sample_id"]
    assert insp.get_pk_constraint("llm_cache")["constrained_columns"] == ["key"]
    unique = {tuple(u["column_names"]) for u in insp.get_unique_constraints("readers")}
    assert ("key",) in unique
    assert tuple(READER_FIELDS) in unique
    assert store.schema_version() == ALL_MIGRATIONS
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [ALL_MIGRATIONS[-1]]


def test_migrations_build_exactly_the_models(store: Store) -> None:
    """The models are the schema: the migrated database differs from them in nothing that
    autogenerate compares (tables, columns, types, nullability, keys, indexes)."""
    assert schema_differences(store.engine) == []


def test_revision_files_are_alembic_history_in_order() -> None:
    script = ScriptDirectory(str(migrations.SCRIPT_DIR))
    assert [r.revision for r in reversed(list(script.walk_revisions()))] == ALL_MIGRATIONS
    assert script.get_heads() == [ALL_MIGRATIONS[-1]]


def test_opening_an_up_to_date_store_does_not_load_alembic(sqlite_file_url: str) -> None:
    Store(sqlite_file_url).close()
    code = f"import sys; from facsynth.db import Store; Store({sqlite_file_url!r}); print('alembic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_reopening_does_not_reapply_migrations(sqlite_file_url: str) -> None:
    first = Store(sqlite_file_url)
    reader_id = first.reader(*READER)
    first.close()

    again = Store(sqlite_file_url)
    assert migrate(again.engine) == []
    with again.engine.connect() as conn:
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert rows == [ALL_MIGRATIONS[-1]]
    assert again.reader(*READER) == reader_id  # data survived
    again.close()


def test_a_failing_migration_leaves_no_trace(
    bare_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripts = tmp_path / "alembic"
    shutil.copytree(migrations.SCRIPT_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "m999_broken.py").write_text(
        f"revision = 'm999_broken'\ndown_revision = {ALL_MIGRATIONS[-1]!r}\n\n"
        "from alembic import op\n\n\n"
        "def upgrade():\n    op.execute('CREATE TABLE half_done (x INTEGER)')\n    raise RuntimeError('boom')\n"
    )
    monkeypatch.setattr(migrations, "SCRIPT_DIR", scripts)
    with pytest.raises(RuntimeError, match="boom"):
        Store(bare_engine)
    # one transaction: not even m001's tables nor the alembic_version table remain
    assert inspect(bare_engine).get_table_names() == []


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh_target(request: pytest.FixtureRequest, sqlite_file_url: str) -> str | Engine:
    """What two processes would both open: a new SQLite file or an empty PostgreSQL schema."""
    return sqlite_file_url if request.param == "sqlite" else request.getfixturevalue("pg_engine")


def test_concurrent_first_opens_migrate_once(fresh_target: str | Engine) -> None:
    stores: list[Store] = []
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            stores.append(Store(fresh_target))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(s.schema_version() == ALL_MIGRATIONS for s in stores)
    assert _count(stores[0], "alembic_version") == 1
    for s in stores:
        s.close()


def test_unknown_migration_is_refused(bare_engine: Engine) -> None:
    Store(bare_engine)
    with bare_engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'm900_from_the_future'"))
    with pytest.raises(StoreError, match="m900_from_the_future"):
        Store(bare_engine)


def test_sqlite_file_gets_folder_wal_and_foreign_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "a" / "b" / "facsynth.db"
    monkeypatch.setenv("FACSYNTH_DB", f"sqlite:///{db}")
    store = open_store()
    assert db.exists()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    store.close()


# --------------------------------------------------------------------------- errors


def test_unparseable_url_is_one_line_store_error() -> None:
    with pytest.raises(StoreError) as info:
        Store("this is not a url")
    assert "\n" not in str(info.value)
    assert "cannot parse database URL" in str(info.value)


def test_unknown_dialect_is_store_error() -> None:
    with pytest.raises(StoreError, match="nosuchdb"):
        Store("nosuchdb://user@host/db")


def test_unreachable_database_hides_password() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreError) as info:
        Store(f"postgresql+psycopg://postgres:hunter2secret@127.0.0.1:{port}/test")
    message = str(info.value)
    assert "hunter2secret" not in message
    assert "\n" not in message
    assert f"127.0.0.1:{port}" in message and "***" in message


# --------------------------------------------------------------------------- readers and datasets


def test_reader_is_get_or_create(store: Store) -> None:
    first = store.reader(*READER)
    assert store.reader(*READER) == first
    other = store.reader(*READER[:2], 17, *READER[3:])
    assert other != first
    assert _count(store, "readers") == 2
    with store.engine.connect() as conn:
        key = conn.execute(text("SELECT key FROM readers WHERE id = :i"), {"i": first}).scalar_one()
    assert key == reader_key(*READER)


def test_register_dataset_is_idempotent_and_shares_samples(store: Store) -> None:
    samples = _samples(5)
    first = store.register_dataset("seed", "data/seed.jsonl", samples)
    assert store.register_dataset("seed", "data/seed.jsonl", samples) == first
    assert store.register_dataset("renamed", "elsewhere.jsonl", samples) == first  # same content
    assert _count(store, "datasets") == 1
    assert _count(store, "samples") == 5

    # overlapping dataset, with one sample repeated: shares rows, keeps order and repeats
    overlap = _samples(3, start=4) + [samples[0]]
    second = store.register_dataset("more", "more.jsonl", overlap)
    assert second != first
    assert _count(store, "samples") == 7
    assert store.dataset_samples(second) == overlap
    assert store.dataset_samples(first) == samples

    with store.engine.connect() as conn:
        row = conn.execute(
            text("SELECT n_samples, content_hash FROM datasets WHERE id = :i"), {"i": second}
        ).one()
    assert tuple(row) == (4, dataset_hash(h for h, _ in overlap))
    with pytest.raises(StoreError, match="no dataset"):
        store.dataset_samples(10_000)


# --------------------------------------------------------------------------- feature hits


def test_features_round_trip(store: Store) -> None:
    samples = _samples(4)
    store.register_dataset("seed", "seed.jsonl", samples)
    reader_id = store.reader(*READER)
    items = [_features(samples[0][0], 0), _features(samples[1][0], 1, d_model=None), _features(samples[2][0], 2)]
    items.append(
        SampleFeatures(samples[3][0], 0, np.zeros(0, np.int32), np.zeros(0, np.float32), None)
    )  # a sample that fires nothing
    store.save_features(reader_id, items)

    got = store.stored_features(reader_id, [h for h, _ in samples] + [_hash(999)])
    assert set(got) == {h for h, _ in samples}
    for item in items:
        back = got[item.sample_hash]
        assert back.n_tokens == item.n_tokens
        assert back.feature_ids.dtype == np.int32
        np.testing.assert_array_equal(back.feature_ids, item.feature_ids)
        np.testing.assert_allclose(back.max_acts, item.max_acts, rtol=1e-7)  # float32: exact
        if item.pooled is None:
            assert back.pooled is None
        else:
            assert back.pooled is not None and back.pooled.shape == item.pooled.shape
            np.testing.assert_allclose(back.pooled, item.pooled, rtol=1e-3, atol=1e-3)  # float16
    np.testing.assert_array_equal(got[samples[0][0]].active(5.0), items[0].active(5.0))

    other_reader = store.reader(*READER[:6], "raw")
    assert store.stored_features(other_reader, [h for h, _ in samples]) == {}


def test_stored_features_reads_more_hashes_than_one_in_clause(store: Store) -> None:
    samples = _samples(1203)
    store.register_dataset("big", "big.jsonl", samples)
    reader_id = store.reader(*READER)
    store.save_features(reader_id, [_features(h, i, d_model=None) for i, (h, _) in enumerate(samples)])
    got = store.stored_features(reader_id, (h for h, _ in samples))
    assert len(got) == 1203
    np.testing.assert_array_equal(got[samples[1202][0]].feature_ids, _features(samples[1202][0], 1202).feature_ids)


def test_save_features_twice_keeps_one_row_each(store: Store) -> None:
    samples = _samples(3)
    store.register_dataset("seed", "seed.jsonl", samples)
    reader_id = store.reader(*READER)
    first = [_features(h, i) for i, (h, _) in enumerate(samples)]
    store.save_features(reader_id, first)
    store.save_features(reader_id, first)  # a re-run
    store.save_features(reader_id, [_features(samples[0][0], 99)] * 2)  # a different reading, twice
    assert _count(store, "sample_features") == 3
    kept = store.stored_features(reader_id, [samples[0][0]])[samples[0][0]]
    np.testing.assert_array_equal(kept.feature_ids, first[0].feature_ids)


def test_concurrent_writers_do_not_collide(store: Store) -> None:
    samples = _samples(200)
    store.register_dataset("seed", "seed.jsonl", samples)
    reader_id = store.reader(*READER)
    items = [_features(h, i, d_model=8) for i, (h, _) in enumerate(samples)]
    errors: list[BaseException] = []

    def write(part: list[SampleFeatures]) -> None:
        try:
            for start in range(0, len(part), 20):
                store.save_features(reader_id, part[start : start + 20])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(items[k::2] + items[: 100],)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _count(store, "sample_features") == 200


def test_save_features_requires_registered_samples(store: Store) -> None:
    store.register_dataset("seed", "seed.jsonl", _samples(1))
    reader_id = store.reader(*READER)
    with pytest.raises(StoreError, match="not registered"):
        store.save_features(reader_id, [_features(_hash(0), 0), _features(_hash(77), 1)])
    assert _count(store, "sample_features") == 0  # nothing half-saved


def test_save_features_checks_reader_and_shapes(store: Store) -> None:
    store.register_dataset("seed", "seed.jsonl", _samples(1))
    with pytest.raises(IntegrityError):
        store.save_features(12345, [_features(_hash(0), 0)])
    bad = SampleFeatures(_hash(0), 3, np.array([1, 2], np.int32), np.array([1.0], np.float32))
    with pytest.raises(ValueError, match="differ in shape"):
        store.save_features(store.reader(*READER), [bad])


# --------------------------------------------------------------------------- LLM calls and cache


def test_llm_cache_get_put(store: Store) -> None:
    key = "a" * 64
    assert store.llm_cache_get(key) is None
    store.llm_cache_put(key, "gpt-test", '{"answer": "Yes"}')
    store.llm_cache_put(key, "gpt-test", '{"answer": "No"}')  # first one stays
    assert store.llm_cache_get(key) == '{"answer": "Yes"}'
    assert store.llm_cache_get("b" * 64) is None


def test_llm_totals_by_run_and_outcome(store: Store) -> None:
    calls: list[tuple[str | None, Outcome, int, int, float]] = [
        ("run-1", "ok", 100, 20, 1.5),
        ("run-1", "parse_error", 80, 10, 0.5),
        ("run-1", "cached", 0, 0, 0.0),
        ("run-2", "error", 50, 0, 2.0),
        (None, "ok", 10, 1, 0.25),
    ]
    ids = [
        store.record_llm_call(
            purpose="explain", model="m", prompt_hash=_hash(i), tokens_in=t_in, tokens_out=t_out,
            latency_s=lat, outcome=outcome, run_id=run,
        )
        for i, (run, outcome, t_in, t_out, lat) in enumerate(calls)
    ]
    assert len(set(ids)) == 5
    run1 = store.llm_totals("run-1")
    assert run1["calls"] == 3
    assert run1["by_outcome"] == {"ok": 1, "error": 0, "parse_error": 1, "cached": 1}
    assert (run1["tokens_in"], run1["tokens_out"]) == (180, 30)
    assert run1["latency_s"] == pytest.approx(2.0)
    everything = store.llm_totals()
    assert everything["calls"] == 5 and everything["tokens_in"] == 240
    assert everything["latency_s"] == pytest.approx(4.25)
    assert store.llm_totals("nope") == {
        "calls": 0, "by_outcome": dict.fromkeys(OUTCOMES, 0), "tokens_in": 0, "tokens_out": 0, "latency_s": 0.0,
    }
    with pytest.raises(ValueError, match="outcome"):
        store.record_llm_call(
            purpose="explain", model="m", prompt_hash="x", tokens_in=0, tokens_out=0, latency_s=0.0,
            outcome="fine",  # type: ignore[arg-type]
        )


def test_record_llm_call_redacts_secrets(store: Store) -> None:
    key = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8t"
    error = (
        f"Error code: 401 - Incorrect API key provided: {key}. "
        "headers={'Authorization': 'Bearer abcdefghijklmnop1234'} "
        "url=https://user:pa55word@api.example.com/v1 api_key=plainsecret123"
    )
    call_id = store.record_llm_call(
        purpose="judge", model="gpt-x", prompt_hash="h", tokens_in=1, tokens_out=0, latency_s=0.1,
        outcome="error", error=error,
    )
    with store.engine.connect() as conn:
        stored = conn.execute(select(LLMCall.error).where(LLMCall.id == call_id)).scalar_one()
    for secret in (key, "Ab3dEf6hIj9k", "abcdefghijklmnop1234", "pa55word", "plainsecret123"):
        assert secret not in stored
    assert "Error code: 401 - Incorrect API key provided: sk-***" in stored
    assert "api.example.com" in stored


def test_redact_secrets_leaves_ordinary_text_alone() -> None:
    text_ = "the model said: ask-me later; tokens_in=12, outcome=parse_error"
    assert redact_secrets(text_) == text_


def test_outcome_literal_matches_allowed_values() -> None:
    assert set(get_args(Outcome)) == set(OUTCOMES)
    row = {
        "created_at": datetime.now(timezone.utc),
        "purpose": "p",
        "model": "m",
        "prompt_hash": "h",
        "tokens_in": 0,
        "tokens_out": 0,
        "latency_s": 0.0,
        "outcome": "fine",
    }
    # the database refuses other values too (CHECK constraint)
    with Store("sqlite://").engine.begin() as conn, pytest.raises(IntegrityError, match="CHECK"):
        conn.execute(LLMCall.__table__.insert(), row)


def test_sample_feature_blobs_are_little_endian_int32_float32_float16(store: Store) -> None:
    store.register_dataset("seed", "seed.jsonl", _samples(1))
    reader_id = store.reader(*READER)
    item = SampleFeatures(
        _hash(0), 2, np.array([3, 70000], np.int64), np.array([0.5, 2.25]), np.array([1.0, -2.0, 1e6])
    )
    store.save_features(reader_id, [item])
    with store.engine.connect() as conn:
        row = conn.execute(select(SampleFeatureRow)).one()
    assert bytes(row.feature_ids) == np.array([3, 70000], "<i4").tobytes()
    assert bytes(row.max_acts) == np.array([0.5, 2.25], "<f4").tobytes()
    assert bytes(row.pooled) == np.array([1.0, -2.0, 65504.0], "<f2").tobytes()  # clipped to float16 max
    assert _count(store, "sample_features") == 1
