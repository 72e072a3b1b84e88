"""Generated landmark photos for the demo (``landmarks demo --synthetic``), the tests and the benchmarks.

Kept out of ``retrieval/`` (which holds retrieval only). The same parameters and seed give
byte-identical images and CSVs on the same platform and library versions.

Modules, from the bottom up:

- :mod:`~synthetic.primitives`: random draws, colours, value noise, shapes and text;
- :mod:`~synthetic.style`: a landmark's kind, palette and wall material;
- :mod:`~synthetic.elements`: windows, cornices, portals, columns, roofs... on a facade canvas;
- :mod:`~synthetic.facades`: the front facade of each kind and the side wall (:func:`make_landmark`);
- :mod:`~synthetic.camera`: photo sizes, pinhole pose and homography, the sensor pipeline;
- :mod:`~synthetic.scenes`: sky, ground, distant skyline and occluders;
- :mod:`~synthetic.views`: a landmark photographed (:func:`render_view`);
- :mod:`~synthetic.distractors`: non-landmark photos (:func:`make_distractor`);
- :mod:`~synthetic.dataset`: the GLDv2-style data set writer (:func:`generate_demo_dataset`).
"""
from .dataset import DemoDataset, generate_demo_dataset
from .distractors import make_distractor
from .facades import make_landmark
from .views import render_view

__all__ = ["DemoDataset", "generate_demo_dataset", "make_distractor", "make_landmark", "render_view"]
