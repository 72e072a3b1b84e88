"""The vector database on disk: append-only segments (float16 global descriptors, metadata, CSR local
features), a FAISS index, a manifest, one writer at a time.

``index/`` knows nothing about images or CNNs; it stores vectors, local-feature
arrays and rows. Entry point: :class:`IndexDatabase`.
"""

from .database import IndexDatabase
from .faiss_index import build_faiss, choose_params
from .lock import IndexLockedError
from .manifest import ConfigMismatchError, IndexFormatError

__all__ = ["IndexDatabase", "IndexFormatError", "ConfigMismatchError", "IndexLockedError", "choose_params", "build_faiss"]
