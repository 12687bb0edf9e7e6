"""Reading on Ray (a local instance, 2 CPUs) against the single-process read: the same rows, the same FAC.

Model and SAE numerics are real (the default model and the shipped SAE) and nothing
is compared with a tolerance: a sample's numbers depend on its batch, so a Ray path
that batched differently from the single-process one (or ran another number of torch
threads) would show here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from store_rows import TABLES, dump

from facsynth.paths import shipped
from facsynth.tools.datasets import Dataset, load_dataset
from facsynth.tools.measure import measure
from facsynth.tools.reader import Reader
from facsynth.tools.spans import SpanConfig, collect_spans

ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]' (the test extra brings it too)")

from facsynth.tools.ray_read import RayError, ray_reading, ray_session  # noqa: E402


def same_readings(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x.sample_hash == y.sample_hash and ra == rb and x.n_tokens == y.n_tokens
        and np.array_equal(x.feature_ids, y.feature_ids) and np.array_equal(x.max_acts, y.max_acts)
        and np.array_equal(x.pooled, y.pooled)
        for (x, ra), (y, rb) in zip(a, b)
    )


def session(reader: Reader, data: Dataset, anchor: Dataset, corpus: Dataset) -> dict:
    """One user's session: part of the data, then all of it (some stored, duplicates), FAC, span collection."""
    part = Dataset(data.name, data.source, data.samples[:8])
    first = list(reader.read(part, chunk=3))
    second = list(reader.read(data, chunk=6))  # chunks mix stored, new and repeated samples
    report = measure(data, anchor=anchor, deltas=[0.0, 1.0, 2.0], reader=reader)
    spans = collect_spans(reader, corpus, SpanConfig(top_n=3, held_out=1, n_random=4))
    return {"first": first, "second": second, "report": report, "spans": spans}


@pytest.mark.slow
def test_ray_reading_gives_the_single_process_rows_fac_and_spans(tmp_path, subject, default_sae, demo_data) -> None:
    seed, anchor_file = demo_data
    seed_ds = load_dataset(seed)
    anchor = load_dataset(anchor_file)
    # repeats of samples first read in earlier chunks, and a new sample twice in one chunk
    data = Dataset("seed", str(seed), seed_ds.samples + seed_ds.samples[10:15] + anchor.samples[:1] * 2)
    corpus = load_dataset(shipped("sms_spam") / "seed.jsonl", limit=24)

    single = Reader(subject, default_sae, store=f"sqlite:///{tmp_path / 'single.db'}")
    want = session(single, data, anchor, corpus)

    rayed = Reader(subject, default_sae, store=f"sqlite:///{tmp_path / 'ray.db'}")
    assert not ray.is_initialized()
    with ray_reading(rayed, num_cpus=2) as pool:
        assert ray.is_initialized() and rayed.pool is pool
        assert pool.layout() == (2 // torch.get_num_threads(), torch.get_num_threads(), 0)  # the driver's threads
        got = session(rayed, data, anchor, corpus)
    assert not ray.is_initialized(), "the local Ray instance we started must be shut down"
    assert rayed.pool is None

    assert same_readings(got["first"], want["first"]) and same_readings(got["second"], want["second"])
    assert [r for _, r in got["second"]].count(True) == 8 + 5  # the stored part, then the repeats
    w, g = want["report"], got["report"]
    assert g.coverage == w.coverage and g.data == w.data and g.anchor == w.anchor and g.diversity == w.diversity
    assert g.anchor.encoded == 47  # read on Ray: all of the anchor but the sample already read with the data
    assert got["spans"].n_spans == want["spans"].n_spans > 0
    assert got["spans"].encoded == want["spans"].encoded == 24
    rows_single, rows_ray = dump(single.store.engine), dump(rayed.store.engine)
    assert all(rows_single[t] for t in TABLES)
    assert rows_ray == rows_single


def test_a_ray_already_running_is_left_running() -> None:
    with ray_session(num_cpus=1):
        with ray_session("auto") as again:  # joins the running one, whatever the address
            assert again.is_initialized()
        assert ray.is_initialized()
    assert not ray.is_initialized()


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_an_unreachable_cluster_fails_in_seconds_with_one_line(address: str, unused_port: int) -> None:
    where = address.format(port=unused_port)
    with pytest.raises(RayError, match=rf"^cannot reach the Ray cluster at {where}: ") as err:
        with ray_session(where):
            pass
    assert "\n" not in str(err.value)
    assert not ray.is_initialized()


def test_an_address_that_is_not_one_is_named() -> None:
    with pytest.raises(RayError, match="'seed.jsonl' is not HOST:PORT, ray://HOST:PORT, auto or local"):
        with ray_session("seed.jsonl"):
            pass


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
