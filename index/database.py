"""IndexDatabase: the vector database on disk (one self-describing directory per index).

Directory layout::

    manifest.json   format/package version, times, caller config, dim, counts,
                    resolved faiss parameters, thresholds (written LAST by commit)
    metadata.csv    row,id,landmark_id,path (row == faiss id; landmark_id "" = non-landmark)
    global.h5       ids + (N, dim) float16 descriptors: the source of truth
    local.h5        flat CSR local features (only when the caller gives them)
    faiss.index     the CPU faiss index (ids = row numbers), rebuildable from global.h5
    shards/         extraction batches not yet committed (shard-XXXXXX.h5)
    skipped.csv     id,path,reason of images the caller could not process
    aux/<name>.npz  caller-owned arrays (e.g. a PCA fitted on local features)

Life-cycle: ``create_or_open`` -> ``done_ids`` (resume) -> ``write_shard`` per
batch -> ``commit`` (merge shards, train or extend faiss) -> ``search``.
``index/`` knows nothing about images: it stores vectors, local-feature arrays
and rows. One writer at a time; any number of readers.

Crash safety. Every file is replaced atomically (temp name, fsync, rename).
``commit`` orders its writes so that a kill at any point is recoverable by
running the same calls again:

1. write ``local.h5.tmp``, ``metadata.csv.tmp``, ``global.h5.tmp`` (old + new rows);
   a crash here leaves only temp files, deleted on the next writer open/commit.
2. replace ``local.h5``, then ``metadata.csv``: these files may now be *ahead* of
   global.h5; their rows beyond global.h5's are ignored (prefix semantics: every
   rewrite is old rows + appended rows, so the first N rows are unchanged).
3. replace ``global.h5``: the commit point. Its ids are "committed".
4. update and replace ``faiss.index``: until then it may be *behind* (fewer
   vectors than rows); the missing rows are added (trained index) or the index
   is rebuilt, with a WARNING, at the next search (in memory) or commit (saved).
5. replace ``manifest.json`` LAST: stale counts/params are detected on open,
   repaired in memory with a WARNING, and rewritten by the next commit.
6. delete the merged shards: leftovers hold only committed ids and are
   dropped (no new rows) by the next commit.

Each commit rewrites global.h5/local.h5/metadata.csv in full: O(N) I/O per
commit, accepted because a build-index run commits once, and it keeps every
file whole and contiguous (memory-mappable) with no in-place HDF5 appends
that a crash could corrupt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import faiss_index as fi
from .manifest import (
    MANIFEST_NAME,
    TMP_SUFFIX,
    ConfigMismatchError,
    IndexFormatError,
    check_config,
    fsync_dir,
    fsync_file,
    merge_manifest_fields,
    new_manifest,
    package_version,
    read_manifest,
    tmp_path,
    write_manifest,
)
from .store import (
    AUX_DIR,
    COPY_CHUNK,
    FAISS_NAME,
    GLOBAL_NAME,
    LOCAL_NAME,
    METADATA_NAME,
    SHARDS_DIR,
    SKIPPED_COLUMNS,
    SKIPPED_NAME,
    GlobalStore,
    GlobalWriter,
    LocalStore,
    LocalWriter,
    ShardReader,
    check_aux_name,
    empty_metadata,
    list_shards,
    read_aux_file,
    read_metadata,
    read_skipped,
    write_aux_file,
    write_shard_file,
    write_table,
)

logger = logging.getLogger(__name__)

__all__ = ["IndexDatabase", "IndexFormatError", "ConfigMismatchError"]


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (float32); zero rows stay zero instead of becoming NaN."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _as_str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and np.isnan(value):
        raise ValueError(f"{what} is NaN; use '' for 'no landmark'")
    return str(value)


class IndexDatabase:
    """A landmark index directory: global/local descriptors, metadata, faiss index, manifest.

    Open with :meth:`open` (read) or :meth:`create_or_open` (build/resume);
    the constructor is internal. ``gpu`` ("auto", "cpu", "gpu") selects where
    searches run; stored indexes are always CPU indexes.
    """

    def __init__(self, path: Path, manifest: dict, *, gpu: str = "auto") -> None:
        fi.use_gpu(gpu)  # validates the mode
        self.path = Path(path)
        self.manifest = manifest
        self.gpu = gpu
        self._global: GlobalStore | None = None
        self._local: LocalStore | None = None
        self._metadata: pd.DataFrame | None = None
        self._faiss = None  # CPU faiss index as on disk (or repaired in memory)
        self._faiss_dirty = False  # repaired in memory, not yet saved
        self._search_index = None  # _faiss, or its GPU clone
        self._exact = False
        self._ahead = False  # metadata.csv/local.h5 hold rows beyond global.h5 (interrupted commit)
        self._local_expect: tuple[bool, int | None] | None = None
        self._skipped_buffer: dict[str, tuple[str, str]] = {}
        self._load()

    # ------------------------------------------------------------------ open / create

    @classmethod
    def create_or_open(cls, path: str | os.PathLike, config: dict, dim: int, *, gpu: str = "auto") -> IndexDatabase:
        """Create a new index directory, or open an existing one built with the same ``config`` and ``dim``.

        Raises:
            ConfigMismatchError: the existing manifest has another config or dim
                (the message names both configurations and the differing keys).
            FileExistsError: ``path`` is a non-empty directory that is not an index.
            IndexFormatError: the existing index is unreadable.
        """
        path = Path(path)
        if int(dim) != dim or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        dim = int(dim)
        mpath = path / MANIFEST_NAME
        if mpath.exists():
            manifest = read_manifest(mpath)
            check_config(path, manifest["config"], config)
            if manifest["dim"] != dim:
                raise ConfigMismatchError(
                    f"index at {path} stores {manifest['dim']}-d global descriptors but {dim}-d were "
                    f"requested (same configuration {manifest['config']}); use another directory"
                )
            db = cls(path, manifest, gpu=gpu)
            db._remove_stale_tmp()
            logger.info("resuming index %s: %d images committed, %d shards pending",
                        path, db.size, len(list_shards(db._shards_dir)))
            return db
        if path.exists():
            if not path.is_dir():
                raise FileExistsError(f"{path} exists and is not a directory")
            others = [p.name for p in path.iterdir() if not p.name.endswith(TMP_SUFFIX)]
            if others:
                raise FileExistsError(
                    f"{path} is not empty and has no {MANIFEST_NAME}: not an index directory "
                    f"(found {sorted(others)[:5]}); choose a new or empty directory"
                )
        path.mkdir(parents=True, exist_ok=True)
        manifest = new_manifest(config, dim)
        write_manifest(mpath, manifest)  # first file: from now on the directory is an index
        logger.info("created empty index %s (dim %d)", path, dim)
        db = cls(path, manifest, gpu=gpu)
        db._remove_stale_tmp()
        return db

    @classmethod
    def open(cls, path: str | os.PathLike, *, gpu: str = "auto") -> IndexDatabase:
        """Open an existing index directory (read-only use: nothing is written).

        Raises:
            FileNotFoundError: the directory or its manifest.json does not exist.
            IndexFormatError: a file is truncated or malformed (the message names it).
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"index directory {path} does not exist")
        mpath = path / MANIFEST_NAME
        if not mpath.exists():
            raise FileNotFoundError(f"{path} is not an index directory: {mpath} not found")
        return cls(path, read_manifest(mpath), gpu=gpu)

    def _load(self) -> None:
        """Open the data files and check that they agree; repair disagreements in memory (WARNING)."""
        self._close_stores()
        gpath = self.path / GLOBAL_NAME
        self._global = GlobalStore(gpath, self.dim) if gpath.exists() else None
        n = self.size
        lpath = self.path / LOCAL_NAME
        if lpath.exists():
            self._local = LocalStore(lpath, n)
            if self._local.n_file > n:
                self._ahead = True
                logger.warning(
                    "%s has %d images but %s only %d (interrupted commit): using the first %d; "
                    "the next commit() rewrites it", lpath, self._local.n_file, GLOBAL_NAME, n, n,
                )
        fpath = self.path / FAISS_NAME
        self._faiss = fi.read_index(fpath) if fpath.exists() else None
        if self._faiss is not None:
            if self._faiss.d != self.dim:
                raise IndexFormatError(f"{fpath}: index dim {self._faiss.d}, manifest dim {self.dim}")
            if self._faiss.ntotal != n:
                logger.warning(
                    "%s holds %d vectors but %s has %d rows (interrupted commit?): it is %s at the "
                    "next search (in memory) or commit()", fpath, self._faiss.ntotal, GLOBAL_NAME, n,
                    "extended" if self._faiss.ntotal < n and self._faiss.is_trained else "rebuilt",
                )
        elif n > 0:
            logger.warning("%s is missing but %s has %d rows: it is built at the next search or commit()",
                           fpath, GLOBAL_NAME, n)
        self._check_manifest()

    def _check_manifest(self) -> None:
        """Compare the manifest with the data files; fix stale counts/params in memory with a WARNING."""
        counts = self.manifest.get("counts", {})
        n_local = self._local.n_features if self._local is not None else 0
        stale = []
        if counts.get("images") != self.size:
            stale.append(f"images {counts.get('images')} vs {self.size} in {GLOBAL_NAME}")
        if counts.get("local_features", 0) != n_local:
            stale.append(f"local_features {counts.get('local_features')} vs {n_local} in {LOCAL_NAME}")
        if stale:
            logger.warning("%s counts are stale (%s; interrupted commit?): recomputed from the data files; "
                           "the next commit() saves them", self.path / MANIFEST_NAME, "; ".join(stale))
            self.manifest["counts"] = self._compute_counts()
        if self._faiss is not None:
            recorded = self.manifest.get("faiss") or {}
            actual = self._params_for_index(self._faiss, recorded, None)
            if recorded.get("factory") != actual["factory"] or recorded.get("nprobe") != actual["nprobe"]:
                logger.warning("%s faiss parameters (%s) do not describe %s (%s): using the index's",
                               self.path / MANIFEST_NAME, recorded.get("factory"), FAISS_NAME, actual["factory"])
                self.manifest["faiss"] = actual

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        """Global descriptor dimension."""
        return int(self.manifest["dim"])

    @property
    def size(self) -> int:
        """Number of committed images (rows of global.h5)."""
        return self._global.n if self._global is not None else 0

    @property
    def _shards_dir(self) -> Path:
        return self.path / SHARDS_DIR

    @property
    def metadata(self) -> pd.DataFrame:
        """Committed rows: ``row`` (int, == faiss id), ``id``, ``landmark_id`` ("" = non-landmark), ``path``.

        Cached and shared: do not modify it in place.
        """
        if self._metadata is None:
            mpath, n = self.path / METADATA_NAME, self.size
            if not mpath.exists():
                if n:
                    raise IndexFormatError(f"{mpath} is missing but {self.path / GLOBAL_NAME} has {n} rows")
                df = empty_metadata()
            else:
                df = read_metadata(mpath)
                if len(df) < n:
                    raise IndexFormatError(f"{mpath}: {len(df)} rows but {GLOBAL_NAME} has {n}")
                if len(df) > n:
                    self._ahead = True
                    logger.warning("%s has %d rows but %s only %d (interrupted commit): using the first %d; "
                                   "the next commit() rewrites it", mpath, len(df), GLOBAL_NAME, n, n)
                    df = df.iloc[:n].copy()
                if n and not np.array_equal(df["id"].to_numpy(dtype=object), self._global.ids()):
                    raise IndexFormatError(f"{mpath}: ids do not match the ids in {self.path / GLOBAL_NAME}")
            self._metadata = df
        return self._metadata

    def has_local(self) -> bool:
        """Whether committed images have local features (local.h5 exists)."""
        return self._local is not None

    # ------------------------------------------------------------------ extraction side

    def done_ids(self) -> set[str]:
        """Ids already stored: committed in global.h5 plus those in complete shards (temp files ignored)."""
        done = set(self._global.ids()) if self._global is not None else set()
        for shard in list_shards(self._shards_dir):
            done.update(ShardReader(shard).ids)
        return done

    def stored_labels(self) -> dict[str, str]:
        """{id: landmark_id} of every stored image: committed rows plus complete, uncommitted shards."""
        labels: dict[str, str] = {}
        if self.size:
            labels.update(zip(self.metadata["id"], self.metadata["landmark_id"]))
        for shard in list_shards(self._shards_dir):
            reader = ShardReader(shard)
            for i, lm in zip(reader.ids, reader.landmark_ids()):
                labels.setdefault(str(i), str(lm))
        return labels

    def write_shard(
        self,
        ids: list[str],
        landmark_ids: list[str],
        paths: list[str],
        xb: np.ndarray,
        local_keypoints: list[np.ndarray] | None = None,
        local_descriptors: list[np.ndarray] | None = None,
    ) -> Path:
        """Store one extraction batch as a shard (atomic); :meth:`commit` merges shards into the index.

        Args:
            ids, landmark_ids, paths: n strings each; ids non-empty, landmark_id "" = non-landmark.
            xb: (n, dim) float32 global descriptors; L2-normalised here and stored as float16.
            local_keypoints: per image (k_i, 4) float32 [x, y, scale, score], or None.
            local_descriptors: per image (k_i, d) float32/float16, or None; d fixed per index.

        Returns:
            The shard's path.

        Raises:
            ValueError: lengths, shapes, dim or local layout inconsistent (the message names it).
        """
        n = len(ids)
        if len(landmark_ids) != n or len(paths) != n:
            raise ValueError(f"{n} ids but {len(landmark_ids)} landmark_ids and {len(paths)} paths")
        ids = [_as_str(v, "id") for v in ids]
        if any(not v for v in ids):
            raise ValueError("ids must be non-empty strings")
        landmark_ids = [_as_str(v, "landmark_id") for v in landmark_ids]
        paths = [_as_str(v, "path") for v in paths]
        xb = np.asarray(xb, dtype=np.float32)
        if xb.ndim != 2 or xb.shape != (n, self.dim):
            raise ValueError(f"xb must have shape ({n}, {self.dim}) (n ids x index dim), got {xb.shape}")
        if not np.all(np.isfinite(xb)):
            raise ValueError("xb contains NaN or infinite values")
        local = self._pack_local(n, local_keypoints, local_descriptors)
        desc16 = _l2_normalise(xb).astype(np.float16)
        path = write_shard_file(self._shards_dir, ids, landmark_ids, paths, desc16, local)
        if n:
            self._local_expect = (local is not None, None if local is None else local[1].shape[1])
        self.flush_skipped()
        logger.debug("wrote %s (%d images%s)", path.name, n,
                     "" if local is None else f", {len(local[0])} local features")
        return path

    def _pack_local(
        self, n: int, keypoints: list[np.ndarray] | None, descriptors: list[np.ndarray] | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Validate per-image local arrays and concatenate them into CSR form."""
        if (keypoints is None) != (descriptors is None):
            raise ValueError("give both local_keypoints and local_descriptors, or neither")
        expect_local, expect_dim = self._expected_local()
        if keypoints is None:
            if n and expect_local:
                raise ValueError("this index stores local features: local_keypoints/local_descriptors are required")
            return None
        if n and expect_local is False:
            raise ValueError("this index has no local features (earlier batches had none): cannot add them now")
        if len(keypoints) != n or len(descriptors) != n:
            raise ValueError(
                f"{n} images but {len(keypoints)} local_keypoints and {len(descriptors)} local_descriptors"
            )
        kps, descs, counts, d = [], [], [], None
        for i, (kp, ld) in enumerate(zip(keypoints, descriptors)):
            kp = np.asarray(kp, dtype=np.float32)
            ld = np.asarray(ld)
            if kp.ndim != 2 or kp.shape[1] != 4:
                raise ValueError(f"local_keypoints[{i}] must be (k, 4) [x, y, scale, score], got {kp.shape}")
            if ld.ndim != 2 or ld.shape[0] != kp.shape[0]:
                raise ValueError(f"local_descriptors[{i}] must be ({kp.shape[0]}, d), got {ld.shape}")
            if d is None:
                d = ld.shape[1]
            elif ld.shape[1] != d:
                raise ValueError(f"local_descriptors[{i}] has dim {ld.shape[1]}, earlier images in the batch {d}")
            if not (np.all(np.isfinite(kp)) and np.all(np.isfinite(ld))):
                raise ValueError(f"local features of image {i} contain NaN or infinite values")
            kps.append(kp)
            descs.append(ld.astype(np.float16))
            counts.append(kp.shape[0])
        if d is None or d < 1:
            if n:
                raise ValueError("local descriptors must have dim >= 1")
            return None
        if expect_dim is not None and d != expect_dim:
            raise ValueError(f"local descriptor dim {d} differs from this index's local dim {expect_dim}")
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return np.concatenate(kps), np.concatenate(descs), offsets

    def _expected_local(self) -> tuple[bool | None, int | None]:
        """(has local, local dim) fixed by committed rows or earlier shards; (None, None) if not yet fixed."""
        if self._local_expect is None:
            if self.size:
                self._local_expect = (self._local is not None, self._local.dim if self._local else None)
            else:
                for shard in list_shards(self._shards_dir):
                    r = ShardReader(shard)
                    if r.n:
                        self._local_expect = (r.has_local, r.local_dim)
                        break
        return self._local_expect if self._local_expect is not None else (None, None)

    def record_skipped(self, id: str, path: str, reason: str) -> None:  # noqa: A002 (API name)
        """Record an image the caller could not process (buffered; saved by commit()/flush_skipped()/write_shard())."""
        self._skipped_buffer[_as_str(id, "id")] = (_as_str(path, "path"), _as_str(reason, "reason"))

    def flush_skipped(self) -> None:
        """Merge buffered skipped images into skipped.csv (unique by id, last reason wins; atomic)."""
        if not self._skipped_buffer:
            return
        write_table(self.path / SKIPPED_NAME, self.skipped())
        self._skipped_buffer.clear()

    def skipped(self) -> pd.DataFrame:
        """Skipped images (``id``, ``path``, ``reason``), including not yet flushed ones."""
        rows = {r.id: (r.path, r.reason) for r in read_skipped(self.path / SKIPPED_NAME).itertuples()}
        rows.update(self._skipped_buffer)
        return pd.DataFrame(
            [(k, p, r) for k, (p, r) in rows.items()], columns=SKIPPED_COLUMNS, dtype=object
        )

    # ------------------------------------------------------------------ commit

    def commit(
        self,
        factory: str | None = None,
        nprobe: int | None = None,
        shortlist: int | None = None,
        gpu: str = "auto",
        *,
        rebuild: bool = False,
    ) -> dict[str, Any]:
        """Merge complete shards into the index and bring faiss.index up to date (crash-safe, resumable).

        New rows are shard rows whose id is not committed yet (first occurrence
        wins). A trained faiss index gets the new vectors ``add``-ed without
        retraining; it is (re)built from global.h5 when missing, untrained,
        inconsistent, when ``factory`` names a different index, when an exact
        index chosen automatically is outgrown (>= ``FLAT_MAX_N`` vectors), or
        when ``rebuild`` is true. Write order: see the module docstring.

        Args:
            factory: faiss factory string; None keeps the existing index or chooses automatically.
            nprobe: IVF lists probed per query; None keeps the existing value / default rule.
            shortlist: candidates re-scored exactly per query; None keeps the existing value / 100.
            gpu: "auto", "cpu" or "gpu" for training and adding.
            rebuild: retrain from scratch even if the index could be extended.

        Returns:
            {"n_added", "n_duplicates", "n_total", "rebuilt", "faiss": params, "seconds"}.
        """
        t0 = time.perf_counter()
        fi.use_gpu(gpu)
        for name, value in (("nprobe", nprobe), ("shortlist", shortlist)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if factory is not None:
            fi.new_index(factory, self.dim)  # fail on a bad factory string before touching any file
        self.flush_skipped()
        self._remove_stale_tmp()
        shards = list_shards(self._shards_dir)
        n_old = self.size
        plans, n_dup, has_local, local_dim = self._plan_merge(shards)
        n_added = sum(int(keep.sum()) for _, keep in plans)
        if factory is not None:
            self._check_trainable(factory, n_old + n_added)  # before any file is replaced
        if n_added:
            self._rewrite_files(plans, bool(has_local), local_dim)
        elif self._ahead or (n_old == 0 and self._has_orphan_files()):
            # drop rows left ahead of global.h5 by an interrupted commit whose shards are gone
            self._rewrite_files([], bool(n_old and self._local is not None), local_dim)
        rebuilt = self._update_faiss(factory, nprobe, shortlist, gpu, rebuild, n_old)
        self.manifest["counts"] = self._compute_counts()
        n_local = self._local.n_features if self._local is not None else 0
        self.manifest["local_bytes_per_image"] = (
            float(n_local * (4 * 4 + 2 * self._local.dim) / max(1, self.size)) if self._local is not None else 0.0
        )
        self.manifest["package_version"] = package_version()
        write_manifest(self.path / MANIFEST_NAME, self.manifest)  # step 5: manifest last
        for shard in shards:  # step 6
            shard.unlink(missing_ok=True)
        if shards:
            fsync_dir(self._shards_dir)
        self._local_expect = None
        self._drop_committed_skipped()
        stats = {
            "n_added": n_added,
            "n_duplicates": n_dup,
            "n_total": self.size,
            "rebuilt": rebuilt,
            "faiss": dict(self.manifest.get("faiss") or {}),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        logger.info("commit %s: %d new images (%d already stored, skipped) from %d shards, %d total, %.1f s",
                    self.path, n_added, n_dup, len(shards), self.size, stats["seconds"])
        return stats

    def _check_trainable(self, factory: str, n: int) -> None:
        """ValueError when ``factory`` would have to be trained on fewer vectors than it needs."""
        index = self._faiss
        if index is not None and index.is_trained and (
            fi.factory_signature(factory, self.dim) == fi.index_signature(fi.describe_index(index))
        ):
            return  # kept and extended: no training
        need = fi.min_train_size(factory, self.dim)
        if n < need:
            raise ValueError(f"faiss factory {factory!r} needs at least {need} training vectors, the index "
                             f"would hold {n}; nothing was committed")

    def _plan_merge(
        self, shards: list[Path]
    ) -> tuple[list[tuple[ShardReader, np.ndarray]], int, bool | None, int | None]:
        """Which shard rows are new (id not committed, first occurrence wins), and the local layout.

        Returns (plans [(shard, keep mask)], n_duplicates, has_local, local_dim).
        """
        readers = [ShardReader(p) for p in shards]
        n_old = self.size
        seen = set(self._global.ids()) if self._global is not None else set()
        has_local: bool | None = (self._local is not None) if n_old else None
        local_dim = self._local.dim if (n_old and self._local is not None) else None
        plans: list[tuple[ShardReader, np.ndarray]] = []
        n_dup = 0
        for r in readers:
            if r.dim != self.dim:
                raise IndexFormatError(f"{r.path}: descriptors have dim {r.dim}, index dim {self.dim}")
            keep = np.zeros(r.n, dtype=bool)
            for i, id_ in enumerate(r.ids):
                if id_ not in seen:
                    keep[i] = True
                    seen.add(id_)
            n_dup += int(r.n - keep.sum())
            if not keep.any():
                continue
            if has_local is None:
                has_local = r.has_local
            elif has_local != r.has_local:
                raise ValueError(f"{r.path} {'has' if r.has_local else 'lacks'} local features but the index / "
                                 f"earlier shards {'do not' if r.has_local else 'do'}: give local features "
                                 "for all batches or none")
            if r.has_local:
                if local_dim is None:
                    local_dim = r.local_dim
                elif local_dim != r.local_dim:
                    raise ValueError(f"{r.path}: local descriptor dim {r.local_dim} differs from {local_dim}")
            plans.append((r, keep))
        return plans, n_dup, has_local, local_dim

    def _has_orphan_files(self) -> bool:
        return (self.path / LOCAL_NAME).exists() or (self.path / METADATA_NAME).exists()

    def _rewrite_files(
        self, plans: list[tuple[ShardReader, np.ndarray]], has_local: bool, local_dim: int | None
    ) -> None:
        """Steps 1-3 of the write order: rewrite local.h5, metadata.csv, global.h5 as old rows + new rows."""
        n_old = self.size
        n_new = sum(int(keep.sum()) for _, keep in plans)
        n = n_old + n_new
        gpath, lpath, mpath = self.path / GLOBAL_NAME, self.path / LOCAL_NAME, self.path / METADATA_NAME
        gtmp, ltmp, mtmp = tmp_path(gpath), tmp_path(lpath), tmp_path(mpath)
        md_old = self.metadata
        try:
            # step 1: temp files holding old rows + new rows, in shard order
            lw = None
            if has_local and n:
                m_old = self._local.n_features if (n_old and self._local is not None) else 0
                m_new = sum(int(np.diff(r.local_offsets)[keep].sum()) for r, keep in plans)
                lw = LocalWriter(ltmp, n, m_old + m_new, local_dim)
                if n_old and self._local is not None:
                    lw.append_counts(np.diff(self._local.offsets))
                    for a in range(0, m_old, COPY_CHUNK):
                        lw.append_features(*self._local.feature_slice(a, min(m_old, a + COPY_CHUNK)))
            gw = GlobalWriter(gtmp, n, self.dim)
            if n_old:
                ids_old = self._global.ids()
                for a in range(0, n_old, COPY_CHUNK):
                    b = min(n_old, a + COPY_CHUNK)
                    gw.append(ids_old[a:b], np.asarray(self._global.descriptors[a:b]))
            parts = [md_old[["id", "landmark_id", "path"]]]
            for r, keep in plans:
                arrays = r.read(keep)
                gw.append(arrays["ids"], arrays["descriptors"])
                if lw is not None:
                    lw.append_counts(arrays["local_counts"])
                    lw.append_features(arrays["local_keypoints"], arrays["local_descriptors"])
                parts.append(pd.DataFrame({"id": arrays["ids"], "landmark_id": arrays["landmark_ids"],
                                           "path": arrays["paths"]}, dtype=object))
            gw.close()
            if lw is not None:
                lw.close()
            md = pd.concat(parts, ignore_index=True)
            md.insert(0, "row", np.arange(len(md), dtype=np.int64))
            md.to_csv(mtmp, index=False)
            for p in (ltmp, mtmp, gtmp):
                if p.exists():
                    fsync_file(p)
        except BaseException:
            for p in (gtmp, ltmp, mtmp):
                with contextlib.suppress(OSError):
                    p.unlink()
            raise
        self._close_stores()
        # steps 2-3: ahead-files first, global.h5 (the commit point) last
        if lw is not None:
            os.replace(ltmp, lpath)
        elif lpath.exists():
            lpath.unlink()  # only reachable when no rows have local features
        os.replace(mtmp, mpath)
        os.replace(gtmp, gpath)
        fsync_dir(self.path)
        self._ahead = False
        self._metadata = None
        self._global = GlobalStore(gpath, self.dim)
        self._local = LocalStore(lpath, self.size) if lpath.exists() else None

    def _update_faiss(self, factory: str | None, nprobe: int | None, shortlist: int | None,
                      gpu: str, rebuild: bool, n_old: int) -> bool:
        """Step 4: extend the trained faiss index with new rows, or (re)build it. Returns whether it was built."""
        n = self.size
        old = self.manifest.get("faiss") or {}
        shortlist = shortlist or old.get("shortlist") or fi.DEFAULT_SHORTLIST
        index = self._faiss
        if n == 0:
            return False
        reason = None
        if index is None:
            reason = "no faiss index yet"
        elif not index.is_trained:
            reason = "faiss.index is not trained"
        elif index.ntotal > n:
            reason = f"faiss.index holds {index.ntotal} vectors but {GLOBAL_NAME} only {n} rows"
            logger.warning("%s: rebuilding", reason)
        elif rebuild:
            reason = "rebuild requested"
        elif factory is not None and (
            fi.factory_signature(factory, self.dim) != fi.index_signature(fi.describe_index(index))
        ):
            reason = f"factory changed from {old.get('factory')!r} to {factory!r}"
        elif factory is None and old.get("auto", True) and fi.describe_index(index)["exact"] and n >= fi.FLAT_MAX_N:
            reason = f"{n} vectors outgrow the automatically chosen exact index (IVF-PQ from {fi.FLAT_MAX_N})"
        changed = self._faiss_dirty
        if reason is not None:
            params = self._build_params(factory, nprobe, shortlist)
            t0 = time.perf_counter()
            index = fi.build_faiss(self._global.descriptors, params, gpu)
            logger.info("built %s over %d vectors (%s) in %.1f s", params["factory"], n, reason,
                        time.perf_counter() - t0)
            params["n"] = n
            changed = True
        else:
            ntotal = index.ntotal
            if ntotal < n_old:
                logger.warning("%s was %d vectors behind %s (interrupted commit): adding them",
                               FAISS_NAME, n_old - ntotal, GLOBAL_NAME)
            if ntotal < n:
                work, on_gpu = fi.to_gpu(index, gpu)
                fi.add_rows(work, self._global.descriptors, ntotal, n)
                index = fi.to_cpu(work, on_gpu)
                logger.info("added %d vectors to the trained %s index without retraining (%d total)",
                            n - ntotal, old.get("factory", "faiss"), n)
                changed = True
            if nprobe is not None and fi.describe_index(index)["nprobe"] not in (None, nprobe):
                fi.set_nprobe(index, nprobe)
                changed = True
            params = self._params_for_index(index, old, factory)
            params["shortlist"] = int(shortlist)
        if changed or not (self.path / FAISS_NAME).exists():
            fi.write_index(index, self.path / FAISS_NAME)
        self._set_faiss(index)
        self.manifest["faiss"] = params
        return reason is not None

    def _build_params(self, factory: str | None, nprobe: int | None, shortlist: int | None) -> dict[str, Any]:
        """Parameters for a (re)build: the given factory, else a factory the caller forced earlier, else automatic."""
        old = self.manifest.get("faiss") or {}
        if factory is None and old.get("auto") is False:
            factory = old.get("factory")
        return fi.choose_params(self.size, self.dim, factory, nprobe, shortlist=shortlist)

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

    def _set_faiss(self, index: Any) -> None:
        self._faiss = index
        self._faiss_dirty = False
        self._search_index = None

    def _ready_index(self) -> Any:
        """The index to search, repaired in memory (WARNING) when it is behind or missing, on GPU if allowed."""
        if self._search_index is not None:
            return self._search_index
        n = self.size
        index = self._faiss
        if index is None or not index.is_trained or index.ntotal > n:
            logger.warning("%s missing or inconsistent with %s: rebuilding it in memory; run commit() to save it",
                           FAISS_NAME, GLOBAL_NAME)
            index = fi.build_faiss(self._global.descriptors, self._build_params(None, None, None), "cpu")
            self._faiss, self._faiss_dirty = index, True
        elif index.ntotal < n:
            logger.warning("%s is %d vectors behind %s: adding them in memory; run commit() to save it",
                           FAISS_NAME, n - index.ntotal, GLOBAL_NAME)
            fi.add_rows(index, self._global.descriptors, index.ntotal, n)
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
        xq = _l2_normalise(xq)
        index = self._ready_index()
        if self._exact or not rescore:
            D, I = index.search(xq, min(k, n))
            return fi.finalize_results(D, I, k)
        shortlist = shortlist or (self.manifest.get("faiss") or {}).get("shortlist") or fi.DEFAULT_SHORTLIST
        _, I = index.search(xq, min(max(k, int(shortlist)), n))
        return fi.rescore(xq, I, self._global.rows, k)

    def global_descriptors(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Stored global descriptors as float32: all (N, dim), or ``rows`` (any order) -> (len(rows), dim)."""
        if self._global is None:
            if rows is not None and len(np.atleast_1d(rows)):
                raise IndexError("the index is empty")
            return np.zeros((0, self.dim), np.float32)
        if rows is None:
            return np.asarray(self._global.descriptors[:], dtype=np.float32)
        rows = np.asarray(rows)
        if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
            raise ValueError(f"rows must be a 1-d integer array, got shape {rows.shape} dtype {rows.dtype}")
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.size):
            raise IndexError(f"rows out of range for {self.size} images")
        return self._global.rows(rows).astype(np.float32)

    def local_features(self, row: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(keypoints (k, 4) float32, descriptors (k, d) float32) of image ``row``; None without local features."""
        if self._local is None:
            return None
        return self._local.get(int(row))

    # ------------------------------------------------------------------ aux / manifest

    def write_aux(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Store caller-owned arrays as aux/<name>.npz (atomic)."""
        check_aux_name(name)
        write_aux_file(self.path / AUX_DIR / f"{name}.npz", arrays)

    def read_aux(self, name: str) -> dict[str, np.ndarray] | None:
        """Arrays stored by :meth:`write_aux`, or None."""
        check_aux_name(name)
        return read_aux_file(self.path / AUX_DIR / f"{name}.npz")

    def update_manifest(self, **fields: Any) -> None:
        """Set caller-owned manifest fields atomically; ``thresholds`` is merged shallowly."""
        self.manifest = merge_manifest_fields(self.manifest, fields)
        write_manifest(self.path / MANIFEST_NAME, self.manifest)

    # ------------------------------------------------------------------ housekeeping

    def _compute_counts(self) -> dict[str, int]:
        lm = self.metadata["landmark_id"]
        return {
            "images": self.size,
            "landmarks": int(lm[lm != ""].nunique()),
            "nonlandmarks": int((lm == "").sum()),
            "local_features": self._local.n_features if self._local is not None else 0,
        }

    def _drop_committed_skipped(self) -> None:
        spath = self.path / SKIPPED_NAME
        if not spath.exists() or self._global is None:
            return
        df = read_skipped(spath)
        done = df["id"].isin(set(self._global.ids()))
        if done.any():
            logger.info("%d previously skipped images are now indexed: removed from %s", int(done.sum()), SKIPPED_NAME)
            write_table(spath, df[~done])

    def _remove_stale_tmp(self) -> None:
        """Delete temp files left by an interrupted writer (single-writer assumption)."""
        removed = 0
        for d in (self.path, self._shards_dir, self.path / AUX_DIR):
            if d.is_dir():
                for p in d.glob(f"*{TMP_SUFFIX}"):
                    with contextlib.suppress(OSError):
                        p.unlink()
                        removed += 1
        if removed:
            logger.warning("removed %d temporary files left by an interrupted run in %s", removed, self.path)

    def _close_stores(self) -> None:
        for store in (self._global, self._local):
            if store is not None:
                store.close()
        self._global = self._local = None
        self._search_index = None

    def close(self) -> None:
        """Release file handles (the object is unusable afterwards)."""
        self._close_stores()
        self._faiss = None

    def __enter__(self) -> IndexDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"IndexDatabase({str(self.path)!r}, images={self.size}, dim={self.dim}, "
                f"faiss={(self.manifest.get('faiss') or {}).get('factory')!r}, local={self.has_local()})")


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
    return None
