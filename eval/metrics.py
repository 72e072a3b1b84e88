"""Recognition metrics: Kaggle GAP (micro-AP), bootstrap interval, and friends.

Conventions (shared by the whole ``eval`` package):

* image ids and landmark ids are ``str``;
* a prediction is ``(landmark_id, confidence)`` or ``None`` ("no landmark");
* a solution maps query id -> set of correct landmark ids; an empty set marks
  a non-landmark query (the correct answer is "no landmark").

Ranking and tie-break: all non-``None`` predictions are sorted by confidence,
descending, then by query id ascending (plain ``str`` order, i.e. by Unicode
code point). The result therefore never depends on dict insertion order.

All functions are pure: mappings in, numbers out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence, Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

SubmissionRow = tuple[str, float] | None
"""One query's row of a Kaggle submission: ``(landmark_id, confidence)``, or ``None`` for "no landmark" (not
to be confused with :class:`retrieval.decision.Prediction`, the recognizer's full answer)."""

Solution = Mapping[str, AbstractSet[str]]
"""Query id -> set of correct landmark ids (empty set: non-landmark query)."""

# Largest number of (resample x query) count cells held in memory at once.
_BOOT_CELLS = 4_000_000


@dataclass(frozen=True)
class _Ranked:
    """Predictions of one evaluation, in GAP order (see module docstring)."""

    query_ids: list[str]  # all solution query ids, sorted
    is_landmark: np.ndarray  # (n,) bool, solution set non-empty
    order: np.ndarray  # (p,) int, query index of the i-th ranked prediction
    landmark_ids: np.ndarray  # (p,) object, predicted landmark ids, ranked
    confidence: np.ndarray  # (p,) float64, ranked
    correct: np.ndarray  # (p,) bool, rel(i), ranked

    @property
    def n_landmark(self) -> int:
        """M: the number of queries with at least one correct landmark."""
        return int(self.is_landmark.sum())


def _check_solution(solution: Solution) -> None:
    for qid, answers in solution.items():
        if not isinstance(qid, str):
            raise TypeError(f"solution query ids must be str, got {type(qid).__name__} {qid!r}")
        if isinstance(answers, (str, bytes)) or not isinstance(answers, AbstractSet):
            raise TypeError(
                f"solution[{qid!r}] must be a set of landmark ids, got {type(answers).__name__} {answers!r}"
            )


def _check_prediction(qid: Any, pred: Any) -> tuple[str, float]:
    if not isinstance(qid, str):
        raise TypeError(f"prediction query ids must be str, got {type(qid).__name__} {qid!r}")
    if not isinstance(pred, (tuple, list)) or len(pred) != 2:
        raise TypeError(f"prediction for {qid!r} must be (landmark_id, confidence) or None, got {pred!r}")
    landmark, conf = pred
    if not isinstance(landmark, str):
        raise TypeError(f"prediction for {qid!r}: landmark id must be str, got {type(landmark).__name__} {landmark!r}")
    if landmark == "":
        raise ValueError(f"prediction for {qid!r} has an empty landmark id; use None for 'no landmark'")
    try:
        conf_f = float(conf)
    except (TypeError, ValueError):
        raise TypeError(f"prediction for {qid!r}: confidence must be a number, got {conf!r}") from None
    if math.isnan(conf_f):
        raise ValueError(f"prediction for {qid!r} has a NaN confidence")
    return landmark, conf_f


def _rank(predictions: Mapping[str, SubmissionRow], solution: Solution) -> _Ranked:
    """Validate inputs and put the predictions in GAP order."""
    _check_solution(solution)
    unknown = [q for q in predictions if q not in solution]
    if unknown:
        raise ValueError(
            f"{len(unknown)} prediction(s) for queries not in the solution, e.g. {sorted(map(str, unknown))[0]!r}"
        )
    query_ids = sorted(solution)
    position = {q: i for i, q in enumerate(query_ids)}
    is_landmark = np.fromiter((len(solution[q]) > 0 for q in query_ids), dtype=bool, count=len(query_ids))

    qidx: list[int] = []
    landmarks: list[str] = []
    confs: list[float] = []
    correct: list[bool] = []
    for qid, pred in predictions.items():
        if pred is None:
            continue
        landmark, conf = _check_prediction(qid, pred)
        qidx.append(position[qid])
        landmarks.append(landmark)
        confs.append(conf)
        correct.append(landmark in solution[qid])

    qidx_a = np.asarray(qidx, dtype=np.int64)
    conf_a = np.asarray(confs, dtype=np.float64)
    # query_ids is sorted, so the query index is the id's rank: the secondary
    # key "query id ascending" is "query index ascending".
    order = np.lexsort((qidx_a, -conf_a))
    return _Ranked(
        query_ids=query_ids,
        is_landmark=is_landmark,
        order=qidx_a[order],
        landmark_ids=np.asarray(landmarks, dtype=object)[order],
        confidence=conf_a[order],
        correct=np.asarray(correct, dtype=bool)[order],
    )


def _gap_from_ranked(ranked: _Ranked) -> float:
    m = ranked.n_landmark
    if m == 0:
        raise ValueError(
            "GAP is undefined: the solution has no landmark query (M == 0); "
            "every query's set of correct landmarks is empty"
        )
    rel = ranked.correct.astype(np.float64)
    precision = np.cumsum(rel) / np.arange(1, rel.size + 1)
    return float(np.dot(precision, rel) / m)


def gap(predictions: Mapping[str, SubmissionRow], solution: Solution) -> float:
    """Kaggle Global Average Precision (micro-AP) of one-or-no prediction per query.

    GAP = (1/M) * sum_i P(i) * rel(i) over the non-``None`` predictions sorted
    by confidence descending, ties by query id ascending. M is the number of
    queries whose solution set is non-empty; a query absent from
    ``predictions`` counts as no answer.

    Raises:
        ValueError: a prediction for a query not in ``solution``, a NaN
            confidence, or M == 0.
    """
    return _gap_from_ranked(_rank(predictions, solution))


def ranked_predictions(predictions: Mapping[str, SubmissionRow], solution: Solution) -> pd.DataFrame:
    """The non-``None`` predictions in GAP order, one row each.

    Columns: ``rank`` (1-based), ``id``, ``landmark_id``, ``confidence``,
    ``correct`` (rel), ``is_landmark_query``, ``precision`` (P(rank)),
    ``cum_correct``.
    """
    ranked = _rank(predictions, solution)
    ids = np.asarray(ranked.query_ids, dtype=object)
    cum = np.cumsum(ranked.correct)
    ranks = np.arange(1, ranked.correct.size + 1)
    return pd.DataFrame(
        {
            "rank": ranks,
            "id": ids[ranked.order] if ranked.order.size else np.asarray([], dtype=object),
            "landmark_id": ranked.landmark_ids,
            "confidence": ranked.confidence,
            "correct": ranked.correct,
            "is_landmark_query": ranked.is_landmark[ranked.order],
            "precision": cum / np.maximum(ranks, 1),
            "cum_correct": cum,
        }
    )


def bootstrap_gap_ci(
    predictions: Mapping[str, SubmissionRow],
    solution: Solution,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    clusters: Mapping[str, Any] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval for GAP, resampling queries (or clusters of queries) with replacement.

    ``clusters`` maps query id -> cluster key; when given, whole clusters are drawn (a cluster bootstrap):
    queries of one landmark succeed or fail together (same index images, same confusers), so resampling
    them independently understates the spread. :func:`landmark_clusters` groups by true landmark.

    A query drawn k times counts k times: k copies of its prediction (if any)
    and k towards M. Copies of one query are adjacent in the ranking (same
    confidence, same id) and identical, so the order among them -- the draw
    position -- cannot change the value; the tie-break stays deterministic.

    Exact and vectorised: the ranking is computed once; a resample is a vector
    of counts per query. A block of c copies of a correct prediction placed
    after N predictions of which C are correct adds
    sum_{k=1..c} (C+k)/(N+k) = c - (N-C) * (H[N+c] - H[N]), H the harmonic
    numbers; a wrong one adds 0. Resamples with no landmark query (M == 0)
    are dropped.

    Returns:
        ``(lo, hi)``, the ``alpha/2`` and ``1-alpha/2`` percentiles.

    Raises:
        ValueError: bad ``n_boot``/``alpha``, or anything :func:`gap` rejects.
    """
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    ranked = _rank(predictions, solution)
    _gap_from_ranked(ranked)  # raise early on M == 0
    n = len(ranked.query_ids)
    n_boot = int(n_boot)

    rng = np.random.default_rng(seed)
    if clusters is None:
        cluster_of = np.arange(n)
    else:
        missing = [q for q in ranked.query_ids if q not in clusters]
        if missing:
            raise ValueError(f"clusters has no entry for query {missing[0]!r}")
        _, cluster_of = np.unique(np.array([repr(clusters[q]) for q in ranked.query_ids]), return_inverse=True)
    n_clusters = int(cluster_of.max()) + 1 if n else 0
    harmonic = np.zeros(1)  # H[0..m], grown to the largest resample actually drawn (not clusters x largest cluster)
    rel = ranked.correct
    is_landmark = ranked.is_landmark.astype(np.int64)
    batch = max(1, min(n_boot, _BOOT_CELLS // max(n, 1)))
    values = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, batch):
        b = min(batch, n_boot - start)
        draws = rng.integers(0, n_clusters, size=(b, n_clusters))
        draws += (np.arange(b) * n_clusters)[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * n_clusters).reshape(b, n_clusters)[:, cluster_of]
        m_b = counts @ is_landmark
        c = counts[:, ranked.order]  # (b, p) copies of each ranked prediction
        n_after = np.cumsum(c, axis=1)
        need = int(n_after[:, -1].max()) if n_after.size else 0
        if need >= len(harmonic):
            harmonic = np.concatenate(([0.0], np.cumsum(1.0 / np.arange(1, need + 1))))
        n_before = n_after - c
        c_rel = c * rel
        correct_before = np.cumsum(c_rel, axis=1) - c_rel
        block = c - (n_before - correct_before) * (harmonic[n_after] - harmonic[n_before])
        total = np.where(rel, block, 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            values[start : start + b] = np.where(m_b > 0, total / np.maximum(m_b, 1), np.nan)

    valid = values[~np.isnan(values)]
    if valid.size < n_boot:
        logger.info("bootstrap: %d of %d resamples had no landmark query and were dropped", n_boot - valid.size, n_boot)
    if valid.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.percentile(valid, [100.0 * alpha / 2, 100.0 * (1 - alpha / 2)])
    return (float(lo), float(hi))


def landmark_clusters(solution: Solution) -> dict[str, str]:
    """Bootstrap clusters: landmark queries grouped by their true landmark(s), each non-landmark query alone."""
    return {q: "lm:" + " ".join(sorted(s)) if len(s) else f"q:{q}" for q, s in solution.items()}


def top1_accuracy(predictions: Mapping[str, SubmissionRow], solution: Solution) -> float:
    """Fraction of landmark queries whose prediction is one of their correct landmarks.

    ``None`` or a missing prediction is wrong. ``nan`` when the solution has no
    landmark query.
    """
    ranked = _rank(predictions, solution)
    m = ranked.n_landmark
    if m == 0:
        return math.nan
    return float(ranked.correct.sum() / m)


def nonlandmark_prediction_rate(predictions: Mapping[str, SubmissionRow], solution: Solution) -> float:
    """Fraction of non-landmark queries (empty solution) that got a non-``None`` prediction.

    ``nan`` when there is no non-landmark query.
    """
    ranked = _rank(predictions, solution)
    n_non = int((~ranked.is_landmark).sum())
    if n_non == 0:
        return math.nan
    return float((~ranked.is_landmark[ranked.order]).sum() / n_non)


def _landmark_only(predictions: Mapping[str, SubmissionRow], solution: Solution) -> tuple[dict, dict]:
    _rank(predictions, solution)  # same validation as everywhere else
    sol = {q: s for q, s in solution.items() if len(s) > 0}
    preds = {q: p for q, p in predictions.items() if q in sol}
    return preds, sol


def gap_landmark_queries_only(predictions: Mapping[str, SubmissionRow], solution: Solution) -> float:
    """GAP after removing the non-landmark queries from both predictions and solution."""
    preds, sol = _landmark_only(predictions, solution)
    return gap(preds, sol)


def _json_float(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def summary(
    predictions: Mapping[str, SubmissionRow],
    solution: Solution,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics of one evaluation as a JSON-serialisable dict (``nan`` -> ``None``).

    Keys: ``gap``, ``gap_ci95`` ([lo, hi], a cluster bootstrap over true landmarks), ``top1_accuracy``,
    ``nonlandmark_prediction_rate``, ``gap_landmark_queries_only``,
    ``n_queries``, ``n_landmark_queries``, ``n_nonlandmark_queries``,
    ``n_predictions`` (non-``None`` predictions).
    """
    ranked = _rank(predictions, solution)
    lo, hi = bootstrap_gap_ci(predictions, solution, n_boot=n_boot, seed=seed, alpha=0.05,
                              clusters=landmark_clusters(solution))
    n_landmark = ranked.n_landmark
    return {
        "gap": _json_float(_gap_from_ranked(ranked)),
        "gap_ci95": [_json_float(lo), _json_float(hi)],
        "top1_accuracy": _json_float(top1_accuracy(predictions, solution)),
        "nonlandmark_prediction_rate": _json_float(nonlandmark_prediction_rate(predictions, solution)),
        "gap_landmark_queries_only": _json_float(gap_landmark_queries_only(predictions, solution)),
        "n_queries": len(ranked.query_ids),
        "n_landmark_queries": n_landmark,
        "n_nonlandmark_queries": len(ranked.query_ids) - n_landmark,
        "n_predictions": int(ranked.order.size),
    }


# ----------------------------------------------------------------------------- retrieval: mAP@100

RETRIEVAL_K = 100
"""The retrieval challenge scores the first 100 index images of each query."""


def average_precision_at_k(ranked: Sequence[str], relevant: AbstractSet[str], k: int = RETRIEVAL_K) -> float:
    """AP@k of one ranked list: (1/min(m, k)) * sum_{i<=k} P(i) * rel(i), m = number of relevant images.

    A repeated id counts once, at its first position (later copies are neither relevant nor counted as
    ranks), so a list cannot score twice with the same image. ``relevant`` must be non-empty.
    """
    if not relevant:
        raise ValueError("AP@k is undefined for a query without relevant images")
    seen: set[str] = set()
    hits = 0
    total = 0.0
    rank = 0
    for image_id in ranked:
        if image_id in seen:
            continue
        seen.add(image_id)
        rank += 1
        if rank > k:
            break
        if image_id in relevant:
            hits += 1
            total += hits / rank
    return total / min(len(relevant), k)


def map_at_k(
    predictions: Mapping[str, Sequence[str]], solution: Mapping[str, AbstractSet[str]], k: int = RETRIEVAL_K,
) -> float:
    """Kaggle retrieval mAP@k: the mean of :func:`average_precision_at_k` over the queries with relevant images.

    ``predictions``: query id -> index image ids, best first (a query absent scores 0). ``solution``: query
    id -> the set of relevant index image ids. Queries whose set is empty are left out, as in the challenge;
    predictions for queries not in ``solution`` are ignored (GLDv2's test set holds such queries).

    Raises:
        ValueError: no query of ``solution`` has a relevant image.
    """
    scored = sorted(q for q, rel in solution.items() if rel)
    if not scored:
        raise ValueError("mAP@k is undefined: no query of the solution has a relevant image")
    for q in scored:
        if not isinstance(q, str):
            raise TypeError(f"solution query ids must be str, got {type(q).__name__} {q!r}")
    return float(sum(average_precision_at_k(predictions.get(q, ()), solution[q], k) for q in scored) / len(scored))
