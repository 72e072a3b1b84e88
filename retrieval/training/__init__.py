"""``landmarks train``: fitting the global descriptor to one's own labelled landmarks (docs/training.md).

Recognition stays retrieval: training changes only the descriptor (a learned whitening on frozen features, or a
fine-tuned backbone + neck with a sub-center ArcFace head that is dropped afterwards). Modules:

- :mod:`.checkpoint`: the ``model.pt`` format and the global configuration built from it;
- :mod:`.data`: the labelled training set (CSV + images, or an index's rows), its split held out by landmark;
- :mod:`.whiten`: the CPU route, learned whitening (Radenović et al.) on frozen descriptors;
- :mod:`.finetune`: the fine-tune route (local engine; resumable);
- :mod:`.ray_train`: the fine-tune route on Ray Train workers;
- :mod:`.run`: :func:`~.run.main`, the entry point the CLI calls (picks the route).
"""
