"""``facsynth chat RUN``: steer a run in conversation (interactive, or one message a line on stdin)."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.console import Console

from facsynth.cli.options import API_KEY_ENV, DB

console = Console(highlight=False, soft_wrap=True)

CHAT_BASE_URL = typer.Option(
    None, "--base-url", help="OpenAI-compatible endpoint of a tool-calling model for plain language (default: slash commands only)."
)
CHAT_MODEL = typer.Option("gpt-4o-mini", "--llm-model", help="The chat model's name at that endpoint.")


def chat_command(
    run_name: str = typer.Argument(..., help="The run to talk to (running in another process, or stopped)."),
    base_url: Optional[str] = CHAT_BASE_URL,
    llm_model: str = CHAT_MODEL,
    api_key_env: str = API_KEY_ENV,
    db: Optional[str] = DB,
) -> None:
    """Ask about a run and steer it: focus, exclude, style, target, budget, pause, review, undo."""
    from facsynth.chat.session import ChatSession
    from facsynth.db.store import open_store
    from facsynth.chat.steering import RunControl

    model = None
    if base_url is not None:
        from facsynth.agent.config import LLMConfig
        from facsynth.agent.llm import make_chat_model

        model = make_chat_model(LLMConfig(base_url=base_url, model=llm_model, api_key_env=api_key_env, temperature=0.0))
    with open_store(db) as store:
        session = ChatSession(RunControl(store, run_name), model)
        interactive = sys.stdin.isatty()
        if interactive:
            console.print(f"chat with run [bold]{run_name}[/] (/help for commands, /quit to leave)")
            console.print(session.send("/status"))
        while True:
            try:
                line = input("> " if interactive else "")
            except EOFError:
                break
            if line.strip().lower() in ("/quit", "/exit", "/q"):
                break
            if not interactive and line.strip():
                console.print(f"> {line.strip()}", markup=False)
            reply = session.send(line)
            if reply:
                console.print(reply, markup=False)


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_command)
