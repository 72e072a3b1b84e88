"""IndexDatabase: the vector database on disk (one self-describing directory per index), opened as a reader or
a writer.

Two classes share the work (why: docs/design.md, "The vector index"):

* :class:`~index.reader.IndexReader` (``index/reader.py``): opening, metadata, rows, id lookups, search,
  local features, secondary local sets, aux arrays. Takes no lock and writes no file. The module docstring
  there has the directory layout (format 2), row numbers, secondary local sets and how readers meet
  concurrent writers.
* :class:`~index.writer.IndexWriter` (``index/writer.py``), a subclass of the reader: shards, ``commit``,
  ``compact``, local-set parts, aux arrays, manifest fields and thresholds, each under the writer lock;
  :func:`~index.writer.write_worker_shard` for Ray actors' shards. The module docstring there has the
  life-cycle, the commit's write order and crash rules, the writer lock, retired files (``Retired files``) and
  worker shards.

This module is the facade older callers and scripts use: ``IndexDatabase.open`` returns an ``IndexReader``;
``IndexDatabase.create_or_open`` and ``IndexDatabase.open_for_write`` return an ``IndexWriter``.
``isinstance(x, IndexDatabase)`` holds for both.
"""

from __future__ import annotations

import os

from .lock import IndexLockedError
from .manifest import ConfigMismatchError, IndexFormatError
from .reader import COLUMNS, OPEN_RETRIES, IndexReader, LazyColumn
from .shards import ShardBatch
from .writer import (
    RETIRE_GRACE_ENV,
    RETIRE_GRACE_S,
    RETIRED_KEY,
    RETRAIN_GROWTH,
    IndexWriter,
    retire_grace_s,
    write_worker_shard,
)

__all__ = ["IndexDatabase", "IndexReader", "IndexWriter", "IndexFormatError", "ConfigMismatchError",
           "IndexLockedError", "RETRAIN_GROWTH", "RETIRE_GRACE_S", "RETIRE_GRACE_ENV", "RETIRED_KEY", "COLUMNS",
           "OPEN_RETRIES", "LazyColumn", "ShardBatch", "retire_grace_s", "write_worker_shard"]


class _Facade(type):
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, IndexReader)  # what IndexDatabase.open/create_or_open return


class IndexDatabase(metaclass=_Facade):
    """Opens an index directory: :meth:`open` (read) returns an :class:`IndexReader`, :meth:`create_or_open`
    (build/resume) and :meth:`open_for_write` (compact, manifest updates) an :class:`IndexWriter`.

    Not instantiated. ``gpu`` ("auto", "cpu", "gpu") selects where searches run; ``lock_timeout``: seconds a
    write waits for another writer before raising IndexLockedError (0: fail at once).
    """

    def __new__(cls, *args: object, **kwargs: object) -> IndexDatabase:
        raise TypeError("IndexDatabase is not instantiated: use IndexDatabase.open (IndexReader) or "
                        "IndexDatabase.create_or_open / open_for_write (IndexWriter)")

    @staticmethod
    def open(path: str | os.PathLike, *, gpu: str = "auto", lock_timeout: float = 0.0) -> IndexReader:
        """:meth:`IndexReader.open`: an existing index for reading (takes no lock; reads no rows until asked)."""
        return IndexReader.open(path, gpu=gpu, lock_timeout=lock_timeout)

    @staticmethod
    def create_or_open(path: str | os.PathLike, config: dict, dim: int, *, gpu: str = "auto",
                       lock_timeout: float = 0.0) -> IndexWriter:
        """:meth:`IndexWriter.create_or_open`: create an index, or open one built with the same config and dim."""
        return IndexWriter.create_or_open(path, config, dim, gpu=gpu, lock_timeout=lock_timeout)

    @staticmethod
    def open_for_write(path: str | os.PathLike, *, gpu: str = "auto", lock_timeout: float = 0.0) -> IndexWriter:
        """:meth:`IndexWriter.open_for_write`: an existing index to change (compact, manifest updates)."""
        return IndexWriter.open_for_write(path, gpu=gpu, lock_timeout=lock_timeout)

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether ``path`` is an index directory (it has a manifest), without opening it."""
        return IndexReader.exists(path)

    @staticmethod
    def read_manifest(path: str | os.PathLike) -> dict:
        """The validated manifest of the index directory ``path`` (:meth:`IndexReader.read_manifest`)."""
        return IndexReader.read_manifest(path)
