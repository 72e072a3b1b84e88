"""FAISS index benchmark: IVF-PQ (+ exact re-score) against exact flat search, measured in the same run.

Synthetic clustered, L2-normalised descriptors (many small "landmarks", like
GLDv2) go through the real index database (shards -> commit -> search).
Prints recall@1/@10 against exact search, query latency, build time and
bytes per vector, as ratios to the flat baseline.

    python benchmarks/bench_index.py --n 100000 --dim 1280 --queries 1000
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from index.database import IndexDatabase


def clustered(n: int, dim: int, n_clusters: int, noise: float, rng: np.random.Generator,
              latent: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clusters in a low-dimensional latent space embedded in ``dim`` dimensions (CNN descriptors have a
    low intrinsic dimension; isotropic high-dimensional Gaussians would defeat any ANN index)."""
    proj = np.linalg.qr(rng.standard_normal((dim, latent)))[0].T.astype(np.float32)  # (latent, dim)
    centers = rng.standard_normal((n_clusters, latent)).astype(np.float32)
    labels = rng.integers(0, n_clusters, n)
    z = centers[labels] + noise * rng.standard_normal((n, latent)).astype(np.float32)
    x = z @ proj + 0.02 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), z, proj


def recall(I: np.ndarray, gt: np.ndarray, k: int) -> float:
    return float(np.mean([gt[i, 0] in I[i, :k] for i in range(len(gt))]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--clusters", type=int, default=20_000)
    ap.add_argument("--noise", type=float, default=0.5, help="within-cluster spread (higher = harder)")
    ap.add_argument("--query-noise", type=float, default=1.0, help="query perturbation, relative to --noise")
    ap.add_argument("--factory", default=None, help="override the automatic IVF-PQ choice")
    ap.add_argument("--nprobes", type=int, nargs="+", default=[16, 64, 256], help="nprobe values to measure")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rng = np.random.default_rng(args.seed)
    xb, z, proj = clustered(args.n, args.dim, args.clusters, args.noise, rng)
    # queries: other photos of indexed "landmarks" = database vectors perturbed in the latent space
    src = rng.choice(args.n, args.queries, replace=False)
    zq = z[src] + args.noise * args.query_noise * rng.standard_normal((args.queries, proj.shape[0])).astype(np.float32)
    xq = zq @ proj + 0.02 * rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    xb16 = xb.astype(np.float16).astype(np.float32)  # what the database stores

    t = time.perf_counter()
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(xb16)
    flat_build = time.perf_counter() - t
    t = time.perf_counter()
    _, gt = flat.search(xq, 10)
    flat_ms = 1000 * (time.perf_counter() - t) / args.queries

    with tempfile.TemporaryDirectory() as tmp:
        db = IndexDatabase.create_or_open(Path(tmp) / "idx", {"benchmark": "bench_index"}, args.dim)
        t = time.perf_counter()
        for a in range(0, args.n, 50_000):
            b = min(args.n, a + 50_000)
            ids = [f"{i:08d}" for i in range(a, b)]
            db.write_shard(ids, ["1"] * len(ids), [""] * len(ids), xb[a:b])
        stats = db.commit(factory=args.factory)
        build = time.perf_counter() - t
        index_bytes = (Path(tmp) / "idx" / "faiss.index").stat().st_size
        rows = []
        for nprobe in args.nprobes:
            db.set_nprobe(nprobe)
            t = time.perf_counter()
            _, I_raw = db.search(xq, 10, rescore=False)
            raw_ms = 1000 * (time.perf_counter() - t) / args.queries
            t = time.perf_counter()
            _, I_db = db.search(xq, 10)
            db_ms = 1000 * (time.perf_counter() - t) / args.queries
            rows.append((nprobe, I_raw, raw_ms, I_db, db_ms))

    print(f"collection: {args.n} x {args.dim} clustered vectors ({args.clusters} clusters), {args.queries} queries")
    print(f"index: {stats['faiss']['factory']}  (default nprobe {stats['faiss'].get('nprobe')}), shortlist {stats['faiss'].get('shortlist')}")
    print(f"{'method':34s} {'R@1':>6s} {'R@10':>6s} {'ms/query':>9s} {'x flat':>7s} {'bytes/vec':>10s}")
    print(f"{'exact IndexFlatIP (baseline)':34s} {1.0:6.3f} {1.0:6.3f} {flat_ms:9.3f} {1.0:7.2f} {4 * args.dim:10d}")
    for nprobe, I_raw, raw_ms, I_db, db_ms in rows:
        print(f"{f'IVF-PQ alone, nprobe {nprobe}':34s} {recall(I_raw, gt, 1):6.3f} {recall(I_raw, gt, 10):6.3f} "
              f"{raw_ms:9.3f} {raw_ms / flat_ms:7.2f} {index_bytes / args.n:10.1f}")
        print(f"{f'  + exact re-score of 100 (product)':34s} {recall(I_db, gt, 1):6.3f} {recall(I_db, gt, 10):6.3f} "
              f"{db_ms:9.3f} {db_ms / flat_ms:7.2f} {index_bytes / args.n:10.1f}")
    print(f"build: database {build:.1f} s (train + add + write) vs flat add {flat_build:.2f} s; "
          f"FAISS file {index_bytes / 2**20:.1f} MiB vs {4 * args.dim * args.n / 2**20:.1f} MiB float32")


if __name__ == "__main__":
    main()
