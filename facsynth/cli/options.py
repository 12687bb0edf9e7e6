"""Options that several commands share, declared once."""

from __future__ import annotations

import typer

DB = typer.Option(
    None, "--db", envvar="FACSYNTH_DB", show_envvar=True,
    help="SQLAlchemy URL of the store (default: sqlite:///facsynth.db in the working directory).",
)
API_KEY_ENV = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key (never stored).")
