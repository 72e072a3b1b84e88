"""Seconds per photo of `recognize` with the matcher cascade, by second matcher, its settings and budget
(`cascade_pairs`), at the photos' own size (devset-large: <= 800 px) and enlarged to >= 1024 px.

What a user of `landmarks recognize` waits for: one process, models loaded once (a warm-up photo first), then
the mean, median and 90th percentile of the wall time per photo over the same photos (by default 20 landmark
and 20 non-landmark queries of the folder's holdout.csv), for each configuration, with RootSIFT alone (no
cascade) measured in the same run as the baseline. For each size in --sizes the index is built from the
references at that size (0: as they are; else enlarged so that the longer side is that many px,
benchmarks/upscaled.py), once per distinct second-set conf, and the queries are timed at that size; one photo
enlarged to ~12 MP (--large-side) is timed too. Enlarged copies add no detail: they measure cost, not quality.

    python benchmarks/bench_cascade.py --data ../shared/devset-large
    python benchmarks/bench_cascade.py --data ../shared/devset-large --configs none:0,aliked:5,aliked[max_keypoints=2048,resize_max=1024]:2

A configuration is ``second:cascade_pairs``; ``second`` is "none", a local conf name, or a name with extractor
overrides in brackets (a variant of the stored set, e.g. the earlier ALIKED settings). Ends with one JSON line:
per size and configuration the mean, median and p90 seconds, the share of photos that reached each matcher,
LightGlue's mean layers run per pair (adaptive depth: 9 at most), and the ratio of the mean to RootSIFT alone.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from upscaled import upscale_photo, upscaled_folder


def parse_config(text: str) -> tuple[str, dict[str, Any], int]:
    """``name[key=value,...]:pairs`` -> (name, extractor overrides, pairs)."""
    spec, pairs = text.rsplit(":", 1)
    name, _, rest = spec.partition("[")
    overrides = {}
    for item in filter(None, rest.rstrip("]").split(",")):
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value)
    return name, overrides, int(pairs)


def split_top(text: str) -> list[str]:
    """Split on the commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def build(data: Path, index: Path, second: str | None, overrides: dict[str, Any], base: Path | None) -> Path:
    """The RootSIFT index of ``data``'s references (copied from ``base`` when built already) + ``second``'s set."""
    from engines import build_index
    from retrieval import extract
    from retrieval.data import read_reference_csv
    from retrieval.global_model import resolve_global_conf
    from retrieval.local_features import local_confs, make_local_extractor

    if base is not None:
        shutil.copytree(base, index)
    else:
        build_index(read_reference_csv(data / "train.csv", data / "images"), index, resolve_global_conf("lite2-gem"),
                    "rootsift", progress=False)
    if second:
        ex = make_local_extractor({**local_confs[second], **overrides})
        extract.add_local_sets(index, [second], extractors={second: ex}, progress=False)
    return index


def time_photos(rec: Any, paths: list[Path]) -> dict[str, Any]:
    """Wall seconds of ``rec.recognize`` per photo (after a warm-up) and the share reaching each matcher."""
    rec.recognize(paths[0])  # warm-up: the models load once
    times, first, second, pairs2, layers2 = [], 0, 0, 0.0, 0.0
    for path in paths:
        start = time.perf_counter()
        pred = rec.recognize(path)
        times.append(time.perf_counter() - start)
        first += "pairs" in pred.timings
        second += "pairs2" in pred.timings
        pairs2 += pred.timings.get("pairs2", 0.0)
        layers2 += pred.timings.get("layers2", 0.0)
    times.sort()
    n = len(paths)
    return {"mean_s": round(statistics.mean(times), 3), "median_s": round(statistics.median(times), 3),
            "p90_s": round(times[int(0.9 * (n - 1))], 3), "first_matcher_share": round(first / n, 3),
            "second_matcher_share": round(second / n, 3),
            "lightglue_layers_per_pair": round(layers2 / pairs2, 2) if pairs2 else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="GLDv2-style folder: train.csv, holdout.csv, images/")
    ap.add_argument("--configs", default="none:0,aliked:5,aliked:8,aliked[max_keypoints=2048,resize_max=1024]:2",
                    help="comma-separated second[overrides]:cascade_pairs (none: RootSIFT alone)")
    ap.add_argument("--sizes", default="0,1024", help="comma-separated longer sides to time at (0: as stored)")
    ap.add_argument("--large-side", type=int, default=4000, help="also time one photo enlarged to this (0: skip)")
    ap.add_argument("--photos", type=int, default=20, help="landmark and as many non-landmark queries")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from retrieval.recognize import Recognizer

    configs = [parse_config(c) for c in split_top(args.configs)]
    holdout = pd.read_csv(args.data / "holdout.csv", dtype=str, keep_default_na=False)
    ids = (list(holdout[holdout["landmark_id"] != ""]["id"][: args.photos])
           + list(holdout[holdout["landmark_id"] == ""]["id"][: args.photos]))
    out: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for side in (int(s) for s in args.sizes.split(",")):
            label = "as stored" if side == 0 else f"{side} px"
            data = args.data if side == 0 else upscaled_folder(args.data, work / f"data{side}", side)
            paths = [data / "images" / f"{i}.jpg" for i in ids]
            t0 = time.perf_counter()
            base = build(data, work / f"index{side}", None, {}, None)
            print(f"[{label}] index with rootsift: {time.perf_counter() - t0:.0f} s")
            indexes: dict[str, Path] = {json.dumps(["none", {}]): base}
            rows = out.setdefault(str(side), [])
            for second, overrides, pairs in configs:
                key = json.dumps([second, overrides], sort_keys=True)
                if key not in indexes:
                    t0 = time.perf_counter()
                    indexes[key] = build(data, work / f"index{side}_{len(indexes)}", second, overrides, base)
                    print(f"[{label}] + local set {second}{overrides or ''}: {time.perf_counter() - t0:.0f} s")
                rec = Recognizer.from_index(indexes[key], cascade=second, cascade_pairs=pairs)
                row = {"second": second, "overrides": overrides, "cascade_pairs": pairs, **time_photos(rec, paths)}
                if side == max(int(s) for s in args.sizes.split(",")) and args.large_side:
                    big = work / "large.jpg"
                    w, h = upscale_photo(args.data / "images" / f"{ids[0]}.jpg", big, args.large_side)
                    row["large_photo"] = {"pixels": w * h, **time_photos(rec, [big] * 3)}
                rows.append(row)
                large = (f"; a {row['large_photo']['pixels'] / 1e6:.0f} MP photo {row['large_photo']['median_s']:.2f} s"
                         if "large_photo" in row else "")
                print(f"[{label}] {second}{overrides or ''} pairs {pairs}: mean {row['mean_s']:.2f} s, median "
                      f"{row['median_s']:.2f} s, p90 {row['p90_s']:.2f} s per photo; first matcher on "
                      f"{100 * row['first_matcher_share']:.0f}%, second on {100 * row['second_matcher_share']:.0f}% of "
                      f"{len(paths)} photos{large}"
                      + (f"; LightGlue ran {row['lightglue_layers_per_pair']} of 9 layers a pair on average"
                         if row["lightglue_layers_per_pair"] else ""), flush=True)
            base_mean = next((r["mean_s"] for r in rows if r["second"] == "none"), None)
            for r in rows:
                r["ratio_vs_rootsift"] = round(r["mean_s"] / base_mean, 2) if base_mean else None
    print(json.dumps({"bench": "cascade", "data": str(args.data), "photos": len(ids), "sizes": out}))


if __name__ == "__main__":
    main()
