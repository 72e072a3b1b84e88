"""Recognition benchmark on generated landmark photos: what verification and distractor discounting buy.

Generates a synthetic collection (synthetic.photos, seeded), builds an index,
evaluates the holdout once with full verification, and prints from that run:
GAP of global kNN alone vs with verification (strict and as a submission) vs
with/without the distractor discount, the cross-validated tuned threshold,
median RANSAC milliseconds per pair and the per-query latency by stage.

    python benchmarks/bench_recognition.py --landmarks 60 --local-conf rootsift
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from eval import evaluate
from retrieval import extract
from retrieval.data import read_reference_csv
from retrieval.global_model import resolve_global_conf
from synthetic import generate_demo_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--landmarks", type=int, default=60)
    ap.add_argument("--distractor-refs", type=int, default=40)
    ap.add_argument("--distractor-queries", type=int, default=60)
    ap.add_argument("--queries-per-landmark", type=int, default=1)
    ap.add_argument("--unseen", type=int, default=10, help="landmarks only in the holdout (open-set queries)")
    ap.add_argument("--conf", default="lite0-gem")
    ap.add_argument("--local-conf", default="rootsift")
    ap.add_argument("--seed", type=int, default=123, help="not the demo's seed 0: no tuning to the demo data")
    ap.add_argument("--work-dir", default=None, help="keep the data, index and report here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        data = generate_demo_dataset(
            work / "data", n_landmarks=args.landmarks, n_distractor_refs=args.distractor_refs,
            n_distractor_queries=args.distractor_queries, queries_per_landmark=args.queries_per_landmark,
            n_unseen_landmarks=args.unseen, seed=args.seed,
        )
        refs = read_reference_csv(data.train_csv, data.images_dir)
        build = extract.main(refs, work / "index", resolve_global_conf(args.conf),
                             extract.resolve_local_conf_name(args.local_conf), progress=False)
        report = evaluate.main(work / "index", data.holdout_csv, data.images_dir, work / "report", progress=False)
        tuned = evaluate.tune(work / "index", data.holdout_csv, None, work / "report", write=False, progress=False)
        strict = evaluate.tune(work / "index", data.holdout_csv, None, work / "report_strict",
                               evidence_path=work / "report" / evaluate.EVIDENCE_FILE, mode="strict", write=False,
                               progress=False)

    def row(name: str, r: dict) -> str:
        lo, hi = r["gap_ci95"]
        nl = r["nonlandmark_prediction_rate"]
        return (f"{name:44s} {r['gap']:6.3f}  [{lo:.3f}, {hi:.3f}]  {r['top1_accuracy']:6.3f}  "
                f"{'n/a' if nl is None else f'{nl:6.3f}'}")

    print(f"synthetic collection: {args.landmarks} landmarks (+{args.unseen} unseen), {build['n_total']} references "
          f"({args.distractor_refs} distractors), {report['n_queries']} queries "
          f"({report['n_landmark_queries']} landmark, {report['n_nonlandmark_queries']} no-landmark incl. unseen); "
          f"global {args.conf}, local {args.local_conf}, seed {args.seed}")
    print(f"{'system':44s} {'GAP':>6s}  {'95% CI':^16s}  {'top-1':>6s}  {'non-landmark answered':>6s}")
    print(row("global kNN only, no distractor discount", report["global_only_no_discount"]))
    print(row("global kNN only, distractor discount", report["global_only"]))
    print(row(f"+ verification, strict (thr {report['thresholds']['inlier_threshold']})", report["strict"]))
    print(row(f"+ verification, submission (thr {report['thresholds']['inlier_threshold']})", report))
    print(f"tuned threshold (submission): {tuned['chosen_inlier_threshold']:g}, in-sample GAP {tuned['in_sample_gap']:.3f}, "
          f"cross-validated {tuned['cv_gap']:.3f} +- {tuned['cv_gap_std']:.3f}")
    print(f"tuned threshold (strict):     {strict['chosen_inlier_threshold']:g}, in-sample GAP {strict['in_sample_gap']:.3f}, "
          f"cross-validated {strict['cv_gap']:.3f} +- {strict['cv_gap_std']:.3f}")
    lat = report["latency_ms"]
    print("median ms per query: " + ", ".join(f"{k[:-3]} {v}" for k, v in lat.items()))
    print(json.dumps({"report": {k: report[k] for k in ("gap", "gap_ci95", "top1_accuracy")}, "latency_ms": lat}))


if __name__ == "__main__":
    main()
