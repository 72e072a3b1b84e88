"""From images to decisions: everything that turns a photo into descriptors, neighbours and an answer.

The pipeline, by module (the CLI's commands call these through ``engines/`` and ``eval/``):

- images in: :mod:`.image_io` (every file decodes to RGB or raises ``ImageError``), :mod:`.data` (reference
  collections as CSVs or folders);
- the global stage: :mod:`.backbones` (timm models and offline weights), :mod:`.global_model` (GeM descriptors),
  :mod:`.global_rerank` (query expansion and re-ranking, Python API only), :mod:`.neighbours` (``query``);
- local features: :mod:`.registry` (the named configurations, ``--local-conf``), :mod:`.local_features` (RootSIFT,
  DELF, ALIKED, XFeat), :mod:`.learned_models` (the packaged ALIKED/XFeat/LightGlue weights), :mod:`.matching`
  (matching and RANSAC), :mod:`.asmk` (local-feature retrieval);
- building an index: :mod:`.extract` (the ``build-index`` stage over the index writer);
- recognising: :mod:`.recognize` (kNN voting, the verification cascade), :mod:`.decision` (the pure decision
  rule every command shares), :mod:`.defaults` (the shipped defaults), :mod:`.visualize` (``show-matches``);
- :mod:`.training`: ``landmarks train``, fitting the global descriptor to one's own landmarks.
"""
