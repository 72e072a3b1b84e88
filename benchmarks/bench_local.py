"""Local features on real photos: speed, storage and how well inliers separate true from wrong pairs.

For each configuration (extractor + matcher) on a GLDv2-style folder (train.csv, holdout.csv,
images/<id>.jpg, e.g. ../shared/devset-large):

- extraction ms/image at the conf's default detection size (median over every image),
- verification ms/pair (median; matching + RANSAC),
- bytes per image as the index stores it (keypoints (n, 4) float32 + float16 descriptors),
- inlier distributions. Each query is verified against its top-``--top`` index images by global
  cosine (lite0-gem) and, for a landmark query, against every index image of its landmark. Per
  query: "true" = the best inliers of its landmark's images; "wrong" = the best inliers of any
  other index image (other landmarks and non-landmark references) among the verified ones, for
  landmark queries and for non-landmark queries. AUC = P(true best > a wrong best), over all
  wrong values; "top1" = share of landmark queries whose true best beats every wrong image;
  recall@FP5 = share of landmark queries above the smallest threshold that at most 5% of the
  non-landmark queries reach.

Reference features go through the index's storage round trip (float16, no image size) before
matching, as the Recognizer sees them. Torch runs with ``--threads`` intra-op threads.

    PYTHONPATH=. python benchmarks/bench_local.py --data ../shared/devset-large
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from retrieval.global_model import GlobalExtractor
from retrieval.image_io import load_image
from retrieval.local_features import LocalFeatures, local_confs, make_local_extractor
from retrieval.matching import verify_many, verify_pair

# (label, local conf, match conf)
CONFIGS = [
    ("rootsift", "rootsift", "rootsift"),
    ("aliked+lightglue", "aliked", "lightglue"),
    ("xfeat+lighterglue", "xfeat", "lighterglue"),
    ("xfeat+mnn", "xfeat", "mnn"),
]
FUSED = ("aliked|rootsift (max)", "aliked+lightglue", "rootsift")  # score = the better of the two


def auc(pos: list[float], neg: list[float]) -> float:
    """P(pos > neg) + 0.5 P(pos == neg)."""
    if not pos or not neg:
        return float("nan")
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((p > n).mean() + 0.5 * (p == n).mean()))


def quartiles(x: list[float]) -> str:
    if not x:
        return "-"
    q = np.percentile(x, [25, 50, 75])
    return f"{q[0]:.0f}/{q[1]:.0f}/{q[2]:.0f}"


def summarise(label: str, pairs: dict[tuple[str, str], int], queries: pd.DataFrame, refs: pd.DataFrame) -> dict:
    """Per-query true / wrong best inliers and the separation figures."""
    ref_landmark = dict(zip(refs["id"], refs["landmark_id"]))
    true, wrong_lm, wrong_nl, top1 = [], [], [], []
    for qid, lm in zip(queries["id"], queries["landmark_id"]):
        scores = {r: v for (q, r), v in pairs.items() if q == qid}
        wrong = max([v for r, v in scores.items() if not lm or ref_landmark[r] != lm], default=0)
        if lm:
            t = max([v for r, v in scores.items() if ref_landmark[r] == lm], default=0)
            true.append(t)
            wrong_lm.append(wrong)
            top1.append(t > wrong)
        else:
            wrong_nl.append(wrong)
    fp5 = float(np.percentile(wrong_nl, 95)) if wrong_nl else 0.0
    threshold = int(np.floor(fp5)) + 1  # smallest integer threshold that <= 5% of non-landmark queries reach
    return {
        "label": label,
        "true": true, "wrong_lm": wrong_lm, "wrong_nl": wrong_nl,
        "auc": auc(true, wrong_lm + wrong_nl),
        "top1": float(np.mean(top1)) if top1 else float("nan"),
        "fp5_threshold": threshold,
        "recall_at_fp5": float(np.mean([t >= threshold for t in true])) if true else float("nan"),
    }


def speed_only(images: dict[str, np.ndarray], ids: list[str], args: argparse.Namespace) -> None:
    """Extraction ms/image and verification ms/pair (consecutive images, stored-form references)."""
    print(f"speed on {len(ids)} images, torch threads {args.threads}, device {args.device}")
    print(f"{'configuration':24s} {'extract ms':>10s} {'verify ms':>9s} {'kpts':>6s} {'KB/img':>7s}")
    feats: dict[str, dict[str, LocalFeatures]] = {}
    extract_ms: dict[str, float] = {}
    out = {}
    for label, local_name, match_name in CONFIGS:
        if local_name not in feats:
            ex = make_local_extractor(local_name, device=args.device)
            ex.extract(images[ids[0]])  # warm-up
            times, f = [], {}
            for i in ids:
                t = time.perf_counter()
                f[i] = ex.extract(images[i])
                times.append(1000 * (time.perf_counter() - t))
            feats[local_name], extract_ms[local_name] = f, statistics.median(times)
        f = feats[local_name]
        verify_pair(f[ids[0]], f[ids[1]], match_name)  # warm-up
        times = [1000 * verify_pair(f[a], LocalFeatures.unpack(*f[b].pack()), match_name).seconds
                 for a, b in zip(ids[:-1], ids[1:])]
        kb = np.mean([sum(x.nbytes for x in f[i].pack()) for i in ids]) / 1024
        kp = np.median([len(f[i]) for i in ids])
        print(f"{label:24s} {extract_ms[local_name]:10.0f} {statistics.median(times):9.1f} {kp:6.0f} {kb:7.0f}")
        out[label] = {"extract_ms": round(extract_ms[local_name], 1), "verify_ms": round(statistics.median(times), 2)}
    out["threads"] = args.threads
    print(json.dumps(out, sort_keys=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with train.csv, holdout.csv, images/<id>.jpg")
    ap.add_argument("--top", type=int, default=5, help="index images verified per query, by global cosine")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest on shared CPUs)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", default=",".join(c[0] for c in CONFIGS), help="comma-separated labels to run")
    ap.add_argument("--max-queries", type=int, default=None, help="first N queries only (quick runs)")
    ap.add_argument("--speed-only", type=int, default=None, metavar="N",
                    help="only time extraction on N images and verification of their consecutive pairs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = Path(args.data)
    refs = pd.read_csv(data / "train.csv", dtype=str, keep_default_na=False)
    queries = pd.read_csv(data / "holdout.csv", dtype=str, keep_default_na=False)
    if args.max_queries:
        queries = queries.head(args.max_queries)
    ids = list(refs["id"]) + list(queries["id"])
    images = {i: load_image(data / "images" / f"{i}.jpg", max_side=1024)[0] for i in ids}
    if args.speed_only:
        speed_only(images, ids[: args.speed_only], args)
        return
    print(f"{len(refs)} index images, {len(queries)} queries ({(queries['landmark_id'] != '').sum()} landmark), "
          f"longer side <= {max(max(im.shape[:2]) for im in images.values())} px; torch threads {args.threads}, "
          f"device {args.device}")

    # Shortlist: top-k index images by global cosine (+ the true landmark's images).
    gx = GlobalExtractor("lite0-gem", device=args.device)
    xb = gx([images[i] for i in refs["id"]])
    xq = gx([images[i] for i in queries["id"]])
    order = np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, : args.top]
    ref_ids = list(refs["id"])
    shortlist: dict[str, list[str]] = {}
    for qi, (qid, lm) in enumerate(zip(queries["id"], queries["landmark_id"])):
        cands = [ref_ids[j] for j in order[qi]]
        if lm:
            cands += [r for r in refs.loc[refs["landmark_id"] == lm, "id"] if r not in cands]
        shortlist[qid] = cands
    n_pairs = sum(len(v) for v in shortlist.values())
    print(f"{n_pairs} pairs (top {args.top} by lite0 cosine + the true landmark's images)")

    wanted = args.configs.split(",")
    feats: dict[str, dict[str, LocalFeatures]] = {}
    extract_ms: dict[str, float] = {}
    results: dict[str, dict] = {}
    rows = []
    for label, local_name, match_name in CONFIGS:
        if label not in wanted:
            continue
        if local_name not in feats:
            ex = make_local_extractor(local_name, device=args.device)
            ex.extract(images[ids[0]])  # warm-up (model load)
            times, out = [], {}
            for i in ids:
                t = time.perf_counter()
                out[i] = ex.extract(images[i])
                times.append(1000 * (time.perf_counter() - t))
            feats[local_name], extract_ms[local_name] = out, statistics.median(times)
            print(f"  {local_name}: extracted {len(ids)} images", file=sys.stderr, flush=True)
        f = feats[local_name]
        stored = {r: LocalFeatures.unpack(*f[r].pack()) for r in refs["id"]}  # what the index gives back
        verify_pair(f[queries["id"].iloc[0]], stored[ref_ids[0]], match_name)  # warm-up (matcher load)
        pairs, times = {}, []
        for qid in queries["id"]:
            for r in shortlist[qid]:
                res = verify_pair(f[qid], stored[r], match_name)
                pairs[(qid, r)] = res.inliers
                times.append(1000 * res.seconds)
        print(f"  {label}: verified {len(pairs)} pairs", file=sys.stderr, flush=True)
        s = summarise(label, pairs, queries, refs)
        s.update(pairs=pairs, verify_ms=statistics.median(times), extract_ms=extract_ms[local_name],
                 keypoints=float(np.median([len(f[i]) for i in ids])),
                 bytes=float(np.mean([sum(a.nbytes for a in f[i].pack()) for i in ids])))
        results[label] = s

    fused_label, a, b = FUSED
    if a in results and b in results:
        pairs = {k: max(v, results[b]["pairs"][k]) for k, v in results[a]["pairs"].items()}
        s = summarise(fused_label, pairs, queries, refs)
        s.update(verify_ms=results[a]["verify_ms"] + results[b]["verify_ms"],
                 extract_ms=results[a]["extract_ms"] + results[b]["extract_ms"],
                 keypoints=results[a]["keypoints"] + results[b]["keypoints"], bytes=results[a]["bytes"] + results[b]["bytes"])
        results[fused_label] = s

    # Threads vs sequential for a learned matcher (verify_many picks 1 worker for them by default).
    threads_check = {}
    for label, local_name, match_name in CONFIGS:
        if label in results and match_name in ("lightglue", "lighterglue"):
            qid = next(q for q, lm in zip(queries["id"], queries["landmark_id"]) if lm)
            f = feats[local_name]
            refs_q = [LocalFeatures.unpack(*f[r].pack()) for r in shortlist[qid]]
            for workers in (1, 2):
                t = time.perf_counter()
                verify_many(f[qid], refs_q, match_name, max_workers=workers)
                threads_check[f"{match_name}_workers{workers}_ms_per_pair"] = round(1000 * (time.perf_counter() - t) / len(refs_q), 1)

    header = (f"{'configuration':24s} {'extract ms':>10s} {'verify ms':>9s} {'kpts':>6s} {'KB/img':>7s} "
              f"{'true q1/med/q3':>14s} {'wrongLM':>11s} {'wrongNL':>11s} {'AUC':>5s} {'top1':>5s} {'thr@FP5':>7s} {'rec@FP5':>7s}")
    print(header)
    for s in results.values():
        print(f"{s['label']:24s} {s['extract_ms']:10.0f} {s['verify_ms']:9.1f} {s['keypoints']:6.0f} {s['bytes'] / 1024:7.0f} "
              f"{quartiles(s['true']):>14s} {quartiles(s['wrong_lm']):>11s} {quartiles(s['wrong_nl']):>11s} "
              f"{s['auc']:5.3f} {s['top1']:5.2f} {s['fp5_threshold']:7d} {s['recall_at_fp5']:7.2f}")
    if threads_check:
        print("verify_many, one query's pairs:", ", ".join(f"{k} {v}" for k, v in threads_check.items()))
    headline = {
        s["label"]: {
            "extract_ms": round(s["extract_ms"], 1), "verify_ms": round(s["verify_ms"], 2),
            "bytes_per_image": int(s["bytes"]), "auc": round(s["auc"], 3), "top1": round(s["top1"], 3),
            "threshold_fp5": s["fp5_threshold"], "recall_fp5": round(s["recall_at_fp5"], 3),
            "true_median": float(np.median(s["true"])) if s["true"] else None,
            "wrong_median": float(np.median(s["wrong_lm"] + s["wrong_nl"])),
        }
        for s in results.values()
    }
    headline["threads"] = args.threads
    headline.update(threads_check)
    print(json.dumps(headline, sort_keys=True))


if __name__ == "__main__":
    main()
