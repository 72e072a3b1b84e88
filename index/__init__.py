"""The vector database on disk: append-only segments (float16 global descriptors, metadata, CSR local
features), a FAISS index, a manifest, one writer at a time.

``index/`` knows nothing about images or CNNs; it stores vectors, local-feature
arrays and rows. Entry points: :class:`IndexReader` (``index/reader.py``: opens and reads, never locks or
writes) and :class:`IndexWriter` (``index/writer.py``: builds, commits, compacts under the writer lock).

The names below are imported on first use (PEP 562), so that the small modules every package shares
(``index.choices``, ``index.vectors``) load without faiss, h5py and pandas (the CLI's ``--help`` stays fast).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IndexReader": "reader",
    "IndexWriter": "writer",
    "build_faiss": "faiss_index",
    "choose_params": "faiss_index",
    "IndexLockedError": "lock",
    "ConfigMismatchError": "manifest",
    "IndexFormatError": "manifest",
    "ShardBatch": "shards",
}

__all__ = ["IndexReader", "IndexWriter", "IndexFormatError", "ConfigMismatchError", "IndexLockedError",
           "ShardBatch", "choose_params", "build_faiss"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'index' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
