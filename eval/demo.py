"""``demo``: real photos -> index -> recognition of the holdout -> GAP, the tuned threshold, a match picture.

By default the demo runs on the 37 real, permissively licensed photos that ship with the package
(``eval/demo_photos``: 7 landmarks, 16 references, 21 queries; licences in its LICENSES.md), so a newcomer's
first figures come from real buildings. ``synthetic=True`` generates landmark photos of any size instead
(the ``synthetic`` package). Everything runs offline: the default models' weights come from pip packages.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from index import names as names_mod
from retrieval import extract, visualize
from retrieval.data import read_reference_csv, resolve_image_path
from retrieval.recognize import VERIFIED_BASE
from synthetic import generate_demo_dataset

from . import evaluate as evaluate_mod
from .csv_io import read_solution, read_submission, solution_dict
from .evidence import read_evidence

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


DEMO_PHOTOS = Path(__file__).resolve().parent / "demo_photos"


def landmark_names(data_dir: Path) -> dict[str, str]:
    """landmark_id -> name from a ``sources.csv`` beside the CSVs (empty when there is none).

    The names are shown as written there (the shipped ones are slugs: ``toronto_university_college``).
    """
    sources = data_dir / "sources.csv"
    if not sources.is_file():
        return {}
    df = pd.read_csv(sources, dtype=str, keep_default_na=False)
    if not {"landmark_id", "landmark_name"} <= set(df):
        return {}
    return {lm: names_mod.clean_name(name)
            for lm, name in zip(df["landmark_id"], df["landmark_name"]) if lm and name.strip()}


def main(
    work_dir: str | Path, synthetic: bool = False, n_landmarks: int = 24, seed: int = 0, conf: str | None = None,
    local_conf: str | None = None, device: str | None = None, progress: bool = True,
    image_size: int | None = None, num_workers: int | None = None, n_boot: int = 1000,
) -> dict[str, Any]:
    """Run the whole product on the shipped real photos (or generated ones) in ``work_dir``; returns the figures.

    ``conf``/``local_conf`` None: the configuration of the demo index already in ``work_dir``, else the
    defaults (``local_conf="none"``: no stored local features).
    """
    start = time.perf_counter()
    work_dir = Path(work_dir)
    if synthetic:
        data = generate_demo_dataset(work_dir / "data", n_landmarks=n_landmarks, seed=seed)
        data_dir, train_csv, holdout_csv, images_dir = data.root, data.train_csv, data.holdout_csv, data.images_dir
    else:
        data_dir = DEMO_PHOTOS
        train_csv, holdout_csv, images_dir = data_dir / "train.csv", data_dir / "holdout.csv", data_dir / "images"
        if not train_csv.is_file():
            raise FileNotFoundError(f"the demo photos are missing from the installation ({data_dir}); "
                                    "run `landmarks demo --synthetic` to generate photos instead")
    index_dir = work_dir / "index"
    report_dir = work_dir / "report"
    refs = read_reference_csv(train_csv, images_dir)
    gconf, lconf, lsets = extract.confs_for_index(index_dir, conf, local_conf, image_size=image_size)
    build = extract.main(refs, index_dir, gconf, lconf, local_sets=lsets, device=device,
                         num_workers=num_workers, progress=progress)
    names = landmark_names(Path(data_dir))
    if names:  # stored with the index, as build-index --landmark-names does: the match picture shows them
        names_mod.store_names(index_dir, names)
    report = evaluate_mod.main(index_dir, holdout_csv, images_dir, report_dir, device=device,
                               progress=progress, num_workers=num_workers, n_boot=n_boot)
    solution = solution_dict(read_solution(holdout_csv))
    tuned = evaluate_mod.tune(index_dir, holdout_csv, None, report_dir, progress=progress)
    # one match picture: the first landmark query that was verified (what show-matches draws)
    predictions = read_submission(report_dir / "predictions.csv")
    shown = next((q for q in sorted(solution) if solution[q] and (predictions.get(q) or ("", 0.0))[1] >= VERIFIED_BASE), None)
    picture = None
    if shown is not None:
        picture, *_ = visualize.main(index_dir, resolve_image_path(Path(images_dir), shown), report_dir / "matches.png", device=device)
    return {
        "work_dir": str(work_dir),
        "data": str(data_dir),
        "synthetic": synthetic,
        "landmark_names": names,
        "index": str(index_dir),
        "report": str(report_dir),
        "n_references": build["n_total"],
        "build_seconds": build["seconds_total"],
        "retrieval": retrieval_figures(report_dir / evaluate_mod.EVIDENCE_FILE, solution),
        "evaluation": report,
        "tuning": tuned,
        "matches_png": str(picture) if picture else None,
        "seconds": round(time.perf_counter() - start, 1),
    }


def format_summary(s: dict[str, Any]) -> str:
    """The demo's figures as a few lines for the terminal."""
    r = s["evaluation"]
    t = s["tuning"]
    ret = s["retrieval"]
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"
    lines = [
        f"demo data: {s['data']} ({'generated photos' if s['synthetic'] else 'real photos'}; "
        f"{s['n_references']} reference images indexed in {s['build_seconds']:.1f} s)",
        f"queries: {r['n_queries']} ({r['n_landmark_queries']} landmark, {r['n_nonlandmark_queries']} non-landmark)",
        "global retrieval: " + ", ".join(f"{k} {v:.3f}" for k, v in ret.items()),
        f"GAP global 1-NN only:           {fmt(r['global_1nn']['gap'])}  95% CI [{fmt(r['global_1nn']['gap_ci95'][0])}, {fmt(r['global_1nn']['gap_ci95'][1])}]",
        f"GAP full pipeline (verified):   {fmt(r['gap'])}  95% CI [{fmt(r['gap_ci95'][0])}, {fmt(r['gap_ci95'][1])}]"
        f"  (inlier threshold {r['thresholds']['inlier_threshold']})",
        f"non-landmark queries answered: global {fmt(r['global_only']['nonlandmark_prediction_rate'])}, "
        f"full strict {fmt(r['strict']['nonlandmark_prediction_rate'])}",
        f"tuned inlier threshold: {t['chosen_inlier_threshold']:g} (in-sample GAP {t['in_sample_gap']:.3f}, "
        f"cross-validated {t['cv_gap']:.3f}); written to {s['index']}/manifest.json",
        f"report, plots and predictions: {s['report']}   ({s['seconds']:.0f} s in all)",
    ]
    if s.get("matches_png"):
        lines.insert(-1, f"match picture (show-matches): {s['matches_png']}")
    names = s.get("landmark_names") or {}
    if names:
        lines.insert(2, "landmarks: " + ", ".join(f"{k} ({v})" for k, v in sorted(names.items(), key=lambda kv: (len(kv[0]), kv[0]))))
    if not s["synthetic"]:
        lines.append("(37 photos: enough to see the product work, far too few to measure it; see docs/figures.md)")
    return "\n".join(lines)
