"""Dataset loading: every format reads to the same samples, and bad input fails in one line.

Files are written into ``tmp_path``; Hugging Face datasets are real ``save_to_disk``
directories. Only ``datasets.load_dataset`` (the hub, remote) is faked.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from facsynth.errors import InputError
from facsynth.tools.datasets import (
    Dataset,
    Message,
    Sample,
    dataset_name,
    iter_samples,
    load_dataset,
    sample_from_row,
)

ROWS: list[dict[str, Any]] = [
    {"text": "How do I bake bread?", "topic": "cooking"},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hi,\nin two lines."},
            {"role": "assistant", "content": "Hi!"},
        ],
        "label": 1,
    },
    {"text": "Ünïcödé and emoji 🚀 stay intact"},
    {"text": "How do I bake bread?", "topic": "baking"},  # a duplicate of the first, other meta
]
EXPECTED = [
    Sample(text="How do I bake bread?", meta={"topic": "cooking"}),
    Sample(
        messages=(
            Message("system", "Be brief."),
            Message("user", "Say hi,\nin two lines."),
            Message("assistant", "Hi!"),
        ),
        meta={"label": 1},
    ),
    Sample(text="Ünïcödé and emoji 🚀 stay intact"),
    Sample(text="How do I bake bread?", meta={"topic": "baking"}),
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def error_of(path: str | Path, **kwargs: Any) -> str:
    """The InputError message of loading ``path``; asserts it is one line naming the file."""
    with pytest.raises(InputError) as info:
        load_dataset(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert str(path) in message
    return message


# --- formats ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["seed.jsonl", "seed.jsonl.gz", "seed.ndjson"])
def test_jsonl_round_trip(tmp_path: Path, name: str) -> None:
    path = write_jsonl(tmp_path / name, ROWS)
    ds = load_dataset(path)
    assert ds.samples == EXPECTED
    assert ds.name == "seed"
    assert ds.source == str(path)


def test_jsonl_skips_blank_lines_and_reads_crlf(tmp_path: Path) -> None:
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n\r\n   \n{"text": "b"}\r\n')
    assert [s.text for s in load_dataset(path)] == ["a", "b"]


def test_json_list_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(ROWS, indent=2, ensure_ascii=False), encoding="utf-8")
    assert load_dataset(path).samples == EXPECTED


def test_json_file_holding_jsonl_is_read_as_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "seed.json", ROWS)
    assert load_dataset(path).samples == EXPECTED


@pytest.mark.parametrize(("name", "delimiter"), [("seed.csv", ","), ("seed.tsv", "\t"), ("seed.csv.gz", ",")])
def test_csv_and_tsv_round_trip(tmp_path: Path, name: str, delimiter: str) -> None:
    texts = ["plain", 'quoted "word", comma\tand tab', "two\nlines"]
    rows = [[t, f"topic{i}", str(i)] for i, t in enumerate(texts)]
    path = write_csv(tmp_path / "plain.tmp", ["text", "topic", "label"], rows, delimiter)
    target = tmp_path / name
    data = path.read_bytes()
    target.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert load_dataset(target).samples == [
        Sample(text=t, meta={"topic": f"topic{i}", "label": str(i)}) for i, t in enumerate(texts)
    ]


def test_csv_instruction_columns_use_the_alpaca_mapping(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "alpaca.csv", ["instruction", "input", "output"], [["Sum", "1 2", "3"]])
    assert load_dataset(path).samples == [
        Sample(messages=(Message("user", "Sum\n\n1 2"), Message("assistant", "3")))
    ]


def test_text_file_one_sample_a_line(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"first prompt\r\n\n   \nsecond  prompt \nthird")
    assert [s.text for s in load_dataset(path)] == ["first prompt", "second  prompt ", "third"]


def test_unknown_suffix_is_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "prompts.md"
    path.write_text('{"text": "not json here"}\n', encoding="utf-8")
    assert load_dataset(path).samples == [Sample(text='{"text": "not json here"}')]


def test_saved_hf_dataset_round_trip(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    # A dataset has every column on every row: absent values are None.
    columns = list(dict.fromkeys(k for row in ROWS for k in row))
    table = [{k: row.get(k) for k in columns} for row in ROWS]
    datasets.Dataset.from_list(table).save_to_disk(str(tmp_path / "hfseed"))
    ds = load_dataset(tmp_path / "hfseed")
    # The None values are dropped from meta, so the samples equal the JSONL ones.
    assert ds.samples == EXPECTED
    assert ds.name == "hfseed"


def test_saved_hf_dataset_dict_takes_train_or_the_only_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    train = datasets.Dataset.from_list([{"text": "from train"}])
    test = datasets.Dataset.from_list([{"text": "from test"}])
    datasets.DatasetDict({"test": test, "train": train}).save_to_disk(str(tmp_path / "both"))
    datasets.DatasetDict({"validation": test}).save_to_disk(str(tmp_path / "only"))
    assert [s.text for s in load_dataset(tmp_path / "both")] == ["from train"]
    assert [s.text for s in load_dataset(tmp_path / "only")] == ["from test"]


def test_saved_hf_dataset_dict_without_train_lists_its_splits(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    part = datasets.Dataset.from_list([{"text": "x"}])
    datasets.DatasetDict({"dev": part, "test": part}).save_to_disk(str(tmp_path / "splits"))
    message = error_of(tmp_path / "splits")
    assert "dev, test" in message and "no train split" in message


def test_hf_spec_passes_name_and_split_to_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls: list[tuple[str, str | None]] = []

    def fake_load_dataset(name: str, split: str | None = None) -> Any:
        calls.append((name, split))
        part = datasets.Dataset.from_list([{"instruction": "Hi", "output": "Hello"}])
        return part if split else datasets.DatasetDict({"train": part})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    expected = [Sample(messages=(Message("user", "Hi"), Message("assistant", "Hello")))]
    with_split = load_dataset("hf:org/alpaca-like:train[:10]")
    assert with_split.samples == expected
    assert with_split.name == "alpaca-like"
    assert with_split.source == "hf:org/alpaca-like:train[:10]"
    assert load_dataset("hf:org/alpaca-like").samples == expected
    assert calls == [("org/alpaca-like", "train[:10]"), ("org/alpaca-like", None)]


# --- row mapping ------------------------------------------------------------------


def test_alpaca_rows_become_messages() -> None:
    full = sample_from_row({"instruction": "Translate", "input": "bonjour", "output": "hello", "lang": "fr"})
    assert full == Sample(
        messages=(Message("user", "Translate\n\nbonjour"), Message("assistant", "hello")),
        meta={"lang": "fr"},
    )
    no_input = sample_from_row({"instruction": "Write a haiku", "input": "", "output": "Autumn..."})
    assert no_input.messages == (Message("user", "Write a haiku"), Message("assistant", "Autumn..."))
    prompt_only = sample_from_row({"instruction": "Write a haiku"})
    assert prompt_only.messages == (Message("user", "Write a haiku"),)


def test_prompt_response_rows_become_messages() -> None:
    assert sample_from_row({"prompt": "Q?", "response": "A.", "id": 7}) == Sample(
        messages=(Message("user", "Q?"), Message("assistant", "A.")), meta={"id": 7}
    )
    assert sample_from_row({"prompt": "Q?", "completion": "A."}).messages == (
        Message("user", "Q?"),
        Message("assistant", "A."),
    )
    assert sample_from_row({"prompt": "Q?"}).messages == (Message("user", "Q?"),)


def test_null_fields_are_not_meta() -> None:
    assert sample_from_row({"text": "x", "messages": None, "topic": None, "label": 0}).meta == {"label": 0}


# --- records ----------------------------------------------------------------------


def test_sample_hash_is_sha256_of_canonical_json_without_meta() -> None:
    plain = Sample(text="Hello, world")
    canonical = json.dumps(
        {"text": "Hello, world"}, sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    assert plain.sample_hash == hashlib.sha256(canonical.encode()).hexdigest()
    # Pinned: a change here invalidates every stored activation.
    assert plain.sample_hash == "9de39b27f62c74ad75c9bfd04039c905a44dfec3d8ea877d4dc50a9abafff789"
    assert Sample(text="Hello, world", meta={"topic": "greeting"}).sample_hash == plain.sample_hash
    assert hash(Sample(text="Hello, world", meta={"topic": "greeting"})) == hash(plain)


def test_text_and_messages_hash_differently() -> None:
    as_text = Sample(text="Hello, world")
    as_chat = Sample(messages=({"role": "user", "content": "Hello, world"},))
    assert as_chat.sample_hash == "a6cfe5ef059e56758c56de956e1013c0aae1d7692e6a7c2c5c51e152e845efee"
    assert as_text.sample_hash != as_chat.sample_hash
    assert as_text.as_messages == as_chat.as_messages == (Message("user", "Hello, world"),)


def test_payload_plain_text_and_message_access() -> None:
    chat = EXPECTED[1]
    assert chat.payload == {"messages": ROWS[1]["messages"]}
    assert chat.plain_text == "Be brief.\nSay hi,\nin two lines.\nHi!"
    assert EXPECTED[0].payload == {"text": "How do I bake bread?"}
    assert EXPECTED[0].plain_text == "How do I bake bread?"
    first = chat.messages[0]
    assert (first["role"], first["content"]) == ("system", "Be brief.")
    assert dict(first) == first.to_dict() == {"role": "system", "content": "Be brief."}


def test_sample_requires_exactly_one_of_text_and_messages() -> None:
    with pytest.raises(ValueError):
        Sample()
    with pytest.raises(ValueError):
        Sample(text="a", messages=(Message("user", "a"),))
    with pytest.raises(ValueError):
        Message("bot", "hi")


def test_dataset_counts_hashes_and_limit(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "seed.jsonl", ROWS)
    ds = load_dataset(path)
    assert len(ds) == 4 and list(ds) == EXPECTED
    assert ds.n_unique == 3  # the duplicate differs in meta only
    expected = hashlib.sha256("".join(s.sample_hash + "\n" for s in EXPECTED).encode()).hexdigest()
    assert ds.content_hash == expected
    reordered = Dataset("x", "y", [EXPECTED[1], EXPECTED[0], *EXPECTED[2:]])
    assert reordered.content_hash != ds.content_hash
    relabelled = Dataset("x", "y", [Sample(text=s.text, meta={"n": 1}) if s.text else s for s in EXPECTED])
    assert relabelled.content_hash == ds.content_hash
    assert load_dataset(path, limit=2).samples == EXPECTED[:2]


def test_iter_samples_streams(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    # Line 2 is malformed: taking only the first sample must not read it.
    path.write_text('{"text": "first"}\n{not json\n', encoding="utf-8")
    stream = iter_samples(path)
    assert next(stream) == Sample(text="first")
    assert load_dataset(path, limit=1).samples == [Sample(text="first")]


def test_dataset_name() -> None:
    assert dataset_name("data/seed.jsonl.gz") == "seed"
    assert dataset_name("data/seed.v2.csv") == "seed.v2"
    assert dataset_name("hf:tatsu-lab/alpaca:train") == "alpaca"


# --- bad input --------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in error_of(tmp_path / "nope.jsonl")


def test_missing_file_raises_before_iterating(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        iter_samples(tmp_path / "nope.jsonl")


def test_directory_that_is_not_a_saved_dataset(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.jsonl").write_text('{"text": "x"}\n')
    assert "not a saved Hugging Face dataset" in error_of(tmp_path / "folder")


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.txt", "bad.csv", "bad.json", "bad.jsonl.gz"])
def test_non_utf8_bytes(tmp_path: Path, name: str) -> None:
    data = b'{"text": "ok"}\n{"text": "caf\xe9"}\n' if "json" in name else b"text\nok\ncaf\xe9\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    offset = data.index(b"\xe9")
    assert f"is not UTF-8 text (byte 0xe9 at offset {offset})" in error_of(path)


def test_malformed_json_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "unterminated}\n', encoding="utf-8")
    message = error_of(path)
    assert "line 3" in message and "malformed JSON" in message


def test_malformed_json_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[{"text": "ok"},\n {"text": oops}]', encoding="utf-8")
    message = error_of(path)
    assert "line 2" in message and "malformed JSON" in message


def test_json_that_is_not_a_list(tmp_path: Path) -> None:
    path = tmp_path / "obj.json"
    path.write_text('{"data": [{"text": "x"}]}', encoding="utf-8")
    assert "expected a JSON list of objects" in error_of(path)


def test_row_without_text_or_messages_lists_accepted_keys(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"question": "?", "topic": "x"}])
    message = error_of(path)
    assert "line 2" in message
    assert "messages, text, instruction, prompt" in message and "question, topic" in message


def test_json_list_row_error_names_its_index(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"text": "ok"}, {"text": "ok"}, "just a string"]), encoding="utf-8")
    assert "index 2" in error_of(path)


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ("hello", "messages must be a list"),
        ([], "messages is an empty list"),
        (["hello"], "messages[0] must be an object with role and content"),
        ([{"role": "user"}], "messages[0] must be an object with role and content"),
        (
            [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}],
            "messages[1] has unknown role 'bot'",
        ),
        ([{"role": "user", "content": 3}], "messages[0] content must be a string"),
        ([{"role": "user", "content": "  "}], "every content is blank"),
    ],
)
def test_bad_messages(tmp_path: Path, messages: Any, expected: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": messages}])
    message = error_of(path)
    assert "line 1" in message and expected in message


def test_unknown_role_lists_allowed_roles(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "bot", "content": "hi"}]}])
    assert "system, user, assistant, tool" in error_of(path)


def test_text_and_messages_together(tmp_path: Path) -> None:
    row = {"text": "a", "messages": [{"role": "user", "content": "a"}]}
    assert "both text and messages" in error_of(write_jsonl(tmp_path / "bad.jsonl", [row]))


@pytest.mark.parametrize(
    ("row", "expected"), [({"text": "   "}, "empty text"), ({"text": 5}, "text must be a string")]
)
def test_bad_text(tmp_path: Path, row: dict[str, Any], expected: str) -> None:
    message = error_of(write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, row]))
    assert "line 2" in message and expected in message


def test_empty_csv_cell_is_empty_text(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bad.csv", ["text", "topic"], [["ok", "a"], ["", "b"]])
    message = error_of(path)
    assert "line 3" in message and "empty text" in message


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.jsonl", b""),
        ("blank.txt", b"\n  \n\n"),
        ("empty.json", b"[]"),
        ("header_only.csv", b"text,topic\n"),
        ("nothing.csv", b""),
        ("empty.jsonl.gz", gzip.compress(b"\n")),
    ],
)
def test_no_samples(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert "holds no samples" in error_of(path)


def test_csv_error_line_counts_multiline_fields_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text('text,topic\n"two\nlines",a\n\n,"b\nc"\n', encoding="utf-8")  # bad row: lines 5-6
    message = error_of(path)
    assert "line 5" in message and "empty text" in message


def test_csv_without_usable_column_lists_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bad.csv", ["question", "answer"], [["?", "!"]])
    message = error_of(path)
    assert "text, prompt or instruction" in message and "columns found: question, answer" in message


def test_csv_row_with_wrong_field_count(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("text,topic\nok,a\nextra,b,c\n", encoding="utf-8")
    message = error_of(path)
    assert "line 3" in message and "3 fields" in message


def test_bad_gzip(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(b'{"text": "not compressed"}\n')
    assert "not a gzip file" in error_of(path)


def test_errors_quoting_newlines_stay_on_one_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bad.csv", ["multi\nline", "other"], [["a", "b"]])
    assert "columns found: multi line, other" in error_of(path)


def test_bad_row_in_saved_hf_dataset_names_its_index(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"text": "ok"}, {"text": ""}]).save_to_disk(str(tmp_path / "hfbad"))
    message = error_of(tmp_path / "hfbad")
    assert "index 1" in message and "empty text" in message
