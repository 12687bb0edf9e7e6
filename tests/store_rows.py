"""The stored rows a reading leaves, as plain tuples: for comparing two stores filled the same way."""

from __future__ import annotations

from sqlalchemy import Engine, text

TABLES = {
    # table: the columns compared (ids included: two stores given the same writes in the same order agree)
    "samples": "id, sample_hash",
    "sample_features": "reader_id, sample_id, n_tokens, feature_ids, max_acts, pooled",
    "span_collections": 'reader_id, dataset_id, top_n, "window", held_out, n_random, delta, n_samples, n_features',
    "feature_stats": "reader_id, dataset_id, feature_id, n_samples, active_count, frequency, max_act, quantiles",
    "feature_spans": 'reader_id, dataset_id, feature_id, kind, "rank", sample_id, activation, peak_token, tokens, acts, text',
}


def dump(engine: Engine) -> dict[str, list[tuple]]:
    """Every row of :data:`TABLES`, sorted, timestamps left out."""
    with engine.connect() as conn:
        return {t: [tuple(r) for r in conn.execute(text(f"SELECT {cols} FROM {t} ORDER BY {cols}"))] for t, cols in TABLES.items()}
