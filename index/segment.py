"""Segments: the immutable, append-only unit of committed rows (``segments/seg-NNNNNN-<random>.h5``).

A commit writes one new segment holding its rows' global descriptors, local
features and metadata, and publishes it by naming it in the manifest; nothing
already committed is rewritten. ``compact`` merges segments into one.

One HDF5 file per segment, every dataset contiguous (memory-mapped on read, so
opening a segment reads no rows; a query reads just the rows it needs)::

    attrs            format=2, n, dim, local_dim (0: no local features), id_hash="blake2b-64"
    descriptors      (n, dim) float16, L2-normalised
    ids_bytes        (B,) uint8: UTF-8 ids, concatenated;  ids_offsets (n+1,) int64
    paths_bytes      (B',) uint8;                          paths_offsets (n+1,) int64
    landmark_codes   (n,) int32 into landmark_values (L,) UTF-8 strings ("" = non-landmark)
    id_hash          (n,) uint64, sorted: 64-bit BLAKE2b of each id;  id_hash_rows (n,) int64 (row in segment)
    local_offsets    (n+1,) int64, CSR into local_keypoints (M, 4) float32 [x, y, scale, score]
                     and local_descriptors (M, d) float16          (only when local_dim > 0)
    local_sizes      (n, 2) int32 [width, height] of the image features were detected on (optional; 0 = unknown)

Id lookups (resume, duplicate checks) binary-search ``id_hash`` and confirm the
id string, so they cost O(log n) per id and never load all ids.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .manifest import IndexFormatError, fsync_dir, fsync_file, tmp_path
from .hdf5 import _STR, _dataset, _row_view, _take_rows, h5_file, open_h5

SEGMENTS_DIR = "segments"
SEGMENT_FORMAT = 2
ID_HASH = "blake2b-64"
BYTES_CHUNK = 1 << 24  # bytes per chunk when copying string blobs


def hash_ids(ids: Sequence[str]) -> np.ndarray:
    """64-bit BLAKE2b of each id (UTF-8), as uint64: stable across Python/numpy/pandas versions."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little") for s in ids),
        dtype=np.uint64, count=len(ids),
    )


def encode_strings(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(concatenated UTF-8 bytes as uint8, byte length of each value as int64)."""
    encoded = [str(v).encode("utf-8") for v in values]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), lengths


def decode_strings(blob: Any, offsets: Any, rows: np.ndarray) -> np.ndarray:
    """Object array of the strings at ``rows`` of a (blob, offsets) column."""
    out = np.empty(len(rows), dtype=object)
    for i, r in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
        a, b = int(offsets[r]), int(offsets[r + 1])
        out[i] = bytes(np.asarray(blob[a:b])).decode("utf-8")
    return out


def decode_all(blob: Any, offsets: Any) -> np.ndarray:
    """Every string of a (blob, offsets) column (O(n) Python strings: for whole-table views only)."""
    data = np.asarray(blob[:]).tobytes()
    off = np.asarray(offsets[:]).tolist()
    return np.array([data[a:b].decode("utf-8") for a, b in zip(off[:-1], off[1:])], dtype=object)


class SegmentWriter:
    """Streams rows into a new segment file whose row and feature counts are known up front.

    String columns are spooled to anonymous temp files and copied into
    contiguous datasets on :meth:`close`, so no column is held in memory.
    """

    def __init__(self, path: Path, n: int, dim: int, local_dim: int | None = None, n_features: int = 0,
                 with_sizes: bool = False):
        self.path, self.n, self.dim, self.local_dim, self.n_features = path, n, dim, local_dim, n_features
        self._f = h5_file(path, "w")
        f = self._f
        f.attrs.update(format=SEGMENT_FORMAT, n=n, dim=dim, local_dim=local_dim or 0, id_hash=ID_HASH)
        self._desc = f.create_dataset("descriptors", shape=(n, dim), dtype=np.float16)
        self._codes = f.create_dataset("landmark_codes", shape=(n,), dtype=np.int32)
        self._off = {c: f.create_dataset(f"{c}_offsets", shape=(n + 1,), dtype=np.int64) for c in ("ids", "paths")}
        self._spool = {c: tempfile.TemporaryFile(dir=path.parent) for c in ("ids", "paths")}
        self._end = {"ids": 0, "paths": 0}
        for c in self._off:
            self._off[c][0] = 0
        self._lm: dict[str, int] = {}
        self._hashes: list[np.ndarray] = []
        self.nonlandmarks = 0
        self.row = 0
        if local_dim:
            self._lkp = f.create_dataset("local_keypoints", shape=(n_features, 4), dtype=np.float32)
            self._lds = f.create_dataset("local_descriptors", shape=(n_features, local_dim), dtype=np.float16)
            self._loff = f.create_dataset("local_offsets", shape=(n + 1,), dtype=np.int64)
            self._loff[0] = 0
            self._sizes = f.create_dataset("local_sizes", shape=(n, 2), dtype=np.int32) if with_sizes else None
            self.feat = 0

    def append(
        self,
        desc16: np.ndarray,
        ids: tuple[np.ndarray, np.ndarray],
        paths: tuple[np.ndarray, np.ndarray],
        landmark_codes: np.ndarray,
        landmark_values: Sequence[str],
        hashes: np.ndarray,
        local: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Append k rows.

        Args:
            desc16: (k, dim) float16 descriptors.
            ids, paths: (bytes uint8, lengths (k,) int64) from :func:`encode_strings`.
            landmark_codes: (k,) ints into ``landmark_values`` (this batch's own dictionary).
            hashes: (k,) uint64 :func:`hash_ids` of the ids.
            local: {"counts" (k,), "keypoints" (m, 4) float32, "descriptors" (m, d) float16,
                "sizes" (k, 2) int32 or absent} when the segment has local features.
        """
        k = len(desc16)
        a, b = self.row, self.row + k
        if b > self.n:
            raise RuntimeError(f"{self.path}: more than the {self.n} rows announced")
        if not k:
            return
        self._desc[a:b] = desc16
        for col, (blob, lengths) in (("ids", ids), ("paths", paths)):
            self._spool[col].write(np.ascontiguousarray(blob, dtype=np.uint8).tobytes())
            ends = self._end[col] + np.cumsum(lengths)
            self._off[col][a + 1 : b + 1] = ends
            self._end[col] = int(ends[-1])
        mapping = np.array([self._lm.setdefault(str(v), len(self._lm)) for v in landmark_values], dtype=np.int32)
        codes = mapping[np.asarray(landmark_codes, dtype=np.int64)] if len(mapping) else np.zeros(k, np.int32)
        self._codes[a:b] = codes
        if "" in self._lm:
            self.nonlandmarks += int(np.count_nonzero(codes == self._lm[""]))
        self._hashes.append(np.asarray(hashes, dtype=np.uint64))
        if self.local_dim:
            if local is None:
                raise ValueError(f"{self.path}: local features required for every row")
            counts = np.asarray(local["counts"], dtype=np.int64)
            ends = self.feat + np.cumsum(counts)
            self._loff[a + 1 : b + 1] = ends
            m = int(ends[-1]) - self.feat
            if m:
                self._lkp[self.feat : self.feat + m] = local["keypoints"]
                self._lds[self.feat : self.feat + m] = local["descriptors"]
            if self._sizes is not None and local.get("sizes") is not None:
                self._sizes[a:b] = local["sizes"]
            self.feat += m
        self.row = b

    def close(self) -> dict[str, Any]:
        """Write the string blobs, the landmark dictionary and the id hash index; returns the manifest entry."""
        try:
            if self.row != self.n or (self.local_dim and self.feat != self.n_features):
                raise RuntimeError(f"{self.path}: wrote {self.row} rows / {getattr(self, 'feat', 0)} features, "
                                   f"expected {self.n} / {self.n_features}")
            for col, spool in self._spool.items():
                ds = self._f.create_dataset(f"{col}_bytes", shape=(self._end[col],), dtype=np.uint8)
                spool.seek(0)
                pos = 0
                while chunk := spool.read(BYTES_CHUNK):
                    ds[pos : pos + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
                    pos += len(chunk)
            values = sorted(self._lm, key=self._lm.__getitem__)
            self._f.create_dataset("landmark_values", data=np.asarray(values, dtype=object), dtype=_STR)
            hashes = np.concatenate(self._hashes) if self._hashes else np.zeros(0, np.uint64)
            order = np.argsort(hashes, kind="stable")
            self._f.create_dataset("id_hash", data=hashes[order])
            self._f.create_dataset("id_hash_rows", data=order.astype(np.int64))
        finally:
            for spool in self._spool.values():
                spool.close()
            self._f.close()
        return {"rows": self.n, "local_features": int(self.n_features if self.local_dim else 0),
                "nonlandmarks": self.nonlandmarks}

    def abort(self) -> None:
        for spool in self._spool.values():
            with contextlib.suppress(Exception):
                spool.close()
        with contextlib.suppress(Exception):
            self._f.close()


@contextlib.contextmanager
def write_segment(final: Path, dim: int, n: int, local_dim: int | None, n_features: int,
                  with_sizes: bool = False) -> Iterator[tuple[SegmentWriter, dict[str, Any]]]:
    """A new segment ``final`` written under a temporary name, fsynced and renamed when the block ends without
    error (the writer is aborted and the temporary file removed otherwise). Yields ``(writer, out)``; after
    the block ``out`` holds ``entry`` (the manifest entry) and ``segment`` (the opened segment)."""
    tmp = tmp_path(final)
    writer = SegmentWriter(tmp, n, dim, local_dim, n_features, with_sizes)
    out: dict[str, Any] = {}
    try:
        yield writer, out
        entry = writer.close()
        fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        writer.abort()
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)
    entry["file"] = f"{SEGMENTS_DIR}/{final.name}"
    out.update(entry=entry, segment=Segment(final, dim))


class Segment:
    """Read-only view of one segment file; rows are read lazily (memory maps)."""

    def __init__(self, path: Path, dim: int):
        self.path = path
        self._f = open_h5(path)
        f = self._f
        try:
            self.n = int(f.attrs.get("n", -1))
            desc = _dataset(f, "descriptors", path, 2, np.float16)
            if desc.shape != (self.n, dim):
                raise IndexFormatError(f"{path}: descriptors {desc.shape}, expected ({self.n}, {dim})")
            if f.attrs.get("id_hash") != ID_HASH:
                raise IndexFormatError(f"{path}: unknown id hash {f.attrs.get('id_hash')!r}, expected {ID_HASH}")
            self.descriptors = _row_view(desc, path)
            self._cols = {}
            for col in ("ids", "paths"):
                off = _dataset(f, f"{col}_offsets", path, 1, np.int64)
                blob = _dataset(f, f"{col}_bytes", path, 1, np.uint8)
                if off.shape[0] != self.n + 1:
                    raise IndexFormatError(f"{path}: {col}_offsets has {off.shape[0]} entries, expected {self.n + 1}")
                self._cols[col] = (_row_view(blob, path), _row_view(off, path))
            self._codes = _row_view(_dataset(f, "landmark_codes", path, 1, np.int32), path)
            self._values_ds = _dataset(f, "landmark_values", path, 1)
            self._hash = _row_view(_dataset(f, "id_hash", path, 1, np.uint64), path)
            self._hash_rows = _row_view(_dataset(f, "id_hash_rows", path, 1, np.int64), path)
            self.local_dim = int(f.attrs.get("local_dim", 0)) or None
            self.n_features = 0
            self._sizes = None
            if self.local_dim:
                self._lkp = _row_view(_dataset(f, "local_keypoints", path, 2, np.float32), path)
                self._lds = _row_view(_dataset(f, "local_descriptors", path, 2, np.float16), path)
                self._loff = _row_view(_dataset(f, "local_offsets", path, 1, np.int64), path)
                if self._loff.shape[0] != self.n + 1 or self._lds.shape[1] != self.local_dim:
                    raise IndexFormatError(f"{path}: local feature arrays do not match n={self.n}, d={self.local_dim}")
                self.n_features = int(self._loff[-1]) if self.n else 0
                if self.n_features > self._lkp.shape[0] or self._lkp.shape[0] != self._lds.shape[0]:
                    raise IndexFormatError(f"{path}: local_offsets point past the local feature arrays")
                if "local_sizes" in f:
                    self._sizes = _row_view(_dataset(f, "local_sizes", path, 2, np.int32), path)
        except (KeyError, OSError, ValueError) as e:
            self._f.close()
            if isinstance(e, IndexFormatError):
                raise
            raise IndexFormatError(f"{path}: unreadable segment (truncated or corrupt?): {e}") from e
        except BaseException:
            self._f.close()
            raise
        self._values: np.ndarray | None = None

    # -- metadata
    def landmark_values(self) -> np.ndarray:
        """This segment's landmark dictionary (object array of str; small: one entry per landmark)."""
        if self._values is None:
            try:
                self._values = np.asarray(self._values_ds.asstr()[()], dtype=object)
            except (OSError, ValueError) as e:
                raise IndexFormatError(f"{self.path}: cannot read landmark_values: {e}") from e
        return self._values

    def column(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Values of column ``name`` ("id", "landmark_id", "path") at ``rows`` (local row numbers)."""
        rows = np.asarray(rows, dtype=np.int64)
        if name == "landmark_id":
            return self.landmark_values()[np.asarray(_take_rows(self._codes, rows), dtype=np.int64)]
        blob, off = self._cols["ids" if name == "id" else "paths"]
        return decode_strings(blob, off, rows)

    def value(self, name: str, row: int) -> str:
        """One value of column ``name`` at local ``row``."""
        if name == "landmark_id":
            return self.landmark_values()[int(self._codes[row])]
        blob, off = self._cols["ids" if name == "id" else "paths"]
        return bytes(np.asarray(blob[int(off[row]) : int(off[row + 1])])).decode("utf-8")

    def column_all(self, name: str) -> np.ndarray:
        """Every value of a column (O(n) Python strings)."""
        if name == "landmark_id":
            return self.landmark_values()[np.asarray(self._codes[:], dtype=np.int64)]
        return decode_all(*self._cols["ids" if name == "id" else "paths"])

    def find(self, ids: Sequence[str], hashes: np.ndarray) -> np.ndarray:
        """Local row of each id, -1 when absent (hash lookup confirmed by comparing the id)."""
        out = np.full(len(ids), -1, dtype=np.int64)
        if not self.n or not len(ids):
            return out
        h = np.asarray(self._hash[:]) if not isinstance(self._hash, np.ndarray) else self._hash
        lo = np.searchsorted(h, hashes, side="left")
        hi = np.searchsorted(h, hashes, side="right")
        hit = np.flatnonzero(hi > lo)
        if not len(hit):
            return out
        blob, off = self._cols["ids"]
        # confirm the first candidate of every hit at once (offsets gathered in one read; ids compared as bytes)
        rows = np.asarray(_take_rows(self._hash_rows, lo[hit]), dtype=np.int64)
        starts = np.asarray(_take_rows(off, rows), dtype=np.int64).tolist()
        ends = np.asarray(_take_rows(off, rows + 1), dtype=np.int64).tolist()
        data = blob if isinstance(blob, np.ndarray) else None
        for i, row, a, b in zip(hit.tolist(), rows.tolist(), starts, ends):
            stored = data[a:b].tobytes() if data is not None else bytes(np.asarray(blob[a:b]))
            if stored == ids[i].encode("utf-8"):
                out[i] = row
                continue
            for j in range(int(lo[i]) + 1, int(hi[i])):  # a 64-bit hash collision: the other candidates
                other = int(self._hash_rows[j])
                if decode_strings(blob, off, np.array([other]))[0] == ids[i]:
                    out[i] = other
                    break
        return out

    def hashes(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted id hashes, their local rows), for merging segments without re-hashing."""
        return np.asarray(self._hash[:]), np.asarray(self._hash_rows[:])

    def raw_strings(self, name: str, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(bytes, lengths) of rows a:b of "ids" or "paths", for copying without decoding."""
        blob, off = self._cols[name]
        o = np.asarray(off[a : b + 1])
        return np.asarray(blob[int(o[0]) : int(o[-1])]), np.diff(o)

    def raw_codes(self, a: int, b: int) -> np.ndarray:
        return np.asarray(self._codes[a:b])

    # -- local features
    def local(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self._loff[row]), int(self._loff[row + 1])
        return np.array(self._lkp[a:b], dtype=np.float32), np.array(self._lds[a:b], dtype=np.float32)

    def local_size(self, row: int) -> tuple[int, int] | None:
        if self._sizes is None:
            return None
        w, h = (int(v) for v in self._sizes[row])
        return (w, h) if w > 0 and h > 0 else None

    def local_block(self, a: int, b: int) -> dict[str, np.ndarray]:
        """Local features of rows a:b in the form :meth:`SegmentWriter.append` takes."""
        off = np.asarray(self._loff[a : b + 1])
        out = {"counts": np.diff(off), "keypoints": np.asarray(self._lkp[int(off[0]) : int(off[-1])]),
               "descriptors": np.asarray(self._lds[int(off[0]) : int(off[-1])])}
        if self._sizes is not None:
            out["sizes"] = np.asarray(self._sizes[a:b])
        return out

    @property
    def has_sizes(self) -> bool:
        return self._sizes is not None

    def close(self) -> None:
        self.descriptors = self._cols = self._codes = self._hash = self._hash_rows = None
        self._lkp = self._lds = self._loff = self._sizes = None
        with contextlib.suppress(Exception):
            self._f.close()


class SegmentedArray:
    """The (N, dim) float16 descriptors of several segments seen as one array (no copy).

    Supports what index building and re-scoring need: ``shape``, ``len``,
    ``x[a:b]`` (contiguous rows) and ``x[rows]`` / :meth:`rows` for integer rows.
    """

    def __init__(self, parts: list[Any], dim: int):
        self.parts = parts
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        self.shape = (int(self.starts[-1]), int(dim))
        self.dtype = np.dtype(np.float16)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            a, b, step = key.indices(self.shape[0])
            if step != 1:
                return self.rows(np.arange(a, b, step))
            pieces = []
            for i, part in enumerate(self.parts):
                s, e = int(self.starts[i]), int(self.starts[i + 1])
                lo, hi = max(a, s), min(b, e)
                if lo < hi:
                    pieces.append(np.asarray(part[lo - s : hi - s]))
            return np.concatenate(pieces) if pieces else np.zeros((0, self.shape[1]), np.float16)
        return self.rows(np.asarray(key, dtype=np.int64))

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """float16 rows in any order (duplicates allowed)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.shape[1]), dtype=np.float16)
        seg = np.searchsorted(self.starts, rows, side="right") - 1
        for i in np.unique(seg).tolist():
            mask = seg == i
            out[mask] = _take_rows(self.parts[i], rows[mask] - self.starts[i])
        return out
