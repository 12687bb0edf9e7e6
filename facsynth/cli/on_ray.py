"""``--ray [ADDRESS]`` and ``--ray-actors`` for the verbs that read a corpus (measure, features collect)."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import typer
from rich.console import Console

RAY = typer.Option(
    None, "--ray", metavar="[ADDRESS]",
    help="Read on Ray actors. Alone: a local Ray instance on this machine's cores; 'auto', HOST:PORT "
    "or ray://HOST:PORT: a running cluster. Same store rows and FAC as without. Needs the ray extra.",
)
RAY_ACTORS = typer.Option(
    None, "--ray-actors", min=1, help="Ray actors, each with its own model and SAE (default: one per GPU, else one per CPU)."
)


def join_ray(stack: ExitStack, address: str | None, console: Console) -> bool:
    """Start or join Ray for the rest of ``stack`` (shut down when it closes); False without ``--ray``.

    Done before the model loads, so an unreachable cluster fails in seconds.
    """
    if address is None:
        return False
    from facsynth.tools.ray_read import LOCAL, ray_session

    with console.status("starting a local Ray instance" if address == LOCAL else f"connecting to Ray at {address}"):
        stack.enter_context(ray_session(address))
    return True


def ray_pool(reader: Any, actors: int | None, console: Console) -> Any:
    """The pool of Ray actors that reads for ``reader`` (a :class:`facsynth.tools.reader.Reader`)."""
    from facsynth.tools.ray_read import EncoderPool

    pool = EncoderPool(reader.encoder, actors=actors)
    n, cpus, gpus = pool.layout()
    each = f"{cpus:g} CPU" + (f" and {gpus:g} GPU" if gpus else "")
    console.print(f"reading on Ray: up to {n} actor(s), {each} each", highlight=False)
    return pool
