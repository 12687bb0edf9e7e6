"""Exporting a run's accepted samples with their provenance: JSONL, Parquet, HF dataset.

Each record holds the sample as chat ``messages`` and as an Alpaca-style
``instruction`` / ``input`` / ``output`` triple, its ``label`` where the task has one,
and ``provenance``: the run, the target feature and its explanation, the activation the
verifier measured, the other missing features it covered, step, attempt, generator
model and prompt id (the LLM request key). With ``with_seed`` the seed's samples come
first, marked ``source: seed``. Files are written to a temporary name and renamed, so
a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from facsynth.db.catalog import Catalog
from facsynth.db.runs import Runs
from facsynth.db.store import Store
from facsynth.errors import InputError
from facsynth.tools.datasets import Sample, sample_from_row

ExportFormat = Literal["jsonl", "parquet", "hf"]
FORMATS = ("jsonl", "parquet", "hf")


def _alpaca(sample: Sample) -> dict[str, str]:
    msgs = sample.as_messages
    users = [m.content for m in msgs if m.role == "user"]
    answers = [m.content for m in msgs if m.role == "assistant"]
    return {"instruction": users[0] if users else sample.plain_text, "input": "\n".join(users[1:]),
            "output": answers[-1] if answers else ""}


def records(store: Store, run_name: str, *, with_seed: bool = False) -> list[dict[str, Any]]:
    runs = Runs(store)
    run = runs.get(run_name)
    exps = Catalog(store).explanations(run.reader_id)
    out: list[dict[str, Any]] = []
    if with_seed:
        seed_id = run.config.get("setup", {}).get("seed_dataset_id")
        for _, payload in store.dataset_samples(int(seed_id)) if seed_id is not None else []:
            s = sample_from_row(payload)
            out.append({"messages": [m.to_dict() for m in s.as_messages], **_alpaca(s),
                        "label": s.meta.get("label"), "source": "seed", "provenance": None})
    guided = run.strategy != "unguided"  # an unguided sample's feature is only the call slot it was written in
    for acc in runs.samples(run.id):
        c = acc.candidate
        s = Sample(**c.payload)
        exp = exps.get(c.feature) if guided else None
        out.append({
            "messages": [m.to_dict() for m in s.as_messages],
            **_alpaca(s),
            "label": c.label,
            "source": "synthetic",
            "provenance": {
                "run": run.name, "sample_id": acc.id, "target_feature": c.feature if guided else None,
                "explanation": None if exp is None else exp.text, "activation": round(acc.activation, 4),
                "covered_features": acc.covered, "step": c.step, "attempt": c.attempt, "role": c.role,
                "model": c.model, "prompt_id": c.prompt_hash, "created_at": acc.created_at.isoformat(),
            },
        })
    return out


def _flat(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for columnar formats: provenance as a JSON string (its keys differ from seed rows)."""
    return [{**r, "provenance": json.dumps(r["provenance"]) if r["provenance"] else None} for r in rows]


def export_run(store: Store, run_name: str, out: str | Path, fmt: ExportFormat = "jsonl", *, with_seed: bool = False) -> int:
    """Write the run's samples to ``out``; the number of records written."""
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    rows = records(store, run_name, with_seed=with_seed)
    if not rows:
        raise InputError(f"run {run_name!r} has no accepted samples to export")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "hf":
        try:
            import datasets
        except ImportError as exc:
            raise InputError("--format hf needs `pip install 'facsynth[export]'` (datasets)") from exc
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
        try:
            datasets.Dataset.from_list(_flat(rows)).save_to_disk(str(tmp / "ds"))
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            os.replace(tmp / "ds", out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return len(rows)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    os.close(fd)
    try:
        if fmt == "jsonl":
            with open(tmp_name, "w", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError as exc:
                raise InputError("--format parquet needs `pip install 'facsynth[export]'` (pyarrow)") from exc
            pq.write_table(pa.Table.from_pylist(_flat(rows)), tmp_name)
        os.replace(tmp_name, out)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return len(rows)
