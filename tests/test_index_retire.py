"""Retired files: compact and commit keep what they replace for readers; a later writer removes it after the
grace period (index/writer.py, "Retired files")."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from index import ShardBatch, reader
from index.reader import IndexReader
from index.writer import RETIRE_GRACE_ENV, IndexWriter, retire_grace_s

CONFIG = {"global": {"model": "synthetic"}, "local": {"extractor": "synthetic"}}
DIM = 16


def add_batch(db: IndexReader, start: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    kp = [np.c_[rng.uniform(0, 100, (4, 2)), np.ones((4, 2))].astype(np.float32) for _ in range(n)]
    db.write_shard(ShardBatch([f"im{start + i:04d}" for i in range(n)], [str((start + i) % 5) for i in range(n)],
                              [f"/p/{start + i}.jpg" for i in range(n)], rng.normal(size=(n, DIM)), kp,
                              [rng.normal(size=(4, 8)) for _ in range(n)], np.full((n, 2), 100)))


def answers(db: IndexReader, xq: np.ndarray) -> tuple:
    D, I = db.search(xq, 3)
    rows = np.arange(db.size)
    kp, desc = zip(*(db.local_features(int(r)) for r in rows))
    return I.tolist(), np.round(D, 5).tolist(), list(db.column("id")[rows]), np.concatenate(kp), np.concatenate(desc)


def test_reader_opened_before_compaction_keeps_answering(tmp_path, monkeypatch):
    monkeypatch.setenv(RETIRE_GRACE_ENV, "600")
    path = tmp_path / "idx"
    db = IndexWriter.create_or_open(path, CONFIG, DIM)
    for start, seed in ((0, 1), (20, 2), (40, 3)):
        add_batch(db, start, 20, seed)
        db.commit(gpu="cpu")
    db.close()
    xq = np.random.default_rng(9).normal(size=(5, DIM)).astype(np.float32)

    old_reader = IndexReader.open(path)  # e.g. a service or `predict` on another node, opened before
    before = answers(old_reader, xq)
    old = [e["file"] for e in old_reader.manifest["segments"]]
    assert len(old) == 3

    stats = IndexWriter.open_for_write(path).compact()
    assert stats["segments_after"] == 1
    manifest = json.loads((path / "manifest.json").read_text())
    retired = {r["file"] for r in manifest["retired"]}
    assert set(old) <= retired  # replaced, not deleted
    assert all((path / f).exists() for f in old)

    # The old reader answers from the files it opened, without noticing anything (no manifest re-read): the
    # module's read_manifest, the one IndexReader calls, is watched.
    reads = []
    real = reader.read_manifest
    monkeypatch.setattr(reader, "read_manifest", lambda p: reads.append(p) or real(p))
    assert IndexReader.read_manifest(path)["segments"] and len(reads) == 1  # the watch sees a read
    reads.clear()
    after = answers(old_reader, xq)
    assert after[:3] == before[:3]
    np.testing.assert_array_equal(after[3], before[3])
    np.testing.assert_array_equal(after[4], before[4])
    assert reads == []
    fresh = IndexReader.open(path)
    assert len(fresh.manifest["segments"]) == 1 and answers(fresh, xq)[:3] == before[:3]

    # A later writer within the grace period keeps them; one after it removes them, manifest first.
    IndexWriter.open_for_write(path).close()
    assert all((path / f).exists() for f in old)
    monkeypatch.setenv(RETIRE_GRACE_ENV, "0.5")
    time.sleep(0.6)
    IndexWriter.open_for_write(path).close()
    assert all((path / f).exists() for f in old)  # past the grace period, but the old reader's lease holds them
    old_reader.close()
    fresh.close()
    IndexWriter.open_for_write(path).close()
    assert not any((path / f).exists() for f in old)
    assert json.loads((path / "manifest.json").read_text())["retired"] == []
    assert answers(IndexReader.open(path), xq)[:3] == before[:3]


def test_commit_retires_the_previous_faiss_file(tmp_path, monkeypatch):
    monkeypatch.setenv(RETIRE_GRACE_ENV, "600")
    path = tmp_path / "idx"
    db = IndexWriter.create_or_open(path, CONFIG, DIM)
    add_batch(db, 0, 20, 1)
    db.commit(gpu="cpu")
    first = db.faiss_path.name
    add_batch(db, 20, 20, 2)
    db.commit(factory="Flat", gpu="cpu", rebuild=True)  # a new faiss file
    assert db.faiss_path.name != first and (path / first).exists()
    assert [r["file"] for r in db.manifest["retired"]] == [first]
    db.close()


def test_bad_grace_period_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(RETIRE_GRACE_ENV, "soon")
    with pytest.raises(ValueError, match="LANDMARKS_RETIRE_GRACE_S='soon'"):
        retire_grace_s()


def _files_of(db) -> list[str]:
    faiss_file = (db.manifest.get("faiss") or {}).get("file")
    return [e["file"] for e in db.manifest["segments"]] + ([faiss_file] if faiss_file else [])


def test_a_reader_lease_outlives_two_compactions_and_a_writer_open(tmp_path, monkeypatch):
    """Grace period 0: only the lease of the open reader keeps its files (on NFS a deleted, memory-mapped
    segment gives SIGBUS or ESTALE, so the files themselves must stay, not only the open handles)."""
    from index import lease

    monkeypatch.setenv(RETIRE_GRACE_ENV, "0")
    path = tmp_path / "idx"
    db = IndexWriter.create_or_open(path, CONFIG, DIM)
    for start, seed in ((0, 1), (20, 2)):
        add_batch(db, start, 20, seed)
        db.commit(gpu="cpu")
    db.close()
    xq = np.random.default_rng(9).normal(size=(5, DIM)).astype(np.float32)
    long_reader = IndexReader.open(path)  # e.g. a 10,000-photo predict, hours long
    before = answers(long_reader, xq)
    held = _files_of(long_reader)
    assert len(held) == 3 and set(held) <= lease.held_files(path)

    w = IndexWriter.open_for_write(path)
    w.compact()  # 1st compaction: 2 segments -> 1
    add_batch(w, 40, 20, 3)
    w.commit(gpu="cpu")
    w.compact()  # 2nd compaction, after a commit: the first compaction's segment is retired too
    w.close()
    IndexWriter.open_for_write(path).close()  # a writer open: expiry runs
    assert all((path / f).exists() for f in held)  # every file the reader holds is still there
    after = answers(long_reader, xq)
    assert after[:3] == before[:3]
    np.testing.assert_array_equal(after[3], before[3])
    np.testing.assert_array_equal(after[4], before[4])
    lease._REFRESHER.refresh_all()  # what the refresher thread does every LEASE_REFRESH_S
    assert set(held) <= lease.held_files(path)

    long_reader.close()  # the lease goes: the next writer removes what only it held
    assert not lease.held_files(path)
    IndexWriter.open_for_write(path).close()
    assert not any((path / f).exists() for f in held)
    assert json.loads((path / "manifest.json").read_text())["retired"] == []
    assert IndexReader.open(path).size == 60


def test_stale_and_unwritable_leases(tmp_path, monkeypatch, caplog):
    from index import lease

    monkeypatch.setenv(RETIRE_GRACE_ENV, "0")
    path = tmp_path / "idx"
    db = IndexWriter.create_or_open(path, CONFIG, DIM)
    add_batch(db, 0, 20, 1)
    db.commit(gpu="cpu")
    db.close()
    dead = IndexReader.open(path)  # a reader killed without closing: its lease is never touched again
    held = _files_of(dead)
    lease_file = dead._lease.path
    dead._lease.released = True  # (as if its process were gone: nothing refreshes or removes it)
    lease._REFRESHER.discard(dead._lease)
    old = time.time() - lease.LEASE_STALE_S - 5
    os.utime(lease_file, (old, old))
    w = IndexWriter.open_for_write(path)
    add_batch(w, 20, 20, 2)
    w.commit(gpu="cpu")
    w.compact()
    w.close()
    assert not lease_file.exists() and not any((path / f).exists() for f in held)  # stale: not honoured

    # a reader that cannot write its lease (read-only filesystem) warns once and still reads
    def read_only(self, files):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(lease.ReaderLease, "update", read_only)
    with caplog.at_level("WARNING"):
        r = IndexReader.open(path)
    assert r._lease is None and r.size == 40 and "cannot write a reader lease" in caplog.text
    r.close()


def test_readers_and_writers_need_no_hdf5_file_locks(tmp_path, monkeypatch):
    """HDF5 locks every file it opens, which fails on filesystems without lock support; the index's files are
    immutable once published, so they are opened without HDF5's locks (index/hdf5.py). A lock held by someone
    else (as a filesystem that refuses locks does) does not stop a reader, nor a commit."""
    import fcntl

    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)
    path = tmp_path / "idx"
    db = IndexWriter.create_or_open(path, CONFIG, DIM)
    add_batch(db, 0, 20, 1)
    db.commit(gpu="cpu")
    db.close()
    seg = path / json.loads((path / "manifest.json").read_text())["segments"][0]["file"]
    with open(seg, "rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # HDF5's own read lock would now fail
        import h5py

        with pytest.raises(OSError, match="lock"):
            h5py.File(seg, "r", locking=True)
        r = IndexReader.open(path)
        assert r.size == 20 and r.local_features(3) is not None
        r.close()
        w = IndexWriter.open_for_write(path)
        add_batch(w, 20, 20, 2)
        w.commit(gpu="cpu")
        w.close()
