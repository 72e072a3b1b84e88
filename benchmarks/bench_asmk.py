"""ASMK local-feature retrieval at scale (the ``build-index --asmk`` channel): bytes per image, build time, query time.

Real 100k- and 1M-image extraction is impossible here, so the per-image ASMK representation is synthetic where
it has to be and real where it can be:

- **descriptors**: with ``--index DIR`` (an index with stored RootSIFT, e.g. devset-large's train.csv built with
  the defaults), the real stored descriptors of its images: their count per image, and their aggregation. The
  ``--words`` codebook is a random sample of RootSIFT descriptors of *other* photos (``--codebook-data``: the
  holdout photos of a GLDv2-style folder, extracted as the index extracts; a stand-in for k-means centroids with
  the same assignment cost and realistic words per image: sampling the aggregated images' own descriptors would
  give every descriptor a word of its own). Without ``--index``: random unit vectors, ``--features`` a photo;
- **aggregation** (build and query): seconds per image to assign its descriptors to the codebook (exact
  search, or its HNSW graph above 8,192 words, as ``index/asmk_store.py``) and aggregate them (one word a descriptor on the database side, 3 on the
  query side), timed on the real images; the build time at N images is N times that (extrapolated) plus the
  inverted file's construction and HDF5 write (``_write_part``'s format), measured;
- **bytes per image**: the stored inverted file (int32 row + 16-byte code per (image, word), word starts, row
  norms), as measured on the part file at the largest size built;
- **query time**: the inverted-file search at N images for real query representations (aggregated real
  descriptors). The database entries are synthetic: words per image drawn from the real images' distribution,
  words uniform over the codebook (real word frequencies are skewed, so real lists are longer for frequent
  words: this is a lower bound of the search time). Sizes whose inverted file exceeds ``--max-gb`` in memory
  are measured on the lists a query touches only, each at the length it has at N images (all a query reads).

    flock /work/cpu.lock python benchmarks/bench_asmk.py --index idx/ --codebook-data ../shared/devset-large \
        --words 65536 --sizes 10000,100000,1000000
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from index.asmk import Codebook, InvertedFile

CODE_BYTES = 16  # 128 sign bits of a RootSIFT-sized residual
ENTRY_BYTES = 4 + CODE_BYTES  # stored: int32 row + code


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def real_images(index: Path | None, features: int, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per-image descriptors: the index's stored ones (first ``n`` images with features), else random ones."""
    if index is None:
        return [unit(rng.standard_normal((features, 128))) for _ in range(n)]
    from index.reader import IndexReader

    db = IndexReader.open(index)
    out = []
    for r in range(db.size):
        got = db.local_features(r)
        if got is not None and len(got[1]):
            out.append(np.asarray(got[1], np.float32))
        if len(out) == n:
            break
    db.close()
    return out


def codebook_descriptors(index: Path, data: Path) -> np.ndarray:
    """RootSIFT (the index's local conf) of the holdout photos of ``data`` (holdout.csv, images/<id>.jpg)."""
    import pandas as pd

    from index.reader import IndexReader
    from retrieval.extract import FeatureExtractor

    db = IndexReader.open(index)
    fx = FeatureExtractor.for_index(db, need_local=True)
    ids = pd.read_csv(data / "holdout.csv", dtype=str)["id"]
    out = [fx.local_extractor.extract(fx.decode(str(data / "images" / f"{i}.jpg")).local_image).descriptors for i in ids]
    db.close()
    return np.concatenate(out).astype(np.float32)


def write_part(path: Path, ivf: InvertedFile) -> int:
    """The part file as index/asmk_store.py writes it; its size in bytes."""
    with h5py.File(path, "w") as f:
        for name in ("rows", "codes", "starts", "norms"):
            f.create_dataset(name, data=getattr(ivf, name))
    return path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=None, help="an index with stored RootSIFT (real descriptors)")
    ap.add_argument("--codebook-data", type=Path, default=None,
                    help="GLDv2-style folder whose holdout photos' descriptors sample the codebook (with --index)")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--words", type=int, default=65536, help="codebook size")
    ap.add_argument("--features", type=int, default=1000, help="descriptors per image without --index")
    ap.add_argument("--images", type=int, default=60, help="real images aggregated (timing, words per image)")
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--max-gb", type=float, default=4.0, help="largest inverted file built whole in memory")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    images = real_images(args.index, args.features, args.images, rng)
    pool = (codebook_descriptors(args.index, args.codebook_data) if args.index and args.codebook_data
            else unit(rng.standard_normal((args.words, 128))) if args.index is None
            else np.concatenate(images[len(images) // 2:]))  # (then only the first half is aggregated)
    if args.index and not args.codebook_data:
        images = images[: len(images) // 2]
    n_words = min(args.words, len(pool))
    start = time.perf_counter()
    cb = Codebook(pool[rng.choice(len(pool), n_words, replace=False)])  # HNSW graph above 8,192 words (index/asmk.py)
    graph_s = time.perf_counter() - start
    start = time.perf_counter()
    agg = [cb.aggregate(x) for x in images]
    db_agg_s = (time.perf_counter() - start) / len(images)
    wpi = np.array([len(w) for w, _ in agg])
    start = time.perf_counter()
    queries = [cb.aggregate(x, assign=3) for x in images[: args.queries]]
    q_agg_s = (time.perf_counter() - start) / len(queries)
    feats = float(np.mean([len(x) for x in images]))
    print(f"{'real' if args.index else 'random'} descriptors: {len(images)} images, {feats:.0f} per image; codebook "
          f"{n_words} words; {wpi.mean():.0f} words per image (database), {np.mean([len(w) for w, _ in queries]):.0f} "
          f"per query (3 words a descriptor); aggregation {1000 * db_agg_s:.0f} ms per image, {1000 * q_agg_s:.0f} ms "
          f"per query ({os.cpu_count()} cores); word assignment {'HNSW' if cb.hnsw else 'exact'} (graph built in "
          f"{graph_s:.1f} s, once per codebook)")
    rows_out = []
    for n in (int(s) for s in args.sizes.split(",")):
        counts = rng.choice(wpi, n)  # words per image from the real distribution
        entries = int(counts.sum())
        row: dict = {"images": n, "entries_per_image": round(entries / n),
                     "aggregation_s_extrapolated": round(n * db_agg_s)}
        if entries * (ENTRY_BYTES + 8 + 8) / 2**30 <= args.max_gb:  # + sort order and copies while building
            words = rng.integers(0, n_words, entries, dtype=np.int32)
            codes = rng.integers(0, 256, (entries, CODE_BYTES), dtype=np.uint8)
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            start = time.perf_counter()
            ivf = InvertedFile.from_images(words, codes, offsets, n_words, 128)
            ivf_s = time.perf_counter() - start
            del words, codes
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                size = write_part(Path(tmp) / "ivf.h5", ivf)
                write_s = time.perf_counter() - start
            row.update(inverted_file_s=round(ivf_s, 1), write_s=round(write_s, 1), bytes_per_image=round(size / n),
                       measured_on="whole inverted file")
            search = lambda w, c: ivf.search(w, c, 100)  # noqa: E731
        else:
            ivf = None
            row.update(inverted_file_s=None, write_s=None, bytes_per_image=round(entries * ENTRY_BYTES / n + 4),
                       measured_on="the lists the queries touch (bytes per image: the format's arithmetic)")
            length = int(round(entries / n_words))  # a list's length at n images (uniform words)

            def search(w, c):
                sub = InvertedFile(128, n_words, rng.integers(0, n, length * len(w), dtype=np.int32),
                                   rng.integers(0, 256, (length * len(w), CODE_BYTES), dtype=np.uint8),
                                   np.zeros(n_words + 1, np.int64), np.full(n, 1 / np.sqrt(wpi.mean()), np.float32))
                sub.starts[w + 1] = length  # consecutive lists for the query's sorted, unique words
                sub.starts = np.cumsum(sub.starts)
                t0 = time.perf_counter()
                sub.search(w, c, 100)
                return time.perf_counter() - t0
        times = []
        for w, c in queries:
            t0 = time.perf_counter()
            inner = search(w, c)
            times.append(inner if ivf is None else time.perf_counter() - t0)
        row.update(gb_in_memory=round(n * row["bytes_per_image"] / 2**30, 2),
                   build_s=round(row["aggregation_s_extrapolated"] + (row["inverted_file_s"] or 0) + (row["write_s"] or 0)),
                   search_ms=round(1000 * float(np.median(times)), 1),
                   query_ms=round(1000 * (float(np.median(times)) + q_agg_s), 1))
        rows_out.append(row)
        print(f"{n:>9,d} images: {row['bytes_per_image']:,} B/image ({row['gb_in_memory']} GiB), build {row['build_s']:,} s "
              f"(aggregation {row['aggregation_s_extrapolated']:,} s extrapolated + inverted file {row['inverted_file_s']} s "
              f"+ write {row['write_s']} s), query {row['query_ms']} ms (search {row['search_ms']} ms + aggregation; "
              f"{row['measured_on']})")
        ivf = None
    print(json.dumps({"descriptors": "real" if args.index else "random", "images_aggregated": len(images),
                      "features_per_image": round(feats), "words": n_words, "words_per_image": round(float(wpi.mean())),
                      "assignment": "hnsw" if cb.hnsw else "exact", "graph_s": round(graph_s, 1),
                      "db_aggregation_ms": round(1000 * db_agg_s, 1), "query_aggregation_ms": round(1000 * q_agg_s, 1),
                      "sizes": rows_out}))


if __name__ == "__main__":
    main()
