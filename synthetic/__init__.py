"""Generated landmark photos for the demo (``landmarks demo --synthetic``), the tests and the benchmarks.

Kept out of ``retrieval/`` (which holds retrieval only). The generator lives in
:mod:`synthetic.photos`; its public entry points are re-exported here.
"""
from .photos import DemoDataset, generate_demo_dataset, make_distractor, make_landmark, render_view

__all__ = ["DemoDataset", "generate_demo_dataset", "make_distractor", "make_landmark", "render_view"]
