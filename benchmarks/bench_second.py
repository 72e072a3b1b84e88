"""The cascade's learned second matcher on real photos: its working size and keypoint budget, its threshold and its
depth (``cascade_pairs``), judged by what it decides.

For each ALIKED setting (``--variants``: ``resize_max/max_keypoints``) the RootSIFT index of the folder's
references gets that ALIKED set, and ``evaluate`` runs once with ``cascade_pairs`` = ``--max-pairs`` (the second
matcher verifies every candidate of each query RootSIFT leaves unresolved, as the shipped early exit decides).
Every budget P (the first P candidates, in candidate order, as ``recognize`` runs them) and threshold T is then
decided from that one evidence file with the product's own decision (``decide_many``, margin 1.5), and scored as
the verification is judged: **strict GAP** (verified answers only), true pairs verified, wrong verified answers (must stay 0).
It also prints the inlier counts the second matcher gave true and wrong pairs, and its cost per query from the
evidence's stage timings (the photos' own size; `bench_cascade.py` times `recognize` at 1024 px).

    python benchmarks/bench_second.py --data ../shared/devset-large --variants 800/1024,640/1024,640/512,800/512

Ends with one JSON line: per variant, its inlier statistics, stage seconds and the (P, T) grid.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval import evaluate  # noqa: E402
from eval.csv_io import read_solution, solution_dict  # noqa: E402
from eval.evidence import read_evidence  # noqa: E402
from eval.metrics import gap  # noqa: E402
from retrieval import extract  # noqa: E402
from retrieval.data import read_reference_csv  # noqa: E402
from retrieval.decision import CandidateArrays, decide_many  # noqa: E402
from retrieval.global_model import resolve_global_conf  # noqa: E402
from retrieval.local_features import local_confs, make_local_extractor  # noqa: E402


def parse_variants(text: str) -> list[tuple[int, int]]:
    """``"800/1024,640/512"`` -> [(800, 1024), (640, 512)] (working size in px, keypoints)."""
    return [tuple(int(x) for x in v.split("/")) for v in text.split(",") if v.strip()]  # type: ignore[misc]


def grid(evidence: Path, solution: dict[str, frozenset[str]], pairs: list[int], thresholds: list[float],
         primary_threshold: float, margin: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Decisions of every (P, T) from one evidence file, and the second matcher's inlier statistics."""
    _, records = read_evidence(evidence)
    ids = [q for q in solution if (records.get(q) or {}).get("evidence")]
    rows = [records[q]["evidence"]["candidates"] for q in ids]
    base = CandidateArrays.from_candidates(rows)
    truth = np.array([[lm in solution[q] for lm in base.landmarks[i]] for i, q in enumerate(ids)])
    ran = base.valid & base.verified2
    true_in, wrong_in = base.inliers2[ran & truth], base.inliers2[ran & ~truth]
    cols = np.arange(base.valid.shape[1])[None, :]
    out = []
    for p in pairs:
        keep = cols < p
        arrays = CandidateArrays(base.landmarks, base.inliers, base.verified, base.sim, base.valid, base.tie_rank,
                                 np.where(keep, base.inliers2, 0.0), base.verified2 & keep)
        for t in thresholds:
            column, conf, verified = decide_many(arrays, inlier_threshold=primary_threshold, min_margin=margin,
                                                 cascade_threshold=t, keep_guesses=False)
            preds = {q: (str(base.landmarks[i, column[i]]), float(conf[i])) if verified[i] else None
                     for i, q in enumerate(ids)}
            right = sum(1 for i, q in enumerate(ids) if verified[i] and preds[q][0] in solution[q])
            wrong = int(verified.sum()) - right
            out.append({"pairs": p, "threshold": t, "strict_gap": round(gap(preds, solution), 4),
                        "true_verified": right, "wrong_verified": wrong})
    stats = {"true_pairs": int(true_in.size), "true_median": float(np.median(true_in)) if true_in.size else None,
             "wrong_pairs": int(wrong_in.size), "wrong_max": float(wrong_in.max()) if wrong_in.size else None,
             "wrong_p99": float(np.percentile(wrong_in, 99)) if wrong_in.size else None}
    return out, stats


def stage_seconds(evidence: Path) -> dict[str, float]:
    """Mean seconds per query of the second matcher's stages (the query's features, then a pair) over queries reaching it."""
    _, records = read_evidence(evidence)
    feats, per_pair, reached = [], [], 0
    for r in records.values():
        t = r.get("timings") or {}
        if "local2" in t:
            reached += 1
            feats.append(t["local2"])
            if t.get("pairs2"):
                per_pair.append(t["verify2"] / t["pairs2"])
    return {"reached": reached, "features2_s": round(float(np.mean(feats)), 3) if feats else None,
            "pair_s": round(float(np.mean(per_pair)), 3) if per_pair else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="GLDv2-style folder: train.csv, holdout.csv, images/")
    ap.add_argument("--variants", default="800/1024,640/1024,640/512,800/512",
                    help="comma-separated ALIKED resize_max/max_keypoints")
    ap.add_argument("--max-pairs", type=int, default=10, help="second-matcher pairs evaluate runs (the deepest budget)")
    ap.add_argument("--thresholds", default="15,20,25,30,35,40", help="second-matcher inlier thresholds to score")
    ap.add_argument("--work-dir", type=Path, default=None, help="keep indexes and reports here")
    args = ap.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_second_"))
    work.mkdir(parents=True, exist_ok=True)
    data = args.data
    solution = solution_dict(read_solution(data / "holdout.csv"))
    base = work / "index_rootsift"
    if not (base / "manifest.json").is_file():
        t0 = time.perf_counter()
        extract.main(read_reference_csv(data / "train.csv", data / "images"), base, resolve_global_conf("lite2-gem"),
                     "rootsift", progress=False)
        print(f"RootSIFT index: {time.perf_counter() - t0:.0f} s", flush=True)
    thresholds = [float(x) for x in args.thresholds.split(",")]
    pairs = list(range(1, args.max_pairs + 1))
    results = []
    for side, kp in parse_variants(args.variants):
        tag = f"r{side}_n{kp}"
        index, report = work / f"index_{tag}", work / f"report_{tag}"
        if not (index / "manifest.json").is_file():
            shutil.rmtree(index, ignore_errors=True)
            shutil.copytree(base, index)
            ex = make_local_extractor({**local_confs["aliked"], "resize_max": side, "max_keypoints": kp})
            extract.add_local_sets(index, ["aliked"], extractors={"aliked": ex}, progress=False)
        t0 = time.perf_counter()
        rep = evaluate.main(index, data / "holdout.csv", data / "images", report, progress=False, n_boot=10,
                            overrides={"cascade_pairs": args.max_pairs})
        wall = time.perf_counter() - t0
        ev = report / evaluate.EVIDENCE_FILE
        rows, stats = grid(ev, solution, pairs, thresholds, rep["thresholds"]["inlier_threshold"], 1.5)
        stages = stage_seconds(ev)
        results.append({"variant": tag, "resize_max": side, "max_keypoints": kp, "evaluate_s": round(wall, 1),
                        "inliers2": stats, "stages": stages, "grid": rows})
        print(f"\n== ALIKED {side} px / {kp} keypoints (evaluate {wall:.0f} s; {stages['reached']} queries reach it; "
              f"features {stages['features2_s']} s, a pair {stages['pair_s']} s)")
        print(f"   inliers2: true pairs {stats['true_pairs']} median {stats['true_median']}; wrong pairs "
              f"{stats['wrong_pairs']} max {stats['wrong_max']} p99 {stats['wrong_p99']}")
        print("   strict GAP / true verified / wrong verified, by pairs (rows) and threshold (columns)")
        print("   P  " + "".join(f"{t:>16g}" for t in thresholds))
        for p in pairs:
            cells = [r for r in rows if r["pairs"] == p]
            print(f"  {p:2d}  " + "".join(f"{c['strict_gap']:>8.3f} {c['true_verified']:>3d} {c['wrong_verified']:>3d}" for c in cells))
    print(json.dumps({"bench": "second", "data": str(data), "results": results}))


if __name__ == "__main__":
    main()
