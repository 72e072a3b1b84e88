"""The shortlist: where the true landmark ranks among a query's candidates, and what each retrieval channel costs.

Verification can only confirm a landmark that reaches the candidate list, so the first stage is measured on its
own: recall at 1, 5 and 10 of landmark queries (the true landmark among the first k candidates, in candidate
order), the number of landmark queries whose true landmark is among the candidates at all, and each query's
rank (None: not a candidate). Read from the evidence ``evaluate`` stores, so it costs no model run.

Channel costs: the median milliseconds per query of each retrieval channel that proposes candidates:
``global`` (the global descriptor, its kNN search and any re-ranking of the neighbours) and, for an index built
with ``--asmk``, ``asmk`` (the local-feature retrieval; its local features are verification's). A channel's timings are
the evidence timings named in :data:`CHANNEL_TIMINGS`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from retrieval.decision import Evidence

RECALL_KS = (1, 5, 10)
# The evidence timings (seconds) that make up each retrieval channel's cost per query.
CHANNEL_TIMINGS: dict[str, tuple[str, ...]] = {
    "global": ("global", "search", "rerank"),
    "asmk": ("asmk",),  # the query's ASMK aggregation, the inverted-file search and the merge (index option)
}


def true_rank(evidence: Evidence | None, truth: frozenset[str] | set[str]) -> int | None:
    """1-based rank of the first candidate that is a true landmark of the query (None: not a candidate)."""
    if evidence is None:
        return None
    for rank, cand in enumerate(evidence.candidates, start=1):
        if cand.landmark_id in truth:
            return rank
    return None


def channel_costs(timings: Sequence[Mapping[str, float] | None]) -> dict[str, float]:
    """Median milliseconds per query of each channel in :data:`CHANNEL_TIMINGS` that ran (queries with timings)."""
    out: dict[str, float] = {}
    for channel, keys in CHANNEL_TIMINGS.items():
        per_query = [sum(float(t[k]) for k in keys if k in t) for t in timings if t and any(k in t for k in keys)]
        if per_query:
            out[channel] = round(1000 * float(np.median(per_query)), 2)
    return out


def summary(ranks: Mapping[str, int | None], timings: Sequence[Mapping[str, float] | None] = (),
            ks: Sequence[int] = RECALL_KS) -> dict[str, Any]:
    """The report's ``shortlist`` section from the landmark queries' ranks ({query id: rank or None}).

    Returns ``{"n_landmark_queries", "n_among_candidates", "n_first", "recall": {"1": .., "5": .., "10": ..},
    "ranks": {query id: rank or None}, "channel_ms": {channel: median ms per query}}``.
    """
    n = len(ranks)
    values = list(ranks.values())
    recall = {str(k): (round(sum(r is not None and r <= k for r in values) / n, 4) if n else None) for k in ks}
    return {
        "n_landmark_queries": n,
        "n_among_candidates": sum(r is not None for r in values),
        "n_first": sum(r == 1 for r in values),
        "recall": recall,
        "ranks": dict(sorted(ranks.items())),
        "channel_ms": channel_costs(timings),
    }


def hard_queries(data: str | Path) -> dict[str, str]:
    """{query id: note} of a GLDv2-style folder's hard queries: those whose ``sources.csv`` note (devset-large's
    layout) says ``hard:``; {} without that file."""
    src = Path(data) / "sources.csv"
    if not src.is_file():
        return {}
    import pandas as pd

    df = pd.read_csv(src, dtype=str).fillna("")
    df = df[(df["split"] == "holdout") & df["note"].str.contains("hard:")]
    return dict(zip(df["id"], df["note"]))
