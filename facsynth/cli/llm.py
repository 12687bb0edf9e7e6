"""``facsynth llm ...``: the LLM endpoint.

``facsynth llm serve`` runs the embedded llama.cpp server (the bundled SmolLM2-135M GGUF
unless ``--model`` names another) for other tools, prints its base URL(s) and serves
until Ctrl-C; the server processes stop with it. ``facsynth llm totals`` reports the LLM
calls recorded in the store.
"""

from __future__ import annotations

import time

import typer
from rich.console import Console

from facsynth.cli.options import DB

app = typer.Typer(no_args_is_help=True)
console = Console(stderr=True)  # stdout carries only the base URLs


@app.callback()
def _llm() -> None:
    """The LLM endpoint facsynth talks to."""


@app.command("serve")
def serve_command(
    port: int | None = typer.Option(None, "--port", "-p", help="Port of the first instance (default: a free one)."),
    model: str | None = typer.Option(None, "--model", "-m", help="A writer (qwen2.5-coder-1.5b, qwen2.5-coder-0.5b), a GGUF file or a model alias (default: bundled SmolLM2-135M-Instruct)."),
    alias: str | None = typer.Option(None, "--alias", help="Model name the server answers to (default: the writer's name, else smollm2-135m-instruct)."),
    instances: int = typer.Option(1, "--instances", "-n", min=1, max=16, help="Server processes (each answers one request at a time)."),
    threads: int = typer.Option(1, "--threads", "-t", min=1, help="CPU threads per instance (1 unless the machine is otherwise idle)."),
    n_ctx: int = typer.Option(2048, "--n-ctx", min=128, help="Context window per instance, in tokens."),
) -> None:
    """Run llama.cpp's OpenAI-compatible server on 127.0.0.1 until Ctrl-C."""
    from facsynth.agent.config import ServerConfig
    from facsynth.agent.server import EmbeddedServer

    from facsynth.agent.writers import is_writer

    alias = alias or (model if is_writer(model) else "smollm2-135m-instruct")
    cfg = ServerConfig(gguf=model, instances=instances, threads_per_instance=threads, n_ctx=n_ctx)
    server = EmbeddedServer(cfg, model_alias=alias, port=port)
    with console.status("starting llama.cpp server"):
        server.start()
    try:
        console.print(f"model [bold]{alias}[/] ({instances} instance(s)); base URL(s), OpenAI-compatible:", highlight=False)
        for url in server.base_urls:
            typer.echo(url)
        console.print("Ctrl-C stops the server.", style="dim")
        while True:
            time.sleep(0.5)
            server.check_alive()
    finally:
        server.stop()


@app.command("totals")
def totals_command(
    db: str | None = DB,
    run: str | None = typer.Option(None, "--run", help="Only the calls of this run id."),
) -> None:
    """LLM calls recorded in the store: counts by outcome, tokens, latency."""
    from rich.table import Table

    from facsynth.db import open_store

    store = open_store(db)
    try:
        totals = store.llm_totals(run)
    finally:
        store.close()
    table = Table(title=f"LLM calls{f' of run {run}' if run else ''}", caption=store.url, show_header=False)
    table.add_row("calls", str(totals["calls"]))
    for outcome, n in totals["by_outcome"].items():
        table.add_row(f"  {outcome}", str(n))
    table.add_row("tokens in", str(totals["tokens_in"]))
    table.add_row("tokens out", str(totals["tokens_out"]))
    table.add_row("latency (s)", f"{totals['latency_s']:.1f}")
    Console().print(table)
