"""Secondary local feature sets: more local features per row, stored beside the segments.

The segments hold one local feature set per row (the *primary* set, the one the
index was built with, ``manifest["config"]["local"]``). A *secondary* set (e.g.
XFeat beside RootSIFT, for a cheap-then-learned verification cascade) lives in
part files named by the manifest key ``local_sets`` (outside ``config``, so a set
can be added to an existing index without touching its global descriptors, its
segments or its configuration)::

    "local_sets": {"xfeat": {"conf": {...resolved extractor conf...}, "dim": 64,
                             "parts": [{"file": "local_sets/xfeat/part-000000000-<random>.h5",
                                        "start": 0, "rows": 256, "features": 262144, "failed": 0}, ...]}}

A part holds the contiguous rows ``[start, start + rows)`` of one set, in the
segments' CSR layout (every dataset contiguous, memory-mapped on read)::

    attrs        format=1, set=<name>, start, n, dim
    offsets      (n+1,) int64, CSR into keypoints (m, 4) float32 [x, y, scale, score]
                 and descriptors (m, d) float16
    sizes        (n, 2) int32 [width, height] of the detection image (0, 0: the image could not be read)

Parts never overlap; rows no part covers have no features in that set yet
(:func:`missing_rows`). Row numbers never change (``compact`` keeps row order),
so parts stay valid; ``compact`` also merges each contiguous run of parts into one.
A part is written under a temp name, fsynced and renamed (:func:`~index.manifest.atomic_output`),
then published by replacing the manifest; a part file no manifest names is garbage.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .manifest import IndexFormatError, atomic_output
from .hdf5 import _dataset, _row_view, h5_file, open_h5

LOCAL_SETS_DIR = "local_sets"
LOCAL_SETS_KEY = "local_sets"
# Manifest key: the secondary set the last build named first (``--local-conf A+B`` records B), the one
# recognition verifies second with by default (``--cascade auto``); absent in an index built before it existed.
CASCADE_SET_KEY = "cascade_set"
PART_FORMAT = 1
MAX_OPEN_PARTS = 64  # part files kept open per index (each holds a few file descriptors)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_set_name(name: str) -> None:
    """ValueError unless ``name`` can name a set (it becomes a directory name)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"local set name must match {_NAME_RE.pattern} (no path separators), got {name!r}")


def part_path(index_path: Path, name: str, start: int) -> Path:
    """A new, unique part file name for rows starting at ``start`` of set ``name``."""
    return Path(index_path) / LOCAL_SETS_DIR / name / f"part-{start:09d}-{uuid.uuid4().hex[:8]}.h5"


def bytes_per_image(entry: dict[str, Any]) -> float:
    """Stored bytes per covered row of a set's manifest entry (features + offsets + sizes, no HDF5 overhead)."""
    rows = sum(int(p["rows"]) for p in entry["parts"])
    features = sum(int(p["features"]) for p in entry["parts"])
    return (features * (4 * 4 + 2 * int(entry["dim"])) + rows * (8 + 2 * 4)) / max(1, rows)


def write_part_file(final: Path, name: str, start: int, dim: int, counts: np.ndarray, keypoints: np.ndarray,
                    descriptors: np.ndarray, sizes: np.ndarray) -> dict[str, Any]:
    """Write one part (temp name, fsync, rename); returns its manifest entry without ``file``.

    Args:
        counts: (n,) features per row; keypoints (m, 4) float32; descriptors (m, dim) float16;
            sizes (n, 2) int32.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n, m = len(counts), int(counts.sum())
    if keypoints.shape != (m, 4) or descriptors.shape != (m, dim) or sizes.shape != (n, 2):
        raise ValueError(f"part of {n} rows / {m} features: keypoints {keypoints.shape}, descriptors "
                         f"{descriptors.shape}, sizes {sizes.shape} do not fit (dim {dim})")
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(final) as tmp:
        with h5_file(tmp, "w") as f:
            f.attrs.update(format=PART_FORMAT, set=name, start=int(start), n=n, dim=int(dim))
            f.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
            f.create_dataset("keypoints", data=np.asarray(keypoints, dtype=np.float32).reshape(m, 4))
            f.create_dataset("descriptors", data=np.asarray(descriptors, dtype=np.float16).reshape(m, dim))
            f.create_dataset("sizes", data=np.asarray(sizes, dtype=np.int32).reshape(n, 2))
    failed = int(np.count_nonzero((sizes[:, 0] <= 0) | (sizes[:, 1] <= 0))) if n else 0
    return {"start": int(start), "rows": n, "features": m, "failed": failed}


class LocalPart:
    """Read-only view of one part file (memory-mapped)."""

    def __init__(self, path: Path, entry: dict[str, Any], dim: int):
        self.path = path
        self._f = open_h5(path)
        f = self._f
        try:
            self.start, self.n = int(entry["start"]), int(entry["rows"])
            if int(f.attrs.get("n", -1)) != self.n or int(f.attrs.get("start", -1)) != self.start:
                raise IndexFormatError(f"{path}: rows {f.attrs.get('start')}+{f.attrs.get('n')} but the manifest "
                                       f"says {self.start}+{self.n}")
            self._off = np.asarray(_dataset(f, "offsets", path, 1, np.int64)[()])
            self._kp = _row_view(_dataset(f, "keypoints", path, 2, np.float32), path)
            self._desc = _row_view(_dataset(f, "descriptors", path, 2, np.float16), path)
            self._sizes = np.asarray(_dataset(f, "sizes", path, 2, np.int32)[()])
            m = int(self._off[-1]) if len(self._off) else -1
            if (len(self._off) != self.n + 1 or self._kp.shape != (m, 4) or self._desc.shape != (m, dim)
                    or self._sizes.shape != (self.n, 2)):
                raise IndexFormatError(f"{path}: arrays do not match {self.n} rows of {dim}-d features")
        except (KeyError, OSError, ValueError) as e:
            self._f.close()
            if isinstance(e, IndexFormatError):
                raise
            raise IndexFormatError(f"{path}: unreadable local set part (truncated or corrupt?): {e}") from e
        except BaseException:
            self._f.close()
            raise

    def features(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """(keypoints (k, 4) float32, descriptors (k, d) float32) of local row ``r``."""
        a, b = int(self._off[r]), int(self._off[r + 1])
        return np.array(self._kp[a:b], dtype=np.float32), np.array(self._desc[a:b], dtype=np.float32)

    def size(self, r: int) -> tuple[int, int] | None:
        w, h = (int(v) for v in self._sizes[r])
        return (w, h) if w > 0 and h > 0 else None

    def block(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(counts, keypoints, descriptors, sizes) of every row, for merging parts."""
        return np.diff(self._off), np.asarray(self._kp), np.asarray(self._desc), self._sizes

    def close(self) -> None:
        self._kp = self._desc = None
        with contextlib.suppress(Exception):
            self._f.close()


def find_part(entry: dict[str, Any], row: int) -> int | None:
    """Index in ``entry["parts"]`` (sorted by start) of the part covering ``row``, None when not covered."""
    parts = entry["parts"]
    i = bisect.bisect_right(parts, row, key=lambda p: int(p["start"])) - 1  # O(log parts) per read
    if i >= 0 and row < int(parts[i]["start"]) + int(parts[i]["rows"]):
        return i
    return None


def covered_mask(entry: dict[str, Any] | None, n: int) -> np.ndarray:
    """(n,) bool: rows ``0..n-1`` covered by a part of the set."""
    mask = np.zeros(n, dtype=bool)
    for p in (entry or {}).get("parts", []):
        mask[int(p["start"]) : int(p["start"]) + int(p["rows"])] = True
    return mask


def missing_rows(entry: dict[str, Any] | None, n: int) -> np.ndarray:
    """Rows ``< n`` no part of the set covers (int64, ascending)."""
    return np.flatnonzero(~covered_mask(entry, n)).astype(np.int64)


def contiguous_runs(parts: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Parts (sorted by start) grouped into runs of back-to-back parts."""
    runs: list[list[dict[str, Any]]] = []
    for p in parts:
        if runs and int(runs[-1][-1]["start"]) + int(runs[-1][-1]["rows"]) == int(p["start"]):
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


class PartCache:
    """Part files opened on first use, at most ``MAX_OPEN_PARTS`` at a time (least recently used closed).

    Thread-safe: the service reads features from several threads.
    """

    def __init__(self, index_path: Path):
        self.index_path = Path(index_path)
        self._open: OrderedDict[str, LocalPart] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, entry: dict[str, Any], part: dict[str, Any], func: Any) -> Any:
        """``func(opened part)`` under the cache's lock (a read copies a few rows out: microseconds).

        FileNotFoundError when the part's file is gone (e.g. merged by a concurrent compact).
        """
        key = part["file"]
        with self._lock:
            found = self._open.get(key)
            if found is not None:
                self._open.move_to_end(key)
            else:
                found = LocalPart(self.index_path / key, part, int(entry["dim"]))
                self._open[key] = found
                while len(self._open) > MAX_OPEN_PARTS:
                    self._open.popitem(last=False)[1].close()
            return func(found)

    def close(self) -> None:
        with self._lock:
            for p in self._open.values():
                p.close()
            self._open.clear()
