"""HDF5 helpers shared by the index's file readers and writers (shards, segments, local sets, format 1).

Readers wrap h5py/OSError errors into IndexFormatError naming the file.

HDF5 file locking: HDF5 locks every file it opens (flock), and on a filesystem without lock support (some
NFS mounts, Lustre, some FUSE filesystems) opening fails with "unable to lock file". The index needs none of
it: each HDF5 file is written whole under a temporary name that no one else opens, renamed, and never written
again, and writers are serialised by ``writer.lock``. So :func:`h5_file` opens a file as HDF5 does by default
and, when HDF5 cannot lock it, opens it again with HDF5's locking off (logged once). ``HDF5_USE_FILE_LOCKING``
in the environment is left to HDF5 (``FALSE`` turns the locks off everywhere).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .manifest import IndexFormatError

logger = logging.getLogger(__name__)

COPY_CHUNK = 65_536  # rows per read/write when streaming arrays between files

_STR = h5py.string_dtype("utf-8")


def h5_file(path: Path, mode: str) -> h5py.File:
    """``h5py.File(path, mode)``; on a filesystem where HDF5 cannot lock the file, the same without HDF5's locks."""
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        if "lock" not in str(exc).lower() or os.environ.get("HDF5_USE_FILE_LOCKING"):
            raise
        if not _unlocked_warned:
            _unlocked_warned.append(str(path))
            logger.warning("HDF5 cannot lock %s (%s): opening the index's files without HDF5's locks (they are "
                           "immutable; set HDF5_USE_FILE_LOCKING=FALSE to skip the attempt)", path, exc)
        return h5py.File(path, mode, locking=False)


_unlocked_warned: list[str] = []


def open_h5(path: Path) -> h5py.File:
    """Open an HDF5 file read-only; IndexFormatError naming the file when it is truncated or not HDF5."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    try:
        return h5_file(path, "r")
    except OSError as e:
        raise IndexFormatError(f"{path}: cannot open HDF5 file (truncated or corrupt?): {e}") from e


def _dataset(f: h5py.File, name: str, path: Path, ndim: int, dtype: Any | None = None) -> h5py.Dataset:
    if name not in f or not isinstance(f[name], h5py.Dataset):
        raise IndexFormatError(f"{path}: dataset {name!r} missing")
    ds = f[name]
    if ds.ndim != ndim:
        raise IndexFormatError(f"{path}: dataset {name!r} has {ds.ndim} dimensions, expected {ndim}")
    if dtype is not None and ds.dtype != np.dtype(dtype):
        raise IndexFormatError(f"{path}: dataset {name!r} has dtype {ds.dtype}, expected {np.dtype(dtype)}")
    return ds


def _read_str(ds: h5py.Dataset, path: Path, a: int = 0, b: int | None = None) -> np.ndarray:
    try:
        return np.asarray(ds.asstr()[a:b], dtype=object)
    except (OSError, ValueError, TypeError) as e:
        raise IndexFormatError(f"{path}: cannot read strings from {ds.name!r}: {e}") from e


def _row_view(ds: h5py.Dataset, path: Path) -> Any:
    """A read-only numpy memmap of a contiguous dataset, else the h5py dataset itself.

    Memory-mapping avoids h5py's per-call overhead and lets random rows be read
    without loading the file; the page cache keeps hot rows in memory.
    """
    n = int(np.prod(ds.shape))
    offset = ds.id.get_offset() if n else None
    if offset is None or ds.compression is not None or ds.chunks is not None:
        return ds
    nbytes = n * ds.dtype.itemsize
    if offset + nbytes > path.stat().st_size:
        raise IndexFormatError(f"{path}: dataset {ds.name!r} extends past the end of the file (truncated?)")
    return np.memmap(path, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)


def _take_rows(view: Any, rows: np.ndarray) -> np.ndarray:
    """``view[rows]`` for a memmap or an h5py dataset (which needs sorted unique indices)."""
    if isinstance(view, np.ndarray):
        return np.asarray(view[rows])
    uniq, inverse = np.unique(rows, return_inverse=True)
    return np.asarray(view[uniq])[inverse] if len(uniq) else np.asarray(view[:0])
