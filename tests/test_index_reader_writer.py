"""IndexReader and IndexWriter: a reader has no write method, writes no file and never waits for the writer
lock; a writer re-reads what another writer committed when it takes the lock; the IndexReader facade opens
the right one."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import index
from index import IndexLockedError, ShardBatch
from index.reader import IndexReader
from index.writer import IndexWriter

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"global": {"model": "synthetic"}, "local": {"extractor": "synthetic"}}
DIM = 16
WRITE_METHODS = ("commit", "write_shard", "compact", "update_thresholds", "update_manifest", "write_local_part",
                 "write_aux", "writer_lock", "record_skipped", "flush_skipped", "create_or_open", "open_for_write")


def add_batch(db: IndexWriter, start: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xb = rng.normal(size=(n, DIM)).astype(np.float32)
    kp = [np.c_[rng.uniform(0, 100, (3, 2)), np.ones((3, 2))].astype(np.float32) for _ in range(n)]
    db.write_shard(ShardBatch([f"im{start + i:04d}" for i in range(n)], [str((start + i) % 4) for i in range(n)],
                              [f"/p/{start + i}.jpg" for i in range(n)], xb, kp,
                              [rng.normal(size=(3, 8)) for _ in range(n)], np.full((n, 2), 100)))
    return xb


@pytest.fixture()
def built(tmp_path):
    """An index of 30 committed rows (two segments), a secondary local set and an aux array."""
    path = tmp_path / "idx"
    with IndexWriter.create_or_open(path, CONFIG, DIM) as db:
        xb = add_batch(db, 0, 20, 1)
        db.commit(gpu="cpu")
        xb = np.concatenate([xb, add_batch(db, 20, 10, 2)])
        db.commit(gpu="cpu")
        db.write_local_part("xfeat", {"extractor": "xfeat"}, 0, [np.zeros((2, 4), np.float32)] * 30,
                            [np.ones((2, 4), np.float32)] * 30, np.full((30, 2), 64))
        db.write_aux("pca", {"w": np.eye(3)})
        db.record_skipped("bad", "/p/bad.jpg", "unreadable")
        db.flush_skipped()
    return path, xb


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}


def test_a_reader_opens_read_only_and_a_writer_is_also_a_reader(built):
    path, _ = built
    reader = IndexReader.open(path)
    assert type(reader) is IndexReader and not isinstance(reader, IndexWriter)
    with IndexWriter.open_for_write(path) as w:
        assert isinstance(w, IndexWriter) and isinstance(w, IndexReader)
    with IndexWriter.create_or_open(path, CONFIG, DIM) as w:
        assert isinstance(w, IndexWriter) and w.size == 30
    with IndexWriter.open(path) as w:  # a writer opens as open_for_write does
        assert isinstance(w, IndexWriter)
    assert IndexReader.exists(path) and IndexReader.read_manifest(path)["counts"]["images"] == 30
    assert index.IndexReader is IndexReader and index.IndexWriter is IndexWriter
    assert repr(reader).startswith("IndexReader(") and "images=30" in repr(reader)


def test_a_reader_has_no_write_method(built):
    path, _ = built
    reader = IndexReader.open(path)
    for name in WRITE_METHODS:
        assert not hasattr(IndexReader, name), name
        assert not hasattr(reader, name), name
        assert callable(getattr(IndexWriter, name)), name
    with pytest.raises(AttributeError):
        reader.commit()


def test_a_reader_writes_no_file(built, caplog):
    """Every read, including the in-memory repair of a missing faiss file, leaves the directory as it was."""
    path, xb = built
    faiss_file = IndexReader.open(path).faiss_path
    faiss_file.unlink()  # as if a commit died after its manifest named a file that is gone: repaired in memory
    before = snapshot(path)
    with IndexReader.open(path) as db:
        D, I = db.search(xb[:5], 3)
        assert I[:, 0].tolist() == [0, 1, 2, 3, 4]
        db.set_nprobe(4)
        assert db.rows([0, 29])[0].tolist() == ["im0000", "im0029"] and db.column("path")[1] == "/p/1.jpg"
        assert db.find_rows(["im0007", "nope"]).tolist() == [7, -1]
        assert len(db.metadata) == 30 and db.global_descriptors(np.array([3])).shape == (1, DIM)
        assert db.local_features(2)[0].shape == (3, 4) and db.local_image_size(2) == (100, 100)
        assert db.local_features(2, "xfeat")[0].shape == (2, 4) and db.local_image_size(2, "xfeat") == (64, 64)
        assert db.local_sets() == {"xfeat": {"extractor": "xfeat"}} and db.missing_local_rows("xfeat").size == 0
        db.check_local_set("xfeat", {"extractor": "xfeat"}, 4)
        assert db.read_aux("pca")["w"].shape == (3, 3)
        assert db.skipped()["id"].tolist() == ["bad"]
        assert "im0003" in db.done_ids() and db.stored_labels_for(["im0005", "x"]) == {"im0005": "1"}
        assert len(db.stored_labels()) == 30
    assert snapshot(path) == before
    assert not (path / faiss_file.name).exists()


def test_a_reader_opens_and_searches_while_a_writer_holds_the_lock(built):
    path, xb = built
    with IndexWriter.open_for_write(path) as writer, writer.writer_lock(what="a long build"):
        with pytest.raises(IndexLockedError, match="a long build"):  # the lock is really held
            IndexWriter.open_for_write(path)
        t0 = time.monotonic()
        reader = IndexReader.open(path, lock_timeout=60)  # a reader never waits, whatever its timeout
        D, I = reader.search(xb[:4], 2)
        assert time.monotonic() - t0 < 10
        assert I[:, 0].tolist() == [0, 1, 2, 3] and reader.size == 30
        add_batch(writer, 30, 5, 3)
        writer.commit(gpu="cpu")
        assert reader.size == 30  # its snapshot, until reopened
        assert IndexReader.open(path).size == 35
    reader.close()


def test_a_writer_sees_rows_another_writer_committed_when_it_takes_the_lock(built):
    path, _ = built
    stale = IndexWriter.open_for_write(path)
    other = IndexWriter.open_for_write(path)
    add_batch(other, 30, 6, 4)
    other.commit(gpu="cpu")
    assert stale.size == 30  # opened before the commit: its view until it takes the lock
    with stale.writer_lock(what="test"):
        assert stale.size == 36 and stale.find_rows(["im0035"]).tolist() == [35]
        assert stale.rows([35])[0].tolist() == ["im0035"]
    add_batch(stale, 40, 2, 5)
    stale.commit(gpu="cpu")
    assert IndexReader.open(path).find_rows(["im0035", "im0041"]).tolist() == [35, 37]


def test_skipped_includes_a_writers_unflushed_records_only(tmp_path):
    path = tmp_path / "idx"
    writer = IndexWriter.create_or_open(path, CONFIG, DIM)
    writer.record_skipped("a", "/a.jpg", "too small")
    assert writer.skipped()["id"].tolist() == ["a"]
    assert IndexReader.open(path).skipped().empty  # not on disk yet
    writer.flush_skipped()
    assert IndexReader.open(path).skipped()["reason"].tolist() == ["too small"]


def test_imports_run_one_way():
    """writer imports reader, never the reverse; loading a reader loads no writer code."""
    tree = ast.parse((ROOT / "index" / "reader.py").read_text(encoding="utf-8"))
    imported = {(n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.split(".")[-1] in ("writer",)}, imported
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", "import sys, index.reader; print(sorted(m for m in sys.modules "
                          "if m == 'index.writer'))"], env=env, capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stderr
