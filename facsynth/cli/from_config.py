"""Command options generated from a pydantic config: one field, one option, one default.

A command that fills a config model (``facsynth run`` and :class:`~facsynth.graph.config.RunConfig`,
``facsynth eval`` and :class:`~facsynth.tools.downstream.EvalConfig`) declares only the
options that are not fields; :func:`config_command` adds one option per field, with the
field's default, its docstring's first sentence as help and its choices (a sequence field:
a repeatable option), and the config's own validation checks the values (one clear line on
a bad one). A command that changes a stored config (``facsynth resume``) takes
:func:`override_parameters`: chosen fields as options whose default None keeps the stored
value.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, Optional

import typer
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

_RST = re.compile(r":[a-z]+:`~?([^`]+)`|``([^`]+)``")


def field_help(description: str | None) -> str:
    """The first sentence of a field's docstring, without reST markup."""
    if not description:
        return ""
    text = _RST.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(1) else m.group(2), description)
    text = " ".join(text.split())
    end = re.search(r"(?<=[a-z0-9)])\. (?=[A-Z])", text)
    return text[: end.start() + 1] if end else text


_SEQUENCES = (tuple, list, Sequence)


def _cli_type(annotation: Any) -> tuple[Any, tuple[str, ...], bool]:
    """A type typer reads, the choices of a Literal (``X | None`` stays optional; the config's
    validation checks a choice, so a bad one is one clear line like any bad value), and
    whether the field is a sequence (``tuple[X, ...]``, ``list[X]``: a repeatable option)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner, choices, many = _cli_type(next(a for a in args if a is not type(None)))
        return Optional[inner], choices, many  # noqa: UP045 - typer reads typing.Optional on every Python
    if origin is Literal:
        return str, tuple(str(a) for a in args), False
    if origin in _SEQUENCES and not (origin is tuple and (len(args) != 2 or args[1] is not Ellipsis)):
        item = args[0] if args else str
        inner, choices, _ = _cli_type(item)
        return list[inner], choices, True  # type: ignore[valid-type]
    return annotation, (), False


REPEATABLE = "Repeat the option for several."
"""Added to the help of an option made from a sequence field."""


def _help(field: FieldInfo, many: bool, note: str = "") -> str:
    parts = [field_help(field.description), REPEATABLE if many else "", note]
    return " ".join(p for p in parts if p)


def field_parameters(
    model: type[BaseModel], flags: Mapping[str, Sequence[str]], *, skip: Iterable[str] = (), prefix: str = ""
) -> list[inspect.Parameter]:
    """One keyword parameter per field of ``model`` (but ``skip``), in field order, whose
    default is a ``typer.Option`` with the field's default (required fields: required),
    its flags (``flags[name]``, else ``--name-with-dashes``), help and choices; a sequence
    field is a repeatable option. ``prefix`` goes before each parameter's name and flag
    (``budget_``: ``Budget.calls`` is ``budget_calls``, ``--budget-calls``)."""
    params = []
    skipped = set(skip)
    for name, field in model.model_fields.items():
        if name in skipped:
            continue
        if field.default_factory is not None:
            raise TypeError(f"{model.__name__}.{name} has a default factory: skip it and give its own options")
        annotation, choices, many = _cli_type(field.annotation)
        default = ... if field.is_required() else field.default
        if many and default is not ...:
            default = list(default)
        params.append(_parameter(prefix + name, annotation, default, flags, choices, _help(field, many)))
    return params


def override_parameters(
    model: type[BaseModel], names: Iterable[str] | None = None, *, flags: Mapping[str, Sequence[str]] | None = None,
    prefix: str = "", note: str = "",
) -> list[inspect.Parameter]:
    """Options that override chosen fields (``names``; default: every field) of a stored
    ``model``: each optional, default None (not given: keep the stored value), with the
    field's help followed by ``note``; names and flags as :func:`field_parameters`'s."""
    params = []
    for name in model.model_fields if names is None else names:
        field = model.model_fields[name]
        annotation, choices, many = _cli_type(field.annotation)
        if typing.get_origin(annotation) is not typing.Union:
            annotation = Optional[annotation]  # noqa: UP045 - typer reads typing.Optional on every Python
        params.append(_parameter(prefix + name, annotation, None, flags or {}, choices, _help(field, many, note)))
    return params


def _parameter(
    name: str, annotation: Any, default: Any, flags: Mapping[str, Sequence[str]], choices: tuple[str, ...], help: str
) -> inspect.Parameter:
    option_flags = tuple(flags.get(name, ("--" + name.replace("_", "-"),)))
    extra: dict[str, Any] = {"metavar": "|".join(choices)} if choices else {}
    option = typer.Option(default, *option_flags, help=help, **extra)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def with_parameters(
    *groups: list[inspect.Parameter], own_first: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command ``f(own options..., **generated)``: typer sees the parameters of
    ``groups`` followed by ``f``'s own (``own_first``: after them), and ``f`` gets the
    generated ones in ``**generated``."""

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(func).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        hints = typing.get_type_hints(func)
        own = [p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        generated = [p for group in groups for p in group]
        names = [p.name for p in generated] + [p.name for p in own]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise TypeError(f"{func.__name__} has options declared twice (its own or generated): {twice}")
        params = own + generated if own_first else generated + own
        func.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        func.__annotations__ = {p.name: p.annotation for p in params}
        return func

    return wrap


def config_command(
    model: type[BaseModel], flags: Mapping[str, Sequence[str]], *, skip: Iterable[str] = (), own_first: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command ``f(own options..., **fields)``: typer sees one option per field
    of ``model`` followed by ``f``'s own options (``own_first``: after them), and ``f`` gets
    the fields in ``**fields``."""
    return with_parameters(field_parameters(model, flags, skip=skip), own_first=own_first)


def check_overrides(model: type[BaseModel], values: Mapping[str, Any], *, prefix: str = "", where: str = "") -> None:
    """Check the given values (not None) of :func:`override_parameters`'s options against
    their fields' types and constraints before anything else runs: a bad one is the config's
    one line (``bad option {where}{field}: ...``), as when the whole config is validated."""
    from facsynth.errors import InputError

    for key, value in values.items():
        name = key.removeprefix(prefix)
        if value is None or not key.startswith(prefix) or name not in model.model_fields:
            continue
        field = model.model_fields[name]
        checked = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        try:
            TypeAdapter(checked).validate_python(value)
        except ValidationError as exc:
            raise InputError(f"bad option {where}{name}: {exc.errors(include_url=False)[0]['msg']}") from None
