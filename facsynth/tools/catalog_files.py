"""The catalog in files: the authors' TSV and facsynth's JSON.

* **TSV** (the authors' columns): ``FeatureID``, ``Summary`` (the explanation) and
  ``Words`` (the feature's peak tokens on its top spans, joined with ``", "``). Export
  writes the explained features (all, or a given set such as a task's relevant one,
  ``Cannot tell`` left out); import stores each row as an explanation whose explainer is
  ``import:<file name>`` and, given a task, marks the features relevant to it with method
  ``import``. ``facsynth measure --features FILE.tsv`` reads the same file.
* **JSON** (``"format": "facsynth-catalog"``): the reader's identity, the tasks, and per
  feature its explanation with scores, its relevance rows (every method), and
  optionally its stats and top spans. Import restores tasks, explanations and relevance
  under the same reader identity; stats and spans belong to a corpus and are left out
  (collect them again with ``facsynth features collect``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from facsynth.db.catalog import Catalog, Explanation, Relevance, TaskRecord
from facsynth.errors import InputError

FORMAT = "facsynth-catalog"
VERSION = 1
TSV_COLUMNS = ("FeatureID", "Summary", "Words")
WORDS_SEP = ", "


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _one_line(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


# --------------------------------------------------------------------------- TSV


def export_tsv(catalog: Catalog, reader_id: int, path: str | Path, features: list[int] | None = None) -> int:
    """Write the authors' TSV; return the number of rows."""
    rows = [e for e in catalog.explanations(reader_id, features).values() if not e.cannot_tell]
    buf = io.StringIO()
    writer = csv.writer(buf, dialect="excel-tab", lineterminator="\n")
    writer.writerow(TSV_COLUMNS)
    for e in rows:
        writer.writerow([e.feature, _one_line(e.text), WORDS_SEP.join(_one_line(w) for w in e.words or [])])
    _write_atomic(Path(path), buf.getvalue())
    return len(rows)


def import_tsv(catalog: Catalog, reader_id: int, path: str | Path, task: str | None = None) -> int:
    """Store the rows of an authors' TSV as explanations (and as ``import`` relevance to ``task``)."""
    path = Path(path)
    text = _read(path)
    reader = csv.DictReader(io.StringIO(text), dialect="excel-tab")
    header = reader.fieldnames or []
    missing = [c for c in TSV_COLUMNS[:2] if c not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(TSV_COLUMNS)}")
    explanations: list[Explanation] = []
    for line, row in enumerate(reader, start=2):
        try:
            feature = int(str(row["FeatureID"]).strip())
        except (TypeError, ValueError):
            raise InputError(f"{path}: line {line}: FeatureID {row['FeatureID']!r} is not an integer") from None
        summary = _one_line(row.get("Summary") or "")
        if not summary:
            raise InputError(f"{path}: line {line}: empty Summary for feature {feature}")
        words_cell = (row.get("Words") or "").strip()
        words = [w.strip() for w in words_cell.split(WORDS_SEP)] if words_cell else None
        explanations.append(Explanation(feature, summary, f"import:{path.name}", words=words))
    if not explanations:
        raise InputError(f"{path} holds no features")
    for e in explanations:
        catalog.save_explanation(reader_id, e)
    if task is not None:
        catalog.save_relevance(
            reader_id, [Relevance(e.feature, task, "import", "Yes", f"imported from {path.name}") for e in explanations]
        )
    return len(explanations)


def _read(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (byte at offset {exc.start})") from None


# --------------------------------------------------------------------------- JSON


def catalog_document(
    catalog: Catalog, reader_id: int, *, features: list[int] | None = None, task: str | None = None,
    spans: int = 0,
) -> dict[str, Any]:
    """The catalog of one reader as a JSON-ready dict (see the module doc)."""
    explanations = catalog.explanations(reader_id, features)
    relevance = catalog.relevance(reader_id, task, features)
    ids = sorted(set(explanations) | {r.feature for r in relevance})
    collections = catalog.collections(reader_id)
    stats = {c.dataset_name: catalog.stats(reader_id, c.dataset_id, ids) for c in collections}
    top = {c.dataset_name: catalog.spans(reader_id, c.dataset_id, ids) for c in collections} if spans else {}
    by_feature: dict[int, list[Relevance]] = {}
    for r in relevance:
        by_feature.setdefault(r.feature, []).append(r)
    out = []
    for f in ids:
        e = explanations.get(f)
        item: dict[str, Any] = {
            "id": f,
            "explanation": None if e is None else {
                "text": e.text, "words": e.words, "explainer_model": e.explainer_model,
                "check_label": e.check_label, "check_model": e.check_model,
                "detection_score": e.detection_score, "detection_n": e.detection_n,
                "detection_model": e.detection_model,
            },
            "relevance": [
                {"task": r.task, "method": r.method, "label": r.label, "analysis": r.analysis, "score": r.score,
                 "model": r.model}
                for r in by_feature.get(f, [])
            ],
        }
        item["stats"] = {
            name: {"n_samples": s[f].n_samples, "active_count": s[f].active_count, "frequency": s[f].frequency,
                   "max_act": s[f].max_act, "quantiles": s[f].quantiles}
            for name, s in stats.items() if f in s
        }
        if spans:
            item["spans"] = {
                name: [{"rank": s.rank, "activation": s.activation, "text": s.text} for s in found.get(f, [])[:spans]]
                for name, found in top.items() if found.get(f)
            }
        out.append(item)
    tasks = {r.task for r in relevance}
    return {
        "format": FORMAT,
        "version": VERSION,
        "reader": catalog.reader_identity(reader_id),
        "tasks": [
            {"name": t.name, "definition": t.definition, "criteria": t.criteria, "format": t.format, "source": t.source}
            for t in catalog.tasks() if t.name in tasks
        ],
        "features": out,
    }


def export_json(catalog: Catalog, reader_id: int, path: str | Path, **options: Any) -> int:
    """Write the JSON catalog; return the number of features in it."""
    doc = catalog_document(catalog, reader_id, **options)
    _write_atomic(Path(path), json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return len(doc["features"])


def import_json(catalog: Catalog, path: str | Path, reader_id: int | None = None) -> tuple[int, int]:
    """Restore tasks, explanations and relevance; return (reader id, features imported).

    The features go under the reader the file names (created if new) unless
    ``reader_id`` is given.
    """
    path = Path(path)
    try:
        doc = json.loads(_read(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{path} is not a facsynth catalog (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise InputError(f"{path}: catalog version {doc.get('version')} is not supported (this facsynth reads {VERSION})")
    try:
        if reader_id is None:
            reader_id = catalog.store.reader(**doc["reader"])
        for t in doc.get("tasks", []):
            catalog.save_task(TaskRecord(t["name"], t["definition"], t["criteria"], t.get("format"), t.get("source", str(path))))
        rows: list[Relevance] = []
        for item in doc["features"]:
            f = int(item["id"])
            e = item.get("explanation")
            if e is not None:
                catalog.save_explanation(reader_id, Explanation(
                    f, e["text"], e["explainer_model"], words=e.get("words"), check_label=e.get("check_label"),
                    check_model=e.get("check_model"), detection_score=e.get("detection_score"),
                    detection_n=e.get("detection_n"), detection_model=e.get("detection_model"),
                ))
            rows += [Relevance(f, r["task"], r["method"], r["label"], r["analysis"], r.get("score"), r.get("model"))
                     for r in item.get("relevance", [])]
        catalog.save_relevance(reader_id, rows)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: malformed catalog entry: {type(exc).__name__}: {exc}") from None
    return reader_id, len(doc["features"])
