"""Files of an index directory other than the manifest, segments and the faiss index.

* ``shards/shard-XXXXXX.h5``: one extraction batch not yet committed: ``ids``,
  ``landmark_ids``, ``paths``, ``descriptors`` (float16) and optionally
  ``local_keypoints``, ``local_descriptors``, ``local_offsets`` (attr
  ``local_dim``) and ``local_sizes``.
* ``skipped.csv``: ``id,path,reason``, append-only (one line per skipped
  image, repeated ids allowed: the last reason wins); deduplicated at commit.
* ``aux/<name>.npz``: caller-owned arrays.
* Format 1 files, read only to upgrade an old index: ``global.h5`` (``ids``,
  ``descriptors``), ``local.h5`` (flat CSR ``keypoints``, ``descriptors``,
  ``offsets``), ``metadata.csv`` (``row,id,landmark_id,path``).

Readers wrap h5py/OSError/pandas errors into IndexFormatError naming the file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import re
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from .manifest import IndexFormatError, atomic_output, fsync_dir, fsync_file, TMP_SUFFIX

logger = logging.getLogger(__name__)

GLOBAL_NAME = "global.h5"
LOCAL_NAME = "local.h5"
METADATA_NAME = "metadata.csv"
FAISS_NAME = "faiss.index"
SHARDS_DIR = "shards"
SKIPPED_NAME = "skipped.csv"
AUX_DIR = "aux"
METADATA_COLUMNS = ["row", "id", "landmark_id", "path"]
SKIPPED_COLUMNS = ["id", "path", "reason"]
COPY_CHUNK = 65_536  # rows per read/write when streaming arrays between files

_STR = h5py.string_dtype("utf-8")
_SHARD_RE = re.compile(r"^shard-(\d{6,})\.h5$")
_SHARD_ANY_RE = re.compile(r"^shard-(\d{6,})\.h5")
_AUX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def open_h5(path: Path) -> h5py.File:
    """Open an HDF5 file read-only; IndexFormatError naming the file when it is truncated or not HDF5."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    try:
        return h5py.File(path, "r")
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


# --------------------------------------------------------------------------- tables


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


def read_skipped_rows(path: Path) -> dict[str, tuple[str, str]]:
    """``skipped.csv`` as {id: (path, reason)} in first-seen order, last reason winning ({} when absent).

    Lines that do not have three fields (e.g. a line cut by a kill) are ignored.
    """
    rows: dict[str, tuple[str, str]] = {}
    if not path.exists():
        return rows
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is not None and header != SKIPPED_COLUMNS:
                raise IndexFormatError(f"{path}: columns {header}, expected {SKIPPED_COLUMNS}")
            for rec in reader:
                if len(rec) == 3 and rec[0]:
                    rows[rec[0]] = (rec[1], rec[2])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise IndexFormatError(f"{path}: cannot parse skipped table: {e}") from e
    return rows


def read_skipped(path: Path) -> pd.DataFrame:
    """``skipped.csv`` deduplicated (empty table when absent)."""
    rows = read_skipped_rows(path)
    return pd.DataFrame([(k, p, r) for k, (p, r) in rows.items()], columns=SKIPPED_COLUMNS, dtype=object)


def append_skipped(path: Path, rows: dict[str, tuple[str, str]]) -> None:
    """Append rows to ``skipped.csv`` (O(new rows); fsynced). The caller holds the writer lock."""
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    new = not path.exists() or path.stat().st_size == 0
    if new:
        writer.writerow(SKIPPED_COLUMNS)
    for id_, (p, reason) in rows.items():
        writer.writerow([id_, p, reason])
    with open(path, "a+b") as f:
        if not new:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a line cut by a kill: end it so it stays one (ignored) line
                f.write(b"\n")
        f.write(buf.getvalue().encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def write_skipped(path: Path, rows: dict[str, tuple[str, str]]) -> None:
    """Replace ``skipped.csv`` atomically with ``rows`` (used to deduplicate it at commit)."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(SKIPPED_COLUMNS)
            for id_, (p, reason) in rows.items():
                writer.writerow([id_, p, reason])


# --------------------------------------------------------------------------- shards


def shard_number(path: Path) -> int | None:
    """Sequence number of a shard or shard temp file, None for other names."""
    m = _SHARD_ANY_RE.match(path.name)
    return int(m.group(1)) if m else None


def list_shards(shards_dir: Path) -> list[Path]:
    """Complete shards (temp files excluded), in sequence order."""
    if not shards_dir.is_dir():
        return []
    found = [p for p in shards_dir.iterdir() if _SHARD_RE.match(p.name)]
    return sorted(found, key=lambda p: int(_SHARD_RE.match(p.name).group(1)))


@dataclass
class ShardBatch:
    """One extraction batch for :meth:`~index.database.IndexDatabase.write_shard`: image ``i`` is row ``i`` of
    every field (checked there, with the index's dimensions).

    Attributes:
        ids, landmark_ids, paths: n strings each; ids non-empty, landmark_id "" = non-landmark.
        xb: ``(n, dim)`` float32 global descriptors (L2-normalised by write_shard and stored as float16).
        local_keypoints: per image ``(k_i, 4)`` float32 ``[x, y, scale, score]``, or None (no local features).
        local_descriptors: per image ``(k_i, d)`` float32/float16, or None; ``d`` fixed per index.
        local_sizes: optional ``(n, 2)`` int ``[width, height]`` of the image the local features were detected on
            (what ``local_image_size`` returns).
    """

    ids: Sequence[str]
    landmark_ids: Sequence[str]
    paths: Sequence[str]
    xb: np.ndarray
    local_keypoints: Sequence[np.ndarray] | None = None
    local_descriptors: Sequence[np.ndarray] | None = None
    local_sizes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def write_shard_file(
    shards_dir: Path,
    ids: list[str],
    landmark_ids: list[str],
    paths: list[str],
    desc16: np.ndarray,
    local: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    local_sizes: np.ndarray | None = None,
    seq: int | None = None,
) -> Path:
    """Write one batch as the next ``shard-XXXXXX.h5``; atomic and never overwriting another shard.

    The file is written under a unique temp name, fsynced, then hard-linked to
    the first free sequence number (``os.link`` fails if the name exists, so
    concurrent writers, e.g. Ray workers, cannot clobber each other), and the
    temp name removed. ``local`` is (keypoints (M, 4) float32, descriptors
    (M, d) float16, offsets (n+1,) int64). ``seq``: exactly this sequence number
    (FileExistsError naming the shard when it is taken: e.g. a retried task
    already published it).
    """
    shards_dir.mkdir(parents=True, exist_ok=True)
    tmp = shards_dir / f"shard-000000.h5.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["dim"] = desc16.shape[1]
            f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=_STR)
            f.create_dataset("landmark_ids", data=np.asarray(landmark_ids, dtype=object), dtype=_STR)
            f.create_dataset("paths", data=np.asarray(paths, dtype=object), dtype=_STR)
            f.create_dataset("descriptors", data=desc16)
            if local is not None:
                kp, ld, off = local
                f.attrs["local_dim"] = ld.shape[1]
                f.create_dataset("local_keypoints", data=kp)
                f.create_dataset("local_descriptors", data=ld)
                f.create_dataset("local_offsets", data=off)
                if local_sizes is not None:
                    f.create_dataset("local_sizes", data=np.asarray(local_sizes, dtype=np.int32))
        fsync_file(tmp)
        fixed = seq is not None
        if not fixed:
            existing = [n for n in (shard_number(p) for p in shards_dir.iterdir()) if n is not None]
            seq = max(existing, default=-1) + 1
        while True:
            final = shards_dir / f"shard-{seq:06d}.h5"
            try:
                os.link(tmp, final)
                break
            except FileExistsError:
                if fixed:
                    raise FileExistsError(f"{final} already exists") from None
                seq += 1
            except OSError:  # filesystem without hard links: plain rename (single writer assumed)
                if final.exists():
                    if fixed:
                        raise FileExistsError(f"{final} already exists") from None
                    seq += 1
                    continue
                os.replace(tmp, final)
                break
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(shards_dir)
    return final


class ShardReader:
    """Reads one shard file; errors name the shard."""

    def __init__(self, path: Path):
        self.path = path
        with open_h5(path) as f:
            try:
                self.ids = _read_str(_dataset(f, "ids", path, 1), path)
                self.n = len(self.ids)
                desc = _dataset(f, "descriptors", path, 2, np.float16)
                self.dim = int(desc.shape[1])
                if desc.shape[0] != self.n:
                    raise IndexFormatError(f"{path}: {self.n} ids but {desc.shape[0]} descriptors")
                self.has_local = "local_offsets" in f
                self.has_sizes = "local_sizes" in f
                self.local_dim = int(f.attrs["local_dim"]) if self.has_local else None
                self.local_offsets = (
                    np.asarray(_dataset(f, "local_offsets", path, 1, np.int64)[()])
                    if self.has_local
                    else None
                )
            except (KeyError, OSError) as e:
                raise IndexFormatError(f"{path}: unreadable shard: {e}") from e
        if self.local_offsets is not None and len(self.local_offsets) != self.n + 1:
            raise IndexFormatError(
                f"{path}: local_offsets has {len(self.local_offsets)} entries, expected {self.n + 1}"
            )

    def landmark_ids(self) -> np.ndarray:
        """The shard's landmark ids, in row order."""
        with open_h5(self.path) as f:
            try:
                return _read_str(f["landmark_ids"], self.path)
            except (KeyError, OSError) as e:
                raise IndexFormatError(f"{self.path}: unreadable shard: {e}") from e

    def read(self, keep: np.ndarray) -> dict[str, np.ndarray]:
        """Arrays of the rows where ``keep`` (bool, (n,)) is true, local features concatenated."""
        out: dict[str, np.ndarray] = {}
        with open_h5(self.path) as f:
            try:
                out["ids"] = self.ids[keep]
                out["landmark_ids"] = _read_str(f["landmark_ids"], self.path)[keep]
                out["paths"] = _read_str(f["paths"], self.path)[keep]
                out["descriptors"] = np.asarray(f["descriptors"][()])[keep]
                if self.has_local:
                    counts = np.diff(self.local_offsets)
                    kp = np.asarray(f["local_keypoints"][()])
                    ld = np.asarray(f["local_descriptors"][()])
                    if kp.shape[0] != self.local_offsets[-1] or ld.shape[0] != self.local_offsets[-1]:
                        raise IndexFormatError(f"{self.path}: local arrays do not match local_offsets")
                    feat_keep = np.repeat(keep, counts)  # per-feature mask from the per-image mask
                    out["local_counts"] = counts[keep]
                    out["local_keypoints"] = kp[feat_keep]
                    out["local_descriptors"] = ld[feat_keep]
                    if "local_sizes" in f:
                        out["local_sizes"] = np.asarray(f["local_sizes"][()])[keep]
            except (KeyError, OSError) as e:
                raise IndexFormatError(f"{self.path}: unreadable shard: {e}") from e
        return out


# --------------------------------------------------------------------------- aux


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
