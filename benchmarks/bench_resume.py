"""Resuming predict/evaluate at Kaggle scale: time and peak memory of a resume over N stored evidence records.

Generates evidence files of 10,000 and 100,000 queries (50 neighbours and 10 verified candidates each, the
JSON layout ``eval.evidence.collect_evidence`` writes, the last line cut as by a kill), then measures in a fresh
subprocess per size and reader:

- ``stream`` (what collect_evidence does now): one pass that keeps the byte offsets of done queries
  (``scan_evidence``), the cut line truncated in place, then every record streamed back and decided one at a
  time (``EvidenceRecords.items``), as predict does;
- ``full-load`` (the baseline, the reader before): every record parsed into a dict (``read_evidence``), the
  file rewritten without the cut line, every record turned into an ``Evidence``, then decided.

Peak RSS is ``ru_maxrss`` of the subprocess ("above the imports' peak": minus its value after the imports,
which importing torch makes high), and on Linux also the peak over the RSS at the start of the resume
(``VmHWM`` after ``/proc/self/clear_refs``). The queries' ids and paths (what predict reads from its CSV) are
in memory before the start. The last line is one JSON object of the headline figures.

    python benchmarks/bench_resume.py                 # 10k and 100k
    python benchmarks/bench_resume.py --sizes 10000
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HEADER = {"evidence_version": 2, "index": "/bench/index", "index_id": "bench", "index_created": "2024-01-01T00:00:00+00:00",
          "index_images": 1_500_000, "params": {}, "match_conf": {}, "verify": True, "early_exit": True,
          "confirm_inliers": 60}


def write_evidence(path: Path, n: int, seed: int = 0) -> None:
    """``n`` records like real ones (GLDv2-like ids, 50 neighbours, 10 candidates, timings), the last one cut."""
    rng = np.random.default_rng(seed)
    refs = [rng.bytes(8).hex() for _ in range(5000)]
    keys = ("landmark_id", "vote", "sim", "inliers", "best_match_id", "verified_refs", "raw_sim")  # Candidate's fields
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(HEADER) + "\n")
        for q in range(n):
            qid = rng.bytes(8).hex()
            lms = [str(x) for x in rng.integers(0, 200_000, 10)]
            sims = np.round(np.sort(rng.uniform(0.3, 0.9, 50))[::-1], 6).tolist()
            ref = rng.integers(0, 5000, 60).tolist()
            lm_of = rng.integers(0, 10, 50).tolist()
            inliers = rng.poisson(8, 10).tolist()
            neighbours = [[refs[ref[j]], lms[lm_of[j]] if j % 10 else "", sims[j]] for j in range(50)]
            cands = [dict(zip(keys, (lm, sims[i], sims[i], inliers[i], refs[ref[50 + i]], 1, sims[i]))) for i, lm in enumerate(lms)]
            record = {"id": qid, "path": f"/data/test/{qid[0]}/{qid[1]}/{qid[2]}/{qid}.jpg",
                      "evidence": {"neighbours": neighbours, "candidates": cands, "discount": 0.0}, "error": None,
                      "timings": {"decode": 0.0123, "global": 0.0456, "search": 0.0012, "local": 0.0789,
                                  "verify": 0.321, "pairs": 10}}
            line = json.dumps(record) + "\n"
            f.write(line if q < n - 1 else line[: len(line) // 2])  # a kill cut the last line


def _decide_all(records, conf) -> int:
    from retrieval.recognize import DECISION_KEYS, decide, submission_answer

    keys = {k: conf[k] for k in DECISION_KEYS}
    answered = 0
    for _, r in records:
        if r["evidence"] is not None:
            answered += submission_answer(decide(r["evidence"], **keys), True) is not None
    return answered


def _hwm_mib(reset: bool = False) -> float | None:
    """Linux: the process's peak RSS (VmHWM) in MiB; ``reset`` starts a new peak from the current RSS first
    (``/proc/self/clear_refs``), so that the transient peak of importing torch does not hide the resume's."""
    try:
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_one(method: str, path: Path) -> dict:
    """One resume in this (fresh) process: seconds and peak RSS."""
    import resource

    from eval.evidence import EvidenceRecords, read_evidence, scan_evidence
    from index.manifest import atomic_output
    from retrieval.recognize import Evidence, resolve_recognition_conf

    conf = resolve_recognition_conf(None, {}, "rootsift")
    if method == "stream":
        # the queries and their paths, what predict has from its CSV (input of both readers, built before timing)
        from eval.evidence import _record_fields

        wanted = {}
        with open(path, "rb") as f:
            next(f)
            for raw in f:
                if raw.endswith(b"\n"):
                    qid, qpath, _ = _record_fields(raw.decode())
                    wanted[qid] = qpath
        ids = list(wanted)
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start_hwm = _hwm_mib(reset=True)
    start = time.perf_counter()
    if method == "stream":
        t0 = time.perf_counter()
        header, offsets, end = scan_evidence(path, wanted)
        if end < path.stat().st_size:
            with open(path, "r+b") as f:
                f.truncate(end)
        resume_s = time.perf_counter() - t0
        answered = _decide_all(EvidenceRecords(path, ids, offsets).items(), conf)
    else:
        t0 = time.perf_counter()
        header, records = read_evidence(path)
        with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
            for r in records.values():
                f.write(json.dumps(r) + "\n")
        resume_s = time.perf_counter() - t0
        ids = list(records)
        out = {q: {**records[q], "evidence": Evidence.from_json(records[q]["evidence"]) if records[q].get("evidence") else None}
               for q in ids}
        answered = _decide_all(out.items(), conf)
    total_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm = _hwm_mib()
    return {"method": method, "queries": len(ids), "answered": answered, "resume_s": round(resume_s, 2),
            "resume_and_decide_s": round(total_s, 2), "peak_rss_mib": round(peak / 1024),
            "peak_above_start_mib": round((peak - start_rss) / 1024),
            "resume_peak_over_start_rss_mib": None if hwm is None else round(hwm - start_hwm)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--work", type=Path, default=None, help="Folder for the generated files (default: a temporary one).")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "FILE"), help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], Path(args.one[1]))))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for n in args.sizes:
            source = work / f"evidence-{n}.jsonl"
            t = time.perf_counter()
            write_evidence(source, n)
            mib = source.stat().st_size / 2**20
            print(f"{n} queries: evidence file {mib:.0f} MiB written in {time.perf_counter() - t:.1f} s", flush=True)
            for method in ("stream", "full-load"):
                copy = work / f"resume-{method}-{n}.jsonl"
                shutil.copy(source, copy)
                out = subprocess.run([sys.executable, __file__, "--one", method, str(copy)], capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{method} resume of {n} queries failed:\n{out.stderr[-2000:]}")
                row = {"n": n, "file_mib": round(mib), **json.loads(out.stdout.strip().splitlines()[-1])}
                rows.append(row)
                print(f"  {method:9s}: resume {row['resume_s']:.1f} s, resume + decide all {row['resume_and_decide_s']:.1f} s, "
                      f"peak RSS {row['peak_rss_mib']} MiB (ru_maxrss; {row['peak_above_start_mib']} MiB above the "
                      f"imports' peak; {row['resume_peak_over_start_rss_mib']} MiB over the RSS at the start)", flush=True)
                copy.unlink()
            source.unlink()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    head = {f"{r['method']}_{r['n']}": {k: r[k] for k in ("resume_s", "resume_and_decide_s", "peak_rss_mib", "peak_above_start_mib", "resume_peak_over_start_rss_mib")}
            for r in rows}
    print(json.dumps({"bench": "resume", "sizes": args.sizes, "file_mib": {str(r["n"]): r["file_mib"] for r in rows}, **head}))


if __name__ == "__main__":
    main()
