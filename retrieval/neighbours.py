"""Nearest reference images of query photos (the ``query`` command)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from index.reader import IndexReader

from .asmk_channel import neighbours_with_asmk
from .extract import FeatureExtractor

logger = logging.getLogger(__name__)


def neighbours_table(db: IndexReader, scores: np.ndarray, rows: np.ndarray) -> list[dict[str, Any]]:
    """Rows of one query's search result as dicts: rank, id, landmark_id (None = non-landmark), score, path and
    channel (the retrieval channel that found the image: "global", the global descriptor's kNN search; an index
    built with ``--asmk`` adds its local-feature retrieval's rows, :func:`~retrieval.asmk_channel.neighbours_with_asmk`)."""
    valid = [(rank, s, int(r)) for rank, (s, r) in enumerate(zip(scores, rows), start=1) if r >= 0]
    ids, landmarks, paths = db.rows(np.array([r for _, _, r in valid], dtype=np.int64))  # just these rows
    return [
        {"rank": rank, "id": i, "landmark_id": lm or None, "score": round(float(score), 6), "path": p,
         "channel": "global"}
        for (rank, score, _), i, lm, p in zip(valid, ids, landmarks, paths)
    ]


def main(
    index_dir: str | Path | IndexReader, images: Sequence[str | Path], k: int = 10, device: str | None = None,
    num_workers: int | None = 0,
) -> list[dict[str, Any]]:
    """Search the index for each image. Returns one dict per image, in order:
    ``{"image", "neighbours": [...]}``, or ``{"image", "error"}`` for an unreadable image.

    ``index_dir``: an index directory, or a reader the caller already holds (and closes), so that what else
    the caller reads from the index (its landmark names) comes through the same open index."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    db = index_dir if isinstance(index_dir, IndexReader) else IndexReader.open(index_dir)
    if db.size == 0:
        raise ValueError(f"{db.path}: the index is empty (build it with build-index)")
    with_asmk = db.asmk() is not None  # the ASMK channel (build-index --asmk) searches the query's local features
    fx = FeatureExtractor.for_index(db, device=device, need_local=with_asmk)
    paths = [str(p) for p in images]
    results: list[dict[str, Any]] = []
    for pos, res in fx.iter_paths(paths, num_workers=num_workers):
        if isinstance(res, str):
            logger.error("%s", res)
            results.append({"image": paths[pos], "error": res})
            continue
        D, I = db.search(res.global_desc[None].astype(np.float32), min(k, db.size))
        table = neighbours_table(db, D[0], I[0])
        if with_asmk and res.local is not None:
            table = neighbours_with_asmk(db, table, res.local.descriptors, k)
        results.append({"image": paths[pos], "neighbours": table})
    return results
