"""The synthesis agent: a LangGraph state machine (planner -> generator -> verifier).

* :mod:`~facsynth.graph.state`, :mod:`~facsynth.graph.context`: small state, run resources;
* :mod:`~facsynth.graph.planner`, :mod:`~facsynth.graph.generator`,
  :mod:`~facsynth.graph.verifier`: one module per node;
* :mod:`~facsynth.graph.acceptance`: the whole acceptance rule (pure: the nodes gather its
  inputs, the store persists what it decides);
* :mod:`~facsynth.graph.routing`: the pure routing functions;
* :mod:`~facsynth.graph.graph`: the compiled ``graph`` (``langgraph.json`` points at it);
* :mod:`~facsynth.graph.runner`: prepare, execute and resume runs under a checkpointer.
"""
