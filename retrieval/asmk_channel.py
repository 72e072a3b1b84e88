"""The ASMK retrieval channel: local-feature retrieval beside the global kNN, and how its landmarks join the candidates.

An index built with ``build-index --asmk`` holds an ASMK inverted file over its stored local descriptors
(``index/asmk_store.py``). A query's own local features (the primary set, extracted for verification anyway)
are searched in it for their :data:`ASMK_IMAGES` most similar references, and a landmark's ASMK score is its
**best** image's (fair to class size, as the global vote: a sum over a landmark's images would favour the
landmarks with many).

The merge rule (:func:`merge_candidates`) keeps the global candidates as they are, in their order, and
**appends** up to ``asmk_candidates`` ASMK landmarks that the global vote did not propose, in ASMK order:
appending cannot push a global candidate down, so recall of the global channel is never lost (measured on
devset-large: "plain + up to 3 ASMK landmarks appended" kept every rank, while reciprocal-rank fusion of the
two rankings lost three firsts; docs/figures.md "The shortlist"). A global candidate that ASMK also ranks
among its first ``num_candidates`` landmarks names both channels. An appended landmark's vote is the global
vote of its ASMK images (the query's cosine to their stored global descriptors, scored as the global
candidates are), so confidences stay on the global scale; verification checks its best ASMK images.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from index.asmk_store import AsmkIndex
from index.reader import IndexReader

from .decision import Candidate

ASMK_IMAGES = 100  # references the inverted-file search returns per query (its top k)
GLOBAL, ASMK = "global", "asmk"


def asmk_landmarks(asmk: AsmkIndex, descriptors: np.ndarray, landmarks: Any,
                   k: int = ASMK_IMAGES) -> list[tuple[str, float, list[int]]]:
    """[(landmark, best image score, its rows in score order)] of a query's ASMK search, best first.

    ``landmarks``: the index's landmark column (indexable by an array of rows); non-landmark references ("")
    propose nothing."""
    scores, rows = asmk.search(descriptors, k)
    if not len(rows):
        return []
    per: dict[str, tuple[float, list[int]]] = {}
    for s, r, lm in zip(scores, rows, landmarks[rows]):
        if lm:
            per.setdefault(str(lm), (float(s), []))[1].append(int(r))
    return sorted(((lm, s, rs) for lm, (s, rs) in per.items()), key=lambda t: (-t[1], t[0]))


def merge_candidates(cands: Sequence[Candidate], ranking: Sequence[tuple[str, float, list[int]]], propose: int,
                     append: int, make: Callable[[str, list[int]], Candidate]) -> tuple[list[Candidate], dict[str, list[int]]]:
    """The candidate list with the ASMK channel: the global ``cands`` in their order (``"asmk"`` added to the
    channels of those among ASMK's first ``propose`` landmarks), then up to ``append`` ASMK landmarks that are
    not global candidates, in ASMK order, each made by ``make(landmark, rows)`` with channels ``["asmk"]``.

    Returns (candidates, {appended landmark: its ASMK rows in score order}).
    """
    out = list(cands)
    have = {c.landmark_id for c in out}
    top = {lm for lm, _, _ in ranking[: max(0, int(propose))]}
    for c in out:
        if c.landmark_id in top and ASMK not in c.channels:
            c.channels = [*c.channels, ASMK]
    extra: dict[str, list[int]] = {}
    for lm, _, rows in ranking:
        if len(extra) >= int(append):
            break
        if lm not in have:
            cand = make(lm, rows)
            cand.channels = [ASMK]
            out.append(cand)
            extra[lm] = rows
    return out, extra


def neighbours_with_asmk(db: IndexReader, table: list[dict[str, Any]], descriptors: np.ndarray,
                         k: int) -> list[dict[str, Any]]:
    """``query``'s neighbour rows with the ASMK channel's: a global row that ASMK also found among its first
    ``k`` says channel ``"global+asmk"``; ASMK's images the global search did not list follow (channel
    ``"asmk"``, ``score`` the ASMK similarity), up to ``k`` rows of them."""
    asmk = db.asmk()
    if asmk is None:
        return table
    scores, rows = asmk.search(descriptors, k)
    ids, landmarks, paths = db.rows(rows) if len(rows) else ([], [], [])
    listed = {row["id"]: row for row in table}
    out = list(table)
    for s, i, lm, p in zip(scores, ids, landmarks, paths):
        if i in listed:
            listed[i]["channel"] = f"{GLOBAL}+{ASMK}"
        else:
            out.append({"rank": len(out) + 1, "id": i, "landmark_id": lm or None, "score": round(float(s), 6),
                        "path": p, "channel": ASMK})
    return out

