"""User datasets: the seed and anchor corpora that ``facsynth measure`` reads.

A dataset is named by a path (or an ``hf:`` spec) and read into :class:`Sample`
records, each holding either a plain prompt (``text``) or a chat (``messages``),
plus whatever other fields the row had (``meta``).

Accepted inputs (the format follows the file name; ``.gz`` is decompressed first):

* ``.jsonl`` / ``.ndjson``: one JSON object a line;
* ``.json``: a list of such objects (a ``.json`` file that is really JSONL is read
  as JSONL);
* ``.csv`` / ``.tsv``: a header row with a ``text``, ``prompt`` or ``instruction``
  column; the other columns become meta (as strings);
* any other file: plain UTF-8 text, one sample a line, blank lines skipped;
* a directory written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict``: its
  ``train`` split, or its only split);
* ``hf:<name>[:<split>]``: ``datasets.load_dataset(name, split=split)`` (online).

A row (a JSON object, a CSV row, a Hugging Face row) becomes a sample by the first
rule that applies:

1. ``messages``: a list of ``{"role", "content"}`` objects (roles system, user,
   assistant, tool);
2. ``text``: a plain prompt;
3. ``instruction`` (Alpaca): messages ``user = instruction + "\\n\\n" + input`` (the
   input only when non-empty), then ``assistant = output`` when non-empty;
4. ``prompt``: messages ``user = prompt``, then ``assistant = response`` (or
   ``completion``) when non-empty.

The remaining keys are kept as ``meta``; keys whose value is null are dropped (a
Hugging Face dataset fills absent columns with None). A sample's hash covers its
text or messages only, never meta, so relabelling a row does not change its
identity in the activation cache.

Bad input raises :class:`~facsynth.errors.InputError` with one line that names the
file and, for a bad row, where it is (``line N`` for line-based files, ``index N``
for JSON lists and Hugging Face rows, 0-based).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import sys
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from facsynth.errors import InputError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")
"""Chat roles a message may have."""
ROW_KEYS = ("messages", "text", "instruction", "prompt")
"""Keys that make a row a sample, in the order they are tried."""
CSV_COLUMNS = ("text", "prompt", "instruction")
"""CSV/TSV columns that make a row a sample, in the order they are tried."""
HF_PREFIX = "hf:"

_UTF8_BOM = b"\xef\xbb\xbf"
_CSV_FIELD_LIMIT = 1 << 28
_MAX_LISTED = 12


@dataclass(frozen=True)
class Message:
    """One chat message; also readable as the mapping ``{"role", "content"}``."""

    role: str
    """One of :data:`ROLES`."""
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r} (allowed: {', '.join(ROLES)})")
        if not isinstance(self.content, str):
            raise TypeError(f"message content must be a str, got {type(self.content).__name__}")

    def to_dict(self) -> dict[str, str]:
        """``{"role": ..., "content": ...}``."""
        return {"role": self.role, "content": self.content}

    def keys(self) -> tuple[str, str]:
        """``("role", "content")``: with ``__getitem__``, ``dict(message)`` gives :meth:`to_dict`."""
        return ("role", "content")

    def __getitem__(self, key: str) -> str:
        """``message["role"]`` / ``message["content"]``, as chat templates read messages."""
        if key == "role":
            return self.role
        if key == "content":
            return self.content
        raise KeyError(key)


@dataclass(frozen=True)
class Sample:
    """One data sample: a plain prompt or a chat, plus the row's other fields.

    Exactly one of ``text`` and ``messages`` is set. Equality compares all three
    fields; ``hash()`` and :attr:`sample_hash` ignore ``meta``.
    """

    text: str | None = None
    """A plain prompt (read as one user turn)."""
    messages: tuple[Message, ...] | None = None
    """A chat; lists and ``{"role", "content"}`` dicts are converted on construction."""
    meta: dict[str, Any] = field(default_factory=dict, hash=False)
    """The row's other fields (topic, label, ...)."""

    def __post_init__(self) -> None:
        if (self.text is None) == (self.messages is None):
            raise ValueError("a Sample holds exactly one of text and messages")
        if self.text is not None and not isinstance(self.text, str):
            raise TypeError(f"text must be a str, got {type(self.text).__name__}")
        if self.messages is not None:
            msgs = tuple(m if isinstance(m, Message) else Message(**m) for m in self.messages)
            if not msgs:
                raise ValueError("messages is empty")
            object.__setattr__(self, "messages", msgs)
        object.__setattr__(self, "meta", dict(self.meta))

    @property
    def payload(self) -> dict[str, Any]:
        """The content as JSON: ``{"text": ...}`` or ``{"messages": [{"role", "content"}, ...]}``."""
        if self.text is not None:
            return {"text": self.text}
        assert self.messages is not None
        return {"messages": [m.to_dict() for m in self.messages]}

    @cached_property
    def sample_hash(self) -> str:
        """sha256 hex of the canonical JSON of :attr:`payload` (meta excluded)."""
        canonical = json.dumps(self.payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @property
    def as_messages(self) -> tuple[Message, ...]:
        """The sample as a chat: a text sample is one user message."""
        if self.messages is not None:
            return self.messages
        assert self.text is not None
        return (Message("user", self.text),)

    @property
    def plain_text(self) -> str:
        """The text, or the messages' contents joined with newlines."""
        if self.text is not None:
            return self.text
        assert self.messages is not None
        return "\n".join(m.content for m in self.messages)


@dataclass
class Dataset:
    """Samples read from one source, in source order (duplicates kept)."""

    name: str
    """Short name: the file stem (``seed`` for ``seed.jsonl.gz``) or the directory name."""
    source: str
    """The path or ``hf:`` spec it was read from."""
    samples: list[Sample]

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    @property
    def content_hash(self) -> str:
        """sha256 hex over the samples' hashes in order: identifies the dataset's content."""
        h = hashlib.sha256()
        for sample in self.samples:
            h.update(sample.sample_hash.encode("ascii"))
            h.update(b"\n")
        return h.hexdigest()

    @property
    def n_unique(self) -> int:
        """Number of distinct samples (by :attr:`Sample.sample_hash`)."""
        return len({s.sample_hash for s in self.samples})


def load_dataset(path: str | Path, *, limit: int | None = None) -> Dataset:
    """Read a whole dataset (the first ``limit`` samples when given).

    Raises :class:`InputError` for anything wrong with the input, including a source
    that holds no samples.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of samples, got {limit}")
    source = str(path)
    samples: list[Sample] = []
    for sample in iter_samples(path):
        samples.append(sample)
        if limit is not None and len(samples) >= limit:
            break
    log.info("read %d samples from %s", len(samples), source)
    return Dataset(name=dataset_name(path), source=source, samples=samples)


def iter_samples(path: str | Path) -> Iterator[Sample]:
    """Stream the samples of a dataset, in order.

    JSONL, CSV/TSV and text files are read line by line and Hugging Face datasets
    row by row; a ``.json`` list is parsed whole. A missing path or a directory that
    is not a saved dataset raises here; problems with the content raise while
    iterating, and a source that holds no samples raises at the end.
    """
    source = str(path)
    if isinstance(path, str) and path.startswith(HF_PREFIX) and not Path(path).exists():
        rows = _iter_hub(path)
    else:
        p = Path(path)
        if p.is_dir():
            _check_saved_dataset_dir(p)
            rows = _iter_saved_dir(p)
        elif not p.exists():
            raise _error(f"{source}: no such file or directory")
        elif not p.is_file():
            raise _error(f"{source} is not a regular file")
        else:
            rows = _FILE_READERS[_file_format(p)](p)
    return _nonempty(rows, source)


def dataset_name(path: str | Path) -> str:
    """The short name a dataset gets: file stem without ``.gz``, directory name, or hub name."""
    text = str(path)
    if isinstance(path, str) and text.startswith(HF_PREFIX) and not Path(text).exists():
        name = text[len(HF_PREFIX) :].partition(":")[0]
        return name.rstrip("/").rsplit("/", 1)[-1] or name
    p = Path(path)
    if p.is_dir():
        return p.resolve().name
    name = p.name[:-3] if p.name.lower().endswith(".gz") else p.name
    return Path(name).stem or name


def sample_from_row(row: Mapping[str, Any], *, where: str = "row") -> Sample:
    """Interpret one row (a JSON object) by the rules in the module docstring.

    ``where`` prefixes the :class:`InputError` message (e.g. ``"out.jsonl: line 3"``).
    """
    try:
        return _row_to_sample(row, allow_messages=True)
    except _BadRow as e:
        raise _error(f"{where}: {e}") from None


# --- rows -------------------------------------------------------------------------


class _BadRow(ValueError):
    """A row that cannot become a sample; the caller adds the location."""


def _row_to_sample(row: Mapping[str, Any], *, allow_messages: bool) -> Sample:
    if not isinstance(row, Mapping):
        raise _BadRow(f"expected an object with one of {', '.join(ROW_KEYS)}, got {_kind(row)}")
    present = {k for k, v in row.items() if v is not None}
    used: tuple[str, ...]
    if allow_messages and "messages" in present:
        if "text" in present:
            raise _BadRow("has both text and messages; keep one")
        sample_text, messages = None, _parse_messages(row["messages"])
        used = ("messages",)
    elif "text" in present:
        sample_text, messages = _nonempty_str(row["text"], "text"), None
        used = ("text",)
    elif "instruction" in present:
        user = _nonempty_str(row["instruction"], "instruction")
        extra = _optional_str(row, "input")
        if extra:
            user = f"{user}\n\n{extra}"
        messages = _turns(user, _optional_str(row, "output"))
        sample_text, used = None, ("instruction", "input", "output")
    elif "prompt" in present:
        answer_key = "response" if "response" in present else "completion"
        messages = _turns(_nonempty_str(row["prompt"], "prompt"), _optional_str(row, answer_key))
        sample_text, used = None, ("prompt", answer_key)
    else:
        keys = ROW_KEYS if allow_messages else CSV_COLUMNS
        keys_set = [_shorten(str(k)) for k, v in row.items() if v is not None]
        found = ", ".join(keys_set[:_MAX_LISTED]) or "none"
        raise _BadRow(f"no sample: needs one of the keys {', '.join(keys)} (found: {found})")
    meta = {k: v for k, v in row.items() if k not in used and v is not None}
    return Sample(text=sample_text, messages=messages, meta=meta)


def _turns(user: str, assistant: str | None) -> tuple[Message, ...]:
    if assistant:
        return (Message("user", user), Message("assistant", assistant))
    return (Message("user", user),)


def _parse_messages(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, (list, tuple)):
        raise _BadRow(f"messages must be a list of {{role, content}} objects, got {_kind(value)}")
    if not value:
        raise _BadRow("messages is an empty list")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, Mapping) or "role" not in msg or "content" not in msg:
            raise _BadRow(f"messages[{i}] must be an object with role and content, got {_kind(msg)}")
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise _BadRow(
                f"messages[{i}] has unknown role {_shorten(repr(role))} (allowed: {', '.join(ROLES)})"
            )
        if not isinstance(content, str):
            raise _BadRow(f"messages[{i}] content must be a string, got {_kind(content)}")
        out.append(Message(role, content))
    if not any(m.content.strip() for m in out):
        raise _BadRow("empty messages: every content is blank")
    return tuple(out)


def _nonempty_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise _BadRow(f"{key} must be a string, got {_kind(value)}")
    if not value.strip():
        raise _BadRow(f"empty {key}")
    return value


def _optional_str(row: Mapping[str, Any], key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _BadRow(f"{key} must be a string, got {_kind(value)}")
    return value if value.strip() else None


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", type(None): "null", bool: "a boolean"}
    for cls, name in names.items():
        if isinstance(value, cls):
            return name
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__


def _shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _error(message: str) -> InputError:
    """An InputError whose message is guaranteed to be one line."""
    return InputError(" ".join(message.splitlines()))


# --- files ------------------------------------------------------------------------


def _file_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    suffix = Path(name).suffix
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}.get(
        suffix, "text"
    )


def _open_binary(path: Path) -> Any:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return path.open("rb")


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line with its line ending), streaming."""
    offset = 0
    try:
        with _open_binary(path) as f:
            for number, raw in enumerate(f, 1):
                if number == 1 and raw.startswith(_UTF8_BOM):
                    raw = raw[len(_UTF8_BOM) :]
                    offset += len(_UTF8_BOM)
                yield number, _decode(raw, path, offset)
                offset += len(raw)
    except (EOFError, zlib.error) as e:
        raise _error(f"{path}: damaged gzip data ({e})") from None
    except gzip.BadGzipFile as e:
        raise _error(f"{path}: not a gzip file ({e})") from None
    except OSError as e:
        raise _error(f"{path}: cannot read ({e.strerror or e})") from None


def _read_all(path: Path) -> str:
    try:
        with _open_binary(path) as f:
            data = f.read()
    except (EOFError, zlib.error) as e:
        raise _error(f"{path}: damaged gzip data ({e})") from None
    except gzip.BadGzipFile as e:
        raise _error(f"{path}: not a gzip file ({e})") from None
    except OSError as e:
        raise _error(f"{path}: cannot read ({e.strerror or e})") from None
    offset = 0
    if data.startswith(_UTF8_BOM):
        data, offset = data[len(_UTF8_BOM) :], len(_UTF8_BOM)
    return _decode(data, path, offset)


def _decode(data: bytes, path: Path, offset: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _error(
            f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {offset + e.start})"
        ) from None


def _iter_jsonl(path: Path) -> Iterator[Sample]:
    yield from _parse_jsonl(path, _read_lines(path))


def _parse_jsonl(path: Path, lines: Iterable[tuple[int, str]]) -> Iterator[Sample]:
    for number, line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise _error(f"{path}: line {number}: malformed JSON ({e.msg} at column {e.colno})") from None
        try:
            yield _row_to_sample(row, allow_messages=True)
        except _BadRow as e:
            raise _error(f"{path}: line {number}: {e}") from None


def _iter_json(path: Path) -> Iterator[Sample]:
    text = _read_all(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            # One object a line in a file named .json: read it as JSONL.
            yield from _parse_jsonl(path, enumerate(text.splitlines(), 1))
            return
        raise _error(f"{path}: line {e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, list):
        raise _error(f"{path}: expected a JSON list of objects, got {_kind(data)}")
    for index, row in enumerate(data):
        try:
            yield _row_to_sample(row, allow_messages=True)
        except _BadRow as e:
            raise _error(f"{path}: index {index}: {e}") from None


def _iter_csv(path: Path, delimiter: str) -> Iterator[Sample]:
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(min(_CSV_FIELD_LIMIT, sys.maxsize))
    kind = "TSV" if delimiter == "\t" else "CSV"
    reader = csv.reader((line for _, line in _read_lines(path)), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        if not any(c in header for c in CSV_COLUMNS):
            found = ", ".join(_shorten(h) for h in header[:_MAX_LISTED])
            raise _error(
                f"{path}: no {', '.join(CSV_COLUMNS[:-1])} or {CSV_COLUMNS[-1]} column (columns found: {found})"
            )
        duplicates = sorted({h for h in header if header.count(h) > 1})
        if duplicates:
            raise _error(f"{path}: line 1: duplicate {kind} column(s) {', '.join(duplicates)}")
        start = reader.line_num + 1
        for cells in reader:
            where, start = f"line {start}", reader.line_num + 1
            if not cells:
                continue
            if len(cells) != len(header):
                raise _error(f"{path}: {where}: {len(cells)} fields, the header has {len(header)}")
            try:
                yield _row_to_sample(dict(zip(header, cells)), allow_messages=False)
            except _BadRow as e:
                raise _error(f"{path}: {where}: {e}") from None
    except csv.Error as e:
        raise _error(f"{path}: line {reader.line_num}: malformed {kind} ({e})") from None


def _iter_text(path: Path) -> Iterator[Sample]:
    for _, line in _read_lines(path):
        line = line.rstrip("\r\n")
        if line.strip():
            yield Sample(text=line)


_FILE_READERS = {
    "jsonl": _iter_jsonl,
    "json": _iter_json,
    "csv": lambda p: _iter_csv(p, ","),
    "tsv": lambda p: _iter_csv(p, "\t"),
    "text": _iter_text,
}


def _nonempty(samples: Iterator[Sample], source: str) -> Iterator[Sample]:
    count = 0
    for sample in samples:
        count += 1
        yield sample
    if count == 0:
        raise _error(f"{source} holds no samples")


# --- Hugging Face datasets ----------------------------------------------------------


def _import_datasets(source: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise _error(
            f"{source}: reading Hugging Face datasets needs the datasets package (pip install datasets)"
        ) from None
    return datasets


def _check_saved_dataset_dir(path: Path) -> None:
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise _error(
            f"{path} is a directory but not a saved Hugging Face dataset "
            "(no state.json or dataset_dict.json); give a data file or a save_to_disk directory"
        )


def _iter_saved_dir(path: Path) -> Iterator[Sample]:
    hf = _import_datasets(str(path))
    try:
        loaded = hf.load_from_disk(str(path))
    except (OSError, ValueError) as e:
        raise _error(f"{path}: cannot load the saved dataset ({e})") from None
    chosen = _pick_split(hf, loaded, str(path), hint=f"pass one split's directory, e.g. {path}/" + "{split}")
    yield from _iter_hf_rows(chosen, str(path))


def _iter_hub(spec: str) -> Iterator[Sample]:
    name, _, split = spec[len(HF_PREFIX) :].partition(":")
    if not name:
        raise _error(f"{spec}: expected hf:<name>[:<split>]")
    hf = _import_datasets(spec)
    try:
        loaded = hf.load_dataset(name, split=split or None)
    except (OSError, ValueError) as e:
        raise _error(f"{spec}: cannot load the dataset ({e})") from None
    chosen = _pick_split(hf, loaded, spec, hint=f"name one, e.g. hf:{name}:" + "{split}")
    yield from _iter_hf_rows(chosen, spec)


def _pick_split(hf: Any, loaded: Any, source: str, *, hint: str) -> Any:
    """A Dataset as is; a DatasetDict's train split or its only split.

    ``hint`` ends the error for several splits; ``{split}`` in it becomes the first one.
    """
    if not isinstance(loaded, (hf.DatasetDict, hf.IterableDatasetDict)):
        return loaded
    if "train" in loaded:
        return loaded["train"]
    if len(loaded) == 1:
        return next(iter(loaded.values()))
    if not loaded:
        raise _error(f"{source} holds no samples")
    splits = list(loaded)
    advice = hint.replace("{split}", splits[0])
    raise _error(f"{source} holds splits {', '.join(splits)} and no train split; {advice}")


def _iter_hf_rows(rows: Iterable[Mapping[str, Any]], source: str) -> Iterator[Sample]:
    for index, row in enumerate(rows):
        try:
            yield _row_to_sample(row, allow_messages=True)
        except _BadRow as e:
            raise _error(f"{source}: index {index}: {e}") from None
