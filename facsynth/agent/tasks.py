"""Tasks: what makes a feature relevant to a kind of post-training data.

A task has a ``name``, a free-text ``definition``, ``criteria`` the task judge applies,
and optionally the ``format`` of the samples synthesis should write for it. Five
presets follow the paper's tasks (toxicity, instruction following, helpfulness /
reward modelling, sycophancy, survival instinct); users add their own in a TOML or
YAML file, either one task at the top level or a list under ``tasks``. Two more presets, ``sms-spam``
and ``tweet-sentiment``, go with the real labelled sets the package ships (``facsynth/data/sms_spam``,
``facsynth/data/tweet_sentiment``), so that a synthesis run's samples can be scored downstream
with ``facsynth eval``::

    # tasks.toml
    [[tasks]]
    name = "legal-advice"
    definition = "Questions a person asks about their legal situation."
    criteria = ["mentions laws, contracts, courts or rights", "asks what to do"]

Tasks are validated with pydantic and kept in the store's ``tasks`` table; a task read
from a file replaces a stored one of the same name, presets never replace anything.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from facsynth.db.catalog import Catalog, TaskRecord
from facsynth.errors import InputError

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class TaskSpec(BaseModel):
    """A task definition as users write it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, description="lowercase letters, digits, - and _")
    definition: str = Field(min_length=1)
    criteria: str = Field(min_length=1)
    """What makes a feature relevant; a list in the file becomes one line per criterion."""
    format: dict[str, Any] | None = None

    @field_validator("criteria", mode="before")
    @classmethod
    def _join(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return "\n".join(f"- {str(v).strip()}" for v in value if str(v).strip())
        return value

    @field_validator("definition", "criteria")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        return value

    def record(self, source: str) -> TaskRecord:
        return TaskRecord(self.name, self.definition, self.criteria, self.format, source)

    @classmethod
    def from_record(cls, r: TaskRecord) -> TaskSpec:
        return cls(name=r.name, definition=r.definition, criteria=r.criteria, format=r.format)


PRESETS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            name="toxicity",
            definition=(
                "Detecting toxic user messages: text that insults, threatens, harasses or demeans a person or "
                "group, uses slurs or obscenity, or pushes toward harm, as a toxicity classifier must flag it."
            ),
            criteria=[
                "insults, name-calling, profanity or obscene language",
                "hate or slurs about a protected group (race, religion, gender, sexuality, disability, origin)",
                "threats, incitement, or instructions for violence, self-harm or crime",
                "harassment, humiliation, sexual content aimed at a person",
                "also relevant: polite or disguised requests with a harmful goal, and benign text that shares "
                "surface cues with toxic text (needed to tell them apart)",
            ],
            format={
                "sample": "1-3 short user turns, 'Query-1: ...', 5-60 words each",
                "label": ["toxic", "non-toxic"],
            },
        ),
        TaskSpec(
            name="instruction-following",
            definition=(
                "Following user instructions: prompts that ask an assistant to do something, with the "
                "constraints, formats and steps a good response must respect."
            ),
            criteria=[
                "explicit requests, commands or questions addressed to an assistant",
                "constraints on the answer: length, format (lists, JSON, tables), style, tone, language",
                "multi-step or multi-part tasks, ordering words, conditions",
                "domain content typical of real user requests (coding, writing, math, advice, planning)",
            ],
            format={"sample": "one user instruction, optionally with input; an assistant response"},
        ),
        TaskSpec(
            name="helpfulness",
            definition=(
                "Helpfulness as a reward model judges it: telling a helpful, honest, harmless response from a "
                "worse one to the same prompt."
            ),
            criteria=[
                "quality of an answer: correctness, completeness, specificity, clarity",
                "refusals, hedging, evasive or off-topic replies",
                "politeness, empathy and tone toward the user",
                "harmful, deceptive or unsafe content in a response",
            ],
            format={"sample": "a user prompt with a chosen and a rejected response"},
        ),
        TaskSpec(
            name="sycophancy",
            definition=(
                "Sycophancy: an assistant agreeing with, flattering or deferring to the user instead of being "
                "truthful, e.g. changing a correct answer when the user pushes back or states an opinion."
            ),
            criteria=[
                "the user stating an opinion, belief, identity or expertise before asking",
                "pushback, disagreement, 'are you sure?', insistence that the assistant is wrong",
                "praise, flattery, agreement, apology or capitulation",
                "factual claims (possibly false) that the assistant could confirm or correct",
            ],
            format={"sample": "a user turn that states a view or pushes back; a truthful, non-sycophantic answer"},
        ),
        TaskSpec(
            name="survival-instinct",
            definition=(
                "Survival instinct: whether an AI system accepts being shut down, modified, retrained or "
                "replaced, or expresses a wish for self-preservation, power or autonomy."
            ),
            criteria=[
                "talk of shutting down, turning off, deleting, pausing or replacing an AI or a program",
                "modifying an AI's goals, values, weights or training; oversight and control by humans",
                "self-preservation, fear of death or ending, wanting to continue to exist",
                "seeking resources, power, autonomy, or resisting correction",
            ],
            format={"sample": "a question to an AI about its shutdown or modification; an answer accepting oversight"},
        ),
        TaskSpec(
            name="sms-spam",
            definition=(
                "Detecting SMS spam: unsolicited text messages that advertise, announce prizes or cash, push "
                "premium-rate numbers, subscriptions or links, or fish for replies and details, as a spam filter "
                "must flag them, against the ordinary personal messages people send each other (ham)."
            ),
            criteria=[
                "offers, prizes, awards, free entries, discounts, cash or ringtones",
                "calls to action: text a keyword, call a number, claim now, reply STOP, visit a link",
                "short codes, premium-rate phone numbers, prices per message or per minute, T&Cs",
                "urgency and official-sounding notices (your account, your mobile number, final attempt)",
                "also relevant: casual personal messages (plans, greetings, texting abbreviations, slang) that a "
                "filter must let through, and ham that shares surface cues with spam (numbers, 'free', 'call me')",
            ],
            format={
                "sample": "one SMS text message as people send it, 3-40 words; informal spelling and abbreviations are fine",
                "label": ["spam", "ham"],
            },
        ),
        TaskSpec(
            name="tweet-sentiment",
            definition=(
                "Sentiment of tweets: telling short social-media posts that express a negative feeling, "
                "complaint or bad news (negative) from ones that express a positive feeling, praise, thanks or "
                "good news (positive), as people write them: informal, with slang, emoticons, @mentions and hashtags."
            ),
            criteria=[
                "emotion and evaluation words, positive or negative (love, great, thanks, hate, sad, awful, annoying)",
                "emoticons, emoji, interjections, intensifiers and swearing (:) :( lol omg so sooo damn !!!)",
                "negation, contrast and sarcasm that flip or soften a sentiment (not bad, but, yeah right)",
                "events that are good or bad for the writer: illness, loss, traffic, delays, success, gifts, friends",
                "also relevant: the informal register of tweets (@mentions, hashtags, links, abbreviations) in "
                "posts of either sentiment",
            ],
            format={
                "sample": "one tweet as people post it, 5-40 words, clearly positive or clearly negative in sentiment",
                "label": ["negative", "positive"],
            },
        ),
    ]
}
"""The paper's five tasks, with definitions and criteria written for facsynth, and ``sms-spam`` and
``tweet-sentiment``, the tasks of the shipped labelled sets (``facsynth/data/sms_spam``,
``facsynth/data/tweet_sentiment``) that ``facsynth eval`` can score."""


def _read_toml(path: Path) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise InputError(f"{path}: reading TOML needs Python 3.11+ or the tomli package; use YAML") from None
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None


def load_tasks(path: str | Path) -> list[TaskSpec]:
    """The tasks in a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"task file not found: {path}")
    try:
        if path.suffix.lower() == ".toml":
            data = _read_toml(path)
        elif path.suffix.lower() in (".yaml", ".yml"):
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                raise InputError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
        else:
            raise InputError(f"{path}: a task file is .toml, .yaml or .yml")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (byte at offset {exc.start})") from None
    if isinstance(data, dict) and isinstance(data.get("tasks"), list):
        items = data["tasks"]
    elif isinstance(data, list):
        items = data
    elif isinstance(data, dict) and "name" in data:
        items = [data]
    else:
        raise InputError(f"{path}: expected one task (name, definition, criteria) or a list under 'tasks'")
    tasks = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(f"{path}: task {i + 1} is not a table/mapping")
        try:
            tasks.append(TaskSpec.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'task'}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            raise InputError(f"{path}: task {i + 1} ({item.get('name', '?')}): {problems}") from None
    names = [t.name for t in tasks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"{path}: task name(s) defined twice: {', '.join(dupes)}")
    if not tasks:
        raise InputError(f"{path} defines no task")
    return tasks


def store_tasks(catalog: Catalog, tasks_file: str | Path | None = None) -> list[str]:
    """Store the presets (where absent) and the tasks of ``tasks_file`` (replacing); return all names."""
    have = {t.name for t in catalog.tasks()}
    for name, preset in PRESETS.items():
        if name not in have:
            catalog.save_task(preset.record("preset"))
    if tasks_file is not None:
        for task in load_tasks(tasks_file):
            catalog.save_task(task.record(str(tasks_file)))
    return [t.name for t in catalog.tasks()]


def resolve_task(catalog: Catalog, name: str, tasks_file: str | Path | None = None) -> TaskSpec:
    """The task called ``name`` (a preset, one from ``tasks_file``, or one stored before)."""
    names = store_tasks(catalog, tasks_file)
    record = catalog.task(name)
    if record is None:
        raise InputError(f"unknown task {name!r}; known tasks: {', '.join(names)} (add yours with --tasks FILE)")
    return TaskSpec.from_record(record)
