"""Model-free selection of a decision parameter (e.g. the inlier threshold).

The caller runs the system once and derives, for every candidate value ``v``
of the parameter, the predictions that value would give:
``predictions_by_value[v] = {query id: prediction}``. This module scores the
candidates (:func:`sweep`), picks one (:func:`choose_value`) and estimates
honestly how well the picked value generalises (:func:`cross_validated_gap`):
the in-sample maximum over many candidates is optimistic by construction.

Tie-break (:func:`choose_value`): among the values whose GAP equals the best
one (within ``1e-12``), the lower median of the tied values, sorted. A flat
optimum is common for thresholds (no prediction changes between two
neighbouring values); its middle is the choice least sensitive to a shift of
the optimum between tuning and deployment data, where the smallest or largest
tied value sits right at the edge of the plateau. With two tied values the
lower one is taken, so the rule is deterministic and always a candidate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from eval import metrics
from eval.metrics import SubmissionRow, Solution

logger = logging.getLogger(__name__)

TIE_ATOL = 1e-12  # GAPs closer than this are ties (summation-order noise)


@dataclass
class PredictionMatrix:
    """Predictions of every candidate value for every query, as arrays (what tuning at Kaggle scale needs).

    ``conf[v, q]`` is the confidence of value ``values[v]``'s answer to query ``query_ids[q]`` (NaN: no answer),
    ``correct[v, q]`` whether that answer is right. Query ids are sorted, so GAP's tie-break (confidence
    descending, then query id) is a sort by (-conf, column). Every function here accepts either this or the
    plain ``{value: {query id: prediction}}`` mapping (converted with :meth:`from_predictions`).
    """

    values: np.ndarray  # (V,) sorted candidate values
    query_ids: list[str]  # (Q,) sorted
    conf: np.ndarray  # (V, Q) float64, NaN = no answer
    correct: np.ndarray  # (V, Q) bool
    is_landmark: np.ndarray  # (Q,) bool: the query shows a landmark

    @classmethod
    def from_predictions(cls, predictions_by_value: Mapping[float, Mapping[str, SubmissionRow]], solution: Solution) -> "PredictionMatrix":
        values = _sorted_values(predictions_by_value)
        query_ids = sorted(solution)
        col = {q: i for i, q in enumerate(query_ids)}
        conf = np.full((len(values), len(query_ids)), np.nan)
        correct = np.zeros(conf.shape, bool)
        for v, value in enumerate(values):
            for q, pred in predictions_by_value[value].items():
                if q not in col:
                    raise ValueError(f"prediction(s) for queries not in the solution, e.g. {q!r}")
                if pred is not None:
                    conf[v, col[q]] = float(pred[1])
                    correct[v, col[q]] = pred[0] in solution[q]
        is_landmark = np.array([len(solution[q]) > 0 for q in query_ids], bool)
        return cls(np.asarray(values, float), query_ids, conf, correct, is_landmark)

    def mask(self, query_ids: Iterable[str] | None) -> np.ndarray:
        """(Q,) bool selecting ``query_ids`` (all when None)."""
        if query_ids is None:
            return np.ones(len(self.query_ids), bool)
        col = {q: i for i, q in enumerate(self.query_ids)}
        ids = list(query_ids)
        missing = [q for q in ids if q not in col]
        if missing:
            raise ValueError(f"{len(missing)} query id(s) not in the solution, e.g. {sorted(missing)[0]!r}")
        out = np.zeros(len(self.query_ids), bool)
        out[[col[q] for q in ids]] = True
        return out

    def gap(self, v: int, mask: np.ndarray) -> float:
        """GAP of value index ``v`` over the selected queries (as :func:`eval.metrics.gap`)."""
        m = int(self.is_landmark[mask].sum())
        if m == 0:
            raise ValueError("GAP is undefined: no query with a landmark (M == 0)")
        order = self._order(v)
        order = order[mask[order]]
        rel = self.correct[v, order]
        ranks = np.arange(1, len(order) + 1)
        return float((rel * np.cumsum(rel) / ranks).sum() / m)

    def _order(self, v: int) -> np.ndarray:
        """Answered queries of value ``v`` in GAP order (confidence descending, then query id): sorted once."""
        cache = self.__dict__.setdefault("_orders", {})
        if v not in cache:
            idx = np.flatnonzero(~np.isnan(self.conf[v]))
            cache[v] = idx[np.lexsort((idx, -self.conf[v, idx]))]
        return cache[v]

    def accepted_counts(self, v: int, mask: np.ndarray, accept_confidence: float) -> tuple[int, int]:
        """(wrong, correct) answers with confidence >= ``accept_confidence`` among the selected queries."""
        acc = mask & (np.nan_to_num(self.conf[v], nan=-np.inf) >= accept_confidence)
        correct = int((acc & self.correct[v]).sum())
        return int(acc.sum()) - correct, correct

    def as_dicts(self, v: int, mask: np.ndarray | None = None) -> tuple[dict[str, SubmissionRow], dict[str, frozenset[str]]]:
        """An equivalent ``(predictions, solution)`` pair for value ``v`` (landmark "T" right, "F" wrong), for the
        dict-based metrics such as the bootstrap interval: every metric of it equals the original's."""
        keep = range(len(self.query_ids)) if mask is None else np.flatnonzero(mask)
        preds = {self.query_ids[q]: None if np.isnan(self.conf[v, q]) else ("T" if self.correct[v, q] else "F", float(self.conf[v, q]))
                 for q in keep}
        sol = {self.query_ids[q]: frozenset({"T"}) if self.is_landmark[q] else frozenset() for q in keep}
        return preds, sol


def _as_matrix(predictions_by_value: Any, solution: Solution) -> PredictionMatrix:
    if isinstance(predictions_by_value, PredictionMatrix):
        return predictions_by_value
    return PredictionMatrix.from_predictions(predictions_by_value, solution)


def _sorted_values(predictions_by_value: Mapping[float, Mapping[str, SubmissionRow]]) -> list[float]:
    if not predictions_by_value:
        raise ValueError("predictions_by_value is empty: no candidate value to evaluate")
    values = sorted(predictions_by_value)
    for v in values:
        if not math.isfinite(float(v)):
            raise ValueError(f"candidate values must be finite numbers, got {v!r}")
    return values


BOOTSTRAP_MAX_QUERIES = 2_000  # above this, sweep leaves the per-value intervals out (NaN): they cost seconds per value


def sweep(
    predictions_by_value: Mapping[float, Mapping[str, SubmissionRow]] | PredictionMatrix,
    solution: Solution,
    n_boot: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Score every candidate value.

    Returns a frame sorted by ``value`` with columns ``value, gap, gap_ci_lo,
    gap_ci_hi, top1_accuracy, nonlandmark_prediction_rate`` (95% bootstrap
    interval over landmark clusters, as ``evaluate``'s: the queries of one landmark are drawn together;
    same ``seed`` for every value so the intervals are comparable; NaN above
    :data:`BOOTSTRAP_MAX_QUERIES` queries).
    """
    pm = _as_matrix(predictions_by_value, solution)
    clusters = metrics.landmark_clusters({q: solution[q] for q in pm.query_ids})
    everything = pm.mask(None)
    n_landmark = int(pm.is_landmark.sum())
    n_non = len(pm.query_ids) - n_landmark
    rows = []
    for v, value in enumerate(pm.values):
        answered = ~np.isnan(pm.conf[v])
        lo = hi = math.nan
        if len(pm.query_ids) <= BOOTSTRAP_MAX_QUERIES:
            lo, hi = metrics.bootstrap_gap_ci(*pm.as_dicts(v), n_boot=n_boot, seed=seed, clusters=clusters)
        rows.append(
            {
                "value": float(value),
                "gap": pm.gap(v, everything),
                "gap_ci_lo": lo,
                "gap_ci_hi": hi,
                "top1_accuracy": float((pm.correct[v] & pm.is_landmark).sum() / n_landmark) if n_landmark else math.nan,
                "nonlandmark_prediction_rate": float((answered & ~pm.is_landmark).sum() / n_non) if n_non else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=["value", "gap", "gap_ci_lo", "gap_ci_hi", "top1_accuracy", "nonlandmark_prediction_rate"])


def choose_value(
    predictions_by_value: Mapping[float, Mapping[str, SubmissionRow]] | PredictionMatrix,
    solution: Solution,
    query_ids: Iterable[str] | None = None,
    accept_confidence: float | None = None,
) -> tuple[float, float]:
    """The candidate value with the highest GAP, and that GAP.

    When ``query_ids`` is given, both predictions and solution are restricted
    to those queries first. Ties: lower median of the tied values (see the
    module docstring). With ``accept_confidence``, ties are first narrowed to
    the values with the fewest wrong *accepted* answers (confidence >= it: a
    non-landmark query answered, or a wrong landmark), then the most correct
    accepted ones. GAP cannot see wrong answers ranked below every correct one,
    so without this a flat GAP curve lets the threshold drift to values at
    which a user-facing "landmark / no landmark" decision accepts junk.

    Raises:
        ValueError: no candidates, ``query_ids`` not in the solution, or no
            landmark query among the selected queries.
    """
    pm = _as_matrix(predictions_by_value, solution)
    selected = pm.mask(query_ids)
    gaps_a = np.array([pm.gap(v, selected) for v in range(len(pm.values))])
    tied = np.flatnonzero(gaps_a >= gaps_a.max() - TIE_ATOL)
    if accept_confidence is not None:
        accepts = {int(i): pm.accepted_counts(int(i), selected, accept_confidence) for i in tied}
        fewest = min((w, -c) for w, c in accepts.values())
        tied = np.asarray([i for i in tied if (accepts[int(i)][0], -accepts[int(i)][1]) == fewest])
    best = int(tied[(len(tied) - 1) // 2])
    return float(pm.values[best]), float(gaps_a[best])


def assign_folds(solution: Solution, n_folds: int = 5, seed: int = 0,
                 groups: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Deterministic stratified K-fold assignment of queries: ``{query id: fold}``.

    Without ``groups``: landmark and non-landmark queries are shuffled separately (one generator seeded with
    ``seed``, over sorted ids) and dealt round-robin, so fold sizes differ by at most one in each stratum and
    every fold has a landmark query whenever there are at least ``n_folds`` of them.

    With ``groups`` (query id -> group key, e.g. :func:`eval.metrics.landmark_clusters`): whole groups go to
    one fold, so that the queries of one landmark are never on both sides of a split (what a value tuned on
    some landmarks meets on new ones). In each stratum the groups are shuffled, then placed largest first on
    the fold with the fewest queries of that stratum so far (ties: the lowest fold number).
    """
    if int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    rng = np.random.default_rng(seed)
    folds: dict[str, int] = {}
    offset = 0
    for stratum in (True, False):
        ids = sorted(q for q, s in solution.items() if (len(s) > 0) == stratum)
        if groups is None:
            for k, i in enumerate(rng.permutation(len(ids))):
                folds[ids[i]] = (offset + k) % int(n_folds)
            offset += len(ids)  # continue the deal where the first stratum stopped
            continue
        members: dict[str, list[str]] = {}
        for q in ids:
            members.setdefault(repr(groups[q]), []).append(q)
        keys = sorted(members)
        keys = [keys[i] for i in rng.permutation(len(keys))]
        keys.sort(key=lambda g: -len(members[g]))  # stable: shuffled order among equal sizes
        load = np.zeros(int(n_folds), np.int64)
        for g in keys:
            f = int(np.argmin(load))
            load[f] += len(members[g])
            for q in members[g]:
                folds[q] = f
    return folds


def cross_validated_gap(
    predictions_by_value: Mapping[float, Mapping[str, SubmissionRow]] | PredictionMatrix,
    solution: Solution,
    n_folds: int = 5,
    seed: int = 0,
    accept_confidence: float | None = None,
    groups: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """K-fold estimate of the GAP of the tuning procedure itself (``accept_confidence``: see :func:`choose_value`;
    ``groups``: folds keep each group's queries together, see :func:`assign_folds`).

    For each fold the value is chosen (:func:`choose_value`) on the other
    folds only, then scored on the held-out fold. When there are fewer
    landmark queries than ``n_folds``, the number of folds is reduced to the
    number of landmark queries (logged), so every fold and every training
    side has a landmark query; fewer than two landmark queries is an error.

    Returns:
        ``cv_gap`` (mean held-out GAP), ``cv_gap_std`` (population std over
        folds), ``cv_gap_pooled`` (GAP of all held-out predictions together,
        each fold using its own chosen value), ``n_folds``, ``folds`` (one dict
        per fold: ``fold, chosen_value, train_gap, heldout_gap, n_queries``),
        ``in_sample_value``, ``in_sample_gap``.
    """
    if int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    n_landmark = sum(1 for s in solution.values() if len(s) > 0)
    if groups is not None:  # folds are made of groups: what can be spread is the landmark groups
        n_landmark = min(n_landmark, len({repr(groups[q]) for q, s in solution.items() if len(s) > 0}))
    if n_landmark < 2:
        raise ValueError(f"cross-validation needs at least 2 landmark queries, the solution has {n_landmark}")
    k = int(n_folds)
    if n_landmark < k:
        logger.warning("only %d landmark queries: using %d folds instead of %d", n_landmark, n_landmark, k)
        k = n_landmark
    fold_of = assign_folds(solution, n_folds=k, seed=seed, groups=groups)
    pm = _as_matrix(predictions_by_value, solution)
    values = list(pm.values)

    folds = []
    pooled_conf = np.full(len(pm.query_ids), np.nan)
    pooled_correct = np.zeros(len(pm.query_ids), bool)
    for f in range(k):
        held = {q for q, g in fold_of.items() if g == f}
        train_ids = [q for q, g in fold_of.items() if g != f]
        chosen, train_gap = choose_value(pm, solution, query_ids=train_ids, accept_confidence=accept_confidence)
        v = values.index(chosen)
        held_mask = pm.mask(held)
        held_gap = pm.gap(v, held_mask)
        pooled_conf[held_mask] = pm.conf[v, held_mask]
        pooled_correct[held_mask] = pm.correct[v, held_mask]
        folds.append(
            {
                "fold": f,
                "chosen_value": chosen,
                "train_gap": train_gap,
                "heldout_gap": held_gap,
                "n_queries": len(held),
            }
        )
        logger.debug("fold %d: chose %g (train GAP %.4f), held-out GAP %.4f", f, chosen, train_gap, held_gap)
    heldout = np.array([fd["heldout_gap"] for fd in folds])
    in_value, in_gap = choose_value(pm, solution, accept_confidence=accept_confidence)
    pooled = PredictionMatrix(pm.values[:1], pm.query_ids, pooled_conf[None], pooled_correct[None], pm.is_landmark)
    result = {
        "cv_gap": float(heldout.mean()),
        "cv_gap_std": float(heldout.std()),
        "cv_gap_pooled": pooled.gap(0, pm.mask(None)),
        "n_folds": k,
        "folds": folds,
        "in_sample_value": in_value,
        "in_sample_gap": in_gap,
    }
    logger.info(
        "tuning over %d values: in-sample best %g (GAP %.4f), %d-fold CV GAP %.4f +- %.4f",
        len(values),
        in_value,
        in_gap,
        k,
        result["cv_gap"],
        result["cv_gap_std"],
    )
    return result
