"""index/: FAISS parameter rules, search with exact re-scoring (recall vs an exact reference), incremental add."""
from __future__ import annotations

import logging
import math

import faiss
import numpy as np
import pytest

from index import faiss_index as fi
from index import ShardBatch
from index.reader import IndexReader
from index.writer import IndexWriter
from index.faiss_index import FLAT_MAX_N, choose_params

CONFIG = {"global": {"model": "synthetic", "dim": 64}, "local": None}


def clustered(n: int, dim: int, n_clusters: int, seed: int, spread: float = 0.35) -> np.ndarray:
    """L2-normalised vectors drawn around ``n_clusters`` random unit centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, n_clusters, n)] + spread / math.sqrt(dim) * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def perturb(x: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = x + sigma / math.sqrt(x.shape[1]) * rng.standard_normal(x.shape).astype(np.float32)
    return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)


def build_db(path, xb: np.ndarray, shard: int = 5000, **commit_kw) -> IndexReader:
    db = IndexWriter.create_or_open(path, CONFIG, xb.shape[1])
    for a in range(0, len(xb), shard):
        b = min(len(xb), a + shard)
        db.write_shard(ShardBatch([f"im{i}" for i in range(a, b)], [str(i % 50) for i in range(a, b)],
                                  [f"/img/{i}.jpg" for i in range(a, b)], xb[a:b]))
    db.commit(gpu="cpu", **commit_kw)
    return db


# ----------------------------------------------------------------------------- choose_params


def test_flat_below_threshold(caplog):
    with caplog.at_level(logging.INFO, logger="index.faiss_index"):
        p = choose_params(FLAT_MAX_N - 1, 1280)
    assert p["factory"] == "Flat" and p["exact"] and p["nlist"] is None and p["ntrain"] == 0
    assert p["metric"] == "IP" and p["auto"]
    assert "exact IndexFlatIP" in caplog.text and str(FLAT_MAX_N) in caplog.text
    assert choose_params(0, 64)["factory"] == "Flat"


@pytest.mark.parametrize("n, dim", [(100_000, 1280), (1_000_000, 1280), (4_000_000, 2048), (300_000, 512),
                                    (2_000_000, 768), (500_000, 1000)])
def test_ivfpq_rules_at_scale(n, dim):
    p = choose_params(n, dim)
    nlist = p["nlist"]
    prefix = f"PCAR{fi.PCA_DIM}," if dim > fi.PCA_DIM else ""
    assert p["factory"] == f"{prefix}IVF{nlist},PQ{p['m']}x4fsr" and not p["exact"] and not p["opq"]
    assert nlist & (nlist - 1) == 0, "nlist is a power of two"
    assert 2 * math.sqrt(n) < nlist <= 4 * math.sqrt(n)
    assert n / nlist >= fi.MIN_POINTS_PER_LIST
    assert min(dim, fi.PCA_DIM) % p["m"] == 0 and p["nbits"] == 4  # fast scan: 2 sub-quantizers per byte
    assert 50 <= p["bytes_per_vector"] <= 100
    assert p["ntrain"] == n or 30 <= p["ntrain"] / nlist <= 256
    assert p["ntrain"] >= fi.MIN_POINTS_PER_LIST * 256  # enough for the PQ codebooks
    assert p["nprobe"] == min(fi.NPROBE_MAX, max(fi.NPROBE_MIN, nlist // 64))
    gpu = choose_params(n, dim, for_gpu=True)  # faiss-gpu has no fast-scan index: 8-bit PQ, same bytes
    assert gpu["factory"] == f"{prefix}IVF{nlist},PQ{p['m'] // 2}" and gpu["bytes_per_vector"] == p["bytes_per_vector"]


def test_ivfpq_just_above_threshold_keeps_39_points_per_list():
    for n in (FLAT_MAX_N, 20_000, 50_000, 90_000):
        p = choose_params(n, 1280)
        assert p["factory"].startswith("PCAR256,IVF") and p["m"] == 128 and p["bytes_per_vector"] == 64
        assert n / p["nlist"] >= fi.MIN_POINTS_PER_LIST and p["nlist"] <= 4 * math.sqrt(n)
        assert p["ntrain"] <= n and 1 <= p["nprobe"] <= p["nlist"]


def test_awkward_dimension_gets_opq():
    p = choose_params(200_000, 254)  # 254 = 2 * 127: no divisor near 63
    assert p["opq"] and p["factory"] == f"OPQ63_252,IVF{p['nlist']},PQ63"
    assert p["bytes_per_vector"] == 63
    wide = choose_params(200_000, 1002)  # wider than PCA_DIM: reduced to 256 first, whose divisors fit
    assert wide["factory"] == f"PCAR256,IVF{wide['nlist']},PQ128x4fsr" and not wide["opq"]


def test_factory_and_nprobe_overrides(caplog):
    p = choose_params(1_000_000, 1280, factory="IVF4096,PQ64x4fs", nprobe=7, shortlist=300)
    assert (p["factory"], p["nlist"], p["m"], p["nbits"], p["nprobe"], p["shortlist"]) == (
        "IVF4096,PQ64x4fs", 4096, 64, 4, 7, 300)
    assert not p["auto"] and p["bytes_per_vector"] == 32
    assert choose_params(500, 64, nprobe=3)["nprobe"] is None  # Flat: nprobe ignored
    assert choose_params(50, 64, factory="Flat")["exact"]
    with pytest.raises(ValueError, match="invalid faiss factory"):
        choose_params(10_000, 64, factory="IVF12,Nonsense")
    with pytest.raises(ValueError, match="needs at least 4096 training vectors"):
        choose_params(1000, 64, factory="IVF4096,PQ8")
    with pytest.raises(ValueError):
        choose_params(100, 64, nprobe=0)


# ----------------------------------------------------------------------------- search


def test_recall_rescored_ivfpq_vs_exact(tmp_path):
    """IVF-PQ shortlist + exact re-score recovers the exact top-1; PQ scores alone do not."""
    xb = clustered(20_000, 64, 200, seed=0)
    xq = perturb(xb[np.random.default_rng(1).choice(len(xb), 500, replace=False)], 0.1, seed=2)
    db = build_db(tmp_path / "idx", xb, factory="IVF256,PQ8", nprobe=16, shortlist=100)
    ref = faiss.IndexFlatIP(64)
    ref.add(db.global_descriptors())  # exact reference over the stored (float16) vectors
    _, I_ref = ref.search(xq, 1)

    D, I = db.search(xq, 10)
    _, I_pq = db.search(xq, 10, rescore=False)
    recall = float(np.mean(I[:, 0] == I_ref[:, 0]))
    recall_pq = float(np.mean(I_pq[:, 0] == I_ref[:, 0]))
    print(f"recall@1: IVF256,PQ8 + exact re-score {recall:.3f}, PQ scores alone {recall_pq:.3f}")
    assert recall >= 0.9
    assert recall > recall_pq + 0.05
    assert np.all(np.diff(D, axis=1) <= 0), "scores sorted descending"
    exact = np.einsum("qd,qkd->qk", xq, db.global_descriptors(I.ravel()).reshape(len(xq), 10, 64))
    np.testing.assert_allclose(D, exact, atol=1e-5)  # returned scores are exact cosines


def test_flat_search_is_exact_and_pads(tmp_path, caplog):
    xb = clustered(300, 32, 10, seed=3)
    build_db(tmp_path / "idx", xb, shard=128)
    with caplog.at_level(logging.WARNING):
        db = IndexReader.open(tmp_path / "idx")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warnings, "a consistent index opens without repair warnings"
    assert db.manifest["faiss"]["factory"] == "Flat"
    xq = perturb(xb[:20], 0.2, seed=4)
    D, I = db.search(xq * 3.0, 5)  # queries are normalised by search
    S = xq @ db.global_descriptors().T
    # exact: the returned scores are the 5 best true scores (robust to float near-ties between BLAS and faiss)
    np.testing.assert_allclose(D, -np.sort(-S, axis=1)[:, :5], atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(S, I, 1), D, atol=1e-5)
    D, I = db.search(xq[:2], 400)  # k > size: padded with -1 / -inf
    assert I.shape == (2, 400) and np.all(I[:, 300:] == -1) and np.all(np.isneginf(D[:, 300:]))
    assert np.all(I[:, :300] >= 0)
    D, I = db.search(np.zeros((0, 32), np.float32), 3)
    assert D.shape == (0, 3) and I.dtype == np.int64 and D.dtype == np.float32


def test_search_bad_input(tmp_path):
    db = build_db(tmp_path / "idx", clustered(50, 16, 3, seed=5), shard=50)
    with pytest.raises(ValueError, match=r"\(nq, 16\)"):
        db.search(np.zeros((2, 15), np.float32), 3)
    with pytest.raises(ValueError, match=r"\(nq, 16\)"):
        db.search(np.zeros(16, np.float32), 3)
    with pytest.raises(ValueError, match="k must be"):
        db.search(np.ones((1, 16), np.float32), 0)
    with pytest.raises(ValueError, match="NaN"):
        db.search(np.full((1, 16), np.nan, np.float32), 1)


def test_empty_index_search(tmp_path):
    db = IndexWriter.create_or_open(tmp_path / "idx", CONFIG, 16)
    stats = db.commit(gpu="cpu")
    assert stats["n_total"] == 0 and db.size == 0
    D, I = db.search(np.ones((2, 16), np.float32), 4)
    assert np.all(I == -1) and np.all(np.isneginf(D))


def test_rescore_handles_missing_ids():
    xb = np.eye(4, dtype=np.float32)
    xq = np.array([[1, 0.5, 0, 0]], np.float32)
    D, I = fi.rescore(xq, np.array([[2, -1, 1, 0]]), lambda rows: xb[rows], 5)
    np.testing.assert_array_equal(I, [[0, 1, 2, -1, -1]])
    np.testing.assert_allclose(D[0, :3], [1.0, 0.5, 0.0])
    assert np.all(np.isneginf(D[0, 3:]))


# ----------------------------------------------------------------------------- incremental add


def test_incremental_add_does_not_retrain(tmp_path, monkeypatch, caplog):
    x = clustered(4000, 32, 40, seed=6)
    path = tmp_path / "idx"
    db = build_db(path, x[:3000], shard=1000, factory="IVF32,PQ8x4", nprobe=8)
    before = fi.read_index(db.faiss_path)  # keep a reference: extract_index_ivf does not own it
    centroids = faiss.extract_index_ivf(before).quantizer.reconstruct_n(0, 32)

    calls = []
    monkeypatch.setattr(fi, "build_faiss", lambda *a, **k: calls.append(a) or pytest.fail("retrained"))
    db = IndexWriter.create_or_open(path, CONFIG, 32)
    assert len(db.done_ids()) == 3000
    # a batch overlapping stored ids: the stored ones are skipped, not duplicated
    ids = [f"im{i}" for i in range(2900, 4000)]
    db.write_shard(ShardBatch(ids, ["new"] * len(ids), [f"/new/{i}.jpg" for i in range(2900, 4000)], x[2900:4000]))
    with caplog.at_level(logging.INFO, logger="index.writer"):
        stats = db.commit(gpu="cpu")  # no factory: keep the trained index
    assert not calls and not stats["rebuilt"]
    assert "without retraining" in caplog.text
    assert (stats["n_added"], stats["n_duplicates"], stats["n_total"]) == (1000, 100, 4000)

    db = IndexReader.open(path)
    stored = fi.read_index(db.faiss_path)
    after = faiss.extract_index_ivf(stored)
    np.testing.assert_array_equal(after.quantizer.reconstruct_n(0, 32), centroids)
    assert after.ntotal == 4000 and after.nprobe == 8 and db.manifest["faiss"]["nprobe"] == 8
    md = db.metadata
    assert md.loc[2950, "landmark_id"] != "new" and md.loc[3500, "landmark_id"] == "new"
    assert md.loc[3000, "id"] == "im3000" and db.manifest["counts"]["images"] == 4000
    _, I = db.search(x[3000:4000], 1)
    assert np.mean(I[:, 0] == np.arange(3000, 4000)) > 0.99  # new vectors are findable


def test_exact_index_outgrown_becomes_ivfpq(tmp_path, caplog):
    x = clustered(FLAT_MAX_N + 500, 16, 30, seed=7)
    path = tmp_path / "idx"
    db = build_db(path, x[:2000], shard=2000)
    assert db.manifest["faiss"]["factory"] == "Flat"
    db.write_shard(ShardBatch([f"im{i}" for i in range(2000, len(x))], [""] * (len(x) - 2000),
                              [""] * (len(x) - 2000), x[2000:]))
    with caplog.at_level(logging.INFO):
        stats = db.commit(gpu="cpu")
    assert stats["rebuilt"] and stats["faiss"]["factory"].startswith("IVF")
    assert "outgrow" in caplog.text
    _, I = IndexReader.open(path).search(x[-100:], 1)
    assert np.mean(I[:, 0] == np.arange(len(x) - 100, len(x))) > 0.95


def test_factory_change_rebuilds_and_nprobe_change_does_not(tmp_path):
    x = clustered(3000, 32, 30, seed=8)
    path = tmp_path / "idx"
    db = build_db(path, x, shard=3000, factory="IVF32,PQ8x4")
    stats = db.commit(nprobe=4, gpu="cpu")
    stored = fi.read_index(db.faiss_path)
    assert not stats["rebuilt"] and faiss.extract_index_ivf(stored).nprobe == 4
    stats = db.commit(factory="IVF16,PQ4x4", gpu="cpu")
    assert stats["rebuilt"] and stats["faiss"]["nlist"] == 16
    stats = db.commit(factory="IVF16,PQ4x4", gpu="cpu")
    assert not stats["rebuilt"]


def test_untrainable_factory_is_refused_before_writing(tmp_path):
    path = tmp_path / "idx"
    db = IndexWriter.create_or_open(path, CONFIG, 16)
    db.write_shard(ShardBatch(["a", "b"], ["1", "2"], ["", ""], np.eye(2, 16, dtype=np.float32)))
    with pytest.raises(ValueError, match="needs at least 64 training vectors.*nothing was committed"):
        db.commit(factory="IVF64,Flat", gpu="cpu")
    assert IndexReader.open(path).size == 0 and len(list((path / "shards").glob("*.h5"))) == 1
    assert db.commit(gpu="cpu")["n_total"] == 2


def test_stored_opq_index_still_matches_its_factory(tmp_path):
    """faiss reads an OPQMatrix back as a LinearTransform: the description must not change (else every commit
    with an explicit OPQ factory would rebuild)."""
    x = np.random.default_rng(0).standard_normal((12_000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = fi.build_faiss(x, choose_params(len(x), 32, "OPQ8_32,IVF64,PQ8"), "cpu")
    fi.write_index(index, tmp_path / "opq.index")
    back = fi.describe_index(fi.read_index(tmp_path / "opq.index"))
    assert fi.index_signature(back) == fi.factory_signature("OPQ8_32,IVF64,PQ8", 32)


def test_fast_scan_index_stays_on_the_cpu(monkeypatch):
    """faiss-gpu has no fast-scan index: 'auto' searches on the CPU, 'gpu' says what to do instead."""
    x = np.random.default_rng(1).standard_normal((2_000, 16)).astype(np.float32)
    index = fi.new_index("IVF16,PQ8x4fsr", 16)
    index.train(x)
    monkeypatch.setattr(fi, "use_gpu", lambda gpu: True)  # as on a machine with a GPU
    assert fi.to_gpu(index, "auto") == (index, False)
    with pytest.raises(RuntimeError, match="no GPU implementation.*PQ64"):
        fi.to_gpu(index, "gpu")
