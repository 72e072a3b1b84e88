"""``evaluate`` and ``tune-threshold``: GAP of the full pipeline on a holdout, and the inlier threshold.

``evaluate`` runs the recognizer once per query exactly as ``predict`` does (same
verification plan, same cascade, same early-exit setting), stores the evidence
(``evidence.jsonl``), and scores three systems from that one run: global kNN
alone, the full pipeline as a submission (verified answers first, unverified
guesses ranked below them), and the full pipeline strict (unverified queries
answer "no landmark"). ``tune-threshold`` re-decides from the stored evidence
for each candidate threshold in milliseconds.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from index.choices import check_name
from index.manifest import atomic_write_text
from index.reader import IndexReader
from index.writer import IndexWriter
from retrieval.data import resolve_image_path
from retrieval.decision import GUESS_SCALE, ConfidenceModel, answer_features
from retrieval.defaults import DEFAULT_RECOGNITION_CONF
from retrieval.recognize import (
    DECISION_KEYS, VERIFIED_BASE, CandidateArrays, Evidence, Recognizer, decide, decide_many, global_only, index_decision_conf,
    submission_answer,
)

from . import metrics, plots, shortlist, tuning
from .csv_io import read_solution, solution_dict, write_submission
from .evidence import collect_evidence, timing_summary

logger = logging.getLogger(__name__)

EVIDENCE_FILE = "evidence.jsonl"
# Tunable decision parameters and their candidate values (the inlier threshold's come from the evidence).
TUNABLE: dict[str, tuple[float, ...]] = {
    "inlier_threshold": (),
    "cascade_threshold": (),
    "vote_weight": tuple(round(0.1 * i, 1) for i in range(11)),
    "min_margin": (1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0),
}


CONFIDENCE_CHOICES = ("auto", "fitted", "bands")


def fit_confidence(arrays: CandidateArrays, solution: Mapping[str, Any], decision: Mapping[str, Any], mode: str = "submission",
                   n_folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Fit a :class:`~retrieval.decision.ConfidenceModel` on the answers ``decision`` gives (rows of ``arrays`` in
    sorted query-id order), and compare it with the bands by cross-validation with folds grouped by landmark.

    Each answered query is one sample: its answer's features (:func:`~retrieval.decision.answer_features`) and
    whether the answer is right. For every fold the model is fitted on the other folds and decides the held-out
    queries; ``cv_gap_fitted`` is the mean held-out GAP, ``cv_gap_bands`` the same folds' GAP with the bands.
    """
    ids = sorted(solution)
    keep = mode == "submission"
    column, conf_bands, verified = decide_many(arrays, keep_guesses=keep, **decision)
    answered = column >= 0
    col = np.maximum(column, 0)
    _, score = arrays.scores(decision["inlier_threshold"], decision["cascade_threshold"])
    x = answer_features(arrays, score, col)
    right = np.array([arrays.landmarks[i, col[i]] in solution[q] for i, q in enumerate(ids)], bool) & answered
    groups = metrics.landmark_clusters(solution)
    n_lm_groups = len({groups[q] for q in ids if solution[q]})
    k = max(2, min(int(n_folds), n_lm_groups))
    fold_of = tuning.assign_folds(solution, n_folds=k, seed=seed, groups=groups)
    fold = np.array([fold_of[q] for q in ids])

    def confidences(model: ConfidenceModel, mask: np.ndarray) -> np.ndarray:
        p = model.predict(x[mask])
        return np.where(verified[mask], VERIFIED_BASE + (1 - VERIFIED_BASE) * p, GUESS_SCALE * p)

    def gap_of(conf: np.ndarray, mask: np.ndarray) -> float | None:
        preds = {ids[i]: (str(arrays.landmarks[i, col[i]]), float(c)) for i, c in zip(np.flatnonzero(mask), conf) if answered[i]}
        sol = {ids[i]: solution[ids[i]] for i in np.flatnonzero(mask)}
        return metrics.gap(preds, sol) if any(sol.values()) else None

    held_fitted, held_bands = [], []
    for f in range(k):
        train, held = answered & (fold != f), fold == f
        model = ConfidenceModel.fit(x[train], right[train])
        gf, gb = gap_of(confidences(model, held), held), gap_of(conf_bands[held], held)
        if gf is not None:
            held_fitted.append(gf)
            held_bands.append(gb)
    model = ConfidenceModel.fit(x[answered], right[answered])
    everything = np.ones(len(ids), bool)
    return {
        "model": model.to_json(),
        "in_sample_gap_fitted": gap_of(confidences(model, everything), everything),
        "in_sample_gap_bands": gap_of(conf_bands, everything),
        "cv_gap_fitted": float(np.mean(held_fitted)),
        "cv_gap_bands": float(np.mean(held_bands)),
        "n_folds": k,
        "n_answers": int(answered.sum()),
        "n_right": int(right.sum()),
    }


def query_paths(ids: list[str], images_dir: str | Path) -> list[str]:
    images_dir = Path(images_dir).expanduser().resolve()
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {images_dir}")
    return [str(resolve_image_path(images_dir, i)) for i in ids]


def query_ids_digest(ids: Iterable[str]) -> str:
    """A short fingerprint of a set of query ids (order-free)."""
    return hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def global_1nn(evidence: Mapping[str, Evidence | None]) -> dict[str, tuple[str, float] | None]:
    """The first stage alone: the landmark of the nearest landmark neighbour, its cosine as confidence.

    The full pipeline must beat this on real photos (it is what verification starts from)."""
    out: dict[str, tuple[str, float] | None] = {}
    for qid, ev in evidence.items():
        first = next((n for n in ev.neighbours if n[1]), None) if ev is not None else None
        out[qid] = (str(first[1]), float(first[2])) if first else None
    return out


def main(
    index_dir: str | Path,
    queries_csv: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    device: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    progress: bool = True,
    num_workers: int | None = None,
    engine: str = "local",
    ray_options: Any = None,
) -> dict[str, Any]:
    """Evaluate the index on labelled queries; writes report.json, predictions.csv, evidence and plots.

    ``engine="ray"`` computes the evidence on Ray actors (see :func:`eval.evidence.collect_evidence`).
    """
    from engines import check_engine

    check_engine(engine)
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sol_df = read_solution(queries_csv)
    solution = solution_dict(sol_df)
    ids = list(sol_df["id"])
    paths = query_paths(ids, images_dir)
    rec = Recognizer.from_index(index_dir, device=device, **dict(overrides or {}))
    leaked = sorted(i for i, row in zip(ids, rec.db.find_rows(ids)) if row >= 0)
    if leaked:
        logger.warning("%d query ids are also indexed references (e.g. %s): their scores are optimistic; "
                       "build the index from split's index.csv", len(leaked), leaked[0])
    tuned_on = rec.db.manifest.get("tuned_on") or {}
    in_sample = bool(rec.db.manifest.get("thresholds")) and tuned_on.get("query_ids") == query_ids_digest(ids)
    if in_sample:
        logger.warning("the index's thresholds were tuned on these same queries (%s): this GAP is in-sample and "
                       "optimistic; evaluate on other queries, or quote tune-threshold's cross-validated GAP",
                       tuned_on.get("queries"))
    records = collect_evidence(rec, ids, paths, out_dir / EVIDENCE_FILE, verify=True, early_exit=True,
                               progress=progress, num_workers=num_workers, engine=engine, ray_options=ray_options,
                               device=device)
    thresholds = {k: rec.conf[k] for k in DECISION_KEYS}
    # One pass over the records, read back one at a time from the evidence file: every system's answer
    # (a small tuple) is kept per query, never the evidence itself.
    systems: dict[str, dict[str, tuple[str, float] | None]] = {n: {} for n in ("submission", "strict", "global_only", "global_1nn")}
    errors: dict[str, str] = {}
    timings: dict[str, dict[str, Any]] = {}
    ranks: dict[str, int | None] = {}  # where the true landmark ranks among the candidates (landmark queries)
    for q, r in records.items():
        ev = r["evidence"]
        pred = decide(ev, **thresholds) if ev is not None else None  # one decision gives both verified systems
        systems["submission"][q] = submission_answer(pred, keep_guesses=True) if pred else None
        systems["strict"][q] = submission_answer(pred, keep_guesses=False) if pred else None
        systems["global_only"][q] = global_only(ev) if ev is not None else None
        systems["global_1nn"].update(global_1nn({q: ev}))
        if r["error"]:
            errors[q] = r["error"]
        timings[q] = {"timings": r.get("timings")}
        if solution.get(q):
            ranks[q] = shortlist.true_rank(ev, solution[q])
    report: dict[str, Any] = dict(metrics.summary(systems["submission"], solution, n_boot=n_boot))
    for name in ("strict", "global_only", "global_1nn"):
        report[name] = metrics.summary(systems[name], solution, n_boot=n_boot)
    report["gap_minus_global_1nn"] = round(report["gap"] - report["global_1nn"]["gap"], 4)
    report["shortlist"] = shortlist.summary(ranks, [t["timings"] for t in timings.values()])
    report.update(
        index=str(index_dir), queries=str(queries_csv), thresholds=thresholds,
        recognition={k: v for k, v in rec.conf.items()}, n_unreadable_queries=len(errors), in_sample=in_sample,
        latency_ms=timing_summary(timings), seconds=round(time.perf_counter() - start, 2),
    )
    write_submission(systems["submission"], ids, out_dir / "predictions.csv")
    plots.plot_precision_vs_rank(systems["submission"], solution, out_dir / "precision_vs_rank.png")
    plots.plot_confidence_histogram(systems["submission"], solution, out_dir / "confidence_histogram.png")
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    if errors:
        logger.warning("%d query images could not be read (no prediction); e.g. %s", len(errors), next(iter(errors.values())))
    return report


# ----------------------------------------------------------------------------- tune-threshold


_DECODER = json.JSONDecoder()


def _id_and_candidates(line: str) -> tuple[str, list[dict[str, Any]] | None]:
    """A record's id and candidates, parsing only those two values (not the 50 neighbours) when the line has the
    layout this package writes; any other valid line is parsed whole."""
    if line.startswith('{"id": ') and '"evidence": {"neighbours": ' in line:
        qid, _ = _DECODER.raw_decode(line, 7)
        at = line.rfind('"candidates": ')
        if at > 0 and isinstance(qid, str):
            candidates, _ = _DECODER.raw_decode(line, at + len('"candidates": '))
            if isinstance(candidates, list) and all(isinstance(c, dict) for c in candidates):
                return qid, candidates
    record = json.loads(line)
    if not isinstance(record, dict) or "id" not in record:
        raise ValueError("not an evidence record")
    return record["id"], (record["evidence"] or {}).get("candidates") if record.get("evidence") else None


def candidates_for(db: IndexReader, evidence_path: str | Path, solution: Mapping[str, Any]) -> tuple[CandidateArrays, dict[str, Any]]:
    """The stored candidates of the solution's queries (rows in sorted query-id order), checked against the index,
    and the evidence file's header (what the evidence was made with).

    The evidence file is streamed line by line and only the candidates are kept, so 100,000 queries with
    their 50 neighbours each never sit in memory as objects.
    """
    index_dir = db.path
    evidence_path = Path(evidence_path)
    if not evidence_path.is_file():
        raise FileNotFoundError(f"evidence file not found: {evidence_path}")
    wanted = set(solution)
    found: dict[str, Any] = {}
    with open(evidence_path, encoding="utf-8") as f:
        header = json.loads(f.readline() or "null")
        if not header or "evidence_version" not in header:
            raise FileNotFoundError(f"evidence file empty or without a header: {evidence_path}")
        if (header.get("index_id") != db.manifest.get("index_id") or header.get("index_created") != db.manifest.get("created")
                or header.get("index_images") != db.size):
            raise ValueError(
                f"{evidence_path} was computed against another index ({header.get('index')}, "
                f"{header.get('index_images')} images) than {index_dir} ({db.size} images); run evaluate again"
            )
        for line in f:
            try:
                qid, candidates = _id_and_candidates(line)
            except (json.JSONDecodeError, ValueError):
                continue  # a line cut by an interruption (read_evidence says so when evaluate resumes)
            if qid in wanted:
                found[qid] = candidates
    missing = [q for q in solution if q not in found]
    if missing:
        raise ValueError(f"{evidence_path} has no evidence for {len(missing)} queries, e.g. {missing[0]!r}; run evaluate first")
    return CandidateArrays.from_candidates([found[q] for q in sorted(solution)]), header


def evidence_decision_conf(db: IndexReader, header: Mapping[str, Any]) -> dict[str, Any]:
    """The recognition conf the evidence was made with: the index's (its calibrated and tuned values) under the
    evidence-shaping parameters of the evidence's header, with the cascade's second matcher that really ran
    (``second_set``: evidence from ``evaluate --cascade xfeat`` is decided with XFeat's scale and margin)."""
    params = {k: v for k, v in (header.get("params") or {}).items() if k in DEFAULT_RECOGNITION_CONF}
    params["cascade"] = header.get("second_set") or "none"
    return index_decision_conf(db, params)


def second_matcher_ran(conf: Mapping[str, Any]) -> bool:
    """Whether queries the primary matcher left unresolved went on to a second matcher under ``conf``."""
    return conf["cascade"] != "none" and conf["cascade_pairs"] > 0


def sweep_limit(conf: Mapping[str, Any], param: str) -> float | None:
    """The largest value of ``param`` the evidence made with ``conf`` can score, or None (no limit).

    With a cascade, a query whose primary matcher reached ``cascade_resolve_inliers`` inliers and
    ``cascade_resolve_margin`` times the runner-up's never went to the second matcher. A higher
    ``inlier_threshold`` (or ``min_margin``) would turn it into "no landmark" on evidence where the second
    matcher never had its chance, while ``predict`` with that value would run it (the resolve rule is never
    looser than the decision: :func:`~retrieval.recognize.resolve_recognition_conf`): such values are not scored."""
    if not second_matcher_ran(conf):
        return None
    return {"inlier_threshold": conf["cascade_resolve_inliers"], "min_margin": conf["cascade_resolve_margin"]}.get(param)


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no NaN: ``tune.json`` stays valid)."""
    if isinstance(obj, Mapping):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def threshold_grid(arrays: CandidateArrays, param: str = "inlier_threshold", dense_up_to: int = 200) -> list[float]:
    """Candidate inlier thresholds of the primary (``inlier_threshold``) or the cascade's second matcher
    (``cascade_threshold``): every integer from 0 to min(max observed, ``dense_up_to``), the observed counts
    above that, and one above the maximum (nobody verified). Every integer, not just observed counts, so that
    a flat stretch of the GAP curve has a real middle to choose."""
    inliers, ran = (arrays.inliers, arrays.verified) if param == "inlier_threshold" else (arrays.inliers2, arrays.verified2)
    seen = {0} | {int(v) for v in np.unique(inliers[arrays.valid & ran])}
    top = max(seen)
    values = set(range(0, min(top, dense_up_to) + 1)) | {v for v in seen if v > dense_up_to} | {top + 1}
    return [float(v) for v in sorted(values)]


def prediction_matrix(arrays: CandidateArrays, solution: Mapping[str, Any], base: Mapping[str, Any], param: str,
                      grid: list[float], mode: str) -> tuning.PredictionMatrix:
    """Every query's answer under every value of ``param`` (the others from ``base``), decided all at once."""
    ids = sorted(solution)
    correct_c = np.array([[lm in solution[q] for lm in row] for q, row in zip(ids, arrays.landmarks)], bool).reshape(arrays.valid.shape)
    rows = np.arange(len(ids))
    conf = np.full((len(grid), len(ids)), np.nan)
    correct = np.zeros(conf.shape, bool)
    keep = mode == "submission"
    decisions = (decide_many(arrays, keep_guesses=keep, **{**{k: base[k] for k in DECISION_KEYS}, param: value})
                 for value in grid)
    for v, (column, confidence, _) in enumerate(decisions):
        conf[v] = confidence
        correct[v] = (column >= 0) & correct_c[rows, np.maximum(column, 0)]
    is_landmark = np.array([len(solution[q]) > 0 for q in ids], bool)
    return tuning.PredictionMatrix(np.asarray(grid, float), ids, conf, correct, is_landmark)


def tune(
    index_dir: str | Path,
    queries_csv: str | Path,
    images_dir: str | Path | None,
    out_dir: str | Path,
    evidence_path: str | Path | None = None,
    n_folds: int = 5,
    mode: str = "submission",
    write: bool = True,
    device: str | None = None,
    progress: bool = True,
    seed: int = 0,
    param: str = "inlier_threshold",
    confidence: str = "auto",
) -> dict[str, Any]:
    """Choose the value of a decision parameter maximising GAP; report a cross-validated estimate; store it.

    ``confidence``: "auto" also fits a confidence model (:func:`fit_confidence`) at the chosen value and stores
    it when its cross-validated GAP beats the bands' on the same folds (else the bands stay, and a stored
    model is removed); "fitted" stores it regardless; "bands" fits nothing.

    ``param``: "inlier_threshold" (candidates: every integer up to 200 and every observed inlier count),
    "vote_weight" (the share of similarity vs inliers in a verified confidence; 0, 0.1, ..., 1) or
    "min_margin" (the best candidate's inliers over the runner-up's; 1 ... 4).
    """
    check_name(param, TUNABLE, "tunable parameter")
    check_name(confidence, CONFIDENCE_CHOICES, "confidence")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sol_df = read_solution(queries_csv)
    solution = solution_dict(sol_df)
    evidence_path = Path(evidence_path) if evidence_path else out_dir / EVIDENCE_FILE
    if not evidence_path.is_file():
        if images_dir is None:
            raise ValueError(f"no evidence at {evidence_path}: pass --images to compute it (or --evidence FILE)")
        logger.info("no stored evidence at %s: running the recognizer on the queries first", evidence_path)
        rec = Recognizer.from_index(index_dir, device=device)
        ids = list(sol_df["id"])
        collect_evidence(rec, ids, query_paths(ids, images_dir), evidence_path, early_exit=True, progress=progress)
    db = IndexReader.open(index_dir)
    arrays, header = candidates_for(db, evidence_path, solution)
    # Decided as the evidence was made (its cascade, its budget), and with the bands: a stored fitted confidence
    # was fitted on such answers (maybe these very queries), so ranking the sweep with it would be in-sample.
    base = {**evidence_decision_conf(db, header), "confidence_model": None}
    grid = threshold_grid(arrays, param) if param in ("inlier_threshold", "cascade_threshold") else list(TUNABLE[param])
    limit = sweep_limit(base, param)
    if limit is not None and any(v > limit for v in grid):
        logger.info("%s: values above %g not scored: the first matcher resolved queries there, and the second "
                    "matcher never ran on them", param, limit)
        grid = [v for v in grid if v <= limit]
    by_value = prediction_matrix(arrays, solution, base, param, grid, mode)
    table = tuning.sweep(by_value, solution, seed=seed)
    # Ties in GAP are broken by the fewest wrong answers that recognize would show as verified.
    groups = metrics.landmark_clusters(solution)  # folds never split a landmark's queries
    cv = tuning.cross_validated_gap(by_value, solution, n_folds=n_folds, seed=seed, accept_confidence=VERIFIED_BASE,
                                    groups=groups)
    chosen = cv["in_sample_value"]
    if param in ("inlier_threshold", "cascade_threshold"):
        chosen = int(chosen)
    fitted = None
    if confidence != "bands":
        decision = {**{k: base[k] for k in DECISION_KEYS}, param: chosen, "confidence_model": None}
        fitted = fit_confidence(arrays, solution, decision, mode, n_folds=n_folds, seed=seed)
        use = confidence == "fitted" or fitted["cv_gap_fitted"] > fitted["cv_gap_bands"]
        fitted["used"] = bool(use)
        logger.info("fitted confidence: cross-validated GAP %.4f against %.4f with the bands (same folds): %s",
                    fitted["cv_gap_fitted"], fitted["cv_gap_bands"], "stored" if use else "not stored, bands kept")
    previous = base[param]
    stem = ("threshold" if param == "inlier_threshold" else param) + ("_strict" if mode == "strict" else "")
    table.to_csv(out_dir / f"{stem}_sweep.csv", index=False)
    label = param.replace("_", " ")
    plots.plot_gap_vs_value(table, out_dir / f"gap_vs_{stem}.png", chosen_value=chosen, xlabel=label,
                            title=f"GAP vs {label} ({mode}); CV GAP {cv['cv_gap']:.3f}")
    result = {
        "param": param,
        "chosen": chosen,
        "previous": previous,
        "chosen_inlier_threshold": chosen if param == "inlier_threshold" else base["inlier_threshold"],
        "in_sample_gap": cv["in_sample_gap"],
        "cv_gap": cv["cv_gap"],
        "cv_gap_std": cv["cv_gap_std"],
        "folds": cv["folds"],
        "n_values": len(grid),
        "mode": mode,
        "written_to_manifest": bool(write),
        "plot": str(out_dir / f"gap_vs_{stem}.png"),
        "evidence": str(evidence_path),
        # the evidence's matcher cascade: the value holds for recognition with the same (predict --cascade ...)
        "tuned_for": {"cascade": base["cascade"], "cascade_pairs": base["cascade_pairs"]},
        "limit": limit,
        "confidence": fitted,
    }
    if write:
        # What the value was tuned on, so that evaluate can say when its queries are the same (in-sample).
        thresholds: dict[str, Any] = {param: chosen}
        # --confidence bands removes a stored model: the bands are what was asked for
        thresholds["confidence_model"] = fitted["model"] if fitted is not None and fitted["used"] else None
        with IndexWriter.open_for_write(index_dir) as writer:  # the reader above writes nothing
            writer.update_manifest(thresholds=thresholds, tuned_on={"queries": str(Path(queries_csv).resolve()),
                                                                     "query_ids": query_ids_digest(solution),
                                                                     **result["tuned_for"]})
    atomic_write_text(out_dir / f"tune_{stem}.json".replace("tune_threshold.json", "tune.json"),
                      json.dumps(finite_json(result), indent=2, allow_nan=False) + "\n")
    return result
