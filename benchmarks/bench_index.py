"""Index database benchmark at million scale: build, search quality and speed, open cost, incremental add.

Synthetic clustered, L2-normalised descriptors (clusters in a 64-d latent space
embedded in ``--dim`` dimensions, like CNN descriptors of many small
"landmarks"; no images needed) go through the real index database: shards ->
commit (train + add) -> search, against exact flat search in the same run.

Measured, in one run:

1. build time (write shards, then commit = train + add), FAISS bytes per vector,
   QPS and 1-recall@1 / 10-recall@10 against exact flat search (faiss' BLAS
   brute-force k-NN, ``faiss.knn``, over the same stored float16 vectors in
   float32 chunks, conversion not timed), with and without the exact re-score,
   for a sweep of nprobe values;
2. open + first query on the built index in a fresh process: wall time and peak RSS;
3. adding 1 % more rows (write + commit) as a ratio of the full build;
5. peak RSS of the build process (what build-index does after extraction).

The last line printed is one JSON object of the headline figures.

    python benchmarks/bench_index.py --n 1000000 --dim 512
    python benchmarks/bench_index.py --n 1000000 --dim 1280
    python benchmarks/bench_index.py --n 10000000 --dim 512   # ~25 min, 11 GB of disk

At 10M the collection is never in memory: it is generated chunk by chunk into
shards, the database streams it, and the flat baseline reads it back in
262,144-row chunks (0.5 GiB of float32 at 512-d).
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index import IndexReader, IndexWriter  # noqa: E402
from index.shards import ShardBatch  # noqa: E402

CHUNK = 65_536
LATENT = 64
CONFIG = {"benchmark": "bench_index"}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class AnonPeak:
    """Peak anonymous RSS (``RssAnon``: heap, numpy and faiss buffers), sampled every 0.2 s in a thread.

    The peak RSS of ``getrusage`` also counts the memory-mapped segment pages a build streams through (file
    cache: shared, clean, reclaimed under pressure), 10+ GiB at 10M; this is the memory the process needs.
    """

    def __init__(self) -> None:
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now_kib() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.now_kib())
            self._stop.wait(0.2)

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, self.now_kib())

    @property
    def mib(self) -> float:
        return self.peak_kib / 1024


class Collection:
    """Deterministic synthetic collection, generated chunk by chunk (never held whole in memory)."""

    def __init__(self, n: int, dim: int, clusters: int, noise: float, seed: int):
        self.n, self.dim, self.noise, self.seed = n, dim, noise, seed
        rng = np.random.default_rng(seed)
        self.proj = np.linalg.qr(rng.standard_normal((dim, LATENT)))[0].T.astype(np.float32)  # (latent, dim)
        self.centers = rng.standard_normal((clusters, LATENT)).astype(np.float32)

    def _latent(self, c: int) -> tuple[np.random.Generator, np.ndarray]:
        size = min(CHUNK, self.n - c * CHUNK)
        rng = np.random.default_rng([self.seed, c])
        labels = rng.integers(0, len(self.centers), size)
        return rng, self.centers[labels] + self.noise * rng.standard_normal((size, LATENT)).astype(np.float32)

    def chunk(self, c: int) -> np.ndarray:
        rng, z = self._latent(c)
        x = z @ self.proj + 0.02 * rng.standard_normal((len(z), self.dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def n_chunks(self) -> int:
        return (self.n + CHUNK - 1) // CHUNK

    def queries(self, nq: int, query_noise: float, seed: int) -> np.ndarray:
        """Other photos of indexed "landmarks": database vectors perturbed in the latent space."""
        rng = np.random.default_rng(seed + 1)
        src = np.sort(rng.choice(self.n, nq, replace=False))
        zq = np.empty((nq, LATENT), np.float32)
        for c in np.unique(src // CHUNK).tolist():
            m = src // CHUNK == c
            zq[m] = self._latent(c)[1][src[m] - c * CHUNK]
        zq += self.noise * query_noise * rng.standard_normal(zq.shape).astype(np.float32)
        xq = zq @ self.proj + 0.02 * rng.standard_normal((nq, self.dim)).astype(np.float32)
        return xq / np.linalg.norm(xq, axis=1, keepdims=True)


def write_rows(db: IndexWriter, coll: Collection, start: int, stop: int, id_offset: int = 0) -> None:
    """Shards of rows start:stop of the collection (ids offset for the 'new rows' of the add test)."""
    for c in range(start // CHUNK, (stop + CHUNK - 1) // CHUNK):
        x = coll.chunk(c)
        a, b = max(start, c * CHUNK), min(stop, c * CHUNK + len(x))
        ids = [f"{i + id_offset:09d}" for i in range(a, b)]
        db.write_shard(ShardBatch(ids, [str((i + id_offset) % 20011) for i in range(a, b)],
                                  [f"/images/{i % 997}/{i + id_offset:09d}.jpg" for i in range(a, b)],
                                  x[a - c * CHUNK : b - c * CHUNK]))


def child_build(args) -> None:
    """Step 1 in a fresh process: write shards, commit; prints time and peak RSS as JSON."""
    coll = Collection(args.n, args.dim, args.clusters, args.noise, args.seed)
    db = IndexWriter.create_or_open(args.dir, CONFIG, args.dim, gpu="cpu")
    with AnonPeak() as anon:
        t0 = time.perf_counter()
        write_rows(db, coll, 0, args.n)
        t1 = time.perf_counter()
        stats = db.commit(factory=args.factory, gpu="cpu")
        t2 = time.perf_counter()
    print(json.dumps({"write_s": t1 - t0, "commit_s": t2 - t1, "total_s": t2 - t0, "peak_rss_mib": peak_rss_mib(),
                      "peak_anon_rss_mib": anon.mib,
                      "factory": stats["faiss"]["factory"], "nprobe": stats["faiss"]["nprobe"]}))


def child_open(args) -> None:
    """Step 2 in a fresh process: open the index and answer one query (with its metadata rows)."""
    xq = np.load(args.query)
    base = peak_rss_mib()
    t0 = time.perf_counter()
    db = IndexReader.open(args.dir, gpu="cpu")
    D, I = db.search(xq[:1], 10)
    ids, landmarks, paths = db.rows(I[0])
    wall = time.perf_counter() - t0
    peak = peak_rss_mib()
    # id lookups (what a resume and the duplicate check do): 10,000 committed ids and 10,000 absent ones
    rng = np.random.default_rng(args.seed + 2)
    present = [f"{i:09d}" for i in rng.choice(args.n, 10_000, replace=False)]
    absent = [f"x{i:09d}" for i in range(10_000)]
    t = time.perf_counter()
    found = db.find_rows(present + absent)
    lookup_s = time.perf_counter() - t
    assert np.all(found[:10_000] == np.array([int(i) for i in present])) and np.all(found[10_000:] == -1)
    print(json.dumps({"open_first_query_s": wall, "peak_rss_mib": peak, "rss_after_imports_mib": base,
                      "first_id": ids[0], "find_rows_us_per_id": 1e6 * lookup_s / 20_000}))


def run_child(args, mode: str, **extra) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--n", str(args.n), "--dim", str(args.dim),
           "--clusters", str(args.clusters), "--noise", str(args.noise), "--seed", str(args.seed), "--dir", str(args.dir)]
    if args.factory:
        cmd += ["--factory", args.factory]
    for k, v in extra.items():
        cmd += [f"--{k}", str(v)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def exact_search(db: IndexReader, xq: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Exact top-k by faiss' brute-force k-NN (BLAS blocks + heaps, all cores) over the stored vectors, read
    in float32 chunks; seconds of search (reading and conversion excluded).

    The strongest exact baseline on this machine: 5x the queries/s of a numpy matmul + argpartition (the
    baseline of earlier runs), so the "x flat" ratios are not flattered by a slow baseline.
    """
    n = db.size
    best_s = np.full((len(xq), k), -np.inf, np.float32)
    best_i = np.full((len(xq), k), -1, np.int64)
    seconds = 0.0
    step = 4 * CHUNK
    for a in range(0, n, step):
        xb = np.ascontiguousarray(db.global_descriptors(np.arange(a, min(n, a + step))))  # not timed
        t = time.perf_counter()
        D, I = faiss.knn(xq, xb, min(k, len(xb)), metric=faiss.METRIC_INNER_PRODUCT)
        cand_s = np.concatenate([best_s, D], axis=1)
        cand_i = np.concatenate([best_i, I + a], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
        seconds += time.perf_counter() - t
    return best_i, seconds


def recall(I: np.ndarray, gt: np.ndarray, k: int, at: int) -> float:
    """k-recall@at: share of the true top-k found among the first `at` results (1-recall@1, 10-recall@10)."""
    return float(np.mean([len(set(gt[i, :k]) & set(I[i, :at])) / k for i in range(len(gt))]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--clusters", type=int, default=20_000)
    ap.add_argument("--noise", type=float, default=0.5, help="within-cluster spread (higher = harder)")
    ap.add_argument("--query-noise", type=float, default=1.0, help="query perturbation, relative to --noise")
    ap.add_argument("--factory", default=None, help="override the automatic choice")
    ap.add_argument("--nprobes", type=int, nargs="+", default=[16, 32, 64], help="nprobe values to measure")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where the index is built (default: a temp dir, removed)")
    ap.add_argument("--child", choices=["build", "open"], help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--query", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.child == "build":
        return child_build(args)
    if args.child == "open":
        return child_open(args)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_index_"))
    args.dir = work / "idx"
    try:
        coll = Collection(args.n, args.dim, args.clusters, args.noise, args.seed)
        xq = coll.queries(args.queries, args.query_noise, args.seed)
        print(f"collection: {args.n} x {args.dim} clustered vectors ({args.clusters} clusters), {args.queries} queries",
              flush=True)
        build = run_child(args, "build")
        print(f"build: write shards {build['write_s']:.1f} s, commit (train + add + write) {build['commit_s']:.1f} s, "
              f"peak RSS {build['peak_rss_mib']:.0f} MiB ({build['peak_anon_rss_mib']:.0f} MiB anonymous, the rest "
              f"memory-mapped file pages), {build['factory']}", flush=True)
        np.save(work / "xq.npy", xq)
        opened = run_child(args, "open", query=work / "xq.npy")
        print(f"open + first query in a fresh process: {opened['open_first_query_s']:.2f} s, "
              f"peak RSS {opened['peak_rss_mib']:.0f} MiB ({opened['rss_after_imports_mib']:.0f} MiB after imports); "
              f"id lookups {opened['find_rows_us_per_id']:.1f} us per id",
              flush=True)

        db = IndexReader.open(args.dir, gpu="cpu")
        faiss_bytes = db.faiss_path.stat().st_size
        seg_bytes = sum((args.dir / e["file"]).stat().st_size for e in db.manifest["segments"])
        gt, flat_s = exact_search(db, xq, 10)
        flat_qps = args.queries / flat_s
        default_nprobe = db.manifest["faiss"]["nprobe"]
        nprobes = sorted(set(args.nprobes) | {default_nprobe})
        rows = {}
        for nprobe in nprobes:
            db.set_nprobe(nprobe)
            db.search(xq[:10], 10)  # warm-up
            t = time.perf_counter()
            _, I_raw = db.search(xq, 10, rescore=False)
            raw_s = time.perf_counter() - t
            t = time.perf_counter()
            _, I = db.search(xq, 10)
            s = time.perf_counter() - t
            rows[nprobe] = (I_raw, raw_s, I, s)
        db.set_nprobe(default_nprobe)

        print(f"\nindex: {build['factory']} (default nprobe {default_nprobe}), exact re-score of "
              f"{db.manifest['faiss']['shortlist']} candidates")
        print(f"{'method':36s} {'R@1':>6s} {'R@10':>6s} {'QPS':>8s} {'x flat':>7s}")
        print(f"{'exact flat (faiss.knn, baseline)':36s} {1.0:6.3f} {1.0:6.3f} {flat_qps:8.0f} {1.0:7.1f}")
        for nprobe, (I_raw, raw_s, I, s) in rows.items():
            mark = " *" if nprobe == default_nprobe else ""
            print(f"{f'IVF-PQ alone, nprobe {nprobe}{mark}':36s} {recall(I_raw, gt, 1, 1):6.3f} "
                  f"{recall(I_raw, gt, 10, 10):6.3f} {args.queries / raw_s:8.0f} {flat_s / raw_s:7.1f}")
            print(f"{'  + exact re-score (product)':36s} {recall(I, gt, 1, 1):6.3f} {recall(I, gt, 10, 10):6.3f} "
                  f"{args.queries / s:8.0f} {flat_s / s:7.1f}")
        db.close()

        # 3. add 1 % new rows to the built index (write + commit) vs the full build
        n_add = max(1, args.n // 100)
        t = time.perf_counter()
        db = IndexWriter.create_or_open(args.dir, CONFIG, args.dim, gpu="cpu")
        write_rows(db, coll, 0, n_add, id_offset=args.n)  # new ids, vectors like the collection's
        add_stats = db.commit(gpu="cpu")
        add_s = time.perf_counter() - t
        assert add_stats["n_added"] == n_add and not add_stats["rebuilt"]
        db.close()

        I_raw, raw_s, I, s = rows[default_nprobe]
        head = {
            "n": args.n,
            "dim": args.dim,
            "factory": build["factory"],
            "nprobe": default_nprobe,
            "build_s": round(build["commit_s"], 1),
            "build_total_s": round(build["total_s"], 1),
            "build_peak_rss_mib": round(build["peak_rss_mib"]),
            "build_peak_anon_rss_mib": round(build["peak_anon_rss_mib"]),
            "faiss_bytes_per_vector": round(faiss_bytes / args.n, 1),
            "segment_bytes_per_vector": round(seg_bytes / args.n, 1),
            "recall_at_1": round(recall(I, gt, 1, 1), 4),
            "recall_at_10": round(recall(I, gt, 10, 10), 4),
            "recall_at_1_no_rescore": round(recall(I_raw, gt, 1, 1), 4),
            "recall_at_10_no_rescore": round(recall(I_raw, gt, 10, 10), 4),
            "qps": round(args.queries / s),
            "qps_no_rescore": round(args.queries / raw_s),
            "flat_qps": round(flat_qps, 1),
            "qps_ratio_vs_flat": round(flat_s / s, 1),
            "open_first_query_s": round(opened["open_first_query_s"], 3),
            "open_peak_rss_mib": round(opened["peak_rss_mib"]),
            "open_rss_beyond_faiss_mib": round(opened["peak_rss_mib"] - faiss_bytes / 2**20),
            "find_rows_us_per_id": round(opened["find_rows_us_per_id"], 2),
            "add_1pct_s": round(add_s, 2),
            "add_1pct_ratio_vs_rebuild": round(add_s / build["total_s"], 4),
            "bench_peak_rss_mib": round(peak_rss_mib()),  # this process: flat baseline, searches, the add
        }
        print(f"\nadd {n_add} rows (1 %): {add_s:.1f} s = {100 * head['add_1pct_ratio_vs_rebuild']:.1f} % of the full "
              f"build ({build['total_s']:.1f} s); FAISS file {faiss_bytes / args.n:.1f} B/vector, segments "
              f"{seg_bytes / args.n:.0f} B/vector")
        print(json.dumps(head))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
