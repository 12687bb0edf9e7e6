"""Talking to a run: ``facsynth chat RUN``.

:class:`ChatSession` turns each message into calls of the typed operations of
:class:`~facsynth.chat.steering.RunControl`:

* a message that starts with ``/`` is a slash command, parsed deterministically
  (``/focus 812 90``, ``/exclude code``, ``/style at most 20 words``, ``/target 0.8``,
  ``/budget calls=200``, ``/pause``, ``/resume``, ``/show 812``, ``/test 812 some text``,
  ``/samples``, ``/reject 4``, ``/undo``, ``/review``, ``/approve``, ``/deny 7``, ``/edit 7 text``,
  ``/help``): it works with any endpoint, the small
  default model included, and with none;
* plain language goes to a tool-calling chat model when the session has one (a LangGraph
  loop: the model calls tools, a ``ToolNode`` runs them, until the model answers); each
  tool's arguments are the operation's pydantic model, and the user's words are stored
  with every directive it makes;
* without one, a few plain questions are still understood ("what is still missing?",
  "show feature 812", "why was 812 exhausted?", "does this fire 812: ..."), and anything
  else gets a pointer to ``/help``.

Every reply says what changed (the directive ids, so ``/undo ID`` can revert them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from facsynth.errors import FacsynthError, InputError
from facsynth.chat import steering as st

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

SYSTEM = (
    "You steer a synthesis run that writes training samples to cover missing SAE features of a dataset. "
    "Use the tools to answer questions about the run and to apply what the user asks (focus on or exclude "
    "features, change the style, target or budget, pause or resume, review and reject samples, undo). "
    "Call a tool for every change; never claim a change you did not make. Answer briefly."
)


@dataclass(frozen=True)
class Op:
    """One operation: its name, its argument model, what it does."""

    name: str
    args: type[BaseModel]
    method: str
    help: str
    changes: bool


OPS: tuple[Op, ...] = (
    Op("status", st.NoArgs, "status", "where the run stands: FAC, features, samples, directives", False),
    Op("missing", st.MissingArgs, "missing", "the features still to cover, highest priority first", False),
    Op("show", st.FeatureArgs, "show", "one feature: explanation, status and why, attempts, candidates", False),
    Op("test", st.TestArgs, "test", "read a text through the SAE: does it fire a feature, what would it cover", False),
    Op("samples", st.LatestArgs, "latest", "the latest accepted samples", False),
    Op("directives", st.NoArgs, "directives", "every steering directive of the run", False),
    Op("focus", st.FeaturesArgs, "focus", "work on these features first (ids or a description)", True),
    Op("exclude", st.FeaturesArgs, "exclude", "leave these features out (ids or a description)", True),
    Op("style", st.StyleArgs, "style", "a generation constraint: length, turns, tone, language, format, labels", True),
    Op("target", st.TargetArgs, "target", "a new FAC target", True),
    Op("budget", st.BudgetArgs, "budget", "a new budget (totals over the run)", True),
    Op("pause", st.NoArgs, "pause", "stop before the next batch", True),
    Op("resume", st.NoArgs, "resume", "lift a pause", True),
    Op("reject", st.SamplesArgs, "reject", "withdraw accepted samples and the coverage only they gave", True),
    Op("undo", st.UndoArgs, "undo", "revert a directive (default: the latest in force)", True),
    Op("review", st.NoArgs, "review", "review mode: the candidates of the batch waiting for a decision", False),
    Op("approve", st.ReviewArgs, "approve", "review mode: accept candidates (default: all undecided)", True),
    Op("deny", st.ReviewArgs, "deny", "review mode: reject candidates", True),
    Op("edit", st.EditArgs, "edit", "review mode: correct a candidate's text (verified again)", True),
)
BY_NAME = {op.name: op for op in OPS}

USAGE = {
    "show": "/show FEATURE", "test": "/test [FEATURE] TEXT", "samples": "/samples [N]", "missing": "/missing [N]",
    "focus": "/focus IDS|DESCRIPTION", "exclude": "/exclude IDS|DESCRIPTION", "style": "/style TEXT",
    "target": "/target FAC (0.8 or 80%)", "budget": "/budget [calls=]N [tokens=N] [seconds=S]", "reject": "/reject ID ...",
    "undo": "/undo [DIRECTIVE]", "approve": "/approve [IDS]", "deny": "/deny ID ...", "edit": "/edit ID TEXT",
}


def help_text() -> str:
    lines = ["slash commands (plain language needs a tool-calling model: `facsynth chat RUN --base-url URL`):"]
    for op in OPS:
        lines.append(f"  {USAGE.get(op.name, '/' + op.name):<42} {op.help}")
    lines.append(f"  {'/why FEATURE':<42} why a feature is where it is (same as /show)")
    lines.append(f"  {'/quit':<42} leave the chat (the run goes on)")
    return "\n".join(lines)


def _ints(tokens: list[str]) -> list[int] | None:
    try:
        return [int(t.strip(",")) for t in tokens if t.strip(",")]
    except ValueError:
        return None


def _fraction(text: str) -> float:
    t = text.strip()
    value = float(t.rstrip("%"))
    return value / 100.0 if t.endswith("%") or value > 1.0 else value


def parse_slash(line: str) -> tuple[Op, BaseModel] | str:
    """``(operation, arguments)`` for a slash command; a string is an answer by itself."""
    head, _, rest = line[1:].strip().partition(" ")
    name, rest = head.lower(), rest.strip()
    if name in ("help", "h", "?"):
        return help_text()
    if name == "why":
        name = "show"
    op = BY_NAME.get(name)
    if op is None:
        raise InputError(f"unknown command /{name}; /help lists them")
    words = rest.split()
    try:
        if op.args is st.NoArgs:
            args: BaseModel = st.NoArgs()
        elif name == "show":
            args = st.FeatureArgs(feature=int(words[0]))
        elif name in ("missing", "samples"):
            n = int(words[0]) if words else None
            args = st.MissingArgs(limit=n) if name == "missing" and n else st.LatestArgs(n=n) if n else op.args()
        elif name == "test":
            first = rest.split(maxsplit=1)
            if len(first) == 2 and first[0].isdigit():
                args = st.TestArgs(feature=int(first[0]), text=first[1])
            else:
                args = st.TestArgs(text=rest)
        elif name in ("focus", "exclude"):
            ids = _ints(words)
            args = st.FeaturesArgs(features=ids) if ids else st.FeaturesArgs(description=rest)
        elif name == "style":
            args = st.StyleArgs(text=rest)
        elif name == "target":
            args = st.TargetArgs(fac=_fraction(words[0]))
        elif name == "budget":
            given: dict[str, Any] = {}
            for w in words:
                key, sep, value = w.partition("=")
                key, value = (key, value) if sep else ("calls", key)
                given[key] = float(value) if key == "seconds" else int(value)
            args = st.BudgetArgs(**given)
        elif name == "reject":
            ids = _ints(words)
            if not ids:
                raise ValueError("give sample ids")
            args = st.SamplesArgs(samples=[int(i) for i in ids])
        elif name in ("approve", "deny"):
            ids = _ints(words)
            if ids is None:
                raise ValueError("give candidate ids")
            args = st.ReviewArgs(candidates=ids)
        elif name == "edit":
            first = rest.split(maxsplit=1)
            if len(first) < 2 or not first[0].isdigit():
                raise ValueError("give a candidate id and the new text")
            args = st.EditArgs(candidate=int(first[0]), text=first[1])
        elif name == "undo":
            args = st.UndoArgs(directive=int(words[0].lstrip("#")) if words else None)
        else:  # pragma: no cover - every op is handled above
            raise AssertionError(name)
    except (ValueError, IndexError, ValidationError) as exc:
        detail = exc.errors(include_url=False)[0]["msg"] if isinstance(exc, ValidationError) else str(exc) or "missing value"
        raise InputError(f"usage: {USAGE.get(name, '/' + name)} ({detail})") from None
    return op, args


_INTENTS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[str, BaseModel]]]] = [
    (re.compile(r"\b(what|which)\b.*\b(missing|left|uncovered)\b", re.I), lambda m: ("missing", st.MissingArgs())),
    (re.compile(r"\bdoes (?:this|it|the text)\s+fire\s+(?:feature\s+)?(\d+)\W*\s*(.+)", re.I | re.S),
     lambda m: ("test", st.TestArgs(feature=int(m.group(1)), text=m.group(2).strip().strip('"')))),
    (re.compile(r"\bwhy\b.*?(\d+)", re.I), lambda m: ("show", st.FeatureArgs(feature=int(m.group(1))))),
    (re.compile(r"\b(show|explain|about)\b.*?\bfeature\s+(\d+)", re.I), lambda m: ("show", st.FeatureArgs(feature=int(m.group(2))))),
    (re.compile(r"^\s*(status|how is it going|where are we)\b", re.I), lambda m: ("status", st.NoArgs())),
]


class ChatSession:
    """A conversation with one run. ``send`` takes a message and returns the reply."""

    def __init__(self, control: st.RunControl, model: BaseChatModel | None = None) -> None:
        self.control = control
        self.model = model
        self.history: list[Any] = []
        self._words = ""
        self._graph: Any = None
        self._changed: list[str] = []

    def call(self, op: Op, args: BaseModel, words: str) -> st.Reply:
        method = getattr(self.control, op.method)
        return method(words, args)

    def send(self, message: str) -> str:
        text = message.strip()
        if not text:
            return ""
        try:
            if text.startswith("/"):
                parsed = parse_slash(text)
                if isinstance(parsed, str):
                    return parsed
                return self.call(parsed[0], parsed[1], text).text
            if self.model is not None:
                return self._converse(text)
            for pattern, make in _INTENTS:
                m = pattern.search(text)
                if m:
                    name, args = make(m)
                    return self.call(BY_NAME[name], args, text).text
            return ("without a tool-calling model I understand slash commands and a few questions; /help lists them "
                    "(or start the chat with --base-url URL for a model that calls tools)")
        except FacsynthError as exc:
            return f"error: {exc}"

    # ------------------------------------------------------------------ tool calling

    def tools(self) -> list[Any]:
        from langchain_core.tools import StructuredTool

        def make(op: Op) -> Any:
            def run(**kwargs: Any) -> str:
                reply = self.call(op, op.args(**kwargs), self._words)
                if reply.directive is not None:
                    self._changed.append(reply.text)
                return reply.text

            return StructuredTool.from_function(func=run, name=op.name, description=op.help, args_schema=op.args)

        return [make(op) for op in OPS]

    def graph(self) -> Any:
        """The chat loop: model -> tools -> model, until the model answers without a tool call."""
        if self._graph is None:
            from langchain_core.messages import SystemMessage
            from langgraph.graph import START, MessagesState, StateGraph
            from langgraph.prebuilt import ToolNode, tools_condition

            tools = self.tools()
            bound = self.model.bind_tools(tools)  # type: ignore[union-attr]

            def model_node(state: MessagesState) -> dict[str, Any]:
                return {"messages": [bound.invoke([SystemMessage(SYSTEM), *state["messages"]])]}

            builder = StateGraph(MessagesState)
            builder.add_node("model", model_node)
            builder.add_node("tools", ToolNode(tools, handle_tool_errors=True))
            builder.add_edge(START, "model")
            builder.add_conditional_edges("model", tools_condition)
            builder.add_edge("tools", "model")
            self._graph = builder.compile(name="facsynth-chat")
        return self._graph

    def _converse(self, text: str) -> str:
        from langchain_core.messages import HumanMessage

        self._words = text
        self._changed = []
        out = self.graph().invoke({"messages": [*self.history, HumanMessage(text)]}, {"recursion_limit": 16})
        self.history = list(out["messages"])
        answer = str(out["messages"][-1].content or "").strip()
        if self._changed:
            answer = "\n".join([answer, "changed:", *(f"  {c}" for c in self._changed)]).strip()
        return answer or "(no answer)"


def open_chat(run: str, *, store: Any = None, model: BaseChatModel | None = None, reader: Any = None) -> ChatSession:
    """A chat with ``run`` (Python API): ``open_chat("r1").send("/status")``.

    ``store``: a :class:`~facsynth.db.Store` or URL (default ``$FACSYNTH_DB``); ``model``: a
    tool-calling chat model (e.g. :func:`facsynth.agent.llm.make_chat_model`), else slash
    commands only; ``reader``: a loaded model + SAE for ``/test``.
    """
    from facsynth.db.store import Store, open_store

    st_ = store if isinstance(store, Store) else open_store(store)
    return ChatSession(st.RunControl(st_, run, reader=reader), model)
