"""The instruments the synthesis graph and the chat call (no LLM here).

* reading text into SAE features: :mod:`~facsynth.tools.model`, :mod:`~facsynth.tools.sae`
  (load, import), :mod:`~facsynth.tools.sae_train`, :mod:`~facsynth.tools.encoder`,
  :mod:`~facsynth.tools.reader` (model + SAE + the store's cache), :mod:`~facsynth.tools.ray_read`;
* metrics: :mod:`~facsynth.tools.fac`, :mod:`~facsynth.tools.diversity`,
  :mod:`~facsynth.tools.measure` (``facsynth measure``), :mod:`~facsynth.tools.downstream`
  (``facsynth eval``);
* judging candidates: :mod:`~facsynth.tools.candidates` (the verifier tool: reading,
  duplicates), :mod:`~facsynth.tools.quality` (is it a usable sample of the task);
* the feature catalog: :mod:`~facsynth.tools.spans`, :mod:`~facsynth.tools.relevance`,
  :mod:`~facsynth.tools.catalog_files`;
* data in and out: :mod:`~facsynth.tools.datasets`, :mod:`~facsynth.tools.export`.

Below :mod:`facsynth.agent`, above :mod:`facsynth.db` (README "Architecture").
"""
