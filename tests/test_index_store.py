"""index/ on disk: round trips, crash at every write of commit()/compact() and resume, corrupt files, side tables."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from index import faiss_index as fi
from index import ConfigMismatchError, IndexFormatError, ShardBatch
from index.reader import IndexReader
from index.writer import IndexWriter
from index.shards import write_shard_file

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"global": {"model": "synthetic", "image_size": 224}, "local": {"name": "toy", "dim": 8}}
DIM, LOCAL_DIM = 32, 8
FACTORY = "IVF16,PQ4x4"  # small enough to train on ~1k vectors, still an approximate, trained index


def make_batches(n: int = 1200, batch: int = 300, seed: int = 0) -> list[dict]:
    """Deterministic extraction batches: ids, landmarks ('' = distractor), paths, vectors, local features."""
    rng = np.random.default_rng(seed)
    xb = rng.standard_normal((n, DIM)).astype(np.float32)
    out = []
    for a in range(0, n, batch):
        rows = range(a, min(n, a + batch))
        counts = [(i * 7) % 6 for i in rows]  # includes images with 0 local features
        out.append({
            "ids": [f"img{i:05d}" for i in rows],
            "landmark_ids": ["" if i % 5 == 0 else str(i % 23) for i in rows],
            "paths": [f"/data/{i % 10}/img,{i}.jpg" for i in rows],  # a comma: CSV quoting round trip
            "xb": xb[a : a + len(rows)],
            "local_keypoints": [rng.random((c, 4), dtype=np.float32) * 100 for c in counts],
            "local_descriptors": [rng.standard_normal((c, LOCAL_DIM)).astype(np.float32) for c in counts],
        })
    return out


def run_build(path: Path, batches: list[dict], factory: str | None = FACTORY) -> IndexReader:
    """What a build-index run does: resume from done_ids, write the missing batches, commit."""
    db = IndexWriter.create_or_open(path, CONFIG, DIM)
    done = db.done_ids()
    for b in batches:
        keep = [i for i, id_ in enumerate(b["ids"]) if id_ not in done]
        if keep:
            db.write_shard(ShardBatch([b["ids"][i] for i in keep], [b["landmark_ids"][i] for i in keep],
                                      [b["paths"][i] for i in keep], b["xb"][keep],
                                      [b["local_keypoints"][i] for i in keep], [b["local_descriptors"][i] for i in keep]))
    db.commit(factory=factory, gpu="cpu")
    return db


def assert_same_index(a_path: Path, b_path: Path) -> None:
    a, b = IndexReader.open(a_path), IndexReader.open(b_path)
    assert a.size == b.size
    pd.testing.assert_frame_equal(a.metadata, b.metadata)
    np.testing.assert_array_equal(a.global_descriptors(), b.global_descriptors())
    for row in range(a.size):
        for x, y in zip(a.local_features(row), b.local_features(row)):
            np.testing.assert_array_equal(x, y)
    assert a.manifest["counts"] == b.manifest["counts"]
    assert a.manifest["faiss"]["factory"] == b.manifest["faiss"]["factory"]
    xq = b.global_descriptors(np.arange(0, b.size, 7))
    Da, Ia = a.search(xq, 5)
    Db, Ib = b.search(xq, 5)
    np.testing.assert_array_equal(Ia, Ib)
    np.testing.assert_allclose(Da, Db, atol=1e-6)
    for p, db in ((a_path, a), (b_path, b)):
        assert not list(p.rglob("*.tmp")) and not list((p / "shards").glob("*.h5"))
        assert fi.read_index(db.faiss_path).ntotal == a.size
        # no orphans: exactly the files the manifest names
        named = {e["file"] for e in db.manifest["segments"]}
        assert {f"segments/{f.name}" for f in (p / "segments").iterdir()} == named
        assert [f.name for f in p.glob("faiss-*")] == [db.faiss_path.name]


@pytest.fixture(scope="module")
def batches() -> list[dict]:
    return make_batches()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, batches) -> Path:
    """Uninterrupted two-run build (the second run adds the last batch incrementally)."""
    path = tmp_path_factory.mktemp("ref") / "index"
    run_build(path, batches[:3])
    run_build(path, batches)
    return path


# ----------------------------------------------------------------------------- round trip


@pytest.fixture
def stored(reference):
    """The reference index opened for reading, closed afterwards (an open reader's lease would keep retired
    files of a copy alive in the compaction tests)."""
    with IndexReader.open(reference) as db:
        yield db


def test_a_consistent_index_opens_without_repair_warnings(reference, caplog):
    with caplog.at_level(logging.WARNING):
        IndexReader.open(reference)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_metadata_lists_every_row_in_commit_order(stored, batches):
    md = stored.metadata
    assert list(md.columns) == ["row", "id", "landmark_id", "path"] and md["row"].dtype == np.int64
    assert md["id"].tolist() == sum((b["ids"] for b in batches), []) and stored.size == 1200
    assert md["path"].tolist() == sum((b["paths"] for b in batches), [])


def test_global_descriptors_come_back_normalised_within_float16(stored, batches):
    xb = np.concatenate([b["xb"] for b in batches])
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    np.testing.assert_allclose(stored.global_descriptors(), xb, atol=1e-3)
    np.testing.assert_array_equal(stored.global_descriptors(np.array([5, 1, 5])), stored.global_descriptors()[[5, 1, 5]])


def test_each_commit_appends_one_segment_of_float16_arrays(stored, reference):
    segments = stored.manifest["segments"]
    assert [e["rows"] for e in segments] == [900, 300]  # two commits: two append-only segments
    with h5py.File(reference / segments[0]["file"]) as f:
        assert f["descriptors"].dtype == np.float16 and f["descriptors"].shape == (900, DIM)
        assert f["local_offsets"].shape == (901,) and f.attrs["local_dim"] == LOCAL_DIM
        assert f["local_descriptors"].dtype == np.float16 and f["local_keypoints"].shape[1] == 4


def test_rows_columns_and_id_lookups_agree_with_the_metadata(stored, batches):
    md = stored.metadata
    all_ids = sum((b["ids"] for b in batches), [])
    ids, lms, paths = stored.rows(np.array([3, 1199, 3]))
    assert ids.tolist() == [all_ids[3], all_ids[1199], all_ids[3]]
    assert lms.tolist() == md["landmark_id"].iloc[[3, 1199, 3]].tolist()
    assert stored.column("path")[950] == md["path"].iloc[950]
    assert stored.find_rows([all_ids[1000], "nope", all_ids[0]]).tolist() == [1000, -1, 0]


def test_local_features_come_back_per_row(stored, batches):
    assert stored.has_local()
    flat_b = [(b, i) for b in batches for i in range(len(b["ids"]))]
    for row in (0, 1, 6, 299, 300, 1199):  # row 0 and 6 have 0 local features
        b, i = flat_b[row]
        kp, desc = stored.local_features(row)
        assert kp.dtype == np.float32 and desc.dtype == np.float32
        assert kp.shape == b["local_keypoints"][i].shape and desc.shape == (kp.shape[0], LOCAL_DIM)
        np.testing.assert_allclose(kp, b["local_keypoints"][i], rtol=1e-6)
        np.testing.assert_allclose(desc, b["local_descriptors"][i], atol=2e-2, rtol=1e-3)
    assert stored.local_features(0)[0].shape == (0, 4)
    with pytest.raises(IndexError):
        stored.local_features(1200)


def test_the_manifest_counts_what_was_stored(stored, batches, reference):
    n_local = sum(len(k) for b in batches for k in b["local_keypoints"])
    lm = stored.metadata["landmark_id"]
    assert stored.manifest["counts"] == {"images": 1200, "landmarks": lm[lm != ""].nunique(),
                                         "nonlandmarks": 240, "local_features": n_local}
    assert stored.manifest["local_bytes_per_image"] == pytest.approx(n_local * (16 + 2 * LOCAL_DIM) / 1200)
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["dim"] == DIM and manifest["config"] == CONFIG
    assert manifest["faiss"]["metric"] == "IP" and manifest["faiss"]["factory"] == FACTORY
    assert {"created", "updated", "package_version", "thresholds"} <= set(manifest)


def test_a_second_open_searches_identically(stored, reference):
    xq = stored.global_descriptors(np.arange(50))
    D1, I1 = stored.search(xq, 10)
    D2, I2 = IndexReader.open(reference).search(xq, 10)
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_array_equal(D1, D2)
    assert np.mean(I1[:, 0] == np.arange(50)) == 1.0


def test_no_local_features(tmp_path):
    db = IndexWriter.create_or_open(tmp_path / "idx", CONFIG, DIM)
    db.write_shard(ShardBatch(["a", "b"], ["1", ""], ["pa", "pb"], np.eye(2, DIM, dtype=np.float32)))
    db.commit(gpu="cpu")
    db = IndexReader.open(tmp_path / "idx")
    assert not db.has_local() and db.local_features(0) is None
    assert not (tmp_path / "idx" / "local.h5").exists()
    assert db.manifest["counts"] == {"images": 2, "landmarks": 1, "nonlandmarks": 1, "local_features": 0}
    with IndexWriter.open_for_write(tmp_path / "idx") as writer, pytest.raises(ValueError, match="no local features"):
        writer.write_shard(ShardBatch(["c"], ["1"], ["pc"], np.ones((1, DIM), np.float32),
                                      [np.zeros((1, 4), np.float32)], [np.zeros((1, LOCAL_DIM), np.float32)]))


# ----------------------------------------------------------------------------- resume


def test_resume_after_extraction_crash(tmp_path, batches, reference):
    path = tmp_path / "idx"
    run_build(path, batches[:3])
    db = IndexWriter.create_or_open(path, CONFIG, DIM)
    b = batches[3]
    db.write_shard(ShardBatch(b["ids"][:100], b["landmark_ids"][:100], b["paths"][:100], b["xb"][:100],
                              b["local_keypoints"][:100], b["local_descriptors"][:100]))
    stray = path / "shards" / "shard-000000.h5.999999999.abcd1234.tmp"  # a batch killed while being written
    stray.write_bytes(b"partial")
    (path / "segments" / "seg-000001-0badc0de.h5.999999999.abcd1234.tmp").write_bytes(b"partial")
    (path / "segments" / "seg-000007-0badc0de.h5").write_bytes(b"an unpublished segment")
    done = IndexReader.open(path).done_ids()
    assert len(done) == 1000 and b["ids"][99] in done and b["ids"][100] not in done
    run_build(path, batches)  # same calls again
    assert_same_index(path, reference)


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    path, op, when, target = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    real_replace, real_unlink = os.replace, Path.unlink

    def replace(src, dst, *args, **kwargs):  # kill -9 right before/after renaming onto a name starting with `target`
        if when == "before" and Path(dst).name.startswith(target):
            os._exit(77)
        real_replace(src, dst, *args, **kwargs)
        if when == "after" and Path(dst).name.startswith(target):
            os._exit(77)

    def unlink(self, *args, **kwargs):  # kill -9 right after deleting the first file starting with `target`
        real_unlink(self, *args, **kwargs)
        if when == "unlink" and self.name.startswith(target):
            os._exit(77)

    os.replace, Path.unlink = replace, unlink
    from index.reader import IndexReader
    from index.writer import IndexWriter
    db = IndexWriter.create_or_open(path, {config!r}, {dim})
    if op == "commit":
        db.commit(factory={factory!r}, gpu="cpu")
    else:
        db.compact()
    sys.exit(0)
""").format(config=CONFIG, dim=DIM, factory=FACTORY)


def crash(path: Path, op: str, when: str, target: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(path), op, when, target],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 77, proc.stderr[-3000:]


@pytest.mark.parametrize("run, when, target", [
    (1, "before", "seg-"),  # segment temp file written, not renamed
    (1, "after", "seg-"),  # segment renamed, not published
    (1, "after", "faiss-"),  # faiss file written, not published
    (1, "before", "manifest.json"),
    (1, "after", "manifest.json"),  # published; shards not deleted yet
    (1, "unlink", "shard-"),  # some shards deleted
    (2, "after", "seg-"),
    (2, "after", "faiss-"),
    (2, "after", "manifest.json"),  # published; the previous faiss file not deleted yet
])
def test_kill_during_commit_then_rerun(tmp_path, batches, reference, run, when, target):
    """A kill -9 at any write of commit() leaves a directory from which the same calls finish the build."""
    path = tmp_path / "idx"
    todo = batches[:3] if run == 1 else batches
    if run == 2:
        run_build(path, batches[:3])
    db = IndexWriter.create_or_open(path, CONFIG, DIM)
    done = db.done_ids()
    for b in todo:
        if b["ids"][0] not in done:
            db.write_shard(ShardBatch(b["ids"], b["landmark_ids"], b["paths"], b["xb"], b["local_keypoints"],
                                      b["local_descriptors"]))
    db.close()
    crash(path, "commit", when, target)
    committed = (when, target) in (("after", "manifest.json"), ("unlink", "shard-"))  # the manifest is the commit point
    expected = (900 if run == 1 else 1200) if committed else (0 if run == 1 else 900)
    crashed = IndexReader.open(path)
    assert crashed.size == expected and len(crashed.metadata) == expected
    if expected:
        _, I = crashed.search(crashed.global_descriptors(np.arange(0, expected, 50)), 1)  # readable as is
        assert np.mean(I[:, 0] == np.arange(0, expected, 50)) > 0.9
    assert (path / "shards").is_dir() and list((path / "shards").glob("shard-*.h5"))  # not all merged
    crashed.close()
    if run == 1:
        run_build(path, batches[:3])
    run_build(path, batches)
    assert_same_index(path, reference)


@pytest.mark.parametrize("when, target", [
    ("after", "seg-"),  # merged segment written, not published
    ("after", "manifest.json"),  # published, old segments not deleted
    ("unlink", "seg-"),  # some old segments deleted
])
def test_kill_during_compaction(tmp_path, batches, reference, when, target):
    """compact() merges segments without changing content; a kill at any point leaves a whole index."""
    import shutil

    path = tmp_path / "idx"
    shutil.copytree(reference, path)
    before = IndexReader.open(path)
    assert len(before.manifest["segments"]) == 2
    before.close()
    crash(path, "compact", when, target)
    db = IndexReader.open(path)
    assert db.size == 1200 and len(db.manifest["segments"]) == (2 if target == "seg-" and when == "after" else 1)
    db.close()
    stats = IndexWriter.open_for_write(path).compact()  # finishes (or is a no-op) and collects garbage
    assert stats["segments_after"] == 1
    assert_same_index(path, reference)


def test_commit_fails_before_publishing_changes_nothing(tmp_path, batches, reference, monkeypatch, caplog):
    """In-process variant: commit dies after writing its segment, before the manifest: nothing is visible."""
    path = tmp_path / "idx"
    run_build(path, batches[:3])
    db = IndexWriter.create_or_open(path, CONFIG, DIM)
    b = batches[3]
    db.write_shard(ShardBatch(b["ids"], b["landmark_ids"], b["paths"], b["xb"], b["local_keypoints"], b["local_descriptors"]))

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(fi, "write_index", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        db.commit(factory=FACTORY, gpu="cpu")
    monkeypatch.undo()
    assert len(list((path / "segments").iterdir())) == 2  # one orphan
    with caplog.at_level(logging.WARNING, logger="index.reader"):
        db = IndexReader.open(path)
        assert db.size == 900 and db.manifest["counts"]["images"] == 900
        D, I = db.search(db.global_descriptors(np.arange(0, 900, 9)), 1)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warnings, "the published state is consistent: no repair warnings"
    assert np.mean(I[:, 0] == np.arange(0, 900, 9)) > 0.95
    db.close()  # an open reader's lease would keep the faiss file the next commit replaces (index/lease.py)
    run_build(path, batches)
    assert_same_index(path, reference)


# ----------------------------------------------------------------------------- errors


def test_config_mismatch_names_both(tmp_path):
    IndexWriter.create_or_open(tmp_path / "idx", CONFIG, DIM)
    other = {**CONFIG, "global": {"model": "other-net", "image_size": 224}}
    with pytest.raises(ConfigMismatchError) as e:
        IndexWriter.create_or_open(tmp_path / "idx", other, DIM)
    msg = str(e.value)
    assert "global.model" in msg and "synthetic" in msg and "other-net" in msg
    assert "Index configuration" in msg and "Requested configuration" in msg
    with pytest.raises(ConfigMismatchError, match="64"):
        IndexWriter.create_or_open(tmp_path / "idx", CONFIG, 64)
    IndexWriter.create_or_open(tmp_path / "idx", json.loads(json.dumps(CONFIG)), DIM)  # equal: fine


def test_missing_and_foreign_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        IndexReader.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        IndexReader.open(tmp_path / "plain")
    with pytest.raises(FileExistsError, match="not an index"):
        IndexWriter.create_or_open(tmp_path / "plain", CONFIG, DIM)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("which", ["faiss", "segment", "manifest.json", "missing segment"])
def test_truncated_file_raises_naming_it(tmp_path, reference, which):
    import shutil

    path = tmp_path / "idx"
    shutil.copytree(reference, path)
    manifest = json.loads((path / "manifest.json").read_text())
    name = {"faiss": manifest["faiss"]["file"], "segment": manifest["segments"][1]["file"],
            "missing segment": manifest["segments"][0]["file"]}.get(which, which)
    if which == "missing segment":
        (path / name).unlink()
    else:
        _truncate(path / name)
    with pytest.raises(IndexFormatError, match=Path(name).name.replace(".", r"\.")):
        IndexReader.open(path)


def test_write_shard_validation(tmp_path):
    db = IndexWriter.create_or_open(tmp_path / "idx", CONFIG, DIM)
    x = np.ones((2, DIM), np.float32)
    kp = [np.zeros((3, 4), np.float32), np.zeros((0, 4), np.float32)]
    ld = [np.zeros((3, LOCAL_DIM), np.float32), np.zeros((0, LOCAL_DIM), np.float32)]
    with pytest.raises(ValueError, match=rf"\(2, {DIM}\)"):
        db.write_shard(ShardBatch(["a", "b"], ["", ""], ["", ""], np.ones((2, DIM + 1), np.float32)))
    with pytest.raises(ValueError, match="landmark_ids"):
        db.write_shard(ShardBatch(["a", "b"], [""], ["", ""], x))
    with pytest.raises(ValueError, match="non-empty"):
        db.write_shard(ShardBatch(["a", ""], ["", ""], ["", ""], x))
    with pytest.raises(ValueError, match="NaN"):
        db.write_shard(ShardBatch(["a", "b"], ["", ""], ["", ""], x * np.nan))
    with pytest.raises(ValueError, match="both"):
        db.write_shard(ShardBatch(["a", "b"], ["", ""], ["", ""], x, kp, None))
    with pytest.raises(ValueError, match=r"local_keypoints\[0\]"):
        db.write_shard(ShardBatch(["a", "b"], ["", ""], ["", ""], x, [np.zeros((3, 2), np.float32), kp[1]], ld))
    with pytest.raises(ValueError, match=r"local_descriptors\[1\] has dim"):
        db.write_shard(ShardBatch(["a", "b"], ["", ""], ["", ""], x, kp, [ld[0], np.zeros((0, 5), np.float32)]))
    assert not list((tmp_path / "idx").rglob("shard-*"))
    db.write_shard(ShardBatch(["a", "b"], ["", ""], ["", ""], x, kp, ld))
    with pytest.raises(ValueError, match="local descriptor dim 5"):  # inconsistent with the first shard
        db.write_shard(ShardBatch(["c"], [""], [""], x[:1], kp[:1], [np.zeros((3, 5), np.float32)]))
    with pytest.raises(ValueError, match="required"):
        db.write_shard(ShardBatch(["c"], [""], [""], x[:1]))
    # a shard written by another process with another local dim is refused at commit, naming the dims
    write_shard_file(tmp_path / "idx" / "shards", ["c"], [""], [""], np.ones((1, DIM), np.float16),
                     (np.zeros((3, 4), np.float32), np.zeros((3, 5), np.float16), np.array([0, 3])))
    with pytest.raises(ValueError, match=f"local descriptor dim 5 differs from {LOCAL_DIM}"):
        db.commit(gpu="cpu")


# ----------------------------------------------------------------------------- side tables


def test_skipped_round_trip(tmp_path):
    db = IndexWriter.create_or_open(tmp_path / "idx", CONFIG, DIM)
    db.record_skipped("a", "/x/a.jpg", "empty file")
    db.record_skipped("b", "/x/b.jpg", "not an image, really")
    db.record_skipped("a", "/x/a.jpg", "truncated")  # last reason wins
    assert db.skipped()["id"].tolist() == ["a", "b"]  # visible before flushing
    assert not (tmp_path / "idx" / "skipped.csv").exists()
    db.flush_skipped()
    db2 = IndexWriter.create_or_open(tmp_path / "idx", CONFIG, DIM)
    db2.record_skipped("c", "/x/c.jpg", "too small")
    db2.commit(gpu="cpu")  # flushes
    df = IndexReader.open(tmp_path / "idx").skipped()
    assert df.to_dict("records") == [
        {"id": "a", "path": "/x/a.jpg", "reason": "truncated"},
        {"id": "b", "path": "/x/b.jpg", "reason": "not an image, really"},
        {"id": "c", "path": "/x/c.jpg", "reason": "too small"},
    ]
    # an image indexed by a later run is no longer "skipped"
    db2.write_shard(ShardBatch(["b"], ["1"], ["/x/b.jpg"], np.ones((1, DIM), np.float32),
                               [np.zeros((0, 4), np.float32)], [np.zeros((0, LOCAL_DIM), np.float32)]))
    db2.commit(gpu="cpu")
    assert IndexReader.open(tmp_path / "idx").skipped()["id"].tolist() == ["a", "c"]


def test_aux_round_trip(tmp_path):
    db = IndexWriter.create_or_open(tmp_path / "idx", CONFIG, DIM)
    assert db.read_aux("pca") is None
    mean, proj = np.arange(8, dtype=np.float32), np.eye(8, 4, dtype=np.float64)
    db.write_aux("pca", {"mean": mean, "proj": proj, "dim": np.array(4)})
    out = IndexReader.open(tmp_path / "idx").read_aux("pca")
    np.testing.assert_array_equal(out["mean"], mean)
    assert out["proj"].dtype == np.float64 and int(out["dim"]) == 4
    assert not list((tmp_path / "idx" / "aux").glob("*.tmp"))
    with pytest.raises(ValueError):
        db.write_aux("../escape", {"a": mean})
    _truncate(tmp_path / "idx" / "aux" / "pca.npz")
    with pytest.raises(IndexFormatError, match="pca.npz"):
        db.read_aux("pca")


def test_update_manifest(tmp_path):
    db = IndexWriter.create_or_open(tmp_path / "idx", CONFIG, DIM)
    db.update_manifest(thresholds={"inlier_threshold": 20, "vote": 0.5})
    db.update_manifest(thresholds={"inlier_threshold": 25}, tuned_on="holdout-v1")
    m = IndexReader.open(tmp_path / "idx").manifest
    assert m["thresholds"] == {"inlier_threshold": 25, "vote": 0.5} and m["tuned_on"] == "holdout-v1"
    assert m["config"] == CONFIG
    assert not list((tmp_path / "idx").glob("*.tmp"))
    with pytest.raises(ValueError, match="maintained by the index"):
        db.update_manifest(dim=3)


def test_find_rows_survives_hash_collisions(tmp_path, monkeypatch):
    """Ids whose 64-bit hashes collide are told apart by comparing the stored id (and absent ids stay -1)."""
    from index import reader, writer

    def few_buckets(ids):  # 3 hash values for every id: almost every lookup meets a collision
        return np.array([sum(map(ord, str(i))) % 3 for i in ids], dtype=np.uint64)

    monkeypatch.setattr(reader, "hash_ids", few_buckets)
    monkeypatch.setattr(writer, "hash_ids", few_buckets)
    db = IndexWriter.create_or_open(tmp_path / "idx", {"global": {"model": "synthetic"}, "local": None}, 4)
    ids = [f"img{i}" for i in range(40)]
    db.write_shard(ShardBatch(ids, ["1"] * 40, ["p"] * 40, np.random.default_rng(0).random((40, 4), np.float32)))
    db.commit(factory="Flat", gpu="cpu")
    rows = IndexReader.open(tmp_path / "idx").find_rows(["img7", "nope", "img39", "img0", "img7"])
    np.testing.assert_array_equal(rows, [7, -1, 39, 0, 7])
