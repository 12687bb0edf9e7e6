"""``facsynth sae ...``: import, train and inspect SAEs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command("import")
def import_cmd(
    src: Path = typer.Argument(..., help="The authors' checkpoint (.pth: {'weight': {W_enc, b_enc, b_dec, mask}, 'config': {d_inp, d_hide}})."),
    out: Path = typer.Argument(..., help="Directory to write the sae-lens SAE to."),
    model: Optional[str] = typer.Option(None, "--model", help="Model the SAE was trained on (recorded in its metadata)."),
    layer: Optional[int] = typer.Option(None, "--layer", help="0-based decoder block whose output the SAE reads."),
    k: Optional[int] = typer.Option(None, "--k", help="TopK k (default: the checkpoint's topK, else 20, the authors' final k)."),
) -> None:
    """Convert the authors' TopK checkpoint (tied decoder) to sae-lens format."""
    from facsynth.tools.sae import import_authors_checkpoint, load_sae

    folder = import_authors_checkpoint(src, out, model_name=model, layer=layer, k=k)
    sae = load_sae(folder)
    console.print(f"wrote {folder}: width {sae.d_sae}, d_in {sae.d_in}, k {sae.k}, model {sae.model_name or '?'}, layer {_opt(sae.layer)}")


@app.command("train")
def train_cmd(
    corpus: list[Path] = typer.Option(..., "--corpus", help="Text file (documents split by blank lines) or JSONL with 'text' or 'messages' rows; repeat to train on several."),
    out: Path = typer.Option(..., "--out", help="Directory to write the SAE to."),
    model: str = typer.Option("default", "--model", help="Subject model: 'default', a .gguf file, a model directory or a hub id."),
    layer: int = typer.Option(15, "--layer", help="0-based decoder block whose output the SAE reads."),
    width: int = typer.Option(4096, "--width", help="Number of SAE features."),
    k: int = typer.Option(32, "--k", help="Active features per token under TopK."),
    tokens: int = typer.Option(1_500_000, "--tokens", help="Training tokens (epochs over the corpus as needed)."),
    context_size: int = typer.Option(256, "--context-size", help="Tokens per sample at most."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
    batch_size: int = typer.Option(256, "--batch-size", help="Activation vectors per training step."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    holdout: float = typer.Option(0.1, "--holdout", help="Share of samples held out for the reported figures."),
    seed: int = typer.Option(0, "--seed", help="Random seed (held-out split, initialisation, batch order)."),
) -> None:
    """Train a TopK SAE with sae-lens on a local corpus; report its quality on held-out tokens."""
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # sae-lens's own bars would fight the rich progress below
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from facsynth.tools.model import resolve_device
    from facsynth.tools.sae_train import TrainConfig, train_sae

    cfg = TrainConfig(
        corpus=corpus,
        out=out,
        model=model,
        layer=layer,
        width=width,
        k=k,
        tokens=tokens,
        context_size=context_size,
        lr=lr,
        batch_size=batch_size,
        device=str(resolve_device(device)),
        holdout=holdout,
        seed=seed,
    )
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task("model activations" if stage == "activations" else "SAE training steps", total=total)
            bar.update(tasks[stage], completed=done)

        report = train_sae(cfg, progress=progress)
    q = report.quality
    console.print(
        f"wrote {report.out}: width {width}, k {k}, model {report.sae.model_name}, layer {report.sae.layer}; "
        f"corpus {report.corpus_samples} samples / {report.corpus_tokens} content tokens; "
        f"trained on {report.train_tokens} tokens ({report.epochs:.1f} epochs) in {report.seconds:.0f} s"
    )
    table = Table(title=f"held-out quality ({q.eval_samples} samples, {q.eval_tokens} tokens)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("explained variance", f"{q.explained_variance:.3f}")
    table.add_row("L0 (TopK)", f"{q.l0_topk:.1f}")
    table.add_row("L0 (relu reading)", f"{q.l0_relu:.1f}")
    table.add_row("dead fraction (TopK)", f"{q.dead_fraction:.3f}")
    table.add_row("dead fraction (relu)", f"{q.dead_fraction_relu:.3f}")
    console.print(table)


@app.command("info")
def info_cmd(
    sae: str = typer.Argument("default", help="'default', an SAE directory or release:sae_id."),
) -> None:
    """Show an SAE's width, input size, model, layer, recommended reading and quality figures."""
    from facsynth.tools.sae import load_sae

    s = load_sae(sae)
    table = Table(title=f"SAE {s.name}", show_header=False)
    table.add_column("key")
    table.add_column("value")
    rows = [
        ("path", str(s.path) if s.path else "-"),
        ("hash", s.hash),
        ("architecture", s.architecture),
        ("width (d_sae)", str(s.d_sae)),
        ("d_in", str(s.d_in)),
        ("k", _opt(s.k)),
        ("model", s.model_name or "-"),
        ("layer", _opt(s.layer)),
        ("hook", s.hook_name or "-"),
        ("activation", s.activation),
        ("recommended delta", _opt(s.recommended_delta)),
    ]
    facts = s.facts
    corpus = facts.get("corpus")
    if isinstance(corpus, dict):
        rows.append(("corpus", ", ".join(f"{k} {v}" for k, v in corpus.items())))
    training = facts.get("training")
    if isinstance(training, dict):
        rows.append(("training", ", ".join(f"{k} {v}" for k, v in training.items() if k != "trainer")))
    for key, value in (facts.get("quality") or {}).items():
        rows.append((f"quality: {key}", str(value)))
    if facts.get("command"):
        rows.append(("trained with", str(facts["command"])))
    if facts.get("source"):
        rows.append(("source", str(facts["source"])))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def _opt(value: object) -> str:
    return "-" if value is None else str(value)
