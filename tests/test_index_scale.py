"""index/ at scale: one writer at a time (two real processes), retraining as the collection grows,
lazy metadata under a memory bound, append-only skipped list, upgrade of the old format."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from index import faiss_index as fi
from index import IndexFormatError, IndexLockedError, ShardBatch
from index.reader import IndexReader
from index.writer import RETRAIN_GROWTH, IndexWriter

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"global": {"model": "synthetic"}, "local": None}
DIM = 16


def vectors(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    """Clustered unit vectors (200 clusters), so IVF-PQ + re-score finds each vector itself."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, dim)).astype(np.float32)
    x = centres[rng.integers(0, 200, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def add_rows(db: IndexReader, start: int, xb: np.ndarray, batch: int = 50_000) -> None:
    for a in range(0, len(xb), batch):
        b = min(len(xb), a + batch)
        ids = [f"im{i:07d}" for i in range(start + a, start + b)]
        db.write_shard(ShardBatch(ids, [str(i % 97) if i % 10 else "" for i in range(start + a, start + b)],
                                  [f"/photos/{i % 13}/im{i:07d}.jpg" for i in range(start + a, start + b)], xb[a:b]))


# ----------------------------------------------------------------------------- one writer at a time

WRITER_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    from index import ShardBatch
    from index.reader import IndexReader
    from index.writer import IndexWriter
    path, go = Path(sys.argv[1]), Path(sys.argv[2])
    db = IndexWriter.create_or_open(path, {config!r}, {dim})
    with db.writer_lock(what="test writer A"):  # what build-index does for its whole run
        print("locked", flush=True)
        x = np.random.default_rng(1).standard_normal((50, {dim})).astype(np.float32)
        db.write_shard(ShardBatch([f"a{{i}}" for i in range(50)], ["A"] * 50, [""] * 50, x))
        deadline = time.time() + 60
        while not go.exists() and time.time() < deadline:
            time.sleep(0.05)
        db.commit(gpu="cpu")
    print("done", flush=True)
""").format(config=CONFIG, dim=DIM)


def test_second_writer_is_refused_then_serialised(tmp_path):
    """Process A holds the writer lock; B is refused naming A, then waits for it; nothing is lost."""
    path, go = tmp_path / "idx", tmp_path / "go"
    stale = IndexWriter.create_or_open(path, CONFIG, DIM)  # B's view, opened before A commits
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(path), str(go)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
        # a second writer fails at once, naming the holder; a reader is not blocked
        with pytest.raises(IndexLockedError, match=rf"pid {proc.pid} .*test writer A"):
            IndexWriter.create_or_open(path, CONFIG, DIM)
        with pytest.raises(IndexLockedError, match=str(proc.pid)):
            stale.update_thresholds(inlier_threshold=12)  # tune-threshold's manifest write
        x = np.random.default_rng(2).standard_normal((70, DIM)).astype(np.float32)
        stale.write_shard(ShardBatch([f"b{i}" for i in range(70)], ["B"] * 70, [""] * 70, x))  # shards need no lock
        assert IndexReader.open(path).size == 0
        go.touch()
        # B waits for the lock, re-reads the manifest A published, and commits on top of it
        stale.lock_timeout = 60
        stats = stale.commit(gpu="cpu")
        stale.update_thresholds(inlier_threshold=12)
    finally:
        go.touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    db = IndexReader.open(path)
    ids = set(db.metadata["id"])
    assert db.size == 120 and {f"a{i}" for i in range(50)} <= ids and {f"b{i}" for i in range(70)} <= ids
    assert stats["n_total"] == 120
    assert db.manifest["thresholds"] == {"inlier_threshold": 12}
    assert db.manifest["counts"]["images"] == 120


def test_stale_writer_objects_lose_nothing(tmp_path):
    """Two writers opened on the same state commit one after the other: both sets of rows survive."""
    path = tmp_path / "idx"
    a = IndexWriter.create_or_open(path, CONFIG, DIM)
    b = IndexWriter.create_or_open(path, CONFIG, DIM)
    a.write_shard(ShardBatch([f"a{i}" for i in range(50)], ["A"] * 50, [""] * 50, vectors(50, 1)))
    a.commit(gpu="cpu")
    b.update_manifest(thresholds={"vote_weight": 0.5})  # from b's stale view: a's segment is kept
    b.write_shard(ShardBatch([f"b{i}" for i in range(70)], ["B"] * 70, [""] * 70, vectors(70, 2)))
    b.commit(gpu="cpu")
    db = IndexReader.open(path)
    assert db.size == 120 and len(db.manifest["segments"]) == 2
    assert db.manifest["thresholds"] == {"vote_weight": 0.5}
    assert db.find_rows(["a0", "b69"]).tolist() == [0, 119]


# ----------------------------------------------------------------------------- retraining


def test_retrain_when_grown_and_on_request(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(fi, "FLAT_MAX_N", 1_000)  # IVF-PQ from 1k vectors: small and fast
    path = tmp_path / "idx"
    x = vectors(4_500, 3)
    db = IndexWriter.create_or_open(path, CONFIG, DIM)
    add_rows(db, 0, x[:1_000])
    first = db.commit(gpu="cpu")["faiss"]
    assert first["factory"].startswith("IVF") and first["trained_n"] == 1_000
    # growth below the factor: extended, not retrained
    add_rows(db, 1_000, x[1_000:3_000])
    stats = db.commit(gpu="cpu")
    assert not stats["rebuilt"] and stats["faiss"]["nlist"] == first["nlist"] and stats["faiss"]["trained_n"] == 1_000
    # past RETRAIN_GROWTH x the training size: retrained with parameters for the new size, said in the log
    add_rows(db, 3_000, x[3_000:])
    with caplog.at_level(logging.INFO, logger="index.writer"):
        stats = db.commit(gpu="cpu")
    assert 4_500 >= RETRAIN_GROWTH * 1_000
    assert stats["rebuilt"] and "grew to 4500 vectors" in stats["rebuild_reason"]
    assert "retraining the faiss index" in caplog.text
    assert stats["faiss"]["trained_n"] == 4_500 and stats["faiss"]["nlist"] > first["nlist"]
    assert stats["faiss"]["factory"] == fi.choose_params(4_500, DIM)["factory"]
    db = IndexReader.open(path)
    q = np.arange(0, 4_500, 45)
    _, I = db.search(x[q], 1)
    assert np.mean(I[:, 0] == q) >= 0.98  # search stays correct, old and new rows
    db.close()  # (an open reader's lease would keep the faiss file the rebuild replaces)
    # --rebuild forces it; nothing else changes
    stats = IndexWriter.create_or_open(path, CONFIG, DIM).commit(gpu="cpu", rebuild=True)
    assert stats["rebuilt"] and stats["rebuild_reason"] == "rebuild requested" and stats["n_total"] == 4_500
    assert len(list(path.glob("faiss-*.index"))) == 1  # the replaced faiss files are gone


def test_forced_factory_is_never_retrained_automatically(tmp_path):
    path = tmp_path / "idx"
    x = vectors(5_000, 4)
    db = IndexWriter.create_or_open(path, CONFIG, DIM)
    add_rows(db, 0, x[:1_000])
    db.commit(factory="IVF16,PQ4x4", gpu="cpu")
    add_rows(db, 1_000, x[1_000:])
    stats = db.commit(gpu="cpu")
    assert not stats["rebuilt"] and stats["faiss"]["factory"] == "IVF16,PQ4x4"


class Recording:
    """Wraps the segmented float16 store and records how many rows each read returns."""

    def __init__(self, xb):
        self.xb, self.shape, self.reads = xb, xb.shape, []

    def __getitem__(self, key):
        out = self.xb[key]
        self.reads.append((len(out), out.dtype))
        return out


def test_training_reads_a_sample_and_adds_in_chunks(tmp_path, monkeypatch):
    """build_faiss never reads more than max(training sample, add chunk) rows at once, and gets float16."""
    path = tmp_path / "idx"
    x = vectors(6_000, 5)
    db = IndexWriter.create_or_open(path, CONFIG, DIM)
    add_rows(db, 0, x[:3_000])
    db.commit(factory="Flat", gpu="cpu")
    add_rows(db, 3_000, x[3_000:])
    db.commit(gpu="cpu")  # two segments
    params = fi.choose_params(6_000, DIM, "IVF32,PQ4x4")
    params["ntrain"] = 2_000
    store = Recording(db._desc)
    index = fi.build_faiss(store, params, "cpu", chunk_size=1_000)
    assert index.ntotal == 6_000
    assert max(n for n, _ in store.reads) <= 2_000 and all(dt == np.float16 for _, dt in store.reads)
    assert sum(n for n, _ in store.reads) == 2_000 + 6_000  # one sample + every row once


def _recall_at_1(index, x: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> float:
    fi.set_nprobe(index, 16)
    _, I = index.search(queries, 50)
    _, I = fi.rescore(queries, I, lambda rows: x[rows], 1)
    return float(np.mean(I[:, 0] == truth))


def test_two_level_coarse_training_for_many_lists(monkeypatch, caplog):
    """From TWO_LEVEL_MIN_NLIST lists the coarse quantizer comes from two-level k-means (a flat k-means costs
    n x nlist distances per iteration: minutes at 10M on 2 cores); search finds neighbours as well as with
    the flat k-means, and the PQ is still trained by faiss."""
    x = vectors(12_000, 7, dim=32)
    rng = np.random.default_rng(8)
    truth = rng.choice(len(x), 300, replace=False)
    queries = x[truth] + 0.02 * rng.standard_normal((300, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    params = fi.choose_params(len(x), 32, "PCAR16,IVF64,PQ8")
    flat = fi.build_faiss(x, params, "cpu")
    monkeypatch.setattr(fi, "TWO_LEVEL_MIN_NLIST", 64)
    with caplog.at_level(logging.INFO, logger="index.faiss_index"):
        two = fi.build_faiss(x, params, "cpu")
    assert "two-level k-means" in caplog.text
    assert two.ntotal == len(x) and faiss_quantizer_size(two) == 64
    r_flat, r_two = _recall_at_1(flat, x, queries, truth), _recall_at_1(two, x, queries, truth)
    assert r_two >= 0.9 and r_two >= r_flat - 0.03, (r_two, r_flat)
    monkeypatch.setattr(fi, "TWO_LEVEL_MIN_NLIST", 1 << 30)  # OPQ is trained with its PQ: no two-level there
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="index.faiss_index"):
        fi.build_faiss(x, fi.choose_params(len(x), 32, "OPQ8_32,IVF64,PQ8"), "cpu")
    assert "two-level" not in caplog.text


def faiss_quantizer_size(index) -> int:
    import faiss

    return int(faiss.extract_index_ivf(index).quantizer.ntotal)


def test_two_level_kmeans_gives_k_unit_centroids():
    x = vectors(3_000, 9, dim=8)
    for k in (1, 10, 100, 3_000):  # 3,000: as many centroids as points, each point its own
        c = fi.two_level_kmeans(x, k, spherical=True, niter=5)
        assert c.shape == (k, 8)
        np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-4)
    with pytest.raises(ValueError, match="at least 3001 points"):
        fi.two_level_kmeans(x, 3_001, spherical=True, niter=5)


# ----------------------------------------------------------------------------- lazy metadata


def test_metadata_lookups_stay_under_a_memory_bound(tmp_path):
    """300k rows: opening, reading a few rows and looking ids up allocate kilobytes, not the table."""
    n = 300_000
    path = tmp_path / "idx"
    db = IndexWriter.create_or_open(path, CONFIG, 4)
    rng = np.random.default_rng(0)
    add_rows_dim = rng.standard_normal((n, 4)).astype(np.float32)
    for a in range(0, n, 100_000):  # two commits: two segments
        b = a + 100_000
        db.write_shard(ShardBatch([f"im{i:07d}" for i in range(a, b)], [str(i % 5000) for i in range(a, b)],
                                  [f"/photos/{i % 13}/im{i:07d}.jpg" for i in range(a, b)], add_rows_dim[a:b]))
        if b in (100_000, n):
            db.commit(factory="Flat", gpu="cpu")
    db.close()
    rows = rng.choice(n, 50, replace=False)
    wanted = [f"im{i:07d}" for i in rng.choice(n, 200, replace=False)] + ["not-there"]

    tracemalloc.start()
    try:
        db = IndexReader.open(path)
        ids, landmarks, paths = db.rows(rows)
        found = db.find_rows(wanted)
        one = db.column("path")[123_456]
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        db.metadata  # the whole table, for comparison: what a lazy reader must not do
        _, peak_table = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ids.tolist() == [f"im{i:07d}" for i in rows] and landmarks.tolist() == [str(i % 5000) for i in rows]
    assert paths[0] == f"/photos/{rows[0] % 13}/im{rows[0]:07d}.jpg" and one == "/photos/8/im0123456.jpg"
    assert found[:-1].tolist() == [int(w[2:]) for w in wanted[:-1]] and found[-1] == -1
    assert peak < 4 * 2**20, f"lazy lookups allocated {peak / 2**20:.1f} MiB"
    assert peak_table > 10 * peak  # the bound is meaningful: materialising the table costs far more
    assert db.manifest["counts"] == {"images": n, "landmarks": 5000, "nonlandmarks": 0, "local_features": 0}


def test_local_image_sizes_round_trip(tmp_path):
    db = IndexWriter.create_or_open(tmp_path / "idx", CONFIG, DIM)
    kp = [np.zeros((2, 4), np.float32), np.zeros((1, 4), np.float32)]
    desc = [np.ones((2, 8), np.float32), np.ones((1, 8), np.float32)]
    db.write_shard(ShardBatch(["a", "b"], ["1", "2"], ["pa", "pb"], vectors(2, 6), kp, desc,
                              local_sizes=np.array([[640, 480], [1024, 768]])))
    db.write_shard(ShardBatch(["c"], ["1"], ["pc"], vectors(1, 7), kp[:1], desc[:1]))  # a batch without sizes
    db.commit(gpu="cpu")
    db = IndexReader.open(tmp_path / "idx")
    assert db.local_image_size(0) == (640, 480) and db.local_image_size(1) == (1024, 768)
    assert db.local_image_size(2) is None
    with IndexWriter.open_for_write(tmp_path / "idx") as writer, pytest.raises(ValueError, match="local_sizes"):
        writer.write_shard(ShardBatch(["d"], ["1"], ["pd"], vectors(1, 8), kp[:1], desc[:1],
                                      local_sizes=np.zeros((2, 2))))


# ----------------------------------------------------------------------------- skipped list, old format


def test_skipped_list_is_append_only_until_commit(tmp_path):
    db = IndexWriter.create_or_open(tmp_path / "idx", CONFIG, DIM)
    spath = tmp_path / "idx" / "skipped.csv"
    db.record_skipped("a", "/a.jpg", "empty file")
    db.flush_skipped()
    first = spath.read_bytes()
    db.record_skipped("a", "/a.jpg", "truncated")
    db.record_skipped("b", "/b.jpg", "not an image")
    db.flush_skipped()
    assert spath.read_bytes().startswith(first)  # appended, not rewritten
    with open(spath, "ab") as f:
        f.write(b"c,/c.jpg,cut by a ki")  # a line cut by a kill
    db.record_skipped("d", "/d.jpg", "too small")
    db.flush_skipped()
    assert db.skipped()["id"].tolist() == ["a", "b", "c", "d"]
    db.write_shard(ShardBatch(["b"], ["1"], ["/b.jpg"], vectors(1, 9)))
    db.commit(gpu="cpu")  # deduplicated at commit: one line per id, indexed ids removed
    df = pd.read_csv(spath, dtype=str, keep_default_na=False)
    assert df.to_dict("records") == [
        {"id": "a", "path": "/a.jpg", "reason": "truncated"},
        {"id": "c", "path": "/c.jpg", "reason": "cut by a ki"},
        {"id": "d", "path": "/d.jpg", "reason": "too small"},
    ]


def test_format_1_index_is_refused_for_reading_and_upgraded_by_a_writer(tmp_path):
    path = tmp_path / "old"
    path.mkdir()
    x = vectors(30, 10)
    ids = [f"o{i}" for i in range(30)]
    with h5py.File(path / "global.h5", "w") as f:
        f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("descriptors", data=x.astype(np.float16))
    pd.DataFrame({"row": range(30), "id": ids, "landmark_id": ["L1", ""] * 15,
                  "path": [f"/p/{i}.jpg" for i in range(30)]}).to_csv(path / "metadata.csv", index=False)
    index = fi.new_index("Flat", DIM)
    index.add(x.astype(np.float16).astype(np.float32))
    fi.faiss.write_index(index, str(path / "faiss.index"))
    manifest = {"format_version": 1, "dim": DIM, "config": CONFIG, "created": "2026-01-01T00:00:00+00:00",
                "counts": {"images": 30, "landmarks": 1, "nonlandmarks": 15, "local_features": 0},
                "faiss": {"factory": "Flat", "auto": True, "exact": True, "nprobe": None, "shortlist": 100},
                "thresholds": {"inlier_threshold": 17}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="landmarks compact --index"):
        IndexReader.open(path)
    IndexWriter.open_for_write(path).compact()  # what `landmarks compact` does
    db = IndexReader.open(path)
    assert db.manifest["format_version"] == 2 and db.size == 30 and db.manifest["thresholds"]["inlier_threshold"] == 17
    assert db.rows([1])[0][0] == "o1" and db.rows([0])[1][0] == "L1" and db.column("path")[29] == "/p/29.jpg"
    _, I = db.search(x[:5], 1)
    assert I[:, 0].tolist() == list(range(5))
    assert not (path / "global.h5").exists() and not (path / "metadata.csv").exists()


def test_reader_retries_when_a_writer_removed_what_its_manifest_named(tmp_path, monkeypatch):
    """A reader that read the manifest just before a compaction deleted the old segments re-reads it."""
    import copy

    from index import reader

    path = tmp_path / "idx"
    db = IndexWriter.create_or_open(path, CONFIG, DIM)
    for start in (0, 30):
        add_rows(db, start, vectors(30, start))
        db.commit(gpu="cpu")
    stale = json.loads((path / "manifest.json").read_text())
    IndexWriter.open_for_write(path).compact()  # deletes the two segments `stale` names
    real, calls = reader.read_manifest, []

    def first_read_is_stale(p):
        calls.append(p)
        return copy.deepcopy(stale) if len(calls) == 1 else real(p)

    monkeypatch.setattr(reader, "read_manifest", first_read_is_stale)
    db = IndexReader.open(path)
    assert len(calls) >= 2 and db.size == 60 and len(db.manifest["segments"]) == 1
    assert db.rows([59])[0][0] == "im0000059"
