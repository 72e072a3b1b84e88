"""The retrieval task (GLDv2's second challenge): rank index images for each query, score with mAP@100.

``query --queries ... --out retrieval.csv`` writes Kaggle's retrieval submission (``id,images``: up to 100
index image ids per query, best first, space-separated). Finished queries stream to
``<out>.partial.jsonl`` (first line: the index and the settings), so an interrupted run resumes where it
stopped; the submission itself is written atomically at the end. ``evaluate --task retrieval`` runs the
same ranking on labelled queries and reports ``map_at_100``.

The ranking is the global descriptor's cosine order, optionally refined by two classic steps:

* average query expansion (``qe``): the query descriptor plus its top ``qe`` neighbours' descriptors,
  renormalised, searched again (Chum et al. 2007; "AQE" in the retrieval literature);
* local verification of the shortlist (``verify_top``): the first ``verify_top`` images are matched with the
  index's local features (RANSAC inliers, as recognition verifies); those reaching the inlier threshold move
  to the front, most inliers first; the others keep their global order below them.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from index.reader import IndexReader
from index.manifest import atomic_output, atomic_write_text
from retrieval.extract import FeatureExtractor, Features
from retrieval.matching import verify_many
from retrieval.recognize import Recognizer

from . import metrics
from .evaluate import query_paths
from .jsonl import read_jsonl
from .csv_io import read_solution, read_table, solution_dict

logger = logging.getLogger(__name__)

PARTIAL_VERSION = 1
RETRIEVAL_FILE = "retrieval.csv"


def partial_path_for(out_csv: str | Path) -> Path:
    """Where ``query --out`` keeps its resumable per-query rows."""
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.name + ".partial.jsonl")


class Ranker:
    """Ranks index images for query photos: global search, optional query expansion and local verification."""

    def __init__(self, index_dir: str | Path, k: int = metrics.RETRIEVAL_K, qe: int = 0, verify_top: int = 0,
                 inlier_threshold: int | None = None, device: str | None = None):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if qe < 0 or verify_top < 0:
            raise ValueError(f"--qe and --verify-top must be >= 0, got {qe} and {verify_top}")
        self.rec: Recognizer | None = None
        if verify_top:
            # The recognizer owns local features: stored ones, or extracted on demand (and cached) for an
            # index built with --local-conf none; its matcher and inlier threshold are recognition's.
            overrides = {} if inlier_threshold is None else {"inlier_threshold": inlier_threshold}
            self.rec = Recognizer.from_index(index_dir, device=device, **overrides)
            self.db, self.fx = self.rec.db, self.rec.fx
        else:
            self.db = IndexReader.open(index_dir)
            if self.db.size == 0:
                raise ValueError(f"{index_dir}: the index is empty (build it with build-index)")
            self.fx = FeatureExtractor.for_index(self.db, device=device, need_local=False)
        self.k, self.qe, self.verify_top = int(k), int(qe), int(verify_top)
        self.inlier_threshold = int(self.rec.conf["inlier_threshold"]) if self.rec else None

    @property
    def params(self) -> dict[str, Any]:
        """What shapes a ranking (stored in the partial file's header; a resume must match it)."""
        return {"k": self.k, "qe": self.qe, "verify_top": self.verify_top, "inlier_threshold": self.inlier_threshold,
                "match_conf": self.rec.match_conf if self.rec else None}

    def rank(self, features: Features) -> tuple[list[str], list[float], list[int]]:
        """(index image ids, cosine scores, inliers (-1: not verified)) of one query, best first."""
        k = min(self.k, self.db.size)
        q = features.global_desc.astype(np.float32)
        D, I = self.db.search(q[None], k)
        if self.qe:
            top = I[0][: self.qe]
            top = top[top >= 0]
            expanded = q + self.db.global_descriptors(top).sum(axis=0)
            D, I = self.db.search(expanded[None] / max(float(np.linalg.norm(expanded)), 1e-12), k)
        valid = I[0] >= 0
        rows, scores = I[0][valid], D[0][valid]
        if self.qe and len(rows):
            scores = self.db.global_descriptors(rows) @ q  # the query's own similarity, not the expanded one's
        inliers = np.full(len(rows), -1, np.int64)
        if self.verify_top and len(rows):
            rec = self.rec
            short = rows[: self.verify_top]
            # Recognizer._reference_local: stored features, or extracted on demand and cached
            loaders = [lambda r=int(r): rec._reference_local(r) for r in short]
            results = verify_many(features.local, loaders, rec.match_conf or None)
            inliers[: len(short)] = [r.inliers if r is not None else 0 for r in results]
            verified = [i for i in range(len(short)) if inliers[i] >= self.inlier_threshold]
            # verified first (most inliers, then global rank), then everything else in global order
            verified.sort(key=lambda i: (-inliers[i], i))
            rest = set(range(len(rows))) - set(verified)
            order = verified + sorted(rest)
            rows, scores, inliers = rows[order], scores[order], inliers[order]
        ids = self.db.rows(rows)[0] if len(rows) else []
        return [str(i) for i in ids], [round(float(s), 6) for s in scores], [int(x) for x in inliers]


def _read_partial(path: Path, header: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Finished rows of an earlier run with the same header; refuses a file made otherwise."""
    if not path.is_file():
        return {}
    records: dict[str, dict[str, Any]] = {}
    old = None
    for obj in read_jsonl(path):
        if old is None:
            old = obj
            diff = [k for k in header if k != "index" and obj.get(k) != header[k]]
            if diff:
                raise ValueError(f"{path} was made with other settings ({', '.join(diff)} differ); "
                                 "delete it or choose another output")
        else:
            records[obj["id"]] = obj
    return records


def run(
    ranker: Ranker, ids: Sequence[str], paths: Sequence[str], partial: Path, progress: bool = True,
    num_workers: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Rank every query, resuming from ``partial``; {id: {"id", "path", "images", "scores", "inliers", "error"}}."""
    db = ranker.db
    header = {"retrieval_version": PARTIAL_VERSION, "index": str(Path(db.path).resolve()),
              "index_id": db.manifest.get("index_id"), "index_created": db.manifest.get("created"),
              "index_images": int(db.size), "params": ranker.params}
    records = _read_partial(partial, header)
    partial.parent.mkdir(parents=True, exist_ok=True)
    # Rewrite without a possibly truncated last line, atomically, before appending.
    with atomic_output(partial) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for r in records.values():
            f.write(json.dumps(r) + "\n")
    # failed queries are retried (the file may have been fixed); a row made from another file is redone
    todo = [i for i in range(len(ids)) if not (ids[i] in records and not records[ids[i]]["error"]
                                               and records[ids[i]]["path"] == paths[i])]
    if len(ids) - len(todo):
        logger.info("%s: %d of %d queries already done, resuming", partial, len(ids) - len(todo), len(ids))
    bar = tqdm(total=len(todo), desc="queries", unit="img", disable=not progress or bool(os.environ.get("TQDM_DISABLE")))
    todo_paths = [paths[i] for i in todo]
    with open(partial, "a", encoding="utf-8") as f:
        for pos, res in ranker.fx.iter_paths(todo_paths, num_workers=num_workers):
            qid = ids[todo[pos]]
            start = time.perf_counter()
            if isinstance(res, str):
                logger.warning("query %s skipped: %s", qid, res)
                record = {"id": qid, "path": todo_paths[pos], "images": [], "scores": [], "inliers": [], "error": res}
            else:
                images, scores, inliers = ranker.rank(res)
                record = {"id": qid, "path": todo_paths[pos], "images": images, "scores": scores, "inliers": inliers,
                          "error": None, "seconds": round(time.perf_counter() - start + sum(res.timings.values()), 4)}
            f.write(json.dumps(record) + "\n")
            f.flush()
            records[qid] = record
            bar.update(1)
    bar.close()
    return {q: records[q] for q in ids}


def write_retrieval_submission(rankings: Mapping[str, Sequence[str]], ids: Sequence[str], out_csv: str | Path) -> Path:
    """Kaggle retrieval submission ``id,images`` (space-separated, best first), one row per id, atomically."""
    out = Path(out_csv)
    with atomic_output(out, keep_suffix=True) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "images"])
        for qid in ids:
            writer.writerow([qid, " ".join(rankings.get(qid, ()))])
    return out


def read_retrieval_solution(csv_path: str | Path) -> dict[str, frozenset[str]]:
    """A ``retrieval_solution_v2.1.csv``-style file: ``id,images[,Usage]`` -> {query id: relevant index ids}.

    ``images`` is space-separated; rows marked ``Usage`` = ``Ignored`` and ``None``/empty ``images`` have
    no relevant image (left out of mAP@100, as in the challenge).
    """
    df = read_table(csv_path, required=("id", "images"))
    usage = df["Usage"] if "Usage" in df.columns else [""] * len(df)
    return {q: frozenset() if u.strip().lower() == "ignored" else frozenset(v.split()) - {"None"}
            for q, v, u in zip(df["id"], df["images"], usage)}


def relevant_from_labels(db: IndexReader, labels: Mapping[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """Relevant images of each labelled query: the index images of its landmark(s) (none for a non-landmark)."""
    wanted = set().union(*labels.values()) if labels else set()
    by_landmark: dict[str, set[str]] = {}
    chunk = 1 << 17
    ids_col, lm_col = db.column("id"), db.column("landmark_id")
    for a in range(0, db.size, chunk):
        rows = np.arange(a, min(a + chunk, db.size))
        for i, lm in zip(ids_col[rows], lm_col[rows]):
            if lm and lm in wanted:
                by_landmark.setdefault(str(lm), set()).add(str(i))
    return {q: frozenset().union(*(by_landmark.get(lm, set()) for lm in s)) if s else frozenset() for q, s in labels.items()}


def main(
    index_dir: str | Path, queries_csv: str | Path, images_dir: str | Path, out_csv: str | Path,
    k: int = metrics.RETRIEVAL_K, qe: int = 0, verify_top: int = 0, inlier_threshold: int | None = None,
    device: str | None = None, progress: bool = True, num_workers: int | None = None,
) -> dict[str, Any]:
    """Rank the index for every query id of ``queries_csv`` (column ``id``) and write the retrieval submission."""
    table = read_table(queries_csv, required=("id",))
    ids = list(table["id"])
    paths = query_paths(ids, images_dir)
    ranker = Ranker(index_dir, k=k, qe=qe, verify_top=verify_top, inlier_threshold=inlier_threshold, device=device)
    records = run(ranker, ids, paths, partial_path_for(out_csv), progress=progress, num_workers=num_workers)
    write_retrieval_submission({q: r["images"] for q, r in records.items()}, ids, out_csv)
    stats = {"queries": len(ids), "unreadable": sum(1 for r in records.values() if r["error"]), "out": str(out_csv),
             **ranker.params}
    logger.info("query: %s", stats)
    return stats


def evaluate(
    index_dir: str | Path, queries_csv: str | Path, images_dir: str | Path, out_dir: str | Path,
    solution_csv: str | Path | None = None, k: int = metrics.RETRIEVAL_K, qe: int = 0, verify_top: int = 0,
    inlier_threshold: int | None = None, device: str | None = None, progress: bool = True,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """mAP@100 of the ranking on labelled queries; writes report.json, retrieval.csv and per_query.csv.

    Relevant images: with ``solution_csv`` (``retrieval_solution_v2.1.csv`` style) its lists; otherwise the
    index images of the query's landmark(s) from ``queries_csv``'s labels (``id,landmark_id`` or
    ``id,landmarks``). Only queries with a relevant image are ranked and scored, as in the challenge.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranker = Ranker(index_dir, k=k, qe=qe, verify_top=verify_top, inlier_threshold=inlier_threshold, device=device)
    if solution_csv is not None:
        asked = list(read_table(queries_csv, required=("id",))["id"])
        full = read_retrieval_solution(solution_csv)
        unknown = [q for q in asked if q not in full]
        if unknown:
            logger.warning("%d queries of %s are not in %s (left out), e.g. %s", len(unknown), queries_csv, solution_csv, unknown[0])
        relevant = {q: full[q] for q in asked if q in full}
    else:
        relevant = relevant_from_labels(ranker.db, solution_dict(read_solution(queries_csv)))
    ids = sorted(q for q, s in relevant.items() if s)
    if not ids:
        raise ValueError(f"{solution_csv or queries_csv}: no query has a relevant index image; nothing to score")
    leaked = sorted(q for q, row in zip(ids, ranker.db.find_rows(ids)) if row >= 0)
    if leaked:
        logger.warning("%d query ids are also index images (e.g. %s): each finds itself; build the index from "
                       "split's index.csv", len(leaked), leaked[0])
    records = run(ranker, ids, query_paths(ids, images_dir), out_dir / (RETRIEVAL_FILE + ".partial.jsonl"),
                  progress=progress, num_workers=num_workers)
    rankings = {q: r["images"] for q, r in records.items()}
    write_retrieval_submission(rankings, ids, out_dir / RETRIEVAL_FILE)
    with atomic_output(out_dir / "per_query.csv", keep_suffix=True) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "ap_at_100", "n_relevant", "first_relevant_rank"])
        for q in ids:
            first = next((n for n, i in enumerate(rankings[q][:k], start=1) if i in relevant[q]), "")
            writer.writerow([q, round(metrics.average_precision_at_k(rankings[q], relevant[q], metrics.RETRIEVAL_K), 6),
                             len(relevant[q]), first])
    seconds = [r["seconds"] for r in records.values() if r.get("seconds") is not None]
    report = {
        "task": "retrieval",
        "map_at_100": round(metrics.map_at_k(rankings, relevant, metrics.RETRIEVAL_K), 6),
        "n_queries_scored": len(ids),
        "n_queries_left_out": len(relevant) - len(ids),
        "n_unreadable_queries": sum(1 for r in records.values() if r["error"]),
        "relevant_from": str(solution_csv) if solution_csv is not None else f"labels of {queries_csv}",
        "index": str(index_dir), "queries": str(queries_csv), "ranking": ranker.params,
        "median_ms_per_query": round(1000 * float(np.median(seconds)), 1) if seconds else None,
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report
