"""One thread-safe LRU cache for the whole package, bounded in entries, in bytes, or both.

Used for the service's recent answers and thumbnails (bounded in entries) and meant for the
recogniser's on-demand reference features (bounded in bytes: ``sizeof`` gives an entry's size).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A least-recently-used mapping; the oldest entries go once a bound is passed.

    ``max_items``: most entries kept (None: no bound). ``max_bytes``: most bytes kept, as measured by
    ``sizeof`` (None: no bound). An entry larger than ``max_bytes`` on its own is returned but not kept.
    """

    def __init__(self, max_items: int | None = None, max_bytes: int | None = None,
                 sizeof: Callable[[V], int] | None = None):
        if max_items is not None and max_items < 0:
            raise ValueError(f"max_items must be >= 0, got {max_items}")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        if max_bytes is not None and sizeof is None:
            raise ValueError("max_bytes needs sizeof (the size of one entry in bytes)")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._sizeof = sizeof
        self.bytes = 0  # total size of the entries kept (0 without sizeof)
        self._data: OrderedDict[K, V] = OrderedDict()
        # each entry's size when it was stored: a value that grew since (put again to count it) is taken
        # out with the size that was added, so ``bytes`` never drifts
        self._sizes: dict[K, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def get(self, key: K, default: Any = None) -> V | Any:
        """The value of ``key`` (now the most recent entry), or ``default``."""
        with self._lock:
            if key not in self._data:
                return default
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key`` as the most recent entry, dropping the oldest ones past a bound."""
        with self._lock:
            self._insert(key, value)

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        """The value of ``key``, made by ``make()`` (outside the lock, so a slow make blocks no reader) when absent.

        Two threads missing the same key may both make it; the first value stored is kept and returned to both.
        """
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = make()
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            self._insert(key, value)
        return value

    def pop(self, key: K, default: Any = None) -> V | Any:
        with self._lock:
            if key not in self._data:
                return default
            value = self._data.pop(key)
            self.bytes -= self._sizes.pop(key, 0)
            return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._sizes.clear()
            self.bytes = 0

    # ------------------------------------------------------------------ internal (lock held)

    def _size(self, value: V) -> int:
        return int(self._sizeof(value)) if self._sizeof is not None else 0

    def _insert(self, key: K, value: V) -> None:
        if key in self._data:
            self._data.pop(key)
            self.bytes -= self._sizes.pop(key, 0)
        size = self._size(value)
        self._data[key] = value
        self._sizes[key] = size
        self.bytes += size
        while self._data and ((self.max_items is not None and len(self._data) > self.max_items)
                              or (self.max_bytes is not None and self.bytes > self.max_bytes)):
            old_key, _ = self._data.popitem(last=False)
            self.bytes -= self._sizes.pop(old_key, 0)
