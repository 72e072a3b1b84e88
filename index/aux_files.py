"""``aux/<name>.npz``: caller-owned arrays, saved atomically, never pickled.

(Not ``aux.py``: ``aux`` is a reserved file name on Windows.)
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from .manifest import IndexFormatError, atomic_output

AUX_DIR = "aux"

_AUX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_aux_name(name: str) -> None:
    if not isinstance(name, str) or not _AUX_RE.match(name):
        raise ValueError(f"aux name must match {_AUX_RE.pattern} (no path separators), got {name!r}")


def write_aux_file(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save arrays as ``.npz`` atomically (no pickled objects)."""
    if not isinstance(arrays, dict) or not arrays:
        raise ValueError("arrays must be a non-empty dict of name -> array")
    clean = {}
    for key, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype == object:
            raise ValueError(f"aux array {key!r} has dtype object; only numeric/string arrays are stored")
        clean[str(key)] = arr
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: numpy would otherwise append ".npz" to the temp name
            np.savez(f, **clean)


def read_aux_file(path: Path) -> dict[str, np.ndarray] | None:
    """Load an ``.npz`` written by :func:`write_aux_file`; None when absent."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise IndexFormatError(f"{path}: cannot read aux arrays (truncated or corrupt?): {e}") from e
