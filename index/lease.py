"""Reader leases: an open reader says which files it holds, so that no writer deletes them under it.

A reader (``predict``, ``evaluate``, the service, on this node or another one sharing the filesystem) writes
``leases/<host>-<pid>-<random>.json`` naming the files of the manifest it opened (segments, the faiss file,
local-set parts) and refreshes the file's modification time every ``LEASE_REFRESH_S`` seconds from a
background thread while it is open; closing the reader removes it. A writer expiring retired files
(``index/writer.py``, "Retired files") keeps every file a live lease names, however old; a lease not refreshed
for ``LEASE_STALE_S`` seconds belongs to a reader that died without closing (kill -9, a lost node) and is
removed by the writer. So a run of any length keeps its files, on a local disk or on NFS, where deleting a
memory-mapped file under a reader gives SIGBUS or ESTALE.

A reader that cannot write its lease (a read-only filesystem or a directory it may not write) logs a warning
once and goes on without one: the writer's grace period (``LANDMARKS_RETIRE_GRACE_S``) then protects it, as
before leases. Freshness compares the lease's modification time (set by the file server) with the writer's
clock: clocks of the nodes must agree to well within ``LEASE_STALE_S`` (NTP does).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Iterable

logger = logging.getLogger(__name__)

LEASES_DIR = "leases"
LEASE_REFRESH_S = 60.0  # a live reader touches its lease this often
LEASE_STALE_S = 600.0  # a lease untouched this long is a dead reader's (10 missed refreshes)

_warned: set[str] = set()


class ReaderLease:
    """The lease of one open reader on the index at ``index_path`` (see the module docstring)."""

    def __init__(self, index_path: Path, files: Iterable[str]):
        self.dir = Path(index_path) / LEASES_DIR
        self.path = self.dir / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self.files: set[str] = set()
        self.released = False
        self.update(files)  # OSError when the lease cannot be written (the caller decides)
        _REFRESHER.add(self)

    def update(self, files: Iterable[str]) -> None:
        """Hold ``files`` too (relative to the index directory); rewrites the lease atomically."""
        if self.released:
            return
        new = {f for f in files if f}
        if self.files and new <= self.files and self.path.exists():
            return
        self.files |= new
        self.dir.mkdir(exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
                                   "files": sorted(self.files)}))
        os.replace(tmp, self.path)

    def refresh(self) -> None:
        """Touch the lease (rewrite it if a writer took it for a dead reader's while this process was stopped)."""
        if self.released:
            return
        try:
            os.utime(self.path)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                files, self.files = self.files, set()
                self.update(files)
        except OSError as exc:
            logger.debug("lease %s not refreshed: %s", self.path, exc)

    def release(self) -> None:
        """Give the files back (the reader closed); idempotent."""
        if self.released:
            return
        self.released = True
        _REFRESHER.discard(self)
        with contextlib.suppress(OSError):
            self.path.unlink()


def take_lease(index_path: Path, files: Iterable[str]) -> ReaderLease | None:
    """A lease on ``files``, or None (logged once per index) when it cannot be written."""
    try:
        return ReaderLease(index_path, files)
    except OSError as exc:
        key = str(index_path)
        if key not in _warned:
            _warned.add(key)
            logger.warning("cannot write a reader lease under %s (%s): a writer keeps replaced files only for its "
                           "grace period (LANDMARKS_RETIRE_GRACE_S); reopen the index before it ends",
                           Path(index_path) / LEASES_DIR, exc.strerror or exc)
        return None


def held_files(index_path: Path, stale_s: float | None = None) -> set[str]:
    """Files named by live leases of the index; leases untouched for ``stale_s`` seconds are removed.

    Called by a writer (under the writer lock). An unreadable lease holds nothing unless it is fresh: a
    lease being replaced is read again once.
    """
    stale_s = LEASE_STALE_S if stale_s is None else stale_s
    lease_dir = Path(index_path) / LEASES_DIR
    held: set[str] = set()
    if not lease_dir.is_dir():
        return held
    now = time.time()
    for path in lease_dir.glob("*.json"):
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue  # released meanwhile
        if age > stale_s:
            with contextlib.suppress(OSError):
                path.unlink()
            logger.info("removed the stale reader lease %s (untouched for %.0f s)", path.name, age)
            continue
        for _ in range(2):
            try:
                held.update(json.loads(path.read_text())["files"])
                break
            except FileNotFoundError:
                break
            except (OSError, ValueError, KeyError, TypeError):
                time.sleep(0.01)
    for tmp in lease_dir.glob("*.json.tmp"):  # left by a reader killed while writing its lease
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > stale_s:
                tmp.unlink()
    return held


class _Refresher:
    """One daemon thread per process that touches every live lease every ``LEASE_REFRESH_S`` seconds."""

    def __init__(self) -> None:
        self._leases: set[ReaderLease] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def add(self, lease: ReaderLease) -> None:
        with self._lock:
            self._leases.add(lease)
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()  # a forked worker needs its own thread
                self._thread = threading.Thread(target=self._run, name="index-leases", daemon=True)
                self._thread.start()

    def discard(self, lease: ReaderLease) -> None:
        with self._lock:
            self._leases.discard(lease)

    def refresh_all(self) -> None:
        with self._lock:
            leases = list(self._leases)
        for lease in leases:
            lease.refresh()

    def _run(self) -> None:
        while True:
            time.sleep(LEASE_REFRESH_S)
            self.refresh_all()


_REFRESHER = _Refresher()
