"""facsynth: measure and fill the gaps of LLM post-training data in the model's own feature space.

The Python API mirrors the CLI::

    import facsynth
    report = facsynth.measure("seed.jsonl", anchor="anchor.jsonl")
    print(report.at(report.coverage[0].delta).fac)
    run = facsynth.synthesize("seed.jsonl", task="instruction-following", anchor="anchor.jsonl", target_fac=0.65)
    print(run.fac_before, run.fac_after)
    ev = facsynth.evaluate("seed.jsonl", "test.jsonl", add=["export.jsonl"])
    print(ev.auprc)

Heavy modules (torch, transformers) load on first use, not on ``import facsynth``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "measure", "Reader", "MeasureReport", "evaluate", "EvalReport", "synthesize", "resume", "export_run", "coverage_report", "open_chat",
    "load_dataset", "load_sae", "load_model", "FacsynthError",
]

from facsynth.errors import FacsynthError

if TYPE_CHECKING:
    from facsynth.chat.session import open_chat
    from facsynth.tools.export import export_run
    from facsynth.graph.api import resume, synthesize
    from facsynth.graph.report import coverage_report
    from facsynth.tools.datasets import load_dataset
    from facsynth.tools.downstream import EvalReport, evaluate
    from facsynth.tools.measure import MeasureReport, measure
    from facsynth.tools.reader import Reader
    from facsynth.tools.model import load as load_model
    from facsynth.tools.sae import load_sae

_LAZY = {
    "measure": ("facsynth.tools.measure", "measure"),
    "Reader": ("facsynth.tools.reader", "Reader"),
    "MeasureReport": ("facsynth.tools.measure", "MeasureReport"),
    "evaluate": ("facsynth.tools.downstream", "evaluate"),
    "EvalReport": ("facsynth.tools.downstream", "EvalReport"),
    "synthesize": ("facsynth.graph.api", "synthesize"),
    "resume": ("facsynth.graph.api", "resume"),
    "export_run": ("facsynth.tools.export", "export_run"),
    "coverage_report": ("facsynth.graph.report", "coverage_report"),
    "open_chat": ("facsynth.chat.session", "open_chat"),
    "load_dataset": ("facsynth.tools.datasets", "load_dataset"),
    "load_sae": ("facsynth.tools.sae", "load_sae"),
    "load_model": ("facsynth.tools.model", "load"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'facsynth' has no attribute {name!r}")
