"""Recognition quality on real photos: the yardstick for every recognition default.

Runs the product itself (build-index, predict, evaluate, tune-threshold: the same functions the CLI calls)
on a GLDv2-style folder (``train.csv``, ``holdout.csv``, ``images/<id>.jpg``) for each combination of
global and local configuration, and prints one table:

- global 1-NN (the first stage alone: nearest landmark image, cosine as confidence);
- the shortlist as ``evaluate`` reports it: recall@1/5/10 of the true landmark among the candidates the
  recognizer proposed, how many landmark queries have it among them at all, its rank on the hard queries
  (``sources.csv`` notes marked ``hard:``), and the cost of each retrieval channel per query;
- candidate ranking variants: recall@1/5/10 of the true landmark among the candidates ranked by the best
  similarity, the mean of the two best, or the old sum of sim^3 (a class-size prior);
- the full pipeline: ``predict`` with the shipped defaults (GAP of the submission it writes, seconds per
  photo), ``evaluate`` (submission and strict), and ``tune-threshold`` (chosen value, in-sample and
  cross-validated GAP);
- top-1 accuracy, the share of non-landmark queries answered (as verified), per-stage latency, the share of
  queries that reached each matcher;
- with ``--time-side`` (default 1024): predict's seconds per photo again with every photo enlarged to that
  longer side (benchmarks/upscaled.py; devset-large's photos are <= 800 px, users' are larger).

It ends with one JSON line of the headline figures of the first combination (the shipped default unless
``--global``/``--local`` say otherwise).

    python benchmarks/bench_real.py --data ../shared/devset-large
    python benchmarks/bench_real.py --data ../shared/devset-large --global lite0-gem,lite2-gem --local rootsift,aliked
    python benchmarks/bench_real.py --synthetic            # the generated demo data (not evidence of quality)
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from eval import evaluate, predict
from eval.metrics import gap, nonlandmark_prediction_rate, top1_accuracy
from eval.csv_io import read_solution, read_submission, solution_dict
from eval.evidence import COUNT_KEYS, read_evidence
from eval.shortlist import hard_queries
from retrieval import extract
from retrieval.data import read_reference_csv
from retrieval.defaults import DEFAULT_GLOBAL, DEFAULT_LOCAL
from retrieval.global_model import resolve_global_conf
from retrieval.local_features import split_local_conf
from retrieval.recognize import vote


def ranking_recall(evidence_path: Path, solution: dict[str, frozenset[str]], ks=(1, 5, 10)) -> dict[str, dict[int, float]]:
    """Recall@k of the true landmark among candidates ranked by each per-landmark score, from stored neighbours."""
    _, records = read_evidence(evidence_path)
    out: dict[str, dict[int, float]] = {}
    for score in ("best", "top2", "sum"):
        hits: dict[int, list[bool]] = {k: [] for k in ks}
        for qid, truth in solution.items():
            if not truth:
                continue
            ev = (records.get(qid) or {}).get("evidence")
            nb = ev["neighbours"] if ev else []
            ranked = [c.landmark_id for c in vote(np.array([n[2] for n in nb]), [n[1] for n in nb], score=score)]
            for k in ks:
                hits[k].append(bool(set(ranked[:k]) & truth))
        out[score] = {k: float(np.mean(v)) if v else float("nan") for k, v in hits.items()}
    return out


def verification_figures(evidence_path: Path, solution: dict[str, frozenset[str]], thresholds: dict[str, Any]) -> dict[str, Any]:
    """What verification decided, from stored evidence with the given decision parameters: verified answers
    that are right (true pairs verified) and wrong (must stay 0), the share of queries that reached the
    cascade's second matcher, and median seconds per photo by stage (models loaded once)."""
    from retrieval.decision import Evidence, decide

    _, records = read_evidence(evidence_path)
    right = wrong = first = second = 0
    stages: dict[str, list[float]] = {}
    totals = []
    for qid, truth in solution.items():
        r = records.get(qid) or {}
        if not r.get("evidence"):
            continue
        ev = Evidence.from_json(r["evidence"])
        pred = decide(ev, **thresholds)
        if pred.verified:
            right += pred.landmark_id in truth
            wrong += pred.landmark_id not in truth
        first += any(c.verified_refs for c in ev.candidates)
        second += any(c.verified_refs2 for c in ev.candidates)
        t = {k: v for k, v in (r.get("timings") or {}).items() if k not in COUNT_KEYS}
        for k, v in t.items():
            stages.setdefault(k, []).append(v)
        totals.append(sum(t.values()))
    n = max(1, len(totals))
    return {"verified_right": right, "verified_wrong": wrong, "first_stage_share": first / n, "second_stage_share": second / n,
            "s_per_photo_median": float(np.median(totals)) if totals else float("nan"),
            "s_per_photo_mean": float(np.mean(totals)) if totals else float("nan"),
            "stage_s_median": {k: round(float(np.median(v)), 4) for k, v in stages.items()}}


def run_one(data: Path, work: Path, gname: str, lname: str, n_boot: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build, predict, evaluate and tune one (global, local) combination; returns its figures."""
    tag = f"{gname}__{lname}"
    index_dir, report_dir = work / f"index_{tag}", work / f"report_{tag}"
    refs = read_reference_csv(data / "train.csv", data / "images")
    t0 = time.perf_counter()
    primary, secondary = split_local_conf(lname)
    build = extract.main(refs, index_dir, resolve_global_conf(gname), primary, local_sets=secondary, progress=False)
    build_s = time.perf_counter() - t0
    solution = solution_dict(read_solution(data / "holdout.csv"))
    # predict with the shipped defaults (early exit as a user gets it); its submission is scored
    t0 = time.perf_counter()
    predict.main(index_dir, data / "holdout.csv", data / "images", report_dir / "submission.csv", progress=False,
                 overrides=overrides)
    predict_s = (time.perf_counter() - t0) / max(1, len(solution))
    sub = read_submission(report_dir / "submission.csv")
    verified = {q: p for q, p in sub.items() if p is not None and p[1] >= 0.5}
    report = evaluate.main(index_dir, data / "holdout.csv", data / "images", report_dir, progress=False, n_boot=n_boot,
                           overrides=overrides)
    tuned = evaluate.tune(index_dir, data / "holdout.csv", None, report_dir, write=False, progress=False)
    verification = verification_figures(predict.evidence_path_for(report_dir / "submission.csv"), solution, report["thresholds"])
    return {
        "global": gname, "local": lname, "n_references": int(build["n_total"]), "build_s_per_image": build_s / max(1, len(refs)),
        "global_1nn": report["global_1nn"], "ranking_recall": ranking_recall(report_dir / evaluate.EVIDENCE_FILE, solution),
        "predict_gap": gap(sub, solution), "predict_top1": top1_accuracy(sub, solution),
        "predict_nonlandmark_verified": nonlandmark_prediction_rate(verified, solution),
        "predict_s_per_query": predict_s, "evaluate": report, "tuned": tuned, "verification": verification,
    }


def time_enlarged(data: Path, work: Path, gname: str, lname: str, side: int, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """predict's seconds per photo with every photo (references and queries) enlarged to ``side`` px
    (benchmarks/upscaled.py: cost, not quality); from predict's evidence, models loaded once."""
    from upscaled import upscaled_folder

    big = upscaled_folder(data, work / f"data{side}", side)
    tag = f"{gname}__{lname}__{side}"
    index_dir, out = work / f"index_{tag}", work / f"report_{tag}" / "submission.csv"
    primary, secondary = split_local_conf(lname)
    extract.main(read_reference_csv(big / "train.csv", big / "images"), index_dir, resolve_global_conf(gname), primary,
                 local_sets=secondary, progress=False)
    n = len(read_solution(big / "holdout.csv"))
    t0 = time.perf_counter()
    predict.main(index_dir, big / "holdout.csv", big / "images", out, progress=False, overrides=overrides)
    wall = (time.perf_counter() - t0) / max(1, n)
    v = verification_figures(predict.evidence_path_for(out), solution_dict(read_solution(big / "holdout.csv")), {})
    return {"side": side, "predict_wall_s_per_query": wall, "s_per_photo_median": v["s_per_photo_median"],
            "s_per_photo_mean": v["s_per_photo_mean"], "stage_s_median": v["stage_s_median"],
            "first_stage_share": v["first_stage_share"], "second_stage_share": v["second_stage_share"]}


def print_table(results: list[dict[str, Any]], data: Path) -> None:
    r0 = results[0]["evaluate"]
    print(f"data: {data}  ({results[0]['n_references']} index images; {r0['n_queries']} queries: "
          f"{r0['n_landmark_queries']} landmark, {r0['n_nonlandmark_queries']} non-landmark)")
    print("\ncandidate ranking (recall of the true landmark among the top candidates, landmark queries)")
    print(f"{'global':16s} {'score':6s} {'R@1':>6s} {'R@5':>6s} {'R@10':>6s}")
    seen = set()
    for r in results:
        if r["global"] in seen:
            continue
        seen.add(r["global"])
        for score, rec in r["ranking_recall"].items():
            print(f"{r['global']:16s} {score:6s} {rec[1]:6.3f} {rec[5]:6.3f} {rec[10]:6.3f}")
    print("\nshortlist (the recognizer's candidates, as evaluate reports them; hard-query ranks: - = not a candidate)")
    hard = hard_queries(data)
    for r in results:
        sh = r["evaluate"]["shortlist"]
        hard_ids = [q for q in sorted(hard) if q in sh["ranks"]]
        hr = " ".join("-" if sh["ranks"][q] is None else str(sh["ranks"][q]) for q in hard_ids)
        print(f"{r['global']:16s} {r['local']:16s} R@1 {sh['recall']['1']:.3f} R@5 {sh['recall']['5']:.3f} "
              f"R@10 {sh['recall']['10']:.3f}; among candidates {sh['n_among_candidates']} of {sh['n_landmark_queries']}, "
              f"first {sh['n_first']}; channel ms/query {sh['channel_ms']}; hard queries {hr}")
    print("\nsystem (GAP; top-1 over landmark queries; share of non-landmark queries answered as verified)")
    print(f"{'global':16s} {'local':10s} {'system':34s} {'GAP':>6s} {'top-1':>6s} {'NL ans':>6s}  notes")
    for r in results:
        e, t = r["evaluate"], r["tuned"]
        g1 = r["global_1nn"]
        rows = [
            ("global 1-NN", g1["gap"], g1["top1_accuracy"], g1["nonlandmark_prediction_rate"], ""),
            ("predict, shipped defaults", r["predict_gap"], r["predict_top1"], r["predict_nonlandmark_verified"],
             f"{r['predict_s_per_query']:.2f} s/photo; thr {e['thresholds']['inlier_threshold']}; "
             f"vs 1-NN {r['predict_gap'] - g1['gap']:+.3f}"),
            ("evaluate, submission", e["gap"], e["top1_accuracy"], e["strict"]["nonlandmark_prediction_rate"],
             f"CI95 [{e['gap_ci95'][0]:.3f}, {e['gap_ci95'][1]:.3f}]"),
            ("evaluate, strict", e["strict"]["gap"], e["strict"]["top1_accuracy"], e["strict"]["nonlandmark_prediction_rate"], ""),
            ("tune-threshold (in-sample)", t["in_sample_gap"], None, None,
             f"chosen {t['chosen']:g}; cross-validated {t['cv_gap']:.3f} +- {t['cv_gap_std']:.3f}"),
        ]
        for name, g, top1, nl, note in rows:
            fmt = lambda x: "   n/a" if x is None else f"{x:6.3f}"
            print(f"{r['global']:16s} {r['local']:10s} {name:34s} {fmt(g)} {fmt(top1)} {fmt(nl)}  {note}")
        v = r["verification"]
        fc = t.get("confidence") or {}
        print(f"{'':28s}verification: strict GAP {e['strict']['gap']:.3f}, true pairs verified {v['verified_right']} of "
              f"{e['n_landmark_queries']}, wrong verified answers {v['verified_wrong']}, first matcher on "
              f"{100 * v['first_stage_share']:.0f}%, second on {100 * v['second_stage_share']:.0f}% of queries, "
              f"{v['s_per_photo_mean']:.2f} s/photo mean, {v['s_per_photo_median']:.2f} median "
              f"({', '.join(f'{k} {x:.3f}' for k, x in v['stage_s_median'].items())})")
        big = r.get("enlarged")
        if big:
            print(f"{'':28s}at {big['side']} px (enlarged copies): {big['s_per_photo_mean']:.2f} s/photo mean, "
                  f"{big['s_per_photo_median']:.2f} median ({', '.join(f'{k} {x:.3f}' for k, x in big['stage_s_median'].items())}); "
                  f"predict wall {big['predict_wall_s_per_query']:.2f} s/query; second matcher on "
                  f"{100 * big['second_stage_share']:.0f}%")
        if fc:
            print(f"{'':28s}confidence: fitted CV GAP {fc['cv_gap_fitted']:.3f} vs bands {fc['cv_gap_bands']:.3f} "
                  f"({fc['n_folds']} folds grouped by landmark)")
        lat = e.get("latency_ms") or {}
        print(f"{'':28s}median ms per query: " + ", ".join(f"{k[:-3]} {v}" for k, v in lat.items())
              + f"; build {1000 * r['build_s_per_image']:.0f} ms/image")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="GLDv2-style folder: train.csv, holdout.csv, images/")
    ap.add_argument("--synthetic", action="store_true", help="generate the demo data instead (seed 123, 40 landmarks)")
    ap.add_argument("--global", dest="global_confs", default=DEFAULT_GLOBAL, help="comma-separated global configurations")
    ap.add_argument("--local", dest="local_confs", default=DEFAULT_LOCAL, help="comma-separated local configurations")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="PARAM=VALUE",
                    help="a recognition parameter for predict and evaluate, e.g. cascade_pairs=8 (repeatable)")
    ap.add_argument("--work-dir", type=Path, default=None, help="keep indexes and reports here")
    ap.add_argument("--time-side", type=int, default=1024,
                    help="also time predict with every photo enlarged to this longer side (0: skip)")
    args = ap.parse_args()
    if (args.data is None) == (not args.synthetic):
        ap.error("give --data DIR or --synthetic")
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        data = args.data
        if args.synthetic:
            from synthetic import generate_demo_dataset

            data = generate_demo_dataset(work / "data", n_landmarks=40, n_distractor_refs=20, n_distractor_queries=40,
                                         n_unseen_landmarks=8, seed=123).root
        overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.overrides)}
        results = [run_one(Path(data), work, g, l, args.bootstrap, overrides)
                   for g in args.global_confs.split(",") for l in args.local_confs.split(",")]
        if args.time_side:
            for r in results:
                r["enlarged"] = time_enlarged(Path(data), work, r["global"], r["local"], args.time_side, overrides)
    print_table(results, Path(data))
    r = results[0]
    print(json.dumps({
        "data": str(data), "global": r["global"], "local": r["local"],
        "global_1nn_gap": round(r["global_1nn"]["gap"], 4), "predict_gap": round(r["predict_gap"], 4),
        "predict_minus_1nn": round(r["predict_gap"] - r["global_1nn"]["gap"], 4),
        "predict_s_per_query": round(r["predict_s_per_query"], 3), "evaluate_gap": round(r["evaluate"]["gap"], 4),
        "tuned_value": r["tuned"]["chosen"], "tuned_cv_gap": round(r["tuned"]["cv_gap"], 4),
        "shortlist_recall": r["evaluate"]["shortlist"]["recall"],
        "shortlist_among_candidates": r["evaluate"]["shortlist"]["n_among_candidates"],
        "shortlist_first": r["evaluate"]["shortlist"]["n_first"],
        "channel_ms": r["evaluate"]["shortlist"]["channel_ms"],
        "recall_at_1_best": round(r["ranking_recall"]["best"][1], 4), "recall_at_1_sum": round(r["ranking_recall"]["sum"][1], 4),
        "strict_gap": round(r["evaluate"]["strict"]["gap"], 4), "verified_right": r["verification"]["verified_right"],
        "verified_wrong": r["verification"]["verified_wrong"],
        "second_stage_share": round(r["verification"]["second_stage_share"], 4),
        "s_per_photo_median": round(r["verification"]["s_per_photo_median"], 3),
        "s_per_photo_mean": round(r["verification"]["s_per_photo_mean"], 3),
        "first_stage_share": round(r["verification"]["first_stage_share"], 4),
        "s_per_photo_enlarged": {str(r["enlarged"]["side"]): {"mean": round(r["enlarged"]["s_per_photo_mean"], 3),
                                                              "median": round(r["enlarged"]["s_per_photo_median"], 3),
                                                              "second_stage_share": round(r["enlarged"]["second_stage_share"], 4)}}
        if r.get("enlarged") else None,
        "confidence_cv_gap_fitted": (r["tuned"].get("confidence") or {}).get("cv_gap_fitted"),
        "confidence_cv_gap_bands": (r["tuned"].get("confidence") or {}).get("cv_gap_bands"),
        "configs": [{"local": x["local"], "gap": round(x["predict_gap"], 4), "strict_gap": round(x["evaluate"]["strict"]["gap"], 4),
                     "verified_right": x["verification"]["verified_right"], "verified_wrong": x["verification"]["verified_wrong"],
                     "second_stage_share": round(x["verification"]["second_stage_share"], 4),
                     "s_per_photo_median": round(x["verification"]["s_per_photo_median"], 3),
                     "s_per_photo_mean": round(x["verification"]["s_per_photo_mean"], 3),
                     "s_per_photo_enlarged_mean": round(x["enlarged"]["s_per_photo_mean"], 3) if x.get("enlarged") else None}
                    for x in results],
    }))


if __name__ == "__main__":
    main()
