"""retrieval.cache.LRU: the one LRU of the package (service answers and thumbnails; reference features)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from retrieval.cache import LRU


def test_bounded_in_entries_keeps_the_most_recently_used():
    lru = LRU(max_items=2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # "a" is now the most recent
    lru.put("c", 3)
    assert lru.get("b") is None and lru.get("a") == 1 and lru.get("c") == 3 and len(lru) == 2
    lru.put("a", 10)  # replacing keeps one entry
    assert len(lru) == 2 and lru.get("a") == 10
    assert lru.pop("a") == 10 and "a" not in lru
    lru.clear()
    assert len(lru) == 0 and lru.get("c", "gone") == "gone"


def test_bounded_in_bytes():
    lru = LRU(max_bytes=100, sizeof=lambda a: a.nbytes)
    for i in range(5):
        lru.put(i, np.zeros(10, np.float32))  # 40 bytes each: two fit
    assert [k for k in range(5) if k in lru] == [3, 4] and lru.bytes == 80
    lru.put(9, np.zeros(100, np.float32))  # larger than the bound on its own: not kept, and nothing else either
    assert len(lru) == 0 and lru.bytes == 0
    with pytest.raises(ValueError, match="sizeof"):
        LRU(max_bytes=10)


def test_get_or_make_makes_once_per_key_and_outside_the_lock():
    lru = LRU(max_items=8)
    calls = []
    inside = threading.Event()

    def make():
        calls.append(1)
        assert lru.get("other") is None  # the lock is free while making (this would deadlock otherwise)
        inside.set()
        return "value"

    assert lru.get_or_make("k", make) == "value" and inside.is_set()
    assert lru.get_or_make("k", lambda: pytest.fail("made twice")) == "value"
    assert calls == [1]
