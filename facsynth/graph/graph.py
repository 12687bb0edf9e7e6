"""The synthesis graph: planner -> generator -> verifier, looping until the planner stops.

``build_graph(checkpointer)`` compiles it; ``graph`` (no checkpointer: LangGraph
Studio / ``langgraph dev`` brings its own) is what ``langgraph.json`` points at.

    START -> planner -(batch)-> generator -> verifier -(retries)-> generator
                    \\-(stop)-> END                    \\-(none)-> planner
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import START, StateGraph

from facsynth.graph.context import RunContext
from facsynth.graph.generator import generator
from facsynth.graph.planner import planner
from facsynth.graph.routing import after_planner, after_verifier
from facsynth.graph.state import SynthState
from facsynth.graph.verifier import verifier


def build_graph(checkpointer: Any = None) -> Any:
    builder = StateGraph(SynthState, context_schema=RunContext)
    builder.add_node("planner", planner)
    builder.add_node("generator", generator)
    builder.add_node("verifier", verifier)
    builder.add_edge(START, "planner")
    builder.add_conditional_edges("planner", after_planner)
    builder.add_edge("generator", "verifier")
    builder.add_conditional_edges("verifier", after_verifier)
    return builder.compile(checkpointer=checkpointer, name="facsynth")


graph = build_graph()
