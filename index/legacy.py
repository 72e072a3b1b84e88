"""Format 1 files, read only to upgrade an old index.

* ``global.h5``: ``ids``, ``descriptors`` (float16).
* ``local.h5``: flat CSR ``keypoints``, ``descriptors``, ``offsets``.
* ``metadata.csv``: ``row,id,landmark_id,path``.
* ``faiss.index``: the format 1 FAISS index.

Readers wrap h5py/OSError/pandas errors into IndexFormatError naming the file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .hdf5 import _dataset, _read_str, _row_view, _take_rows, open_h5
from .manifest import IndexFormatError

GLOBAL_NAME = "global.h5"
LOCAL_NAME = "local.h5"
METADATA_NAME = "metadata.csv"
FAISS_NAME = "faiss.index"
METADATA_COLUMNS = ["row", "id", "landmark_id", "path"]

# --------------------------------------------------------------------------- global.h5


class GlobalStore:
    """Read-only view of ``global.h5``; descriptors memory-mapped (float16)."""

    def __init__(self, path: Path, dim: int):
        self.path = path
        self._f = open_h5(path)
        try:
            ids = _dataset(self._f, "ids", path, 1)
            desc = _dataset(self._f, "descriptors", path, 2, np.float16)
            if desc.shape[1] != dim:
                raise IndexFormatError(f"{path}: descriptors have dim {desc.shape[1]}, manifest says {dim}")
            if ids.shape[0] != desc.shape[0]:
                raise IndexFormatError(f"{path}: {ids.shape[0]} ids but {desc.shape[0]} descriptors")
            self._ids_ds = ids
            self.n = int(desc.shape[0])
            self.dim = dim
            self._desc = _row_view(desc, path)
        except BaseException:
            self._f.close()
            raise
        self._ids: np.ndarray | None = None

    def ids(self) -> np.ndarray:
        """All ids as an object array of str (cached)."""
        if self._ids is None:
            self._ids = _read_str(self._ids_ds, self.path)
        return self._ids

    @property
    def descriptors(self) -> Any:
        """(N, dim) float16 memmap (or h5py dataset): slice it, do not mutate it."""
        return self._desc

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """float16 descriptors of ``rows`` (any order, duplicates allowed)."""
        return _take_rows(self._desc, np.asarray(rows, dtype=np.int64))

    def close(self) -> None:
        self._desc = None
        with contextlib.suppress(Exception):
            self._f.close()


# --------------------------------------------------------------------------- local.h5


class LocalStore:
    """Read-only, random-access view of ``local.h5`` restricted to the first ``n_rows`` images.

    Offsets are read once; keypoints/descriptors are memory-mapped, so
    :meth:`get` costs two small slices. A file with more images than
    ``n_rows`` (written ahead of global.h5 by an interrupted commit) is accepted
    and truncated in this view.
    """

    def __init__(self, path: Path, n_rows: int):
        self.path = path
        self._f = open_h5(path)
        try:
            kp = _dataset(self._f, "keypoints", path, 2, np.float32)
            desc = _dataset(self._f, "descriptors", path, 2, np.float16)
            off = _dataset(self._f, "offsets", path, 1, np.int64)
            if kp.shape[1] != 4 or kp.shape[0] != desc.shape[0]:
                raise IndexFormatError(f"{path}: keypoints {kp.shape} do not match descriptors {desc.shape}")
            self.dim = int(self._f.attrs.get("dim", desc.shape[1]))
            if self.dim != desc.shape[1]:
                raise IndexFormatError(f"{path}: attr dim={self.dim} but descriptors have {desc.shape[1]}")
            self.n_file = int(off.shape[0]) - 1
            if self.n_file < n_rows:
                raise IndexFormatError(
                    f"{path}: offsets cover {max(self.n_file, 0)} images but global.h5 has {n_rows} rows"
                )
            try:
                self.offsets = np.asarray(off[: n_rows + 1])
            except OSError as e:
                raise IndexFormatError(f"{path}: cannot read offsets: {e}") from e
            if (
                self.offsets[0] != 0
                or np.any(np.diff(self.offsets) < 0)
                or self.offsets[-1] > kp.shape[0]
            ):
                raise IndexFormatError(f"{path}: offsets are not a valid CSR index into {kp.shape[0]} rows")
            self.n = n_rows
            self.n_features = int(self.offsets[-1])
            self._kp = _row_view(kp, path)
            self._desc = _row_view(desc, path)
        except BaseException:
            self._f.close()
            raise

    def get(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(keypoints (k, 4) float32, descriptors (k, d) float32) of image ``row``."""
        if not 0 <= row < self.n:
            raise IndexError(f"row {row} out of range for {self.n} images")
        a, b = int(self.offsets[row]), int(self.offsets[row + 1])
        return np.array(self._kp[a:b], dtype=np.float32), np.array(self._desc[a:b], dtype=np.float32)

    def feature_slice(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw (keypoints float32, descriptors float16) of feature rows a:b (for copying)."""
        return np.asarray(self._kp[a:b]), np.asarray(self._desc[a:b])

    def close(self) -> None:
        self._kp = self._desc = None
        with contextlib.suppress(Exception):
            self._f.close()


# --------------------------------------------------------------------------- metadata.csv


def read_metadata(path: Path) -> pd.DataFrame:
    """Read ``metadata.csv`` as strings (``row`` as int64); IndexFormatError naming the file if malformed."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise IndexFormatError(f"{path}: cannot parse metadata table: {e}") from e
    if list(df.columns) != METADATA_COLUMNS:
        raise IndexFormatError(f"{path}: columns {list(df.columns)}, expected {METADATA_COLUMNS}")
    try:
        df["row"] = df["row"].astype(np.int64)
    except ValueError as e:
        raise IndexFormatError(f"{path}: non-integer row numbers: {e}") from e
    if not np.array_equal(df["row"].to_numpy(), np.arange(len(df))):
        raise IndexFormatError(f"{path}: rows are not 0..{len(df) - 1} in order")
    return df


def empty_metadata() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=object) for c in METADATA_COLUMNS})
    df["row"] = df["row"].astype(np.int64)
    return df
