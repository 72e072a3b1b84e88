"""Does `landmarks train` help? The Google Landmarks protocol on real photos: train on the index's labelled images
(train.csv), query the holdout (holdout.csv), before and after.

For the whiten route (what a CPU user runs) it prints:

- global 1-NN GAP on the holdout (nearest landmark image, cosine as confidence; non-landmark queries included),
  R@1 of the true landmark, its median rank among the candidate landmarks (ranked by best similarity) and how
  many landmark queries have it outside the 10 candidates: frozen descriptors vs the learned whitening, for a
  grid of shrinkage and augmented views (descriptors computed once);
- a landmark-disjoint check: folds grouped by landmark (every landmark with a query is in one fold); the whitening
  is fitted on the index images of the other landmarks only, and that fold's queries (plus every non-landmark
  query) are scored against the whole index: a gain here is not memorisation of the queried landmarks;
- with ``--pipeline``: the product end to end, `landmarks train` (its time), `build-index --weights model.pt`
  and `predict` with the shipped defaults, GAP of the submission before and after (default local features), strict
  GAP (verified answers only), true pairs verified, wrong verified answers, and the shortlist rank of the true
  landmark on the hard queries (sources.csv notes ``hard:``).

With ``--finetune``: the fine-tune route with its defaults (``--ft-epochs``, ``--ft-size``) on every labelled index
image (seconds per epoch, holdout 1-NN before/after, hard ranks), then the landmark-disjoint check on the first
``--ft-folds`` folds (one fine-tuning each) against the frozen descriptors on the same folds.

    python benchmarks/bench_train.py --data ../shared/devset-large --views 4 --pipeline

Ends with one JSON line of the headline figures.
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

from eval.csv_io import read_solution, read_submission, solution_dict
from eval.metrics import gap
from retrieval.data import read_reference_csv
from retrieval.defaults import DEFAULT_GLOBAL
from retrieval.global_model import GlobalExtractor, resolve_global_conf
from retrieval.training import whiten
from retrieval.training.data import augment, decode_rows


def hard_queries(data: Path) -> list[str]:
    """Ids of the holdout queries that sources.csv marks ``hard:`` (zoom, drone vs ground, rotated, ...)."""
    import pandas as pd

    path = data / "sources.csv"
    if not path.is_file():
        return []
    s = pd.read_csv(path, dtype=str).fillna("")
    return sorted(s.loc[(s["split"] == "holdout") & s["note"].str.startswith("hard:"), "id"])


def first_stage(xq, q_ids, xb, b_labels, solution, hard: list[str] | None = None) -> dict[str, Any]:
    """Global 1-NN GAP over all queries, R@1, median rank of the true landmark, misses outside the top 10
    (and, with ``hard``, the rank of the true landmark for each of those queries)."""
    b_labels = np.asarray(b_labels, dtype=object)
    lm = b_labels != ""
    sims = xq @ xb[lm].T
    labels = b_labels[lm]
    preds, ranks, rank_of = {}, [], {}
    for i, q in enumerate(q_ids):
        order = np.argsort(-sims[i], kind="stable")
        preds[q] = (str(labels[order[0]]), float(sims[i, order[0]]))
        truth = solution[q]
        if truth:
            seen: list[str] = []
            for j in order:  # landmarks ranked by their best similarity
                if labels[j] not in seen:
                    seen.append(labels[j])
            ranks.append(next((r + 1 for r, name in enumerate(seen) if name in truth), len(seen) + 1))
            rank_of[q] = ranks[-1]
    ranks = np.asarray(ranks)
    out = {"gap": round(gap(preds, solution), 4), "r1": round(float(np.mean(ranks == 1)), 4),
           "median_rank": float(np.median(ranks)), "outside_10": int(np.sum(ranks > 10)), "queries": len(ranks)}
    if hard:
        out["hard_ranks"] = [rank_of[q] for q in hard if q in rank_of]
    return out


def describe_all(data: Path, conf: dict, views: int, seed: int, cache: Path) -> dict[str, Any]:
    """Frozen descriptors of the index images, their augmented views and the queries (cached in ``cache``)."""
    if cache.is_file():
        z = np.load(cache, allow_pickle=True)
        return {k: z[k] for k in z.files}
    refs = read_reference_csv(data / "train.csv", data / "images")
    queries = read_reference_csv(data / "holdout.csv", data / "images")
    ex = GlobalExtractor(conf)
    dr, dq = decode_rows(refs, conf, False), decode_rows(queries, conf, False)
    assert not dr.skipped and not dq.skipped
    t0 = time.perf_counter()
    xb = whiten.describe(ex, dr.images, progress=False)
    per_image = (time.perf_counter() - t0) / len(dr.images)
    xq = whiten.describe(ex, dq.images, progress=False)
    rng = np.random.default_rng(seed)
    lm_rows = np.flatnonzero(refs["landmark_id"].to_numpy(object) != "")
    view_images, view_of = [], []
    for i in lm_rows:
        for _ in range(views):
            view_images.append(augment(dr.images[i], rng))
            view_of.append(i)
    xv = whiten.describe(ex, view_images, progress=False)
    out = {"xb": xb, "xq": xq, "xv": xv, "view_of": np.asarray(view_of), "b_labels": refs["landmark_id"].to_numpy(object),
           "q_ids": queries["id"].to_numpy(object), "per_image_s": np.float64(per_image)}
    np.savez(cache, **out)
    return out


def fit_on(d: dict, rows: np.ndarray, conf: dict, views: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Whitening fitted on the index rows ``rows`` (landmark images) and up to ``views`` of their views each."""
    keep_v = np.isin(d["view_of"], rows)
    vo = d["view_of"][keep_v]
    first = np.ones(len(vo), bool)
    if views < int(np.bincount(d["view_of"]).max(initial=0)):
        counts: dict[int, int] = {}
        for j, r in enumerate(vo):
            counts[r] = counts.get(r, 0) + 1
            first[j] = counts[r] <= views
    pos = {r: k for k, r in enumerate(rows)}
    xv, vo = d["xv"][keep_v][first], np.array([pos[r] for r in vo[first]], int)
    return whiten.fit(d["xb"][rows], d["b_labels"][rows], xv, vo, conf)


def verified_figures(index_dir: Path, sub_path: Path, solution: dict, hard: list[str]) -> dict[str, Any]:
    """From predict's evidence: strict GAP (verified answers only), true pairs verified, wrong verified answers
    (every query, non-landmark ones included) and the shortlist rank of the true landmark on the hard queries
    (None: not among the candidates)."""
    from eval.evidence import read_evidence
    from eval.predict import evidence_path_for
    from eval.shortlist import true_rank
    from index.reader import IndexReader
    from retrieval.recognize import DECISION_KEYS, Evidence, decide, index_decision_conf, submission_answer

    with IndexReader.open(index_dir) as db:
        conf = index_decision_conf(db)
    thresholds = {k: conf[k] for k in DECISION_KEYS}
    _, records = read_evidence(evidence_path_for(sub_path))
    strict, right, wrong, hard_ranks = {}, 0, 0, {}
    for q, truth in solution.items():
        ev = (records.get(q) or {}).get("evidence")
        ev = Evidence.from_json(ev) if ev else None
        pred = decide(ev, **thresholds) if ev is not None else None
        strict[q] = submission_answer(pred, keep_guesses=False) if pred else None
        if pred is not None and pred.verified:
            right += pred.landmark_id in truth
            wrong += pred.landmark_id not in truth
        if q in hard:
            hard_ranks[q] = true_rank(ev, truth)
    return {"strict_gap": round(gap(strict, solution), 4), "verified_right": right, "verified_wrong": wrong,
            "landmark_queries": sum(1 for t in solution.values() if t), "hard_shortlist_ranks": [hard_ranks.get(q) for q in hard]}


def fold_gaps(d: dict, q_ids: list[str], solution: dict, fold_of: dict, folds, describe_fold) -> list[float]:
    """Landmark-disjoint 1-NN GAP of each fold: the fold's landmark queries and every non-landmark query against
    the whole index, with descriptors ``describe_fold(f, rows, qs)`` -> (index, queries ``qs``) of a model trained
    on the index ``rows`` of the other landmarks only."""
    lm_rows = np.flatnonzero(d["b_labels"] != "")
    gaps = []
    for f in folds:
        held = {lm for lm, k in fold_of.items() if k == f}
        rows = np.array([r for r in lm_rows if d["b_labels"][r] not in held])
        qs = [i for i, q in enumerate(q_ids) if (solution[q] & held) or not solution[q]]
        xb, xq = describe_fold(f, rows, qs)
        sol = {q_ids[i]: solution[q_ids[i]] for i in qs}
        gaps.append(first_stage(xq, [q_ids[i] for i in qs], xb, d["b_labels"], sol)["gap"])
    return gaps


def finetune_figures(args, d: dict, work: Path, solution: dict, q_ids: list[str], hard: list[str],
                     fold_of: dict) -> dict[str, Any]:
    """The fine-tune route on this CPU: `landmarks train --route finetune` on every labelled index image (timed,
    seconds per epoch), 1-NN figures on the holdout before/after, then the landmark-disjoint check on the first
    ``--ft-folds`` folds (one training each) against the frozen descriptors on the same folds."""
    import pandas as pd

    from retrieval.training import run

    refs = read_reference_csv(args.data / "train.csv", args.data / "images")
    queries = read_reference_csv(args.data / "holdout.csv", args.data / "images")
    conf = resolve_global_conf(args.gconf)
    dr, dq = decode_rows(refs, conf, False), decode_rows(queries, conf, False)
    ft = {"epochs": args.ft_epochs, "train_size": args.ft_size}

    def train(csv: Path, tag: str):
        t0 = time.perf_counter()
        summary = run.main(work / f"ft_{tag}", train=csv, images=args.data / "images", route="finetune",
                           global_conf=args.gconf, seed=args.seed, val_fraction=0.0, finetune=ft, progress=False)
        seconds = time.perf_counter() - t0
        ex = GlobalExtractor(resolve_global_conf(args.gconf, weights=summary["model"]))
        return summary, seconds, whiten.describe(ex, dr.images, progress=False), whiten.describe(ex, dq.images, progress=False)

    summary, seconds, xb, xq = train(args.data / "train.csv", "all")
    epochs = summary["figures"]["epochs"]
    out = {"settings": ft, "train_s": round(seconds, 1), "images": summary["images"],
           "s_per_epoch": round(float(np.mean([e["seconds"] for e in epochs])), 1),
           "loss": [e["loss"] for e in epochs], "after": first_stage(xq, q_ids, xb, d["b_labels"], solution, hard)}
    folds = list(range(min(args.ft_folds, args.folds)))
    table = pd.read_csv(args.data / "train.csv", dtype=str).fillna("")

    def fold_desc(f, rows, qs):
        held = {lm for lm, k in fold_of.items() if k == f}
        csv = work / f"ft_fold{f}.csv"
        table[~table["landmark_id"].isin(held)].to_csv(csv, index=False)
        _, _, fb, fq = train(csv, f"fold{f}")
        return fb, fq[qs]

    if folds:
        out["disjoint_folds"] = folds
        out["disjoint_before"] = round(float(np.mean(fold_gaps(d, q_ids, solution, fold_of, folds,
                                                              lambda f, rows, qs: (d["xb"], d["xq"][qs])))), 4)
        out["disjoint_after"] = round(float(np.mean(fold_gaps(d, q_ids, solution, fold_of, folds, fold_desc))), 4)
    return out


def pipeline(data: Path, work: Path, conf_name: str, seed: int) -> dict[str, Any]:
    """`landmarks train` (timed) then build-index + predict, with and without the trained weights."""
    from eval import predict
    from retrieval import extract
    from retrieval.defaults import DEFAULT_LOCAL
    from retrieval.local_features import split_local_conf
    from retrieval.training import run

    solution = solution_dict(read_solution(data / "holdout.csv"))
    t0 = time.perf_counter()
    summary = run.main(work / "run", train=data / "train.csv", images=data / "images", route="whiten",
                       global_conf=conf_name, seed=seed, progress=False)
    train_s = time.perf_counter() - t0
    refs = read_reference_csv(data / "train.csv", data / "images")
    primary, secondary = split_local_conf(DEFAULT_LOCAL)
    out = {"train_s": round(train_s, 1), "train_summary": summary}
    for tag, gconf in (("before", resolve_global_conf(conf_name)),
                       ("after", resolve_global_conf(conf_name, weights=summary["model"]))):
        idx = work / f"index_{tag}"
        extract.main(refs, idx, gconf, primary, local_sets=secondary, progress=False)
        sub_path = work / f"report_{tag}" / "submission.csv"
        predict.main(idx, data / "holdout.csv", data / "images", sub_path, progress=False)
        out[f"predict_gap_{tag}"] = round(gap(read_submission(sub_path), solution), 4)
        out[tag] = verified_figures(idx, sub_path, solution, hard_queries(data))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--global", dest="gconf", default=DEFAULT_GLOBAL)
    ap.add_argument("--views", type=int, default=8, help="augmented views computed per index image (the grid uses 0..this)")
    ap.add_argument("--shrinkage", default="0.1,0.3,0.6,1.0,auto", help="shrinkage grid: numbers in [0, 1] or auto (Ledoit-Wolf)")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pipeline", action="store_true", help="also run train + build-index + predict (minutes)")
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--finetune", action="store_true", help="also measure the fine-tune route on this machine (slow on a CPU)")
    ap.add_argument("--ft-epochs", type=int, default=10, help="--finetune: epochs (the route's default 10)")
    ap.add_argument("--ft-size", type=int, default=None, help="--finetune: square training crop in pixels (default: the configuration's)")
    ap.add_argument("--ft-folds", type=int, default=2, help="--finetune: landmark-disjoint folds trained (one training each)")
    ap.add_argument("--skip-grid", action="store_true", help="skip the whitening grid (e.g. with --finetune alone)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        conf = resolve_global_conf(args.gconf)
        d = describe_all(args.data, conf, args.views, args.seed, work / f"desc_{args.gconf}_v{args.views}.npz")
        solution = solution_dict(read_solution(args.data / "holdout.csv"))
        q_ids = [str(q) for q in d["q_ids"]]
        lm_rows = np.flatnonzero(d["b_labels"] != "")
        hard = hard_queries(args.data)
        base = first_stage(d["xq"], q_ids, d["xb"], d["b_labels"], solution, hard)
        print(f"data {args.data}: {len(d['xb'])} index images ({len(lm_rows)} of landmarks), {len(q_ids)} queries; "
              f"global {args.gconf}, {float(d['per_image_s']):.2f} s per image to describe")
        print(f"\n{'setting':28s} {'1-NN GAP':>8s} {'R@1':>6s} {'med rank':>8s} {'>10':>4s} {'disjoint':>8s}   "
              f"rank of the true landmark on the {len(hard)} hard queries")
        # landmark-disjoint folds over the landmarks that have queries (grouped by landmark)
        q_landmarks = sorted({next(iter(t)) for t in solution.values() if t})
        rng = np.random.default_rng(args.seed)
        fold_of = {lm: i % args.folds for i, lm in enumerate(rng.permutation(q_landmarks))}
        nl_queries = [q for q in q_ids if not solution[q]]

        def disjoint(transform) -> float:
            return float(np.mean(fold_gaps(d, q_ids, solution, fold_of, range(args.folds),
                                           lambda f, rows, qs: (transform(rows, d["xb"]), transform(rows, d["xq"][qs])))))

        base_disjoint = disjoint(lambda rows, x: x)
        print(f"{'frozen (' + args.gconf + ')':28s} {base['gap']:8.3f} {base['r1']:6.3f} {base['median_rank']:8.1f} "
              f"{base['outside_10']:4d} {base_disjoint:8.3f}   {base.get('hard_ranks')}")
        grid = []
        for views in ([] if args.skip_grid else sorted({0, args.views // 2, args.views})):
            for a in [s if s == "auto" else float(s) for s in args.shrinkage.split(",")]:
                wconf = {**whiten.DEFAULT_WHITEN_CONF, "shrinkage": a}
                m, p, used = fit_on(d, lm_rows, wconf, views)
                r = first_stage(whiten.apply_whitening(d["xq"], m, p), q_ids, whiten.apply_whitening(d["xb"], m, p),
                                d["b_labels"], solution, hard)

                def tf(rows, x, wconf=wconf, views=views):
                    mm, pp, _ = fit_on(d, rows, wconf, views)
                    return whiten.apply_whitening(x, mm, pp)

                r["disjoint_gap"] = round(disjoint(tf), 4)
                r.update(views=views, shrinkage=a, shrinkage_used=round(used, 4))
                grid.append(r)
                print(f"{f'whiten views {views} shrink {a}' + (f' ({used:.2f})' if a == 'auto' else ''):28s} {r['gap']:8.3f} {r['r1']:6.3f} {r['median_rank']:8.1f} "
                      f"{r['outside_10']:4d} {r['disjoint_gap']:8.3f}   {r.get('hard_ranks')}")
        default = next((g for g in grid if g["views"] == whiten.DEFAULT_WHITEN_CONF["views"]
                        and g["shrinkage"] == whiten.DEFAULT_WHITEN_CONF["shrinkage"]), None)
        pipe = pipeline(args.data, work, args.gconf, args.seed) if args.pipeline else None
        if pipe:
            print(f"\npipeline: landmarks train --route whiten {pipe['train_s']:.0f} s; predict GAP (shipped defaults) "
                  f"{pipe['predict_gap_before']:.3f} -> {pipe['predict_gap_after']:.3f}; train.json figures "
                  f"{json.dumps(pipe['train_summary']['figures'])}")
            for tag in ("before", "after"):
                v = pipe[tag]
                print(f"  {tag:6s} strict GAP {v['strict_gap']:.3f}, true pairs verified {v['verified_right']} of "
                      f"{v['landmark_queries']}, wrong verified {v['verified_wrong']}, shortlist rank of the true landmark "
                      f"on the hard queries {v['hard_shortlist_ranks']}")
        ftr = finetune_figures(args, d, work, solution, q_ids, hard, fold_of) if args.finetune else None
        if ftr:
            a = ftr["after"]
            print(f"\nfinetune {json.dumps(ftr['settings'])} on {ftr['images']} images: {ftr['train_s']:.0f} s in all, "
                  f"{ftr['s_per_epoch']:.1f} s per epoch (losses {ftr['loss']}); holdout 1-NN GAP {base['gap']:.3f} -> "
                  f"{a['gap']:.3f}, R@1 {base['r1']:.3f} -> {a['r1']:.3f}, median rank {a['median_rank']:.0f}, outside 10 "
                  f"{a['outside_10']}, hard ranks {base.get('hard_ranks')} -> {a.get('hard_ranks')}")
            if "disjoint_after" in ftr:
                print(f"finetune landmark-disjoint 1-NN GAP (folds {ftr['disjoint_folds']}): {ftr['disjoint_before']:.3f} -> "
                      f"{ftr['disjoint_after']:.3f}")
    print(json.dumps({
        "data": str(args.data), "global": args.gconf, "frozen_1nn_gap": base["gap"], "frozen_disjoint_gap": round(base_disjoint, 4),
        "frozen_outside_10": base["outside_10"], "frozen_hard_ranks": base.get("hard_ranks"), "default": default,
        "best_disjoint": max(grid, key=lambda g: g["disjoint_gap"]) if grid else None,
        "pipeline": {k: v for k, v in (pipe or {}).items() if k != "train_summary"} or None, "finetune": ftr,
    }))


if __name__ == "__main__":
    main()
