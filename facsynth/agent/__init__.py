"""Everything that talks to an LLM.

* :mod:`~facsynth.agent.config`: where calls go and how (``LLMConfig``, ``ServerConfig``);
* :mod:`~facsynth.agent.llm`: the client every call goes through (bounded, retried on the
  least busy endpoint, recorded, cached, parsed);
* :mod:`~facsynth.agent.server`: the embedded llama.cpp server (portable build check);
* :mod:`~facsynth.agent.writers`: stronger local writer models assembled from PyPI parts;
* :mod:`~facsynth.agent.tasks`: task presets (definition, criteria, sample format, labels);
* :mod:`~facsynth.agent.explain`: feature explanations, their checks and task relevance.

Below :mod:`facsynth.graph` and :mod:`facsynth.chat`, above :mod:`facsynth.tools` and
:mod:`facsynth.db` (README "Architecture").
"""
