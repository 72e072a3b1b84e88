"""One writer at a time: an advisory lock file per index directory.

``writer.lock`` is locked with ``flock`` (the ``filelock`` package): the
kernel drops the lock when the holding process dies, even by ``kill -9``, so
there is never a stale lock to clean up by hand. Right after acquiring it the
holder writes ``writer.json`` (pid, host, command, start time) so that a
second writer can say who holds the index.

Writers (build-index for its whole run; commit, compact, manifest updates and
aux writes for their duration) take the lock; readers never do: they read the
manifest, which is replaced atomically, and the immutable files it names.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

import filelock

from .manifest import atomic_write_text, utc_now

logger = logging.getLogger(__name__)

LOCK_NAME = "writer.lock"
HOLDER_NAME = "writer.json"


class IndexLockedError(TimeoutError):
    """Another process is writing the index; the message names it (pid, host, command, since when)."""


def describe_holder(index_dir: Path) -> str:
    """One line naming the current lock holder, from ``writer.json`` (best effort)."""
    try:
        info = json.loads((Path(index_dir) / HOLDER_NAME).read_text(encoding="utf-8"))
        return (f"pid {info.get('pid')} on {info.get('host')} ({info.get('what')}: {info.get('command')!r}, "
                f"since {info.get('since')})")
    except (OSError, ValueError):
        return "an unknown process (no readable writer.json yet)"


class WriterLock:
    """Re-entrant (within one object) exclusive writer lock on an index directory."""

    def __init__(self, index_dir: Path):
        self.index_dir = Path(index_dir)
        # preserve_lock_file: deleting the file on release would let a process that opened the old inode
        # and one that creates a new file both "hold" the lock
        lock_path = str(self.index_dir / LOCK_NAME)
        try:
            self._lock = filelock.FileLock(lock_path, thread_local=False, preserve_lock_file=True)
        except TypeError:  # filelock 3.x: Unix locks never delete their file
            self._lock = filelock.FileLock(lock_path, thread_local=False)
        self.depth = 0

    @property
    def held(self) -> bool:
        return self.depth > 0

    def acquire(self, timeout: float, what: str) -> bool:
        """Take the lock (waiting up to ``timeout`` seconds); True when newly taken, False when re-entered.

        Raises:
            IndexLockedError: another process still holds it after ``timeout`` seconds.
        """
        if self.depth:
            self.depth += 1
            return False
        self.index_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            holder = describe_holder(self.index_dir)
            if timeout <= 0:
                raise IndexLockedError(
                    f"index {self.index_dir} is being written by {holder}; only one writer at a time "
                    "(queries keep working): wait for it to finish, then rerun"
                ) from None
            logger.warning("index %s is being written by %s: waiting up to %.0f s", self.index_dir, holder, timeout)
            start = time.monotonic()
            try:
                self._lock.acquire(timeout=timeout)
            except filelock.Timeout:
                raise IndexLockedError(
                    f"index {self.index_dir} is still being written by {describe_holder(self.index_dir)} after "
                    f"waiting {time.monotonic() - start:.0f} s; only one writer at a time: rerun when it is done"
                ) from None
        self.depth = 1
        try:
            atomic_write_text(self.index_dir / HOLDER_NAME, json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(), "what": what,
                "command": " ".join(sys.argv)[:300], "since": utc_now(),
            }) + "\n")
        except OSError as e:  # informational only
            logger.debug("could not write %s: %s", HOLDER_NAME, e)
        return True

    def release(self) -> None:
        if self.depth <= 0:
            return
        self.depth -= 1
        if self.depth == 0:
            self._lock.release()
