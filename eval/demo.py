"""``demo``: synthetic landmark photos -> index -> recognition of the holdout -> GAP and the tuned threshold.

Everything runs offline on a fresh install: the photos are generated
(``synthetic.photos``), the default global model's weights come from a pip
package, and RootSIFT needs no weights.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from retrieval import extract
from retrieval.data import read_reference_csv
from retrieval.global_model import resolve_global_conf
from synthetic import generate_demo_dataset

from . import evaluate as evaluate_mod
from .queries import read_solution, solution_dict
from .runner import read_evidence

logger = logging.getLogger(__name__)


def retrieval_figures(evidence_path: Path, solution: dict[str, frozenset[str]], ks=(1, 5, 10)) -> dict[str, float]:
    """Precision@1 and recall@k of the global search alone, over the landmark queries."""
    _, records = read_evidence(evidence_path)
    hits = {k: [] for k in ks}
    for qid, truth in solution.items():
        if not truth or qid not in records or not records[qid].get("evidence"):
            continue
        lms = [n[1] for n in records[qid]["evidence"]["neighbours"]]
        for k in ks:
            hits[k].append(any(lm in truth for lm in lms[:k]))
    out = {"precision@1": float(np.mean(hits[1])) if hits[1] else float("nan")}
    out.update({f"recall@{k}": float(np.mean(v)) if v else float("nan") for k, v in hits.items() if k != 1})
    return out


def main(
    work_dir: str | Path, n_landmarks: int = 24, seed: int = 0, conf: str = "lite0-gem",
    local_conf: str | None = "rootsift", device: str | None = None, progress: bool = True,
    image_size: int | None = None, num_workers: int | None = None, n_boot: int = 1000,
) -> dict[str, Any]:
    """Run the whole product on generated data in ``work_dir``; returns the figures."""
    start = time.perf_counter()
    work_dir = Path(work_dir)
    data = generate_demo_dataset(work_dir / "data", n_landmarks=n_landmarks, seed=seed)
    index_dir = work_dir / "index"
    report_dir = work_dir / "report"
    refs = read_reference_csv(data.train_csv, data.images_dir)
    gconf = resolve_global_conf(conf, image_size=image_size)
    build = extract.main(refs, index_dir, gconf, extract.resolve_local_conf_name(local_conf), device=device,
                         num_workers=num_workers, progress=progress)
    report = evaluate_mod.main(index_dir, data.holdout_csv, data.images_dir, report_dir, device=device,
                               progress=progress, num_workers=num_workers, n_boot=n_boot)
    solution = solution_dict(read_solution(data.holdout_csv))
    tuned = evaluate_mod.tune(index_dir, data.holdout_csv, None, report_dir, progress=progress)
    return {
        "work_dir": str(work_dir),
        "data": str(data.root),
        "index": str(index_dir),
        "report": str(report_dir),
        "n_references": build["n_total"],
        "build_seconds": build["seconds_total"],
        "retrieval": retrieval_figures(report_dir / evaluate_mod.EVIDENCE_FILE, solution),
        "evaluation": report,
        "tuning": tuned,
        "seconds": round(time.perf_counter() - start, 1),
    }


def format_summary(s: dict[str, Any]) -> str:
    """The demo's figures as a few lines for the terminal."""
    r = s["evaluation"]
    t = s["tuning"]
    ret = s["retrieval"]
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"
    lines = [
        f"demo data: {s['data']}  ({s['n_references']} reference images indexed in {s['build_seconds']:.1f} s)",
        f"queries: {r['n_queries']} ({r['n_landmark_queries']} landmark, {r['n_nonlandmark_queries']} non-landmark)",
        "global retrieval: " + ", ".join(f"{k} {v:.3f}" for k, v in ret.items()),
        f"GAP global kNN only:            {fmt(r['global_only']['gap'])}  95% CI [{fmt(r['global_only']['gap_ci95'][0])}, {fmt(r['global_only']['gap_ci95'][1])}]",
        f"GAP full pipeline (verified):   {fmt(r['gap'])}  95% CI [{fmt(r['gap_ci95'][0])}, {fmt(r['gap_ci95'][1])}]"
        f"  (inlier threshold {r['thresholds']['inlier_threshold']})",
        f"non-landmark queries answered: global {fmt(r['global_only']['nonlandmark_prediction_rate'])}, "
        f"full strict {fmt(r['strict']['nonlandmark_prediction_rate'])}",
        f"tuned inlier threshold: {t['chosen_inlier_threshold']:g} (in-sample GAP {t['in_sample_gap']:.3f}, "
        f"cross-validated {t['cv_gap']:.3f}); written to {s['index']}/manifest.json",
        f"report, plots and predictions: {s['report']}   ({s['seconds']:.0f} s in all)",
    ]
    return "\n".join(lines)
