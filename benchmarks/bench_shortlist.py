"""The shortlist on real photos: where the true landmark ranks among the candidates, per global variant.

Describes every photo of a GLDv2-style folder (``train.csv`` index, ``holdout.csv`` queries, ``images/``) once per
global configuration (descriptors cached in ``--work-dir``), then searches exactly and ranks candidate landmarks
as the product does (k = 50 neighbours, a landmark's best similarity, 10 candidates) under each training-free
variant of :mod:`retrieval.global_rerank`:

- ``plain``: the descriptors as they are;
- ``qe1``/``qe2``: alpha query expansion with 1 or 2 neighbours (alpha 3);
- ``dba1``: database-side augmentation with 1 neighbour; ``dba1+qe1``: both;
- ``sg1``/``sg2``: SuperGlobal-style re-ranking of the 50 neighbours (k = 1 or 2).

Besides ranks, ``margin`` is the mean over landmark queries of the true landmark's score minus the best other
landmark's (a finer measure where nearly every true landmark already ranks first).

For each it prints recall@1/5/10 of the landmark queries, how many have the true landmark among the candidates,
global 1-NN GAP, and the rank of the true landmark on the hard queries (``sources.csv`` notes marked ``hard:``),
with the extra milliseconds per query the variant costs. Ends with one JSON line.

    python benchmarks/bench_shortlist.py --data ../shared/devset-large
    python benchmarks/bench_shortlist.py --data ../shared/devset-large --global "lite2-gem,lite2-gem@scales=[0.707,1.0,1.414],lite2-gem@image_size=512"
"""
from __future__ import annotations

import argparse
import hashlib
import re
import tempfile
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from eval.csv_io import read_solution, solution_dict
from eval.metrics import gap
from eval.shortlist import hard_queries
from retrieval.defaults import DEFAULT_GLOBAL
from retrieval.global_model import resolve_global_conf
from retrieval.global_rerank import alpha_qe, dba, superglobal_rerank
from retrieval.recognize import vote

K, C = 50, 10


def parse_variant(spec: str) -> dict[str, Any]:
    """``name@key=value@key=value`` -> a resolved global conf (values parsed as JSON when they parse)."""
    name, *pairs = spec.split("@")
    overrides = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return resolve_global_conf(name, **overrides)


def describe(conf: dict[str, Any], paths: list[str], cache: Path) -> tuple[np.ndarray, float]:
    """(n, d) descriptors of the images (cached by conf and paths) and seconds per image of the extraction."""
    key = hashlib.sha1(json.dumps([conf, paths], sort_keys=True, default=str).encode()).hexdigest()[:16]
    file = cache / f"desc_{key}.npz"
    if file.is_file():
        z = np.load(file)
        return z["x"], float(z["s"])
    from retrieval.extract import FeatureExtractor

    fx = FeatureExtractor(conf, None)
    out = np.zeros((len(paths), fx.global_extractor.dim), np.float32)
    start = time.perf_counter()
    for pos, res in fx.iter_paths(paths, batch_size=1, num_workers=0):
        if isinstance(res, str):
            raise SystemExit(res)
        out[pos] = res.global_desc
    seconds = (time.perf_counter() - start) / len(paths)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(file, x=out, s=seconds)
    return out, seconds


def plain(q: np.ndarray, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = xb @ q
    order = np.argsort(-s, kind="stable")[:K]
    return s[order], order


def variants() -> dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]:
    """{name: f(q, xb, xb_dba1) -> (sims, rows) of the first K neighbours}."""

    def qe(k: int):
        def f(q, xb, _):
            s, r = plain(q, xb)
            return plain(alpha_qe(q, xb, s, r, k), xb)
        return f

    def sg(k: int):
        def f(q, xb, _):
            _, r = plain(q, xb)
            s = superglobal_rerank(q, xb[r], k)
            order = np.argsort(-s, kind="stable")
            return s[order], r[order]
        return f

    def dba_qe(q, _, xa):
        s, r = plain(q, xa)
        return plain(alpha_qe(q, xa, s, r, 1), xa)

    return {"plain": lambda q, xb, _: plain(q, xb), "qe1": qe(1), "qe2": qe(2), "dba1": lambda q, _, xa: plain(q, xa),
            "dba1+qe1": dba_qe, "sg1": sg(1), "sg2": sg(2)}


def evaluate(xq: np.ndarray, xb: np.ndarray, ref_lms: np.ndarray, qids: list[str], solution: dict[str, frozenset[str]],
             fn: Callable) -> dict[str, Any]:
    """Candidate ranks, recall@1/5/10, 1-NN GAP and ms per query of one variant."""
    xa = dba(xb, 1)
    ranks: dict[str, int | None] = {}
    margins: list[float] = []  # true landmark's score minus the best other's: finer than ranks on a saturated set
    lists: dict[str, list[str]] = {}
    one_nn: dict[str, tuple[str, float] | None] = {}
    start = time.perf_counter()
    for qid, q in zip(qids, xq):
        s, r = fn(q, xb, xa)
        cands = vote(s, list(ref_lms[r]), "best")[:C]
        first = next(((str(ref_lms[i]), float(v)) for v, i in zip(s, r) if ref_lms[i]), None)
        one_nn[qid] = first
        lists[qid] = [c.landmark_id for c in cands]
        if solution[qid]:
            true = max((c.vote for c in cands if c.landmark_id in solution[qid]), default=0.0)
            other = max((c.vote for c in cands if c.landmark_id not in solution[qid]), default=0.0)
            margins.append(true - other)
            ranks[qid] = next((n for n, c in enumerate(cands, 1) if c.landmark_id in solution[qid]), None)
    ms = 1000 * (time.perf_counter() - start) / len(qids)
    vals = list(ranks.values())
    return {"ranks": ranks, "lists": lists, "ms_per_query": ms, "margin": float(np.mean(margins)), "gap_1nn": gap(one_nn, solution),
            "recall": {k: sum(v is not None and v <= k for v in vals) / len(vals) for k in (1, 5, 10)},
            "n_among": sum(v is not None for v in vals), "n_first": sum(v == 1 for v in vals)}


def asmk_channel(index_dir: Path, qpaths: list[str], n_words: int, assign: int) -> dict[str, Any]:
    """ASMK over the index's stored primary local descriptors: per-query landmark rankings and its costs."""
    from index.reader import IndexReader
    from index.asmk import Codebook, InvertedFile, landmark_ranking, train_codebook
    from retrieval.extract import FeatureExtractor

    db = IndexReader.open(index_dir)
    descs = [db.local_features(r)[1] for r in range(db.size)]
    t0 = time.perf_counter()
    cb = Codebook(train_codebook(np.concatenate(descs), n_words))
    agg = [cb.aggregate(d) for d in descs]
    offsets = np.cumsum([0] + [len(w) for w, _ in agg])
    ivf = InvertedFile.from_images(np.concatenate([w for w, _ in agg]), np.concatenate([c for _, c in agg]), offsets,
                                   len(cb.centroids), cb.dim)
    build_s = time.perf_counter() - t0
    fx = FeatureExtractor.for_index(db, need_local=True)
    landmarks = db.column("landmark_id")[np.arange(db.size)]
    out, t_agg, t_search = {}, [], []
    for pos, path in enumerate(qpaths):  # the query's local features as recognize extracts them (no global model run)
        local = fx.local_extractor.extract(fx.decode(path).local_image)
        t0 = time.perf_counter()
        w, c = cb.aggregate(local.descriptors, assign=assign)
        t1 = time.perf_counter()
        scores, rows = ivf.search(w, c, 100)
        t_search.append(time.perf_counter() - t1)
        t_agg.append(t1 - t0)
        out[qpaths[pos]] = [lm for lm, _ in landmark_ranking(scores, rows, landmarks)]
    return {"ranking": out, "build_s": build_s, "bytes_per_image": ivf.nbytes / db.size, "n_words": len(cb.centroids),
            "words_per_image": float(np.mean(np.diff(offsets))), "assign_ms": 1000 * float(np.median(t_agg)),
            "search_ms": 1000 * float(np.median(t_search))}


def fused_ranks(global_lists: dict[str, list[str]], asmk_lists: dict[str, list[str]], solution: dict[str, frozenset[str]],
                extra: int, rrf: bool) -> dict[str, int | None]:
    """Rank of the true landmark when ``extra`` ASMK landmarks not among the global candidates are added
    (appended, or the union ordered by reciprocal-rank fusion)."""
    ranks = {}
    for q, g in global_lists.items():
        a = asmk_lists.get(q, [])
        merged = g + [lm for lm in a if lm not in g][:extra]
        if rrf:
            score = lambda lm: (1 / (10 + g.index(lm) + 1) if lm in g else 0) + (1 / (10 + a.index(lm) + 1) if lm in a else 0)
            merged = sorted(merged, key=lambda lm: -score(lm))
        ranks[q] = next((n for n, lm in enumerate(merged, 1) if lm in solution[q]), None)
    return ranks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--global", dest="global_confs", default=DEFAULT_GLOBAL,
                    help="comma-separated global configurations, each name[@key=value...]")
    ap.add_argument("--index", type=Path, default=None,
                    help="an index of train.csv with stored local features: also measure the ASMK channel")
    ap.add_argument("--asmk-words", type=int, default=1024)
    ap.add_argument("--asmk-assign", type=int, default=3)
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench_shortlist_cache",
                    help="descriptor cache (kept between runs: a variant is described once)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    train = pd.read_csv(args.data / "train.csv", dtype=str).fillna("")
    solution = solution_dict(read_solution(args.data / "holdout.csv"))
    qids = sorted(solution)
    ref_lms = train["landmark_id"].to_numpy(object)
    img = lambda i: str(args.data / "images" / f"{i}.jpg")
    hard = hard_queries(args.data)
    results = []
    for spec in re.split(r",(?![^\[]*\])", args.global_confs):  # commas inside [...] belong to a value
        conf = parse_variant(spec)
        xb, s_db = describe(conf, [img(i) for i in train["id"]], args.work_dir)
        xq, s_q = describe(conf, [img(i) for i in qids], args.work_dir)
        for name, fn in variants().items():
            r = evaluate(xq, xb, ref_lms, qids, solution, fn)
            results.append({"global": spec, "variant": name, "s_per_image": s_q, **r})
    print(f"{len(solution)} queries ({sum(bool(v) for v in solution.values())} landmark), {len(train)} index images; "
          f"k={K}, {C} candidates ranked by best similarity")
    hard_ids = [q for q in qids if q in hard and solution[q]]
    print(f"\n{'global':34s} {'variant':9s} {'R@1':>6s} {'R@5':>6s} {'R@10':>6s} {'in C':>5s} {'1NN GAP':>8s} {'margin':>7s} "
          f"{'ms/q':>6s} {'s/img':>6s}  hard-query ranks ({', '.join(q[:6] for q in hard_ids)})")
    for r in results:
        hr = " ".join("-" if r["ranks"][q] is None else str(r["ranks"][q]) for q in hard_ids)
        print(f"{r['global']:34s} {r['variant']:9s} {r['recall'][1]:6.3f} {r['recall'][5]:6.3f} {r['recall'][10]:6.3f} "
              f"{r['n_among']:5d} {r['gap_1nn']:8.4f} {r['margin']:7.4f} {r['ms_per_query']:6.2f} {r['s_per_image']:6.3f}  {hr}")
    if args.index is not None:
        a = asmk_channel(args.index, [img(q) for q in qids], args.asmk_words, args.asmk_assign)
        alists = {q: a["ranking"][img(q)] for q in qids}
        print(f"\nASMK channel ({a['n_words']} words, {a['words_per_image']:.0f} words/image, "
              f"{a['bytes_per_image']:.0f} B/image, build {a['build_s']:.1f} s, per query: assign {a['assign_ms']:.1f} ms, "
              f"search {a['search_ms']:.1f} ms)")
        asmk_ranks = {q: next((n for n, lm in enumerate(alists[q][:C], 1) if lm in solution[q]), None)
                      for q in qids if solution[q]}
        base = results[0]
        rows = [("ASMK alone", asmk_ranks)] + [
            (f"{base['variant']} + {e} ASMK {'rrf' if rrf else 'appended'}",
             fused_ranks({q: l for q, l in base["lists"].items() if solution[q]}, alists, solution, e, rrf))
            for e in (1, 2, 3) for rrf in (False, True)]
        for name, ranks in rows:
            vals = [ranks[q] for q in ranks]
            n = len(vals)
            hr = " ".join("-" if ranks[q] is None else str(ranks[q]) for q in hard_ids)
            print(f"{name:44s} R@1 {sum(v == 1 for v in vals) / n:.3f} R@5 {sum(v is not None and v <= 5 for v in vals) / n:.3f}"
                  f" in C {sum(v is not None for v in vals):3d}  hard: {hr}")
    print("\nhard queries:")
    for q in hard_ids:
        print(f"  {q}  landmark {sorted(solution[q])[0]}: {hard[q]}")
    base = results[0]
    best = max(results, key=lambda r: (r["n_first"], r["n_among"], r["gap_1nn"]))
    print(json.dumps({"data": str(args.data), "baseline": f"{base['global']}/{base['variant']}",
                      "baseline_recall_at_1": round(base["recall"][1], 4), "baseline_recall_at_10": round(base["recall"][10], 4),
                      "baseline_gap_1nn": round(base["gap_1nn"], 4),
                      "best": f"{best['global']}/{best['variant']}", "best_recall_at_1": round(best["recall"][1], 4),
                      "best_recall_at_10": round(best["recall"][10], 4), "best_gap_1nn": round(best["gap_1nn"], 4),
                      "hard_ranks": {f"{r['global']}/{r['variant']}": [r["ranks"][q] for q in hard_ids] for r in results}}))


if __name__ == "__main__":
    main()
