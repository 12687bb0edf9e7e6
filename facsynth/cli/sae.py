"""``facsynth sae ...``: import, train and inspect SAEs."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
