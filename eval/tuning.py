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
from typing import Any

import numpy as np
import pandas as pd

from eval import metrics
from eval.metrics import Prediction, Solution

logger = logging.getLogger(__name__)

TIE_ATOL = 1e-12  # GAPs closer than this are ties (summation-order noise)


def _sorted_values(predictions_by_value: Mapping[float, Mapping[str, Prediction]]) -> list[float]:
    if not predictions_by_value:
        raise ValueError("predictions_by_value is empty: no candidate value to evaluate")
    values = sorted(predictions_by_value)
    for v in values:
        if not math.isfinite(float(v)):
            raise ValueError(f"candidate values must be finite numbers, got {v!r}")
    return values


def _restrict(
    predictions: Mapping[str, Prediction], solution: Solution, query_ids: set[str]
) -> tuple[dict[str, Prediction], dict[str, Any]]:
    unknown = [q for q in predictions if q not in solution]
    if unknown:
        raise ValueError(f"{len(unknown)} prediction(s) for queries not in the solution, e.g. {sorted(unknown)[0]!r}")
    sol = {q: solution[q] for q in query_ids}
    preds = {q: p for q, p in predictions.items() if q in query_ids}
    return preds, sol


def sweep(
    predictions_by_value: Mapping[float, Mapping[str, Prediction]],
    solution: Solution,
    n_boot: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Score every candidate value.

    Returns a frame sorted by ``value`` with columns ``value, gap, gap_ci_lo,
    gap_ci_hi, top1_accuracy, nonlandmark_prediction_rate`` (95% bootstrap
    interval, same ``seed`` for every value so the intervals are comparable).
    """
    rows = []
    for v in _sorted_values(predictions_by_value):
        preds = predictions_by_value[v]
        lo, hi = metrics.bootstrap_gap_ci(preds, solution, n_boot=n_boot, seed=seed)
        rows.append(
            {
                "value": float(v),
                "gap": metrics.gap(preds, solution),
                "gap_ci_lo": lo,
                "gap_ci_hi": hi,
                "top1_accuracy": metrics.top1_accuracy(preds, solution),
                "nonlandmark_prediction_rate": metrics.nonlandmark_prediction_rate(preds, solution),
            }
        )
    return pd.DataFrame(rows, columns=["value", "gap", "gap_ci_lo", "gap_ci_hi", "top1_accuracy", "nonlandmark_prediction_rate"])


def choose_value(
    predictions_by_value: Mapping[float, Mapping[str, Prediction]],
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
    values = _sorted_values(predictions_by_value)
    if query_ids is None:
        selected = set(solution)
    else:
        selected = set(query_ids)
        missing = selected - set(solution)
        if missing:
            raise ValueError(f"{len(missing)} query id(s) not in the solution, e.g. {sorted(missing)[0]!r}")
    gaps = []
    accepts = []
    for v in values:
        preds, sol = _restrict(predictions_by_value[v], solution, selected)
        gaps.append(metrics.gap(preds, sol))
        if accept_confidence is not None:
            accepted = [(q, p) for q, p in preds.items() if p is not None and p[1] >= accept_confidence]
            correct = sum(1 for q, p in accepted if p[0] in sol[q])
            accepts.append((len(accepted) - correct, -correct))
    gaps_a = np.asarray(gaps)
    tied = np.flatnonzero(gaps_a >= gaps_a.max() - TIE_ATOL)
    if accept_confidence is not None:
        fewest = min(accepts[i] for i in tied)
        tied = np.asarray([i for i in tied if accepts[i] == fewest])
    best = int(tied[(len(tied) - 1) // 2])
    return float(values[best]), float(gaps_a[best])


def assign_folds(solution: Solution, n_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Deterministic stratified K-fold assignment of queries: ``{query id: fold}``.

    Landmark and non-landmark queries are shuffled separately (one generator
    seeded with ``seed``, over sorted ids) and dealt round-robin, so fold sizes
    differ by at most one in each stratum and every fold has a landmark query
    whenever there are at least ``n_folds`` of them.
    """
    if int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    rng = np.random.default_rng(seed)
    folds: dict[str, int] = {}
    offset = 0
    for stratum in (True, False):
        ids = sorted(q for q, s in solution.items() if (len(s) > 0) == stratum)
        for k, i in enumerate(rng.permutation(len(ids))):
            folds[ids[i]] = (offset + k) % int(n_folds)
        offset += len(ids)  # continue the deal where the first stratum stopped
    return folds


def cross_validated_gap(
    predictions_by_value: Mapping[float, Mapping[str, Prediction]],
    solution: Solution,
    n_folds: int = 5,
    seed: int = 0,
    accept_confidence: float | None = None,
) -> dict[str, Any]:
    """K-fold estimate of the GAP of the tuning procedure itself (``accept_confidence``: see :func:`choose_value`).

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
    values = _sorted_values(predictions_by_value)
    if int(n_folds) != n_folds or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    n_landmark = sum(1 for s in solution.values() if len(s) > 0)
    if n_landmark < 2:
        raise ValueError(f"cross-validation needs at least 2 landmark queries, the solution has {n_landmark}")
    k = int(n_folds)
    if n_landmark < k:
        logger.warning("only %d landmark queries: using %d folds instead of %d", n_landmark, n_landmark, k)
        k = n_landmark
    fold_of = assign_folds(solution, n_folds=k, seed=seed)

    folds = []
    pooled: dict[str, Prediction] = {}
    for f in range(k):
        held = {q for q, g in fold_of.items() if g == f}
        train_ids = [q for q, g in fold_of.items() if g != f]
        chosen, train_gap = choose_value(predictions_by_value, solution, query_ids=train_ids,
                                         accept_confidence=accept_confidence)
        preds, sol = _restrict(predictions_by_value[chosen], solution, held)
        held_gap = metrics.gap(preds, sol)
        pooled.update(preds)
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
    in_value, in_gap = choose_value(predictions_by_value, solution, accept_confidence=accept_confidence)
    result = {
        "cv_gap": float(heldout.mean()),
        "cv_gap_std": float(heldout.std()),
        "cv_gap_pooled": metrics.gap(pooled, solution),
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
