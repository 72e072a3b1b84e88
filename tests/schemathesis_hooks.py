"""Schemathesis hooks for ``tests/test_service_schema.py`` (loaded with SCHEMATHESIS_HOOKS=tests.schemathesis_hooks).

The OpenAPI document says an upload is an ``image/jpeg`` or ``image/png`` file; these strategies
make Schemathesis send real ones: small generated pictures of any size from 16 px (the documented least) to 320 px, and the
photos listed in LANDMARKS_ST_PHOTOS (os.pathsep-separated paths), so that requests valid by the
schema are recognised, not refused as "not an image".
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import schemathesis
from hypothesis import strategies as st

MIN_SIDE = 16  # the documented least shorter side (retrieval.image_io.DEFAULT_MIN_SIDE)
PHOTOS = [p for p in os.environ.get("LANDMARKS_ST_PHOTOS", "").split(os.pathsep) if p]


def _picture(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), rng.integers(0, 256, 3), np.uint8)
    for _ in range(int(rng.integers(0, 12))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        cv2.rectangle(img, (x, y), (x + int(rng.integers(2, 80)), y + int(rng.integers(2, 80))),
                      tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
    return img


def _encoded(ext: str) -> st.SearchStrategy[bytes]:
    generated = st.builds(
        lambda w, h, seed: cv2.imencode(ext, _picture(w, h, seed))[1].tobytes(),
        st.integers(MIN_SIDE, 320), st.integers(MIN_SIDE, 320), st.integers(0, 2**16),
    )
    if not PHOTOS:
        return generated
    photos = [cv2.imencode(ext, cv2.imread(p))[1].tobytes() for p in PHOTOS]
    return st.one_of(generated, st.sampled_from(photos))


schemathesis.openapi.media_type("image/jpeg", _encoded(".jpg"))
schemathesis.openapi.media_type("image/png", _encoded(".png"))
