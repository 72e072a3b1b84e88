"""Retired files: compact and commit keep what they replace for readers; a later writer removes it after the
grace period (index/writer.py, "Retired files")."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from index import ShardBatch, database, reader
from index.database import RETIRE_GRACE_ENV, IndexDatabase

CONFIG = {"global": {"model": "synthetic"}, "local": {"extractor": "synthetic"}}
DIM = 16


def add_batch(db: IndexDatabase, start: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    kp = [np.c_[rng.uniform(0, 100, (4, 2)), np.ones((4, 2))].astype(np.float32) for _ in range(n)]
    db.write_shard(ShardBatch([f"im{start + i:04d}" for i in range(n)], [str((start + i) % 5) for i in range(n)],
                              [f"/p/{start + i}.jpg" for i in range(n)], rng.normal(size=(n, DIM)), kp,
                              [rng.normal(size=(4, 8)) for _ in range(n)], np.full((n, 2), 100)))


def answers(db: IndexDatabase, xq: np.ndarray) -> tuple:
    D, I = db.search(xq, 3)
    rows = np.arange(db.size)
    kp, desc = zip(*(db.local_features(int(r)) for r in rows))
    return I.tolist(), np.round(D, 5).tolist(), list(db.column("id")[rows]), np.concatenate(kp), np.concatenate(desc)


def test_reader_opened_before_compaction_keeps_answering(tmp_path, monkeypatch):
    monkeypatch.setenv(RETIRE_GRACE_ENV, "600")
    path = tmp_path / "idx"
    db = IndexDatabase.create_or_open(path, CONFIG, DIM)
    for start, seed in ((0, 1), (20, 2), (40, 3)):
        add_batch(db, start, 20, seed)
        db.commit(gpu="cpu")
    db.close()
    xq = np.random.default_rng(9).normal(size=(5, DIM)).astype(np.float32)

    old_reader = IndexDatabase.open(path)  # e.g. a service or `predict` on another node, opened before
    before = answers(old_reader, xq)
    old = [e["file"] for e in old_reader.manifest["segments"]]
    assert len(old) == 3

    stats = IndexDatabase.open_for_write(path).compact()
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
    assert IndexDatabase.read_manifest(path)["segments"] and len(reads) == 1  # the watch sees a read
    reads.clear()
    after = answers(old_reader, xq)
    assert after[:3] == before[:3]
    np.testing.assert_array_equal(after[3], before[3])
    np.testing.assert_array_equal(after[4], before[4])
    assert reads == []
    fresh = IndexDatabase.open(path)
    assert len(fresh.manifest["segments"]) == 1 and answers(fresh, xq)[:3] == before[:3]

    # A later writer within the grace period keeps them; one after it removes them, manifest first.
    IndexDatabase.open_for_write(path).close()
    assert all((path / f).exists() for f in old)
    monkeypatch.setenv(RETIRE_GRACE_ENV, "0.5")
    time.sleep(0.6)
    IndexDatabase.open_for_write(path).close()
    assert not any((path / f).exists() for f in old)
    assert json.loads((path / "manifest.json").read_text())["retired"] == []
    assert answers(IndexDatabase.open(path), xq)[:3] == before[:3]


def test_commit_retires_the_previous_faiss_file(tmp_path, monkeypatch):
    monkeypatch.setenv(RETIRE_GRACE_ENV, "600")
    path = tmp_path / "idx"
    db = IndexDatabase.create_or_open(path, CONFIG, DIM)
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
        database.retire_grace_s()
