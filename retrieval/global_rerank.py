"""Training-free improvements of global retrieval after the search: query expansion and re-ranking.

Pure numpy functions over L2-normalised descriptors (rows), so that they are testable without a model and the
same on every path. Each is measured on real photos by ``benchmarks/bench_shortlist.py`` before it is used:

- :func:`alpha_qe`: alpha query expansion (Radenovic et al., TPAMI 2018): the query is replaced by the
  similarity-weighted mean (weights ``sim ** alpha``) of itself and its first ``k`` neighbours.
- :func:`dba`: database-side augmentation (Arandjelovic & Zisserman 2012; alpha-weighted as in
  Radenovic et al.): every reference is replaced by the weighted mean of itself and its ``k`` nearest references.
- :func:`superglobal_rerank`: SuperGlobal-style re-ranking (Shao et al., ICCV 2023) of the first ``m``
  neighbours: each of them is refined with its own ``k`` nearest neighbours among the shortlist, the query
  with its ``k`` first neighbours, and the final score is the mean of (query . refined neighbour) and
  (refined query . neighbour).

With one- or two-image landmarks the common case, ``k`` must stay small (1 or 2): a larger k averages in
images of other landmarks.
"""
from __future__ import annotations

import numpy as np


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def weighted_mean(center: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, alpha: float) -> np.ndarray:
    """L2-normalised ``center + sum_i max(sim_i, 0) ** alpha * neighbour_i`` (center: (d,), neighbours: (k, d))."""
    w = np.clip(np.asarray(sims, np.float32), 0, None) ** float(alpha)
    return _normalize(center + (w[:, None] * neighbours).sum(0))


def alpha_qe(q: np.ndarray, xb: np.ndarray, sims: np.ndarray, rows: np.ndarray, k: int = 1, alpha: float = 3.0) -> np.ndarray:
    """Alpha query expansion of one query ``q`` (d,) from its search result (``sims``, ``rows`` into ``xb``)."""
    k = min(int(k), len(rows))
    if k <= 0:
        return q
    return weighted_mean(q, xb[rows[:k]], sims[:k], alpha)


def dba(xb: np.ndarray, k: int = 1, alpha: float = 3.0) -> np.ndarray:
    """Database-side augmentation of every row of ``xb`` (n, d) with its ``k`` nearest other rows (exact)."""
    if k <= 0 or len(xb) < 2:
        return xb.copy()
    k = min(int(k), len(xb) - 1)
    s = xb @ xb.T
    np.fill_diagonal(s, -np.inf)
    idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
    w = np.clip(np.take_along_axis(s, idx, axis=1), 0, None) ** float(alpha)
    return _normalize(xb + np.einsum("nk,nkd->nd", w, xb[idx]))


def superglobal_rerank(q: np.ndarray, xm: np.ndarray, k: int = 1, alpha: float = 3.0) -> np.ndarray:
    """New scores of a query's first ``m`` neighbours ``xm`` (m, d), SuperGlobal-style.

    Each neighbour is refined with its ``k`` nearest others among ``xm``; the query with its first ``k``
    neighbours. Score = (q . refined_x + refined_q . x) / 2. Returns (m,) scores (higher is better).
    """
    m = len(xm)
    if m == 0 or k <= 0:
        return xm @ q
    sims_q = xm @ q
    order = np.argsort(-sims_q, kind="stable")
    kq = min(int(k), m)
    q_ref = weighted_mean(q, xm[order[:kq]], sims_q[order[:kq]], alpha)
    x_ref = dba(xm, k, alpha) if m > 1 else xm
    return 0.5 * (x_ref @ q + xm @ q_ref)
