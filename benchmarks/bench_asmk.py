"""ASMK local-feature retrieval at scale, with synthetic descriptors: bytes per image, build time, query time.

What it measures (retrieval/asmk.py; RootSIFT-like 128-d unit descriptors, ``--features`` per image):

- **aggregation** (build and query): seconds per image to assign its descriptors to the codebook and aggregate
  them (one word a descriptor on the database side, ``--assign`` on the query side), timed on 200 images;
  the build time at N images is N times that plus the inverted file's construction, measured at 100k;
- **bytes per image**: the inverted file's entries (row, 16-byte code) plus the per-word and per-image arrays;
- **query time**: the inverted-file search at N images. At 100k the whole inverted file is built from random
  entries with the measured words per image; at 1M (which would not fit this machine's memory) only the lists
  a query touches are built, each at the length it has at 1M images (N x words per image / words), which is
  all a query reads.

    python benchmarks/bench_asmk.py                       # 100k and 1M, 65,536 words
    python benchmarks/bench_asmk.py --words 8192 --sizes 100000
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from index.asmk import Codebook, InvertedFile

CODE_BYTES = 16  # 128 sign bits of a RootSIFT-sized residual


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--words", type=int, default=65536, help="codebook size")
    ap.add_argument("--features", type=int, default=1000, help="local descriptors per image")
    ap.add_argument("--assign", type=int, default=3, help="query-side multiple assignment")
    ap.add_argument("--queries", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    # A codebook of random unit centroids: assignment costs the same as a trained one.
    cb = Codebook(unit(rng.standard_normal((args.words, 128))))
    sample = [unit(rng.standard_normal((args.features, 128))) for _ in range(200)]
    start = time.perf_counter()
    agg = [cb.aggregate(x) for x in sample]
    db_agg_s = (time.perf_counter() - start) / len(sample)
    words_per_image = float(np.mean([len(w) for w, _ in agg]))
    start = time.perf_counter()
    queries = [cb.aggregate(x, assign=args.assign) for x in sample[: args.queries]]
    q_agg_s = (time.perf_counter() - start) / args.queries
    print(f"codebook {args.words} words, {args.features} descriptors/image: {words_per_image:.0f} words/image; "
          f"aggregation {1000 * db_agg_s:.1f} ms/image (database), {1000 * q_agg_s:.1f} ms/query (assign {args.assign})")
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        entries = int(round(n * words_per_image))
        per_entry = 8 + CODE_BYTES  # int64 row + code in memory
        bytes_per_image = words_per_image * per_entry + 4 + 8 * (args.words + 1) / n
        if entries * per_entry < 4 * 2**30:
            words = rng.integers(0, args.words, entries, dtype=np.int32)
            codes = rng.integers(0, 256, (entries, CODE_BYTES), dtype=np.uint8)
            counts = rng.multinomial(entries, np.full(n, 1 / n))
            offsets = np.concatenate([[0], np.cumsum(counts)])
            start = time.perf_counter()
            ivf = InvertedFile.from_images(words, codes, offsets, args.words, 128)
            ivf_s = time.perf_counter() - start
            del words, codes
            how = "whole inverted file"
        else:
            ivf, ivf_s, how = None, None, "the lists the queries touch"
        times = []
        for w, c in queries:
            if ivf is None:  # only this query's lists, at their length at n images
                length = int(round(n * words_per_image / args.words))
                sub = InvertedFile(128, args.words, rng.integers(0, n, length * len(w)),
                                   rng.integers(0, 256, (length * len(w), CODE_BYTES), dtype=np.uint8),
                                   np.zeros(args.words + 1, np.int64), np.full(n, 1 / np.sqrt(words_per_image), np.float32))
                sub.starts[w + 1] = length  # consecutive lists for the query's sorted, unique words
                sub.starts = np.maximum.accumulate(np.cumsum(sub.starts))
                search = sub
            else:
                search = ivf
            start = time.perf_counter()
            search.search(w, c, 100)
            times.append(time.perf_counter() - start)
        build_s = n * db_agg_s + (ivf_s if ivf_s is not None else 0.0)
        row = {"images": n, "bytes_per_image": round(bytes_per_image), "gb": round(n * bytes_per_image / 2**30, 2),
               "build_s": round(build_s), "build_ivf_s": None if ivf_s is None else round(ivf_s, 1),
               "query_ms": round(1000 * (float(np.median(times)) + q_agg_s), 1),
               "query_search_ms": round(1000 * float(np.median(times)), 1), "measured_on": how}
        rows.append(row)
        print(f"{n:>9,d} images: {row['bytes_per_image']} B/image ({row['gb']} GiB), build {row['build_s']} s "
              f"(aggregation extrapolated from 200 images + inverted file {row['build_ivf_s']} s), query "
              f"{row['query_ms']} ms (search {row['query_search_ms']} ms + aggregation; {how})")
        ivf = None
    print(json.dumps({"words": args.words, "features": args.features, "words_per_image": round(words_per_image),
                      "db_aggregation_ms": round(1000 * db_agg_s, 1), "query_aggregation_ms": round(1000 * q_agg_s, 1),
                      "sizes": rows}))


if __name__ == "__main__":
    main()
