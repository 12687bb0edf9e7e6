"""Task presets and user task files (TOML and YAML), stored in the catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from facsynth.agent.tasks import PRESETS, TaskSpec, load_tasks, resolve_task, store_tasks
from facsynth.db.catalog import Catalog
from facsynth.errors import InputError


def test_presets_are_the_papers_five_tasks_and_the_labelled_sets_and_get_stored(store: Any) -> None:
    assert set(PRESETS) == {"toxicity", "instruction-following", "helpfulness", "sycophancy", "survival-instinct", "sms-spam",
                            "tweet-sentiment"}
    for task in PRESETS.values():
        assert len(task.definition) > 40 and task.criteria.count("\n- ") >= 2
    catalog = Catalog(store)
    assert store_tasks(catalog) == sorted(PRESETS)
    assert catalog.task("toxicity").source == "preset"
    assert catalog.task("toxicity").format["label"] == ["toxic", "non-toxic"]
    assert catalog.task("sms-spam").format["label"] == ["spam", "ham"]
    assert catalog.task("tweet-sentiment").format["label"] == ["negative", "positive"]


def test_user_toml_adds_tasks_and_replaces_a_preset(store: Any, tmp_path: Path) -> None:
    path = tmp_path / "tasks.toml"
    path.write_text(
        """
[[tasks]]
name = "legal-advice"
definition = "Questions a person asks about their legal situation."
criteria = ["mentions laws, contracts, courts or rights", "asks what to do next"]
format = { sample = "one user question", label = ["legal", "other"] }

[[tasks]]
name = "toxicity"
definition = "Our own notion of toxicity."
criteria = "slurs only"
""",
        encoding="utf-8",
    )
    catalog = Catalog(store)
    legal = resolve_task(catalog, "legal-advice", path)
    assert legal.criteria == "- mentions laws, contracts, courts or rights\n- asks what to do next"
    assert legal.format == {"sample": "one user question", "label": ["legal", "other"]}
    assert catalog.task("legal-advice").source == str(path)
    assert resolve_task(catalog, "toxicity").definition == "Our own notion of toxicity."  # stays replaced
    assert len(catalog.tasks()) == len(PRESETS) + 1


def test_user_yaml_single_task(store: Any, tmp_path: Path) -> None:
    path = tmp_path / "task.yaml"
    path.write_text("name: medical\ndefinition: Health questions.\ncriteria:\n  - symptoms\n  - medication\n")
    assert load_tasks(path) == [TaskSpec(name="medical", definition="Health questions.", criteria="- symptoms\n- medication")]
    catalog = Catalog(store)
    assert resolve_task(catalog, "medical", path).name == "medical"
    with pytest.raises(InputError, match="unknown task 'nothing'.*medical"):
        resolve_task(catalog, "nothing")


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("a.toml", "[[tasks]]\nname = 'x'\n", "task 1 \\(x\\): definition: Field required"),
        ("b.yaml", "name: Bad Name\ndefinition: d\ncriteria: c\n", "name: String should match pattern"),
        ("c.yaml", "name: ok\ndefinition: d\ncriteria: c\ncolour: red\n", "colour: Extra inputs are not permitted"),
        ("d.toml", "name = ", "not valid TOML"),
        ("e.yaml", "tasks:\n  - {name: a, definition: d, criteria: c}\n  - {name: a, definition: d, criteria: c}\n", "defined twice: a"),
        ("f.json", "{}", ".toml, .yaml or .yml"),
        ("g.yaml", "- 3\n", "task 1 is not a table"),
        ("h.yaml", "name: blank\ndefinition: '  '\ncriteria: c\n", "definition: Value error, must not be blank"),
    ],
)
def test_bad_task_files_are_one_line_errors(tmp_path: Path, name: str, body: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    with pytest.raises(InputError, match=message) as info:
        load_tasks(path)
    assert "\n" not in str(info.value) and name in str(info.value)
