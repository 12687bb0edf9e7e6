"""Command options generated from a pydantic config: one field, one option, one default.

A command that fills a config model (``facsynth run`` and :class:`~facsynth.graph.config.RunConfig`)
declares only the options that are not fields; :func:`config_command` adds one option per
field, with the field's default, its docstring's first sentence as help and its choices,
and the config's own validation checks the values (one clear line on a bad one).
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Optional

import typer
from pydantic import BaseModel

_RST = re.compile(r":[a-z]+:`~?([^`]+)`|``([^`]+)``")


def field_help(description: str | None) -> str:
    """The first sentence of a field's docstring, without reST markup."""
    if not description:
        return ""
    text = _RST.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(1) else m.group(2), description)
    text = " ".join(text.split())
    end = re.search(r"(?<=[a-z0-9)])\. (?=[A-Z])", text)
    return text[: end.start() + 1] if end else text


def _cli_type(annotation: Any) -> tuple[Any, tuple[str, ...]]:
    """A type typer reads, and the choices of a Literal (``X | None`` stays optional); the
    config's validation checks a choice, so a bad one is one clear line like any bad value."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        inner, choices = _cli_type(next(a for a in args if a is not type(None)))
        return Optional[inner], choices  # noqa: UP045 - typer reads typing.Optional on every Python
    if typing.get_origin(annotation) is Literal:
        return str, tuple(str(a) for a in args)
    return annotation, ()


def field_parameters(
    model: type[BaseModel], flags: Mapping[str, Sequence[str]], *, skip: Iterable[str] = ()
) -> list[inspect.Parameter]:
    """One keyword parameter per field of ``model`` (but ``skip``), in field order, whose
    default is a ``typer.Option`` with the field's default (required fields: required),
    its flags (``flags[name]``, else ``--name-with-dashes``), help and choices."""
    params = []
    skipped = set(skip)
    for name, field in model.model_fields.items():
        if name in skipped:
            continue
        if field.default_factory is not None:
            raise TypeError(f"{model.__name__}.{name} has a default factory: skip it and give its own options")
        annotation, choices = _cli_type(field.annotation)
        default = ... if field.is_required() else field.default
        option_flags = tuple(flags.get(name, ("--" + name.replace("_", "-"),)))
        extra: dict[str, Any] = {"metavar": "|".join(choices)} if choices else {}
        option = typer.Option(default, *option_flags, help=field_help(field.description), **extra)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
    return params


def config_command(
    model: type[BaseModel], flags: Mapping[str, Sequence[str]], *, skip: Iterable[str] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command ``f(own options..., **fields)``: typer sees ``f``'s own options
    followed by one option per field of ``model``, and ``f`` gets the fields in ``**fields``."""

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(func).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        hints = typing.get_type_hints(func)
        own = [p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        generated = field_parameters(model, flags, skip=skip)
        clash = {p.name for p in own} & {p.name for p in generated}
        if clash:
            raise TypeError(f"{func.__name__} declares config fields itself: {sorted(clash)}")
        func.__signature__ = inspect.Signature(generated + own)  # type: ignore[attr-defined]
        func.__annotations__ = {p.name: p.annotation for p in generated + own}
        return func

    return wrap
