"""Seconds per photo of `recognize` with the matcher cascade, by second matcher and budget (`cascade_pairs`).

What a user of `landmarks recognize` waits for: one process, models loaded once (a warm-up photo first), then
the median and 90th percentile of the wall time per photo over the same photos (by default 20 landmark and 20
non-landmark queries of the folder's holdout.csv), for each configuration, with RootSIFT alone (no cascade)
measured in the same run as the baseline. The index is built once with every local set the configurations
need (RootSIFT primary, XFeat and ALIKED secondary), or taken from --index.

    python benchmarks/bench_cascade.py --data ../shared/devset-large
    python benchmarks/bench_cascade.py --data ../shared/devset-large --configs none:0,aliked:2,aliked:3,aliked:8

Ends with one JSON line: per configuration the median and p90 seconds, the share of photos that reached the
second matcher, and the ratio of the median to RootSIFT alone.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="GLDv2-style folder: train.csv, holdout.csv, images/")
    ap.add_argument("--index", type=Path, default=None, help="an index with the sets the configurations need")
    ap.add_argument("--configs", default="none:0,xfeat:5,aliked:2,aliked:3,aliked:8",
                    help="comma-separated second-matcher:cascade_pairs (none: RootSIFT alone)")
    ap.add_argument("--photos", type=int, default=20, help="landmark and as many non-landmark queries")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from engines import build_index
    from retrieval.data import read_reference_csv
    from retrieval.global_model import resolve_global_conf
    from retrieval.recognize import Recognizer

    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    holdout = pd.read_csv(args.data / "holdout.csv", dtype=str, keep_default_na=False)
    ids = (list(holdout[holdout["landmark_id"] != ""]["id"][: args.photos])
           + list(holdout[holdout["landmark_id"] == ""]["id"][: args.photos]))
    paths = [args.data / "images" / f"{i}.jpg" for i in ids]
    with tempfile.TemporaryDirectory() as tmp:
        index = args.index
        if index is None:
            index = Path(tmp) / "index"
            sets = sorted({name for name, _ in configs if name != "none"})
            t0 = time.perf_counter()
            build_index(read_reference_csv(args.data / "train.csv", args.data / "images"), index,
                        resolve_global_conf("lite2-gem"), "rootsift", local_sets=sets, progress=False)
            print(f"index with rootsift + {', '.join(sets)}: {time.perf_counter() - t0:.0f} s")
        out = []
        for second, pairs in configs:
            rec = Recognizer.from_index(index, cascade=second, cascade_pairs=pairs)
            rec.recognize(paths[0])  # warm-up: the models load once
            times, reached = [], 0
            for path in paths:
                start = time.perf_counter()
                pred = rec.recognize(path)
                times.append(time.perf_counter() - start)
                reached += "pairs2" in pred.timings
            times.sort()
            row = {"second": second, "cascade_pairs": pairs, "median_s": round(statistics.median(times), 3),
                   "p90_s": round(times[int(0.9 * (len(times) - 1))], 3), "second_stage_share": round(reached / len(paths), 3)}
            out.append(row)
            print(f"{second:7s} pairs {pairs:2d}: median {row['median_s']:.2f} s, p90 {row['p90_s']:.2f} s per photo, "
                  f"second matcher on {100 * row['second_stage_share']:.0f}% of {len(paths)} photos")
    base = next((r["median_s"] for r in out if r["second"] == "none"), None)
    for r in out:
        r["ratio_vs_rootsift"] = round(r["median_s"] / base, 2) if base else None
    print(json.dumps({"bench": "cascade", "data": str(args.data), "photos": len(paths), "configs": out}))


if __name__ == "__main__":
    main()
