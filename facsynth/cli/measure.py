"""``facsynth measure``: FAC of a dataset."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
