"""tune-threshold at Kaggle scale: seconds to tune on N synthetic evidence lines (default 100,000).

Writes an evidence file of N queries (half without a landmark, 50 neighbours and 10 verified candidates each,
inlier counts drawn like real RootSIFT pairs: wrong pairs mostly < 10, true ones spread to hundreds) against a
tiny vector index, then runs ``tune-threshold`` (eval.evaluate.tune, what the CLI calls) and prints its time and
peak memory next to a baseline from the same run: the per-query decide() path on a 2,000-query sample, scaled.

    python benchmarks/bench_tune.py --n 100000
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from eval import evaluate
from index import ShardBatch
from index.reader import IndexReader
from index.writer import IndexWriter
from retrieval.recognize import Candidate, DECISION_KEYS, decide, resolve_recognition_conf, submission_answer


def write_evidence(work: Path, n: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """(index dir, queries csv, evidence file) of ``n`` synthetic queries."""
    rng = np.random.default_rng(seed)
    db = IndexWriter.create_or_open(work / "index", {"global": {"name": "bench-vectors"}, "local": None}, 8)
    xb = rng.standard_normal((64, 8)).astype(np.float32)
    db.write_shard(ShardBatch([f"r{i}" for i in range(64)], [str(i % 40) for i in range(64)], [f"/r{i}.jpg" for i in range(64)], xb))
    db.commit()
    db = IndexReader.open(work / "index")
    header = {"evidence_version": 2, "index": str(db.path), "index_id": db.manifest.get("index_id"),
              "index_created": db.manifest.get("created"), "index_images": db.size, "params": {}, "match_conf": {},
              "verify": True, "early_exit": False, "confirm_inliers": None}
    queries = work / "queries.csv"
    evidence = work / "evidence.jsonl"
    with open(evidence, "w") as f, open(queries, "w") as qf:
        f.write(json.dumps(header) + "\n")
        qf.write("id,landmark_id\n")
        for q in range(n):
            truth = str(rng.integers(0, 5000)) if q % 2 else ""
            qf.write(f"q{q:07d},{truth}\n")
            lms = [str(x) for x in rng.choice(5000, 10, replace=False)]
            if truth and rng.random() < 0.8:
                lms[int(rng.integers(0, 10))] = truth
            cands = []
            for rank, lm in enumerate(lms):
                inl = int(rng.integers(30, 400)) if lm == truth and rng.random() < 0.6 else int(rng.poisson(5))
                cands.append(asdict(Candidate(lm, 0.9 - 0.02 * rank, 0.9 - 0.02 * rank, inl, f"r{rank}", 1, 0.9 - 0.02 * rank)))
            neighbours = [[f"r{i}", lms[i % 10], 0.9 - 0.005 * i] for i in range(50)]
            f.write(json.dumps({"id": f"q{q:07d}", "path": f"/q{q}.jpg", "evidence": {"neighbours": neighbours, "candidates": cands,
                                "discount": 0.0}, "error": None, "timings": {}}) + "\n")
    return work / "index", queries, evidence


def baseline_seconds_per_query(evidence: Path, queries: Path, index: Path, sample: int = 2000) -> float:
    """The per-query decide() path (what tune did before): seconds per query and per candidate value."""
    from eval.evidence import read_evidence
    from retrieval.recognize import Evidence

    _, records = read_evidence(evidence)
    ids = sorted(records)[:sample]
    evs = [Evidence.from_json(records[q]["evidence"]) for q in ids]
    base = resolve_recognition_conf(None, {}, "rootsift")
    th = {k: base[k] for k in DECISION_KEYS}
    t0 = time.perf_counter()
    for ev in evs:
        submission_answer(decide(ev, **th))
    return (time.perf_counter() - t0) / len(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        index, queries, evidence = write_evidence(work, args.n)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = evaluate.tune(index, queries, None, work / "report", evidence_path=evidence, write=False, progress=False)
        tune_s = time.perf_counter() - t0
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        per_query = baseline_seconds_per_query(evidence, queries, index)
        evidence_mib = evidence.stat().st_size / 2**20
    n_values = result["n_values"]
    # the old path re-decided every query for every value and scored dicts, (folds + 2) times over
    baseline_s = per_query * args.n * n_values
    print(f"{args.n} queries ({args.n // 2} with a landmark), evidence file {evidence_mib:.0f} MiB written in {write_s:.1f} s")
    print(f"tune-threshold: {tune_s:.1f} s for {n_values} threshold values, chosen {result['chosen']:g}, "
          f"in-sample GAP {result['in_sample_gap']:.3f}, CV {result['cv_gap']:.3f}; peak RSS {peak_mib:.0f} MiB")
    print(f"baseline (per-query decide() for every value, decisions alone, no scoring): {baseline_s:.1f} s "
          f"({1e6 * per_query:.1f} us per query and value): {baseline_s / tune_s:.1f}x the vectorised tune")
    print(json.dumps({"n": args.n, "n_values": n_values, "tune_s": round(tune_s, 2), "peak_rss_mib": round(peak_mib),
                      "baseline_decide_only_s": round(baseline_s, 1), "speedup": round(baseline_s / tune_s, 1)}))


if __name__ == "__main__":
    main()
