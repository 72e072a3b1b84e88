"""The vector database on disk: FAISS index, float16 global descriptors, CSR local features, metadata.

``index/`` knows nothing about images or CNNs; it stores vectors, local-feature
arrays and rows. Entry point: :class:`IndexDatabase`.
"""

from .database import IndexDatabase
from .faiss_index import build_faiss, choose_params
from .manifest import ConfigMismatchError, IndexFormatError

__all__ = ["IndexDatabase", "IndexFormatError", "ConfigMismatchError", "choose_params", "build_faiss"]
