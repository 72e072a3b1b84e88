"""IndexWriter: an index directory opened to change it (build-index, compact, tune-threshold, local sets).

:class:`IndexWriter` is an :class:`~index.reader.IndexReader` (on-disk layout, reading and row numbers:
``index/reader.py``) that also writes: shards, commits, compaction, secondary local-set parts, aux arrays and
manifest fields, each under the index's writer lock. Readers never lock and never write a file, so they are
a separate, smaller class; everything that writes lives here, including worker-written shards
(:func:`write_worker_shard`) and the retirement of replaced files.

Life-cycle: ``create_or_open`` -> ``find_rows``/``done_ids`` (resume) ->
``write_shard`` per batch -> ``commit`` (shards become one new segment; faiss
extended, or retrained when the collection outgrew it) -> ``search``/``rows``.
``compact`` merges segments. ``index/`` knows nothing about images.

Commit (crash-safe, resumable; a kill at any point is repaired by running the
same calls again):

1. under the writer lock, re-read the manifest (another writer may have committed);
2. write the new rows (from the shards, ids not yet committed) as a new segment
   file under a temp name, rename it to ``segments/seg-NNNNNN-<random>.h5``:
   not referenced by the manifest yet, so invisible;
3. add the new vectors to the faiss index (or retrain, see ``RETRAIN_GROWTH``)
   and write it under a new name ``faiss-<random>.index``;
4. replace ``manifest.json`` naming the new segment list and faiss file: the
   commit point. Readers see the old or the new state, never a mix;
5. delete the merged shards and skipped duplicates; the previous faiss file is retired (below).

A kill before 4 leaves unreferenced files, deleted by the next writer; a kill
after 4 leaves shards whose ids are all committed (dropped by the next commit).
Nothing already committed is rewritten: a commit costs O(new rows) I/O plus
reading and writing the faiss codes (~70 bytes per vector).

Concurrency: one writer at a time (``writer_lock``; a second writer fails with
IndexLockedError naming the holder, or waits ``lock_timeout`` seconds).
Readers take no lock: they read the manifest and then the files it names; a
file removed by a concurrent commit/compaction in between makes them re-read
the manifest and retry.

Retired files: a file that a commit or compaction replaces (merged segments, merged local-set parts, the
previous faiss file) is not deleted when the new manifest is published: the same manifest lists it under
``retired`` with the time, and it stays on disk, so readers that opened it before (memory-mapped, possibly on
another node of a shared filesystem, where deleting a file under an open handle gives stale-handle errors or
SIGBUS instead of the retry above) keep answering. A later writer (any commit, compaction or write open)
deletes retired files once they are ``RETIRE_GRACE_S`` seconds old (environment ``LANDMARKS_RETIRE_GRACE_S``;
0: delete at once, right after the commit point) and no live reader lease names them (``index/lease.py``: every
open reader names the files it holds and refreshes that while it runs, however long): first a manifest without
them, then the files. Only a reader that cannot write its lease (a read-only filesystem) relies on the grace
period alone and must reopen the index (the service does on ``POST /reload`` or SIGHUP) before it ends.

Worker shards: :func:`write_worker_shard` lets processes other than the writer (e.g. Ray actors of
``build-index --engine ray``) write shards straight into ``shards/`` while the writer holds the lock, each at a
sequence number the writer assigned, so a retried task finds its shard already there instead of publishing
it twice. The writer then commits them like its own.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import faiss_index as fi
from . import asmk_store
from .aux_files import AUX_DIR, check_aux_name, write_aux_file
from .hdf5 import COPY_CHUNK, h5_file
from .lease import held_files
from .legacy import (
    FAISS_NAME,
    GLOBAL_NAME,
    LOCAL_NAME,
    METADATA_NAME,
    GlobalStore,
    LocalStore,
    read_metadata,
)
from .local_sets import (
    LOCAL_SETS_DIR,
    LOCAL_SETS_KEY,
    PART_FORMAT,
    LocalPart,
    check_set_name,
    contiguous_runs,
    covered_mask,
    part_path,
    write_part_file,
)
from .lock import HOLDER_NAME, LOCK_NAME, WriterLock
from .manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    TMP_SUFFIX,
    ConfigMismatchError,
    IndexFormatError,
    atomic_output,
    check_config,
    fsync_dir,
    merge_manifest_fields,
    new_manifest,
    normalise_config,
    package_version,
    read_manifest,
    tmp_owner_alive,
    write_manifest,
)
from .reader import IndexReader, _legacy_message
from .segment import (
    SEGMENTS_DIR,
    Segment,
    SegmentedArray,
    encode_strings,
    hash_ids,
    write_segment,
)
from .shards import SHARDS_DIR, ShardBatch, ShardReader, list_shards, write_shard_file
from .skipped import SKIPPED_NAME, append_skipped, read_skipped_rows, write_skipped
from .vectors import l2_normalize

logger = logging.getLogger(__name__)

__all__ = ["IndexWriter", "write_worker_shard", "retire_grace_s", "RETRAIN_GROWTH", "RETIRE_GRACE_S",
           "RETIRE_GRACE_ENV", "RETIRED_KEY"]

# An automatically chosen IVF-PQ index is retrained from the stored descriptors when the collection has
# grown to RETRAIN_GROWTH x the size it was trained on. nlist grows with sqrt(n), so at 4x the right
# nlist has doubled: the old lists hold twice the codes they should (2x the scan per probe) and their
# centroids and codebooks were fitted on a quarter of today's data. Retraining at every 4x growth costs at
# most 1/3 of a final build in total (geometric series 1/4 + 1/16 + ...).
RETRAIN_GROWTH = 4.0
# Replaced files stay on disk at least this long (module docstring, "Retired files"); those an open reader's lease
# names stay as long as it runs. The grace period is what protects a reader that could not write a lease.
RETIRE_GRACE_S = 3600.0
RETIRE_GRACE_ENV = "LANDMARKS_RETIRE_GRACE_S"
RETIRED_KEY = "retired"
_SEG_RE = re.compile(r"^seg-(\d{6,})-")


def retire_grace_s() -> float:
    """Seconds a replaced file is kept for readers: ``$LANDMARKS_RETIRE_GRACE_S``, else ``RETIRE_GRACE_S``."""
    raw = os.environ.get(RETIRE_GRACE_ENV)
    if raw is None or raw == "":
        return RETIRE_GRACE_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{RETIRE_GRACE_ENV}={raw!r} is not a number of seconds") from None
    if not value >= 0:
        raise ValueError(f"{RETIRE_GRACE_ENV}={raw!r} must be >= 0")
    return value


def _retire(manifest: dict, files: Sequence[str], index_path: Path) -> list[str]:
    """Record ``files`` (replaced in ``manifest``, about to be published) as retired; returns those to delete now.

    With a grace period of 0 only the files a live reader lease names are kept (lease.py); the caller deletes
    the others after the commit point.
    """
    files = [f for f in files if f]
    if retire_grace_s() <= 0:
        held = held_files(index_path)
        drop = [f for f in files if f not in held]
        files = [f for f in files if f in held]
    else:
        drop = []
    now = time.time()
    if files:
        manifest[RETIRED_KEY] = list(manifest.get(RETIRED_KEY, [])) + [{"file": f, "since": now} for f in files]
    return drop


def _as_str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and np.isnan(value):
        raise ValueError(f"{what} is NaN; use '' for 'no landmark'")
    return str(value)


class IndexWriter(IndexReader):
    """An index directory opened to change it: everything an :class:`~index.reader.IndexReader` reads, plus
    shards, commits, compaction, local-set parts, aux arrays and manifest fields.

    Open with :meth:`create_or_open` (build/resume) or :meth:`open_for_write` (compact, manifest updates);
    the constructor is internal. ``lock_timeout``: seconds a write waits for another writer before raising
    IndexLockedError (0: fail at once). Every write method takes the (re-entrant) writer lock for its own
    duration; a long writer holds it with ``with db.writer_lock(): ...``.
    """

    _takes_lease = False  # the writer decides what is deleted, under its lock: it holds no lease against itself

    def __init__(self, path: Path, manifest: dict, *, gpu: str = "auto", lock_timeout: float = 0.0) -> None:
        self.lock_timeout = float(lock_timeout)
        self._lock = WriterLock(Path(path))
        self._local_expect: tuple[bool, int | None] | None = None
        self._skipped_buffer: dict[str, tuple[str, str]] = {}
        super().__init__(path, manifest, gpu=gpu, lock_timeout=lock_timeout)

    # ------------------------------------------------------------------ open / create

    @classmethod
    def open(cls, path: str | os.PathLike, *, gpu: str = "auto", lock_timeout: float = 0.0) -> IndexWriter:
        """A writer opens as :meth:`open_for_write` does (readers: :meth:`IndexReader.open`)."""
        return cls.open_for_write(path, gpu=gpu, lock_timeout=lock_timeout)

    @classmethod
    def create_or_open(cls, path: str | os.PathLike, config: dict, dim: int, *, gpu: str = "auto",
                       lock_timeout: float = 0.0) -> IndexWriter:
        """Create a new index directory, or open an existing one built with the same ``config`` and ``dim``.

        An index of the previous format (1) is upgraded in place first.

        Raises:
            ConfigMismatchError: the existing manifest has another config or dim
                (the message names both configurations and the differing keys).
            FileExistsError: ``path`` is a non-empty directory that is not an index.
            IndexFormatError: the existing index is unreadable.
            IndexLockedError: another process is writing the index.
        """
        path = Path(path)
        if int(dim) != dim or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        return cls._open_writer(path, config, int(dim), gpu, lock_timeout)

    @classmethod
    def open_for_write(cls, path: str | os.PathLike, *, gpu: str = "auto", lock_timeout: float = 0.0) -> IndexWriter:
        """Open an existing index to change it (compact, manifest updates); upgrades format 1 in place."""
        path = Path(path)
        if not (path / MANIFEST_NAME).exists():
            raise FileNotFoundError(f"{path} is not an index directory: {path / MANIFEST_NAME} not found")
        return cls._open_writer(path, None, None, gpu, lock_timeout)

    @classmethod
    def _open_writer(cls, path: Path, config: dict | None, dim: int | None, gpu: str,
                     lock_timeout: float) -> IndexWriter:
        mpath = path / MANIFEST_NAME
        if not mpath.exists() and path.exists():
            if not path.is_dir():
                raise FileExistsError(f"{path} exists and is not a directory")
            _check_empty(path)
        path.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(path)
        lock.acquire(lock_timeout, "open for writing")
        try:
            if mpath.exists():
                manifest = read_manifest(mpath)
                if config is not None:
                    check_config(path, manifest["config"], config)
                    if manifest["dim"] != dim:
                        raise ConfigMismatchError(
                            f"index at {path} stores {manifest['dim']}-d global descriptors but {dim}-d were "
                            f"requested (same configuration {manifest['config']}); use another directory"
                        )
                if manifest["format_version"] < FORMAT_VERSION:
                    manifest = _upgrade_legacy(path, manifest)
                created = False
            else:
                _check_empty(path)
                manifest = new_manifest(config, dim)
                write_manifest(mpath, manifest)  # first file: from now on the directory is an index
                created = True
            db = cls(path, manifest, gpu=gpu, lock_timeout=lock_timeout)
            db._collect_garbage()
        finally:
            lock.release()
        if created:
            logger.info("created empty index %s (dim %d)", path, dim)
        else:
            logger.info("opened index %s for writing: %d images in %d segments, %d shards pending",
                        path, db.size, len(db._segments), len(list_shards(db._shards_dir)))
        return db

    # ------------------------------------------------------------------ writer lock

    @contextlib.contextmanager
    def writer_lock(self, timeout: float | None = None, what: str = "write") -> Iterator[IndexWriter]:
        """Hold the index's writer lock (re-entrant); on first entry re-read the manifest.

        Every write method takes it for its own duration; a long writer (build-index) holds it for
        its whole run so that a second writer is refused at once, naming the holder.

        Raises:
            IndexLockedError: another process holds it after ``timeout`` (default ``self.lock_timeout``) s.
        """
        first = self._lock.acquire(self.lock_timeout if timeout is None else float(timeout), what)
        try:
            if first:
                self._refresh()
            yield self
        finally:
            self._lock.release()

    def _refresh(self) -> None:
        """Re-read the manifest (under the lock): another writer may have committed since we read it."""
        manifest = read_manifest(self.path / MANIFEST_NAME)
        if manifest != self._disk_manifest:
            if manifest["format_version"] < FORMAT_VERSION:
                raise IndexFormatError(_legacy_message(self.path, manifest))
            logger.info("%s changed since it was opened (another writer committed): reloading", self.path)
            self.manifest = manifest
            self._disk_manifest = copy.deepcopy(manifest)
            self._local_expect = None
            self._load()

    # ------------------------------------------------------------------ extraction side

    def write_shard(self, batch: ShardBatch) -> Path:
        """Store one extraction batch as a shard (atomic); :meth:`commit` merges shards into the index.

        Returns:
            The shard's path.

        Raises:
            ValueError: lengths, shapes, dim or local layout inconsistent (the message names it).
        """
        n = len(batch.ids)
        args = _shard_arrays(self.dim, batch.ids, batch.landmark_ids, batch.paths, batch.xb, batch.local_sizes)
        local = _pack_local(n, batch.local_keypoints, batch.local_descriptors, *self._expected_local())
        if args[-1] is not None and local is None:
            raise ValueError(f"local_sizes must be ({n}, 2) [width, height] and come with local features, "
                             "got no local features")
        path = write_shard_file(self._shards_dir, *args[:4], local, args[4])
        if n:
            self._local_expect = (local is not None, None if local is None else local[1].shape[1])
        self.flush_skipped()
        logger.debug("wrote %s (%d images%s)", path.name, n,
                     "" if local is None else f", {len(local[0])} local features")
        return path

    def _expected_local(self) -> tuple[bool | None, int | None]:
        """(has local, local dim) fixed by committed rows or earlier shards; (None, None) if not yet fixed."""
        if self._local_expect is None:
            if self.size:
                self._local_expect = (self.has_local(), self._local_dim)
            else:
                for shard in list_shards(self._shards_dir):
                    r = ShardReader(shard)
                    if r.n:
                        self._local_expect = (r.has_local, r.local_dim)
                        break
        return self._local_expect if self._local_expect is not None else (None, None)

    def record_skipped(self, id: str, path: str, reason: str) -> None:  # noqa: A002 (API name)
        """Record an image the caller could not process (buffered; appended by flush_skipped()/write_shard()/commit())."""
        self._skipped_buffer[_as_str(id, "id")] = (_as_str(path, "path"), _as_str(reason, "reason"))

    def flush_skipped(self) -> None:
        """Append buffered skipped images to skipped.csv (O(buffer), under the writer lock)."""
        if not self._skipped_buffer:
            return
        with self.writer_lock(what="skipped list"):
            append_skipped(self.path / SKIPPED_NAME, self._skipped_buffer)
        self._skipped_buffer.clear()

    def _skipped_rows(self) -> dict[str, tuple[str, str]]:
        """skipped.csv's rows plus those recorded but not flushed yet (:meth:`IndexReader.skipped`)."""
        rows = super()._skipped_rows()
        rows.update(self._skipped_buffer)
        return rows

    # ------------------------------------------------------------------ commit

    def commit(
        self,
        factory: str | None = None,
        nprobe: int | None = None,
        shortlist: int | None = None,
        gpu: str = "auto",
        *,
        rebuild: bool = False,
        asmk: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Publish complete shards as a new segment and bring the faiss index up to date (crash-safe).

        New rows are shard rows whose id is not committed yet (first occurrence
        wins). A trained faiss index gets the new vectors ``add``-ed; it is
        (re)built from the stored descriptors when missing, untrained or
        inconsistent, when ``factory`` names a different index, when an
        automatically chosen index is outgrown (exact index past
        ``FLAT_MAX_N``; IVF-PQ at ``RETRAIN_GROWTH`` x its training size), or
        when ``rebuild`` is true. Write order: see the module docstring.

        Args:
            factory: faiss factory string; None keeps the existing index or chooses automatically.
            nprobe: IVF lists probed per query; None keeps the existing value / default rule.
            shortlist: candidates re-scored exactly per query; None keeps the existing value / 100.
            gpu: "auto", "cpu" or "gpu" for training and adding.
            rebuild: retrain from scratch even if the index could be extended (the ASMK codebook too).
            asmk: add the ASMK inverted file (``index.asmk_store.asmk_request``) to an index without it; an
                index that has it extends it with the new rows in any case (same manifest replacement).

        Returns:
            {"n_added", "n_duplicates", "n_total", "rebuilt", "rebuild_reason", "faiss": params, "seconds"}.
        """
        t0 = time.perf_counter()
        fi.use_gpu(gpu)
        for name, value in (("nprobe", nprobe), ("shortlist", shortlist)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if factory is not None:
            fi.new_index(factory, self.dim)  # fail on a bad factory string before touching any file
        with self.writer_lock(what="commit"):
            self.flush_skipped()
            self._collect_garbage()
            shards = list_shards(self._shards_dir)
            n_old = self.size
            plans, n_dup, has_local, local_dim = self._plan_merge(shards)
            n_added = sum(int(keep.sum()) for _, keep in plans)
            if factory is not None:
                self._check_trainable(factory, n_old + n_added)  # before any file is written
            entries = list(self.manifest["segments"])
            segments = list(self._segments)
            new_seg = None
            try:
                if n_added:
                    entry, new_seg = self._write_segment(plans, local_dim if has_local else None)
                    entries.append(entry)
                    segments.append(new_seg)
                xb = SegmentedArray([s.descriptors for s in segments], self.dim)
                index, params, reason, changed = self._update_faiss(factory, nprobe, shortlist, gpu, rebuild,
                                                                    n_old, xb)
                manifest = copy.deepcopy(self.manifest)
                old_file = (self.manifest.get("faiss") or {}).get("file")
                if index is not None:
                    params["file"] = old_file
                    if changed or not old_file or not (self.path / old_file).exists():
                        params["file"] = f"faiss-{uuid.uuid4().hex[:12]}.index"
                        fi.write_index(index, self.path / params["file"])  # step 3
                manifest["faiss"] = params
                drop_now = _retire(manifest, [old_file] if old_file and old_file != params.get("file") else [], self.path)
                manifest["segments"] = entries
                manifest["local_dim"] = local_dim if has_local else None
                manifest["counts"] = self._counts(segments, entries)
                n_local = manifest["counts"]["local_features"]
                manifest["local_bytes_per_image"] = (
                    float(n_local * (4 * 4 + 2 * local_dim) / max(1, xb.shape[0])) if has_local and local_dim else 0.0
                )
                manifest["package_version"] = package_version()
                replaced = asmk_store.update_for_commit(self.path, manifest, segments,
                                                        (self.manifest["config"].get("local") or {}).get("extractor"),
                                                        asmk, rebuild)  # the ASMK inverted file of the new rows
                drop_now += _retire(manifest, replaced, self.path)
                write_manifest(self.path / MANIFEST_NAME, manifest)  # step 4: the commit point
            except BaseException:
                if new_seg is not None:
                    new_seg.close()
                raise
            self.manifest = manifest
            self._disk_manifest = copy.deepcopy(manifest)
            self._set_segments(segments)
            if index is not None:
                self._set_faiss(index)
            # step 5: garbage of the previous state (the old faiss file is retired, unless the grace is 0)
            for f in drop_now:
                (self.path / f).unlink(missing_ok=True)
            for shard in shards:
                shard.unlink(missing_ok=True)
            if shards:
                fsync_dir(self._shards_dir)
            self._local_expect = None
            self._dedupe_skipped()
        stats = {
            "n_added": n_added,
            "n_duplicates": n_dup,
            "n_total": self.size,
            "rebuilt": reason is not None,
            "rebuild_reason": reason,
            "faiss": dict(self.manifest.get("faiss") or {}),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        logger.info("commit %s: %d new images (%d already stored, skipped) from %d shards, %d total in %d "
                    "segments, %.1f s", self.path, n_added, n_dup, len(shards), self.size, len(self._segments),
                    stats["seconds"])
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
        has_local: bool | None = self.has_local() if n_old else None
        local_dim = self._local_dim if n_old else None
        plans: list[tuple[ShardReader, np.ndarray]] = []
        seen: set[str] = set()
        n_dup = 0
        for r in readers:
            if r.dim != self.dim:
                raise IndexFormatError(f"{r.path}: descriptors have dim {r.dim}, index dim {self.dim}")
            keep = self.find_rows(list(r.ids)) < 0
            for i in np.flatnonzero(keep).tolist():
                if r.ids[i] in seen:
                    keep[i] = False
                else:
                    seen.add(r.ids[i])
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

    def _new_segment_path(self) -> Path:
        seqs = [int(m.group(1)) for e in self.manifest["segments"] if (m := _SEG_RE.match(Path(e["file"]).name))]
        seg_dir = self.path / SEGMENTS_DIR
        seg_dir.mkdir(exist_ok=True)
        return seg_dir / f"seg-{max(seqs, default=-1) + 1:06d}-{uuid.uuid4().hex[:8]}.h5"

    def _write_segment(self, plans: list[tuple[ShardReader, np.ndarray]],
                       local_dim: int | None) -> tuple[dict[str, Any], Segment]:
        """Step 2: the new rows as one segment file (temp name, fsync, rename); returns (manifest entry, segment)."""
        n_new = sum(int(keep.sum()) for _, keep in plans)
        m_new = sum(int(np.diff(r.local_offsets)[keep].sum()) for r, keep in plans) if local_dim else 0
        with_sizes = bool(local_dim) and any(r.has_sizes for r, _ in plans)
        with write_segment(self._new_segment_path(), self.dim, n_new, local_dim, m_new, with_sizes) as (writer, out):
            for r, keep in plans:
                arrays = r.read(keep)
                ids = [str(x) for x in arrays["ids"]]
                values, codes = np.unique(np.asarray(arrays["landmark_ids"], dtype=str), return_inverse=True)
                local = None
                if local_dim:
                    local = {"counts": arrays["local_counts"], "keypoints": arrays["local_keypoints"],
                             "descriptors": arrays["local_descriptors"]}
                    if with_sizes:
                        local["sizes"] = arrays.get("local_sizes", np.zeros((len(ids), 2), np.int32))
                writer.append(arrays["descriptors"], encode_strings(ids), encode_strings(arrays["paths"]),
                              codes.reshape(-1), values, hash_ids(ids), local)
        return out["entry"], out["segment"]

    # ------------------------------------------------------------------ compaction

    def compact(self) -> dict[str, Any]:
        """Merge all segments into one, and back-to-back parts of each secondary local set into one (crash-safe);
        row numbers, faiss index and content are unchanged.

        Writes merged files under new names, publishes them in the manifest (the commit point) with the old
        files listed as retired (deleted by a later writer after the grace period, see the module docstring,
        so readers that opened them keep answering); a kill at any point leaves either the old or the new state.

        Returns:
            {"segments_before", "segments_after", "local_set_parts_before", "local_set_parts_after", "rows",
            "seconds"}.
        """
        t0 = time.perf_counter()
        with self.writer_lock(what="compact"):
            self._collect_garbage()
            before = len(self._segments)
            if before > 1:
                self._merge_segments()
            else:
                logger.info("compact %s: %d segment, nothing to merge", self.path, before)
            parts_before, parts_after = self._merge_local_parts()
        stats = {"segments_before": before, "segments_after": min(before, 1), "local_set_parts_before": parts_before,
                 "local_set_parts_after": parts_after, "rows": self.size, "seconds": round(time.perf_counter() - t0, 3)}
        logger.info("compact %s: %d segments merged into %d, %d local set parts into %d (%d rows) in %.1f s",
                    self.path, before, stats["segments_after"], parts_before, parts_after, self.size, stats["seconds"])
        return stats

    def _merge_segments(self) -> None:
        """The segment part of :meth:`compact` (caller holds the writer lock; more than one segment)."""
        local_dim = self._local_dim
        n_features = sum(s.n_features for s in self._segments)
        with_sizes = bool(local_dim) and any(s.has_sizes for s in self._segments)
        with write_segment(self._new_segment_path(), self.dim, self.size, local_dim, n_features,
                           with_sizes) as (writer, out):
            for seg in self._segments:
                values = seg.landmark_values()
                sorted_hash, hash_rows = seg.hashes()
                hashes = np.empty(seg.n, dtype=np.uint64)
                hashes[hash_rows] = sorted_hash
                for a in range(0, seg.n, COPY_CHUNK):
                    b = min(seg.n, a + COPY_CHUNK)
                    local = None
                    if local_dim:
                        local = seg.local_block(a, b)
                        if with_sizes and "sizes" not in local:
                            local["sizes"] = np.zeros((b - a, 2), np.int32)
                    writer.append(np.asarray(seg.descriptors[a:b]), seg.raw_strings("ids", a, b),
                                  seg.raw_strings("paths", a, b), seg.raw_codes(a, b), values,
                                  hashes[a:b], local)
        entry, merged = out["entry"], out["segment"]
        manifest = copy.deepcopy(self.manifest)
        old_files = [e["file"] for e in manifest["segments"]]
        manifest["segments"] = [entry]
        drop_now = _retire(manifest, old_files, self.path)  # kept for readers that still map them
        try:
            write_manifest(self.path / MANIFEST_NAME, manifest)  # the commit point
        except BaseException:
            merged.close()
            raise
        for seg in self._segments:
            seg.close()
        self.manifest = manifest
        self._disk_manifest = copy.deepcopy(manifest)
        self._set_segments([merged])
        for f in drop_now:
            (self.path / f).unlink(missing_ok=True)
        fsync_dir(self.path / SEGMENTS_DIR)

    # ------------------------------------------------------------------ faiss

    def _update_faiss(self, factory: str | None, nprobe: int | None, shortlist: int | None, gpu: str,
                      rebuild: bool, n_old: int, xb: SegmentedArray) -> tuple[Any, dict[str, Any], str | None, bool]:
        """Step 3: extend the trained faiss index with the new rows of ``xb``, or (re)build it.

        Returns (index or None when empty, manifest params, reason it was rebuilt or None, changed).
        """
        n = xb.shape[0]
        old = self.manifest.get("faiss") or {}
        shortlist = shortlist or old.get("shortlist") or fi.DEFAULT_SHORTLIST
        index = self._faiss
        if n == 0:
            return None, {}, None, False
        reason = None
        desc = fi.describe_index(index) if index is not None else None
        trained_n = old.get("trained_n") or old.get("n") or 0
        if index is None:
            reason = "no faiss index yet"
        elif not index.is_trained:
            reason = "the faiss index is not trained"
        elif index.ntotal > n:
            reason = f"the faiss index holds {index.ntotal} vectors but the segments only {n} rows"
            logger.warning("%s: rebuilding", reason)
        elif rebuild:
            reason = "rebuild requested"
        elif factory is not None and (fi.factory_signature(factory, self.dim) != fi.index_signature(desc)):
            reason = f"factory changed from {old.get('factory')!r} to {factory!r}"
        elif factory is None and old.get("auto", True) and desc["exact"] and n >= fi.FLAT_MAX_N:
            reason = f"{n} vectors outgrow the automatically chosen exact index (IVF-PQ from {fi.FLAT_MAX_N})"
        elif (factory is None and old.get("auto", True) and not desc["exact"] and trained_n
              and n >= RETRAIN_GROWTH * trained_n):
            reason = (f"the collection grew to {n} vectors, {n / trained_n:.1f}x the {trained_n} the index was "
                      f"trained for (retrain at {RETRAIN_GROWTH:g}x)")
        changed = self._faiss_dirty
        if reason is not None:
            params = self._build_params(factory, nprobe, shortlist, n, for_gpu=fi.use_gpu(gpu))
            if index is not None:
                logger.info("retraining the faiss index: %s; new parameters %s", reason, params["factory"])
            t0 = time.perf_counter()
            index = fi.build_faiss(xb, params, gpu)
            logger.info("built %s over %d vectors (%s) in %.1f s", params["factory"], n, reason,
                        time.perf_counter() - t0)
            params["n"] = n
            params["trained_n"] = n
            changed = True
        else:
            ntotal = index.ntotal
            if ntotal < n_old:
                logger.warning("the faiss index was %d vectors behind the segments: adding them", n_old - ntotal)
            if ntotal < n:
                work, on_gpu = fi.to_gpu(index, gpu)
                fi.add_rows(work, xb, ntotal, n)
                index = fi.to_cpu(work, on_gpu)
                logger.info("added %d vectors to the trained %s index without retraining (%d total)",
                            n - ntotal, old.get("factory", "faiss"), n)
                changed = True
            if nprobe is not None and fi.describe_index(index)["nprobe"] not in (None, nprobe):
                fi.set_nprobe(index, nprobe)
                changed = True
            params = self._params_for_index(index, old, factory)
            params["shortlist"] = int(shortlist)
            params["trained_n"] = trained_n or n
        return index, params, reason, changed

    def _set_faiss(self, index: Any) -> None:
        self._faiss = index
        self._faiss_dirty = False
        self._search_index = None

    # ------------------------------------------------------------------ secondary local sets

    def write_local_part(
        self,
        set_name: str,
        conf: dict[str, Any],
        start: int,
        keypoints: Sequence[np.ndarray],
        descriptors: Sequence[np.ndarray],
        sizes: np.ndarray,
    ) -> dict[str, Any]:
        """Publish the local features of rows ``start .. start+n-1`` for secondary set ``set_name`` (crash-safe).

        The first part creates the set with ``conf`` (the extractor's resolved conf, JSON-friendly); later
        parts must come with the same conf and descriptor dim. Under the writer lock: the part file is
        written whole (temp name, fsync, rename), then the manifest naming it replaces the old one (the
        commit point); a kill in between leaves a file the next writer deletes.

        Args:
            keypoints: per row (k_i, 4) float32 [x, y, scale, score] in detection-image pixels.
            descriptors: per row (k_i, d).
            sizes: (n, 2) int [width, height] of each row's detection image ((0, 0): not readable).

        Returns:
            The part's manifest entry {"file", "start", "rows", "features", "failed"}.

        Raises:
            ConfigMismatchError: the set exists with another conf (both named) or dim.
            ValueError: rows out of range or already covered by a part of the set, bad arrays.
        """
        check_set_name(set_name)
        conf = normalise_config(conf)
        n, start = len(keypoints), int(start)
        if not n:
            raise ValueError("write_local_part needs at least one row")
        kp, ld, offsets, d = _concat_local(n, keypoints, descriptors)
        sizes = np.asarray(sizes)
        if sizes.shape != (n, 2):
            raise ValueError(f"sizes must be ({n}, 2) [width, height], got {sizes.shape}")
        if d is None or d < 1:
            raise ValueError("local descriptors must have dim >= 1")
        with self.writer_lock(what=f"local set {set_name}"):
            if start < 0 or start + n > self.size:
                raise ValueError(f"rows {start}..{start + n - 1} out of range for {self.size} committed images")
            self.check_local_set(set_name, conf, d)
            entry = self.manifest[LOCAL_SETS_KEY].get(set_name)
            if entry is not None:
                if covered_mask(entry, start + n)[start:].any():
                    raise ValueError(f"rows {start}..{start + n - 1} of local set {set_name!r} are already "
                                     "(partly) stored")
            final = part_path(self.path, set_name, start)
            new_dir = not final.parent.is_dir()
            meta = write_part_file(final, set_name, start, d, np.diff(offsets), kp, ld, sizes.astype(np.int32))
            if new_dir:
                fsync_dir(final.parent.parent)
                fsync_dir(self.path)
            meta["file"] = f"{LOCAL_SETS_DIR}/{set_name}/{final.name}"
            manifest = copy.deepcopy(self.manifest)
            entry = manifest[LOCAL_SETS_KEY].setdefault(set_name, {"conf": conf, "dim": d, "parts": []})
            entry["parts"] = sorted(entry["parts"] + [meta], key=lambda p: int(p["start"]))
            write_manifest(self.path / MANIFEST_NAME, manifest)  # the commit point
            self.manifest = manifest
            self._disk_manifest = copy.deepcopy(manifest)
        logger.debug("local set %s: published rows %d..%d (%d features) as %s", set_name, start, start + n - 1,
                     meta["features"], meta["file"])
        return meta

    def _merge_local_parts(self) -> tuple[int, int]:
        """Merge each run of back-to-back parts of every secondary set into one part (caller holds the lock).

        Streams part by part (no set is held in memory); publishes all merged parts in one manifest
        replacement, then deletes the merged files. Returns (parts before, parts after).
        """
        sets = self.manifest[LOCAL_SETS_KEY]
        before = sum(len(e["parts"]) for e in sets.values())
        if all(len(r) == 1 for e in sets.values() for r in contiguous_runs(e["parts"])):
            return before, before
        manifest = copy.deepcopy(self.manifest)
        old_files: list[str] = []
        for name, entry in manifest[LOCAL_SETS_KEY].items():
            merged_parts = []
            for run in contiguous_runs(entry["parts"]):
                if len(run) == 1:
                    merged_parts.extend(run)
                    continue
                merged_parts.append(self._merge_run(name, entry, run))
                old_files += [p["file"] for p in run]
            entry["parts"] = merged_parts
        drop_now = _retire(manifest, old_files, self.path)
        write_manifest(self.path / MANIFEST_NAME, manifest)  # the commit point
        self.manifest = manifest
        self._disk_manifest = copy.deepcopy(manifest)
        self._parts.close()
        for f in drop_now:
            (self.path / f).unlink(missing_ok=True)
        after = sum(len(e["parts"]) for e in manifest[LOCAL_SETS_KEY].values())
        return before, after

    def _merge_run(self, name: str, entry: dict[str, Any], run: list[dict[str, Any]]) -> dict[str, Any]:
        """One new part file holding the rows of the back-to-back parts ``run``; returns its manifest entry."""
        dim = int(entry["dim"])
        start = int(run[0]["start"])
        n = sum(int(p["rows"]) for p in run)
        m = sum(int(p["features"]) for p in run)
        final = part_path(self.path, name, start)
        with atomic_output(final) as tmp:
            with h5_file(tmp, "w") as f:
                f.attrs.update(format=PART_FORMAT, set=name, start=start, n=n, dim=dim)
                off = f.create_dataset("offsets", shape=(n + 1,), dtype=np.int64)
                kp = f.create_dataset("keypoints", shape=(m, 4), dtype=np.float32)
                ld = f.create_dataset("descriptors", shape=(m, dim), dtype=np.float16)
                sz = f.create_dataset("sizes", shape=(n, 2), dtype=np.int32)
                off[0] = 0
                row = feat = 0
                for p in run:
                    part = LocalPart(self.path / p["file"], p, dim)
                    try:
                        counts, pkp, pld, psz = part.block()
                        k, c = len(counts), len(pkp)
                        off[row + 1 : row + k + 1] = feat + np.cumsum(counts)
                        if c:
                            kp[feat : feat + c] = pkp
                            ld[feat : feat + c] = pld
                        sz[row : row + k] = psz
                        row, feat = row + k, feat + c
                    finally:
                        part.close()
        return {"file": f"{LOCAL_SETS_DIR}/{name}/{final.name}", "start": start, "rows": n, "features": m,
                "failed": sum(int(p.get("failed", 0)) for p in run)}

    # ------------------------------------------------------------------ aux / manifest

    def write_aux(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Store caller-owned arrays as aux/<name>.npz (atomic, under the writer lock)."""
        check_aux_name(name)
        with self.writer_lock(what="write aux"):
            write_aux_file(self.path / AUX_DIR / f"{name}.npz", arrays)

    def update_manifest(self, **fields: Any) -> None:
        """Set caller-owned manifest fields; ``thresholds`` is merged shallowly.

        Under the writer lock, on the manifest as re-read under that lock, so a concurrent commit's
        segments are kept (and the fields are not lost to a commit that started earlier).
        """
        with self.writer_lock(what="manifest update"):
            self.manifest = merge_manifest_fields(self.manifest, fields)
            write_manifest(self.path / MANIFEST_NAME, self.manifest)
            self._disk_manifest = copy.deepcopy(self.manifest)

    def update_thresholds(self, **thresholds: Any) -> None:
        """Merge tuned thresholds into the manifest (``update_manifest(thresholds=...)``)."""
        self.update_manifest(thresholds=thresholds)

    # ------------------------------------------------------------------ housekeeping

    def _dedupe_skipped(self) -> None:
        """Rewrite skipped.csv with one line per id, minus ids now committed (at commit, under the lock)."""
        spath = self.path / SKIPPED_NAME
        if not spath.exists():
            return
        rows = read_skipped_rows(spath)
        ids = list(rows)
        committed = self.find_rows(ids) >= 0
        for i in np.flatnonzero(committed).tolist():
            del rows[ids[i]]
        if committed.any():
            logger.info("%d previously skipped images are now indexed: removed from %s", int(committed.sum()),
                        SKIPPED_NAME)
        with open(spath, encoding="utf-8", errors="replace") as f:
            n_lines = sum(1 for _ in f) - 1
        if n_lines != len(rows):
            write_skipped(spath, rows)

    def _collect_garbage(self) -> None:
        """Delete what interrupted writers left (the caller holds the writer lock).

        Segment and faiss files the manifest does not name, temp files, files of format 1 after an
        upgrade; shard temp files only when the process that was writing them is gone; retired files
        past the grace period (:meth:`_expire_retired`).
        """
        self._expire_retired()
        retired = {r["file"] for r in self.manifest.get(RETIRED_KEY, [])}
        referenced = {e["file"] for e in self.manifest["segments"]} | retired
        faiss_file = (self.manifest.get("faiss") or {}).get("file")
        stale: list[Path] = []
        seg_dir = self.path / SEGMENTS_DIR
        if seg_dir.is_dir():
            stale += [p for p in seg_dir.iterdir() if f"{SEGMENTS_DIR}/{p.name}" not in referenced]
        for p in self.path.iterdir():
            if p.name.endswith(TMP_SUFFIX) or (p.name.startswith("faiss-") and p.name != faiss_file
                                               and p.name not in retired):
                stale.append(p)
            elif p.name in (GLOBAL_NAME, LOCAL_NAME, METADATA_NAME, FAISS_NAME):
                stale.append(p)  # format 1 files left by an interrupted upgrade
        if (self.path / AUX_DIR).is_dir():
            stale += [p for p in (self.path / AUX_DIR).glob(f"*{TMP_SUFFIX}")]
        parts = {p["file"] for e in self.manifest[LOCAL_SETS_KEY].values() for p in e["parts"]} | retired
        if (self.path / LOCAL_SETS_DIR).is_dir():  # parts (and their temp files) no manifest names
            stale += [p for p in (self.path / LOCAL_SETS_DIR).glob("*/*")
                      if f"{LOCAL_SETS_DIR}/{p.parent.name}/{p.name}" not in parts and p.is_file()]
        stale += asmk_store.stale_files(self.path, self.manifest, retired)
        if self._shards_dir.is_dir():
            stale += [p for p in self._shards_dir.glob(f"*{TMP_SUFFIX}") if not tmp_owner_alive(p)]
        removed = 0
        for p in stale:
            with contextlib.suppress(OSError):
                p.unlink()
                removed += 1
        if removed:
            logger.warning("removed %d files left by an interrupted writer in %s", removed, self.path)

    def _expire_retired(self) -> None:
        """Delete retired files older than the grace period (the caller holds the writer lock).

        The manifest without them is published first, so a kill in between leaves unreferenced files
        (deleted as garbage by the next writer), never a manifest naming a missing file.
        """
        retired = self.manifest.get(RETIRED_KEY, [])
        if not retired:
            return
        cutoff = time.time() - retire_grace_s()
        old = [r for r in retired if float(r.get("since", 0)) <= cutoff]
        held = held_files(self.path) if old else set()
        expired = [r for r in old if r["file"] not in held]  # a live reader's lease keeps a file, however old
        if len(expired) < len(old):
            logger.info("%d retired files of %s are past the grace period but still held by open readers (leases)",
                        len(old) - len(expired), self.path)
        if not expired:
            return
        gone = {r["file"] for r in expired}
        manifest = copy.deepcopy(self.manifest)
        manifest[RETIRED_KEY] = [r for r in retired if r["file"] not in gone]
        write_manifest(self.path / MANIFEST_NAME, manifest)
        self.manifest = manifest
        self._disk_manifest = copy.deepcopy(manifest)
        for r in expired:
            (self.path / r["file"]).unlink(missing_ok=True)
        logger.info("removed %d retired files of %s (older than %g s)", len(expired), self.path, retire_grace_s())


def write_worker_shard(
    index_dir: str | os.PathLike,
    dim: int,
    seq: int,
    ids: list[str],
    landmark_ids: list[str],
    paths: list[str],
    xb: np.ndarray,
    local_keypoints: list[np.ndarray] | None = None,
    local_descriptors: list[np.ndarray] | None = None,
    local_sizes: np.ndarray | None = None,
) -> Path:
    """Write one batch as shard ``seq`` of the index at ``index_dir`` from a process that is not the writer.

    For workers (Ray actors) of a writer that holds the lock and assigned ``seq``: the arrays are checked
    and stored exactly as :meth:`IndexWriter.write_shard` stores them (temp name, fsync, atomic link), and
    the writer's :meth:`IndexWriter.commit` publishes them. Opens nothing else of the index.

    Raises:
        FileExistsError: shard ``seq`` exists already (a retried task published it: it is not written twice).
        ValueError: inconsistent arrays, as :meth:`IndexWriter.write_shard`.
    """
    args = _shard_arrays(int(dim), ids, landmark_ids, paths, xb, local_sizes)
    n = len(ids)
    local = _pack_local(n, local_keypoints, local_descriptors, None, None)
    if args[-1] is not None and local is None:
        raise ValueError(f"local_sizes must be ({n}, 2) [width, height] and come with local features, "
                         "got no local features")
    return write_shard_file(Path(index_dir) / SHARDS_DIR, *args[:4], local, args[4], seq=int(seq))


def _shard_arrays(dim: int, ids: Sequence[Any], landmark_ids: Sequence[Any], paths: Sequence[Any], xb: np.ndarray,
                  local_sizes: np.ndarray | None) -> tuple[list[str], list[str], list[str], np.ndarray, np.ndarray | None]:
    """Validated (ids, landmark_ids, paths, float16 L2-normalised descriptors, int32 local sizes) of one shard."""
    n = len(ids)
    if len(landmark_ids) != n or len(paths) != n:
        raise ValueError(f"{n} ids but {len(landmark_ids)} landmark_ids and {len(paths)} paths")
    ids = [_as_str(v, "id") for v in ids]
    if any(not v for v in ids):
        raise ValueError("ids must be non-empty strings")
    landmark_ids = [_as_str(v, "landmark_id") for v in landmark_ids]
    paths = [_as_str(v, "path") for v in paths]
    xb = np.asarray(xb, dtype=np.float32)
    if xb.ndim != 2 or xb.shape != (n, dim):
        raise ValueError(f"xb must have shape ({n}, {dim}) (n ids x index dim), got {xb.shape}")
    if not np.all(np.isfinite(xb)):
        raise ValueError("xb contains NaN or infinite values")
    if local_sizes is not None:
        local_sizes = np.asarray(local_sizes)
        if local_sizes.shape != (n, 2):
            raise ValueError(f"local_sizes must be ({n}, 2) [width, height] and come with local features, "
                             f"got {local_sizes.shape}")
        local_sizes = local_sizes.astype(np.int32)
    return ids, landmark_ids, paths, l2_normalize(xb).astype(np.float16), local_sizes


def _pack_local(
    n: int, keypoints: list[np.ndarray] | None, descriptors: list[np.ndarray] | None,
    expect_local: bool | None, expect_dim: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Validate per-image local arrays against what the index expects and concatenate them into CSR form."""
    if (keypoints is None) != (descriptors is None):
        raise ValueError("give both local_keypoints and local_descriptors, or neither")
    if keypoints is None:
        if n and expect_local:
            raise ValueError("this index stores local features: local_keypoints/local_descriptors are required")
        return None
    if n and expect_local is False:
        raise ValueError("this index has no local features (earlier batches had none): cannot add them now")
    kp, ld, offsets, d = _concat_local(n, keypoints, descriptors)
    if d is None or d < 1:
        if n:
            raise ValueError("local descriptors must have dim >= 1")
        return None
    if expect_dim is not None and d != expect_dim:
        raise ValueError(f"local descriptor dim {d} differs from this index's local dim {expect_dim}")
    return kp, ld, offsets


def _check_empty(path: Path) -> None:
    others = [p.name for p in path.iterdir()
              if not p.name.endswith(TMP_SUFFIX) and p.name not in (LOCK_NAME, HOLDER_NAME)]
    if others:
        raise FileExistsError(
            f"{path} is not empty and has no {MANIFEST_NAME}: not an index directory "
            f"(found {sorted(others)[:5]}); choose a new or empty directory"
        )


def _concat_local(n: int, keypoints: Sequence[np.ndarray], descriptors: Sequence[np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
    """Validate per-image local arrays; (keypoints (M, 4) float32, descriptors (M, d) float16, offsets (n+1,), d).

    ``d`` is None when there are no images (then the arrays are empty and unusable).
    """
    if len(keypoints) != n or len(descriptors) != n:
        raise ValueError(f"{n} images but {len(keypoints)} local_keypoints and {len(descriptors)} local_descriptors")
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
    if d is None:
        return np.zeros((0, 4), np.float32), np.zeros((0, 0), np.float16), np.zeros(1, np.int64), None
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return np.concatenate(kps), np.concatenate(descs), offsets, int(d)


def _upgrade_legacy(path: Path, manifest: dict) -> dict:
    """Convert a format-1 index into one segment + a format-2 manifest (caller holds the writer lock).

    Crash-safe like a commit: the new manifest is the commit point; the format-1 files are deleted
    after it (or by the next writer's garbage collection).
    """
    dim = int(manifest["dim"])
    logger.warning("upgrading index %s from format %d to %d (one pass over its files)", path,
                   manifest["format_version"], FORMAT_VERSION)
    gpath, lpath, mdpath, fpath = (path / GLOBAL_NAME, path / LOCAL_NAME, path / METADATA_NAME, path / FAISS_NAME)
    new = copy.deepcopy(manifest)
    new.update(format_version=FORMAT_VERSION, segments=[], local_dim=None)
    n = 0
    segment = None
    if gpath.exists():
        store = GlobalStore(gpath, dim)
        n = store.n
        local = LocalStore(lpath, n) if (n and lpath.exists()) else None
        try:
            if n:
                md = read_metadata(mdpath)
                if len(md) < n:
                    raise IndexFormatError(f"{mdpath}: {len(md)} rows but {gpath} has {n}")
                md = md.iloc[:n]
                if not np.array_equal(md["id"].to_numpy(dtype=object), store.ids()):
                    raise IndexFormatError(f"{mdpath}: ids do not match the ids in {gpath}")
                seg_dir = path / SEGMENTS_DIR
                seg_dir.mkdir(exist_ok=True)
                final = seg_dir / f"seg-000000-{uuid.uuid4().hex[:8]}.h5"
                with write_segment(final, dim, n, local.dim if local else None,
                                   local.n_features if local else 0) as (writer, out):
                    for a in range(0, n, COPY_CHUNK):
                        b = min(n, a + COPY_CHUNK)
                        ids = [str(x) for x in store.ids()[a:b]]
                        values, codes = np.unique(md["landmark_id"].to_numpy()[a:b].astype(str), return_inverse=True)
                        block = None
                        if local is not None:
                            off = local.offsets[a : b + 1]
                            kp, ld = local.feature_slice(int(off[0]), int(off[-1]))
                            block = {"counts": np.diff(off), "keypoints": kp, "descriptors": ld}
                        writer.append(np.asarray(store.descriptors[a:b]), encode_strings(ids),
                                      encode_strings(md["path"].to_numpy()[a:b]), codes.reshape(-1), values,
                                      hash_ids(ids), block)
                new["segments"] = [out["entry"]]
                new["local_dim"] = local.dim if local else None
                segment = out["segment"]
        finally:
            store.close()
            if local is not None:
                local.close()
    params = dict(manifest.get("faiss") or {})
    params.pop("file", None)
    if n and fpath.exists():
        index = fi.read_index(fpath)
        if index.ntotal == n and index.d == dim:
            name = f"faiss-{uuid.uuid4().hex[:12]}.index"
            try:
                os.link(fpath, path / name)
            except OSError:
                fi.write_index(index, path / name)
            params["file"] = name
            params.setdefault("trained_n", params.get("n") or n)
        else:
            params = {}  # rebuilt by the next commit
    new["faiss"] = params if n else {}
    if segment is not None:
        seg_entries = new["segments"]
        landmarks = set(segment.landmark_values().tolist()) - {""}
        new["counts"] = {"images": n, "landmarks": len(landmarks),
                         "nonlandmarks": int(seg_entries[0]["nonlandmarks"]),
                         "local_features": int(seg_entries[0]["local_features"])}
        segment.close()
    fsync_dir(path)
    write_manifest(path / MANIFEST_NAME, new)  # the commit point of the upgrade
    for p in (gpath, lpath, mdpath, fpath):
        p.unlink(missing_ok=True)
    fsync_dir(path)
    logger.warning("index %s upgraded to format %d: %d rows in one segment", path, FORMAT_VERSION, n)
    return new


