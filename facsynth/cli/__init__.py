"""The ``facsynth`` command line.

Each verb group lives in its own module (``measure``, ``sae``, ``llm``); this module
assembles them and is the one place where expected errors become one line on stderr
and a non-zero exit.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console

from facsynth.errors import FacsynthError

app = typer.Typer(
    name="facsynth",
    help="Measure and fill the gaps of LLM post-training data in the model's own SAE feature space.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details to stderr.")) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _register() -> None:
    from facsynth.cli import chat, features, llm, measure, run, sae
    from facsynth.cli import eval as eval_cli

    measure.register(app)
    eval_cli.register(app)
    run.register(app)
    chat.register(app)
    app.add_typer(sae.app, name="sae", help="Import, train and inspect sparse autoencoders.")
    app.add_typer(llm.app, name="llm", help="The LLM endpoint: run the embedded llama.cpp server.")
    app.add_typer(features.app, name="features", help="The feature catalog: spans, explanations, task relevance.")


_register()


OPTIONAL_VALUE = {"--ray": "local"}
"""Options whose value may be left out (typer has no such option): the bare flag means this value."""


def _fill_optional_values(argv: list[str]) -> list[str]:
    """``--ray`` alone (last, or before another option) becomes ``--ray=local``."""
    out = []
    for i, arg in enumerate(argv):
        if arg in OPTIONAL_VALUE and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            arg = f"{arg}={OPTIONAL_VALUE[arg]}"
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> None:
    """Console entry point: expected errors print one line and exit non-zero."""
    try:
        app(args=_fill_optional_values(sys.argv[1:] if argv is None else argv), standalone_mode=False)
    except FacsynthError as exc:
        from rich.markup import escape

        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click's usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            err_console.print("aborted")
            sys.exit(1)
        raise
