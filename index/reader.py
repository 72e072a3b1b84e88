"""IndexReader: an index directory opened for reading (workers, ``predict``, ``evaluate``, ``query``, the service).

A reader takes no lock and writes one file only, its lease (``leases/``, ``index/lease.py``: the files it holds,
so that no writer deletes them while it runs); :class:`~index.writer.IndexWriter` (``index/writer.py``) adds the
writes (shards, commit, compaction, local-set parts, aux arrays, manifest fields) under the writer lock. Why two
classes, and the life-cycle of an index: ``index/writer.py`` and docs/design.md.

Directory layout (format 2)::

    manifest.json        format/package version, times, caller config, dim, counts, the published
                         segments in row order, the faiss file and its parameters, thresholds.
                         Replaced atomically: it is the commit point of every write.
    segments/seg-*.h5    immutable segments of committed rows: float16 global descriptors (the source
                         of truth), metadata (id, landmark_id, path) as string columns + an id hash
                         index, local features in flat CSR form (layout in ``segment.py``)
    faiss-<random>.index the CPU faiss index over all published rows (ids = row numbers)
    shards/              extraction batches not yet committed (shard-XXXXXX.h5)
    skipped.csv          id,path,reason of images the caller could not process (append-only)
    aux/<name>.npz       caller-owned arrays (e.g. a PCA fitted on local features)
    local_sets/<name>/part-*.h5  secondary local feature sets (e.g. XFeat beside the primary RootSIFT),
                         rows [start, start+n) per part, CSR like the segments; named by the manifest
                         key ``local_sets`` (layout and life-cycle in ``local_sets.py``)
    writer.lock          held (flock) by the one writer; writer.json names it
    leases/*.json        one per open reader: the files it holds, refreshed while it runs (lease.py)

Row numbers are global: segment ``i`` holds rows ``starts[i]:starts[i+1]`` in
manifest order, and row number == faiss id.

Secondary local feature sets: ``write_local_part`` (writer) publishes the features of a
set for a contiguous run of committed rows (part file written whole and renamed,
then the manifest replaced: the commit point); ``missing_local_rows`` says which
rows a set still lacks (resume), ``local_features(row, set_name)`` reads one.
They live outside ``config`` and the segments, so a set is added to an existing
index without re-extracting anything else. Row numbers never change (commit
appends, compact keeps order), so parts stay valid; ``compact`` merges
back-to-back parts of a set into one.

Concurrency: one writer at a time (``IndexWriter.writer_lock``; a second writer fails with
IndexLockedError naming the holder, or waits ``lock_timeout`` seconds).
Readers take no lock: they read the manifest and then the files it names; a
file removed by a concurrent commit/compaction in between makes them re-read
the manifest and retry. A faiss file that is behind the segments (a commit killed
between its steps) is repaired in memory only (:meth:`IndexReader._ready_index`).
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import json
import logging
import os
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from . import faiss_index as fi
from .asmk_store import ASMK_KEY, AsmkIndex, asmk_files
from .aux_files import AUX_DIR, check_aux_name, read_aux_file
from .choices import check_name
from .lease import ReaderLease, take_lease
from .legacy import FAISS_NAME, METADATA_COLUMNS, empty_metadata
from .local_sets import LOCAL_SETS_KEY, PartCache, check_set_name, find_part, missing_rows
from .manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    ConfigMismatchError,
    IndexFormatError,
    config_diff,
    normalise_config,
    read_manifest,
)
from .segment import Segment, SegmentedArray, hash_ids
from .shards import SHARDS_DIR, ShardReader, list_shards
from .skipped import SKIPPED_COLUMNS, SKIPPED_NAME, read_skipped_rows
from .vectors import l2_normalize

logger = logging.getLogger(__name__)

__all__ = ["IndexReader", "LazyColumn", "COLUMNS", "OPEN_RETRIES"]

OPEN_RETRIES = 5  # re-reads of the manifest when a concurrent commit removed a file a reader was opening
COLUMNS = ("id", "landmark_id", "path")
_Self = TypeVar("_Self", bound="IndexReader")


class _Republished(Exception):
    """A file named by the manifest vanished because a newer manifest was published meanwhile."""


class LazyColumn:
    """One metadata column (``id``, ``landmark_id`` or ``path``) read on demand.

    ``col[row]`` -> str, ``col[rows]`` (int array or list) -> object array of str,
    ``len(col)`` -> number of committed rows. Nothing is loaded until indexed.
    """

    def __init__(self, db: IndexReader, name: str):
        check_name(name, COLUMNS, "column")
        self._db, self.name = db, name

    def __len__(self) -> int:
        return self._db.size

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            return self._db._value(self.name, int(key))
        return self._db._column(self.name, np.asarray(key))


class IndexReader:
    """A landmark index directory opened for reading: segments of descriptors/metadata/local features, faiss
    index, manifest.

    Open with :meth:`open` (takes no lock, writes no file); :class:`~index.writer.IndexWriter` (a subclass)
    changes the index. The constructor is internal. ``gpu`` ("auto", "cpu", "gpu") selects where searches
    run; stored indexes are always CPU indexes. ``lock_timeout`` is accepted for the writer subclass (seconds a
    write waits for another writer); a reader never waits for anything.
    """

    def __init__(self, path: Path, manifest: dict, *, gpu: str = "auto", lock_timeout: float = 0.0) -> None:
        fi.use_gpu(gpu)  # validates the mode
        self.path = Path(path)
        if manifest["format_version"] < FORMAT_VERSION:
            raise IndexFormatError(_legacy_message(self.path, manifest))
        self.manifest = manifest
        self._disk_manifest = copy.deepcopy(manifest)
        self.gpu = gpu
        self._segments: list[Segment] = []
        self._desc = SegmentedArray([], self.dim)
        self._starts = [0]
        self._metadata: pd.DataFrame | None = None
        self._faiss = None  # CPU faiss index as on disk (or repaired in memory)
        self._faiss_dirty = False  # repaired in memory, not yet saved
        self._search_index = None  # _faiss, or its GPU clone
        self._exact = False
        self._parts = PartCache(self.path)  # secondary local set parts, opened on first use
        self._asmk: AsmkIndex | None = None  # the ASMK inverted file (index option), loaded on first use
        self._lease: ReaderLease | None = None  # what this reader holds (a writer holds the lock instead)
        self._load()

    # ------------------------------------------------------------------ open

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether ``path`` is an index directory (it has a manifest), without opening it."""
        return (Path(path) / MANIFEST_NAME).is_file()

    @staticmethod
    def read_manifest(path: str | os.PathLike) -> dict:
        """The validated manifest of the index directory ``path`` (counts, configuration, thresholds), without
        opening its segments or faiss file. FileNotFoundError / IndexFormatError as :meth:`open`."""
        return read_manifest(Path(path) / MANIFEST_NAME)

    @classmethod
    def open(cls, path: str | os.PathLike, *, gpu: str = "auto", lock_timeout: float = 0.0) -> IndexReader:
        """Open an existing index directory for reading (takes no lock; reads no rows until asked).

        Raises:
            FileNotFoundError: the directory or its manifest.json does not exist.
            IndexFormatError: a file is truncated or malformed (the message names it), or the
                index is in the old format 1 (the message names the command that upgrades it).
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"index directory {path} does not exist")
        mpath = path / MANIFEST_NAME
        if not mpath.exists():
            raise FileNotFoundError(f"{path} is not an index directory: {mpath} not found")
        for attempt in range(OPEN_RETRIES):
            manifest = read_manifest(mpath)
            try:
                return cls(path, manifest, gpu=gpu, lock_timeout=lock_timeout)
            except _Republished:
                time.sleep(0.05 * (attempt + 1))
        raise IndexFormatError(f"{mpath}: the index kept changing while it was opened ({OPEN_RETRIES} tries)")

    # a reader leases the files it opened (lease.py); a writer holds the writer lock and expires them itself
    _takes_lease = True

    def _held_files(self) -> set[str]:
        """Files (relative to the index directory) of the state this reader opened: what its lease names."""
        files = {e["file"] for e in self.manifest["segments"]}
        files |= {p["file"] for e in self.manifest[LOCAL_SETS_KEY].values() for p in e["parts"]}
        files |= set(asmk_files(self.manifest))
        fname = (self.manifest.get("faiss") or {}).get("file")
        return files | ({fname} if fname else set())

    def _lease_files(self) -> None:
        if not self._takes_lease:
            return
        if self._lease is None:
            self._lease = take_lease(self.path, self._held_files())
            if self._lease is not None:
                weakref.finalize(self, self._lease.release)  # a reader dropped without close() frees its lease
        else:
            with contextlib.suppress(OSError):
                self._lease.update(self._held_files())

    def _load(self) -> None:
        """Open the segments and the faiss file the manifest names; repair disagreements in memory (WARNING)."""
        self._close_stores()
        segments: list[Segment] = []
        try:
            for entry in self.manifest["segments"]:
                spath = self.path / entry["file"]
                if not spath.exists():
                    self._missing(spath)
                seg = Segment(spath, self.dim)
                segments.append(seg)
                if seg.n != entry["rows"]:
                    raise IndexFormatError(f"{spath}: {seg.n} rows but {MANIFEST_NAME} says {entry['rows']}")
        except BaseException:
            for seg in segments:
                seg.close()
            raise
        self._set_segments(segments)
        n = self.size
        fname = (self.manifest.get("faiss") or {}).get("file")
        fpath = self.path / fname if fname else None
        self._faiss = None
        if fpath is not None and fpath.exists():
            self._faiss = fi.read_index(fpath)
        elif fpath is not None:
            self._missing(fpath, fatal=False)
        if self._faiss is not None:
            if self._faiss.d != self.dim:
                raise IndexFormatError(f"{fpath}: index dim {self._faiss.d}, manifest dim {self.dim}")
            if self._faiss.ntotal != n:
                logger.warning(
                    "%s holds %d vectors but the segments have %d rows: it is %s at the next search (in "
                    "memory) or commit()", fpath, self._faiss.ntotal, n,
                    "extended" if self._faiss.ntotal < n and self._faiss.is_trained else "rebuilt",
                )
        elif n > 0:
            logger.warning("%s: no faiss index file for %d rows: it is built at the next search or commit()",
                           self.path, n)
        self._check_manifest()
        self._lease_files()

    def _missing(self, path: Path, fatal: bool = True) -> None:
        """A file the manifest names is missing: a newer manifest (retry) or a damaged index."""
        with contextlib.suppress(OSError, IndexFormatError):
            if read_manifest(self.path / MANIFEST_NAME) != self._disk_manifest:
                raise _Republished(str(path))
        if fatal:
            raise IndexFormatError(f"{path}: named in {self.path / MANIFEST_NAME} but missing")
        logger.warning("%s: named in %s but missing", path, MANIFEST_NAME)

    def _check_manifest(self) -> None:
        """Compare the manifest with the data files; fix stale counts/params in memory with a WARNING."""
        counts = self.manifest.get("counts", {})
        n_local = sum(s.n_features for s in self._segments)
        if counts.get("images") != self.size or counts.get("local_features", 0) != n_local:
            logger.warning("%s counts are stale: recomputed from the segments; the next commit() saves them",
                           self.path / MANIFEST_NAME)
            self.manifest["counts"] = self._counts(self._segments, self.manifest["segments"])
        if self._faiss is not None:
            recorded = self.manifest.get("faiss") or {}
            actual = self._params_for_index(self._faiss, recorded, None)
            if recorded.get("factory") != actual["factory"] or recorded.get("nprobe") != actual["nprobe"]:
                logger.warning("%s faiss parameters (%s) do not describe %s (%s): using the index's",
                               self.path / MANIFEST_NAME, recorded.get("factory"), recorded.get("file"),
                               actual["factory"])
                self.manifest["faiss"] = actual

    def _set_segments(self, segments: list[Segment]) -> None:
        self._segments = segments
        self._desc = SegmentedArray([s.descriptors for s in segments], self.dim)
        self._starts = self._desc.starts.tolist()
        self._metadata = None
        self._search_index = None

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        """Global descriptor dimension."""
        return int(self.manifest["dim"])

    @property
    def size(self) -> int:
        """Number of committed images (rows of all published segments)."""
        return int(self._desc.shape[0])

    @property
    def faiss_path(self) -> Path | None:
        """The faiss index file the manifest names (``faiss-<random>.index``), None before the first commit."""
        name = (self.manifest.get("faiss") or {}).get("file")
        return self.path / name if name else None

    @property
    def _shards_dir(self) -> Path:
        return self.path / SHARDS_DIR

    @property
    def _local_dim(self) -> int | None:
        return next((s.local_dim for s in self._segments if s.local_dim), None)

    @property
    def metadata(self) -> pd.DataFrame:
        """All committed rows: ``row`` (int, == faiss id), ``id``, ``landmark_id`` ("" = non-landmark), ``path``.

        O(N) Python strings (about 0.5 GiB per million rows): for small indexes, tests and exports.
        Per-query code uses :meth:`rows`, :meth:`column` and :meth:`find_rows`, which read only what
        they need. Cached and shared: do not modify it in place.
        """
        if self._metadata is None:
            if not self.size:
                self._metadata = empty_metadata()
            else:
                cols = {c: np.concatenate([s.column_all(c) for s in self._segments]) for c in COLUMNS}
                df = pd.DataFrame({"row": np.arange(self.size, dtype=np.int64), **cols})
                self._metadata = df[METADATA_COLUMNS]
        return self._metadata

    def rows(self, rows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, landmark_ids, paths) of the given rows (any order), each an object array of str.

        Reads only those rows ("" landmark_id = non-landmark). IndexError for rows out of range.
        """
        rows = self._check_rows(rows)
        return tuple(self._column(c, rows, checked=True) for c in COLUMNS)  # type: ignore[return-value]

    def column(self, name: str) -> LazyColumn:
        """A lazily read metadata column: ``db.column("path")[row]`` or ``db.column("id")[rows]``."""
        return LazyColumn(self, name)

    def _check_rows(self, rows: Any) -> np.ndarray:
        rows = np.atleast_1d(np.asarray(rows))
        if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
            raise ValueError(f"rows must be a 1-d integer array, got shape {rows.shape} dtype {rows.dtype}")
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.size):
            raise IndexError(f"rows out of range for {self.size} images")
        return rows

    def _value(self, name: str, row: int) -> str:
        """One metadata value (fast path for scalar access: a few microseconds)."""
        if not 0 <= row < self.size:
            raise IndexError(f"row {row} out of range for {self.size} images")
        i = bisect.bisect_right(self._starts, row) - 1
        return self._segments[i].value(name, row - self._starts[i])

    def _column(self, name: str, rows: np.ndarray, checked: bool = False) -> np.ndarray:
        check_name(name, COLUMNS, "column")
        if not checked:
            rows = self._check_rows(rows)
        out = np.empty(len(rows), dtype=object)
        seg = np.searchsorted(self._desc.starts, rows, side="right") - 1
        for i in np.unique(seg).tolist():
            mask = seg == i
            out[mask] = self._segments[i].column(name, rows[mask] - self._desc.starts[i])
        return out

    def find_rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row of each id among committed images, -1 when not committed ((len(ids),) int64).

        A hash lookup per segment, confirmed by comparing the id: O(len(ids) * log N), no id list loaded.
        """
        ids = [str(i) for i in ids]
        out = np.full(len(ids), -1, dtype=np.int64)
        if not ids or not self.size:
            return out
        hashes = hash_ids(ids)
        for i, seg in enumerate(self._segments):
            todo = np.flatnonzero(out < 0)
            if not len(todo):
                break
            found = seg.find([ids[j] for j in todo], hashes[todo])
            hit = found >= 0
            out[todo[hit]] = found[hit] + self._desc.starts[i]
        return out

    def has_local(self) -> bool:
        """Whether committed images have local features."""
        return self._local_dim is not None

    # ------------------------------------------------------------------ stored ids (resume)

    def done_ids(self) -> set[str]:
        """Ids already stored: committed plus those in complete shards (temp files ignored).

        O(N) Python strings; to ask about given ids use :meth:`stored_labels_for` or :meth:`find_rows`.
        """
        done = set(self.metadata["id"]) if self.size else set()
        for shard in list_shards(self._shards_dir):
            done.update(ShardReader(shard).ids)
        return done

    def stored_labels(self) -> dict[str, str]:
        """{id: landmark_id} of every stored image: committed rows plus complete, uncommitted shards (O(N))."""
        labels: dict[str, str] = {}
        if self.size:
            labels.update(zip(self.metadata["id"], self.metadata["landmark_id"]))
        for shard in list_shards(self._shards_dir):
            reader = ShardReader(shard)
            for i, lm in zip(reader.ids, reader.landmark_ids()):
                labels.setdefault(str(i), str(lm))
        return labels

    def stored_labels_for(self, ids: Sequence[str]) -> dict[str, str]:
        """{id: landmark_id} for those of ``ids`` already stored (committed or in a complete shard).

        Looks up only the given ids (plus the pending shards): what a resuming build needs.
        """
        ids = [str(i) for i in ids]
        rows = self.find_rows(ids)
        hit = np.flatnonzero(rows >= 0)
        labels = dict(zip([ids[i] for i in hit], self._column("landmark_id", rows[hit], checked=True)))
        wanted = set(ids)
        for shard in list_shards(self._shards_dir):
            reader = ShardReader(shard)
            for i, lm in zip(reader.ids, reader.landmark_ids()):
                if i in wanted:
                    labels.setdefault(str(i), str(lm))
        return labels

    def _skipped_rows(self) -> dict[str, tuple[str, str]]:
        """{id: (path, reason)} of skipped images as stored in skipped.csv (a writer adds its unflushed ones)."""
        return read_skipped_rows(self.path / SKIPPED_NAME)

    def skipped(self) -> pd.DataFrame:
        """Skipped images (``id``, ``path``, ``reason``; unique ids, last reason wins), including unflushed ones."""
        rows = self._skipped_rows()
        return pd.DataFrame([(k, p, r) for k, (p, r) in rows.items()], columns=SKIPPED_COLUMNS, dtype=object)


    def _counts(self, segments: list[Segment], entries: list[dict]) -> dict[str, int]:
        landmarks: set[str] = set()
        for seg in segments:
            landmarks.update(seg.landmark_values().tolist())
        landmarks.discard("")
        return {
            "images": int(sum(s.n for s in segments)),
            "landmarks": len(landmarks),
            "nonlandmarks": int(sum(e.get("nonlandmarks", 0) for e in entries)),
            "local_features": int(sum(s.n_features for s in segments)),
        }

    # ------------------------------------------------------------------ faiss

    def _build_params(self, factory: str | None, nprobe: int | None, shortlist: int | None,
                      n: int | None = None, for_gpu: bool = False) -> dict[str, Any]:
        """Parameters for a (re)build: the given factory, else a factory the caller forced earlier, else automatic
        (``for_gpu``: one faiss-gpu can hold)."""
        old = self.manifest.get("faiss") or {}
        if factory is None and old.get("auto") is False:
            factory = old.get("factory")
        return fi.choose_params(n if n is not None else self.size, self.dim, factory, nprobe, shortlist=shortlist,
                                for_gpu=for_gpu)

    def _params_for_index(self, index: Any, recorded: dict, factory: str | None) -> dict[str, Any]:
        """Manifest parameters for an existing index: the recorded ones when they describe it, else derived."""
        desc = fi.describe_index(index)
        sig = fi.index_signature(desc)
        params = dict(recorded)
        known = None
        for candidate in (factory, recorded.get("factory")):
            if candidate:
                with contextlib.suppress(ValueError):
                    if fi.factory_signature(candidate, self.dim) == sig:
                        known = candidate
                        break
        if known is None:
            known = _factory_from_description(desc)
            params.pop("auto", None)  # provenance unknown
        params.update(
            factory=known,
            exact=bool(desc["exact"]),
            nlist=desc["nlist"],
            m=desc["m"],
            nbits=desc["nbits"],
            nprobe=desc["nprobe"],
            metric=desc["metric"],
            bytes_per_vector=desc["bytes_per_vector"],
            opq=any(t.startswith("OPQ") for t in desc["transforms"]),
            n=int(index.ntotal),
            dim=self.dim,
        )
        params.setdefault("auto", factory is None)
        params.setdefault("ntrain", None)
        params.setdefault("shortlist", fi.DEFAULT_SHORTLIST)
        return params

    # ------------------------------------------------------------------ search / read

    def _ready_index(self) -> Any:
        """The index to search, repaired in memory (WARNING) when it is behind or missing, on GPU if allowed."""
        if self._search_index is not None:
            return self._search_index
        n = self.size
        index = self._faiss
        if index is None or not index.is_trained or index.ntotal > n:
            logger.warning("%s missing or inconsistent with %s: rebuilding it in memory; run commit() to save it",
                           FAISS_NAME, "the segments")
            index = fi.build_faiss(self._desc, self._build_params(None, None, None), "cpu")
            self._faiss, self._faiss_dirty = index, True
        elif index.ntotal < n:
            logger.warning("%s is %d vectors behind %s: adding them in memory; run commit() to save it",
                           FAISS_NAME, n - index.ntotal, "the segments")
            fi.add_rows(index, self._desc, index.ntotal, n)
            self._faiss_dirty = True
        self._exact = bool(fi.describe_index(index)["exact"])
        self._search_index, _ = fi.to_gpu(index, self.gpu)
        return self._search_index

    def set_nprobe(self, nprobe: int) -> None:
        """Change the IVF lists visited per query for this session's searches (commit(nprobe=...) saves it)."""
        if int(nprobe) < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        fi.set_nprobe(self._ready_index(), int(nprobe))

    def search(
        self, xq: np.ndarray, k: int, *, shortlist: int | None = None, rescore: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest database images of each query by cosine similarity.

        Approximate indexes return a shortlist of ``max(k, shortlist)`` candidates
        that is re-scored with exact inner products from the stored float16
        descriptors (memory-mapped global.h5: only the needed rows are read);
        exact (Flat) indexes skip re-scoring. ``rescore=False`` returns the raw
        faiss scores (for measuring what re-scoring buys).

        Args:
            xq: (nq, dim) queries; L2-normalised here.
            k: neighbours per query (>= 1).
            shortlist: override of the manifest's shortlist.

        Returns:
            (D, I): (nq, k) float32 cosine similarities, descending (ties: smaller
            row first), and int64 row ids. When fewer than k results exist
            (index smaller than k) the tail is padded with id -1 and score -inf.
        """
        xq = np.asarray(xq, dtype=np.float32)
        if xq.ndim != 2 or xq.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (nq, {self.dim}), got {xq.shape}")
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        if not np.all(np.isfinite(xq)):
            raise ValueError("queries contain NaN or infinite values")
        nq, n = xq.shape[0], self.size
        if nq == 0 or n == 0:
            return fi.finalize_results(np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64), k)
        xq = l2_normalize(xq)
        index = self._ready_index()
        if self._exact or not rescore:
            D, I = index.search(xq, min(k, n))
            return fi.finalize_results(D, I, k)
        shortlist = shortlist or (self.manifest.get("faiss") or {}).get("shortlist") or fi.DEFAULT_SHORTLIST
        _, I = index.search(xq, min(max(k, int(shortlist)), n))
        return fi.rescore(xq, I, self._desc.rows, k)

    def global_descriptors(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Stored global descriptors as float32: all (N, dim) (O(N) memory), or ``rows`` (any order)."""
        if rows is None:
            return np.asarray(self._desc[0 : self.size], dtype=np.float32)
        rows = np.asarray(rows)
        if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
            raise ValueError(f"rows must be a 1-d integer array, got shape {rows.shape} dtype {rows.dtype}")
        rows = rows.astype(np.int64)
        if rows.size and not self.size:
            raise IndexError("the index is empty")
        if rows.size and (rows.min() < 0 or rows.max() >= self.size):
            raise IndexError(f"rows out of range for {self.size} images")
        return self._desc.rows(rows).astype(np.float32)

    def _locate(self, row: int) -> tuple[Segment, int]:
        row = int(row)
        if not 0 <= row < self.size:
            raise IndexError(f"row {row} out of range for {self.size} images")
        i = int(np.searchsorted(self._desc.starts, row, side="right")) - 1
        return self._segments[i], row - int(self._desc.starts[i])

    def local_features(self, row: int, set_name: str | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(keypoints (k, 4) float32 [x, y, scale, score], descriptors (k, d) float32) of image ``row``.

        ``set_name`` None: the primary set (in the segments; None when the index stores none). A secondary
        set's name (:meth:`local_sets`): None while ``row`` is not yet extracted for it.
        Raises IndexError for a row out of range, ValueError for a set the index does not hold.
        """
        return self._local_read(row, set_name, lambda part, r: part.features(r), Segment.local)

    def local_image_size(self, row: int, set_name: str | None = None) -> tuple[int, int] | None:
        """(width, height) of the image the local features of ``row`` (in ``set_name``, None: the primary set)
        were detected on; None when not stored (or the image could not be read for that set)."""
        return self._local_read(row, set_name, lambda part, r: part.size(r), Segment.local_size)

    def _local_read(self, row: int, set_name: str | None, from_part: Any, from_segment: Any) -> Any:
        """``from_part(part, r)`` for a secondary set, else ``from_segment(segment, r)`` (None without local
        features): what :meth:`local_features` and :meth:`local_image_size` share."""
        if set_name is not None:
            return self._read_set(set_name, row, from_part)
        if not self.has_local():
            return None
        seg, r = self._locate(row)
        return from_segment(seg, r)

    # ------------------------------------------------------------------ secondary local sets

    def local_sets(self) -> dict[str, dict[str, Any]]:
        """Secondary local feature sets: {name: the resolved extractor conf they were extracted with}."""
        return {name: copy.deepcopy(e["conf"]) for name, e in self.manifest[LOCAL_SETS_KEY].items()}

    def _set_entry(self, set_name: str) -> dict[str, Any]:
        entry = self.manifest[LOCAL_SETS_KEY].get(set_name)
        if entry is None:
            held = ", ".join(sorted(self.manifest[LOCAL_SETS_KEY])) or "none"
            raise ValueError(f"index {self.path} has no local set {set_name!r} (secondary sets: {held})")
        return entry

    def missing_local_rows(self, set_name: str) -> np.ndarray:
        """Committed rows (ascending int64) not covered by a published part of ``set_name`` (all rows for a set
        the index does not hold yet)."""
        check_set_name(set_name)
        return missing_rows(self.manifest[LOCAL_SETS_KEY].get(set_name), self.size)

    def _read_set(self, set_name: str, row: int, func: Any) -> Any:
        """``func(part, local row)`` for ``row`` of a secondary set; None when no part covers it.

        A part file removed meanwhile (a concurrent compact merged it) makes the reader take the newer
        manifest's parts and retry, like opening an index does.
        """
        row = int(row)
        if not 0 <= row < self.size:
            raise IndexError(f"row {row} out of range for {self.size} images")
        for attempt in range(OPEN_RETRIES):
            entry = self._set_entry(set_name)
            i = find_part(entry, row)
            if i is None:
                return None
            part = entry["parts"][i]
            try:
                return self._parts.read(entry, part, lambda p: func(p, row - p.start))
            except FileNotFoundError:
                with contextlib.suppress(OSError, IndexFormatError):
                    fresh = read_manifest(self.path / MANIFEST_NAME)[LOCAL_SETS_KEY]
                    if fresh != self.manifest[LOCAL_SETS_KEY]:
                        self.manifest[LOCAL_SETS_KEY] = fresh  # _disk_manifest kept: a writer still reloads all
                        self._lease_files()  # hold the newer parts too
                        time.sleep(0.01 * attempt)
                        continue
                raise IndexFormatError(f"{self.path / part['file']}: named in {self.path / MANIFEST_NAME} but "
                                       "missing") from None
        raise IndexFormatError(f"{self.path / MANIFEST_NAME}: local set {set_name!r} kept changing while read")

    def check_local_set(self, set_name: str, conf: dict[str, Any], dim: int | None = None) -> None:
        """ConfigMismatchError (naming both confs and the differing keys) when the index holds ``set_name``
        with another conf or descriptor dim; nothing when it holds it with these, or not at all."""
        entry = self.manifest[LOCAL_SETS_KEY].get(set_name)
        if entry is None:
            return
        conf = normalise_config(conf)
        diff = config_diff(entry["conf"], conf)
        if diff:
            raise ConfigMismatchError(
                f"index {self.path} holds local set {set_name!r} extracted with "
                f"{json.dumps(entry['conf'], sort_keys=True)}; refusing features extracted with "
                f"{json.dumps(conf, sort_keys=True)} (differing keys: {', '.join(diff)}). Use the stored conf, "
                "or another set name"
            )
        if dim is not None and int(entry["dim"]) != int(dim):
            raise ConfigMismatchError(f"index {self.path} local set {set_name!r} is {entry['dim']}-d, "
                                      f"got {dim}-d descriptors")

    # ------------------------------------------------------------------ ASMK

    def asmk(self) -> AsmkIndex | None:
        """The index's ASMK inverted file over its stored local features (``build-index --asmk``), loaded into
        memory on first use; None for an index without it."""
        entry = self.manifest.get(ASMK_KEY)
        if not entry:
            return None
        if self._asmk is None or self._asmk.entry is not entry:
            self._asmk = AsmkIndex(self.path, entry)
        return self._asmk

    # ------------------------------------------------------------------ aux

    def read_aux(self, name: str) -> dict[str, np.ndarray] | None:
        """Arrays stored by :meth:`write_aux`, or None."""
        check_aux_name(name)
        return read_aux_file(self.path / AUX_DIR / f"{name}.npz")

    # ------------------------------------------------------------------ close

    def _close_stores(self) -> None:
        self._parts.close()
        self._asmk = None
        for seg in self._segments:
            seg.close()
        self._segments = []
        self._desc = SegmentedArray([], self.dim)
        self._starts = [0]
        self._search_index = None
        self._metadata = None

    def close(self) -> None:
        """Release file handles and the lease (the object is unusable afterwards)."""
        self._close_stores()
        self._faiss = None
        if self._lease is not None:
            self._lease.release()

    def __enter__(self: _Self) -> _Self:  # an IndexWriter's is an IndexWriter
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, images={self.size}, segments={len(self._segments)}, "
                f"dim={self.dim}, faiss={(self.manifest.get('faiss') or {}).get('factory')!r}, "
                f"local={self.has_local()})")


def _legacy_message(path: Path, manifest: dict) -> str:
    return (f"index {path} is in format {manifest['format_version']} (whole-file global.h5/metadata.csv); "
            f"this version reads format {FORMAT_VERSION} (segments). Upgrade it in place, once, with "
            f"`landmarks compact --index {path}` (any build-index run on it also upgrades it)")



def _factory_from_description(desc: dict[str, Any]) -> str | None:
    """Best-effort factory string for the index types choose_params produces (None if unknown)."""
    prefix = ""
    for t in desc["transforms"]:
        if t.startswith("OPQMatrix(") and desc["m"]:
            prefix += f"OPQ{desc['m']}_{t.split('->')[1].rstrip(')')},"
        else:
            return None
    if desc["type"] == "IndexFlat" and not prefix:
        return "Flat"
    if desc["type"] == "IndexIVFPQ":
        return f"{prefix}IVF{desc['nlist']},PQ{desc['m']}x{desc['nbits']}"
    if desc["type"] == "IndexIVFPQFastScan":
        return f"{prefix}IVF{desc['nlist']},PQ{desc['m']}x{desc['nbits']}fs{'r' if desc.get('residual') else ''}"
    return None
