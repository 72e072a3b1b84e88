"""Vector math shared by the index and the extractors that fill it (arrays only: ``index/`` knows no images)."""
from __future__ import annotations

import numpy as np

EPS = 1e-12  # a norm below this counts as zero: the row stays zero instead of becoming NaN


def l2_normalize(x: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (all-zero rows stay zero). float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
