"""``predict``: a Kaggle recognition submission for a folder of query images.

Streams the queries with a progress bar; per-query evidence goes to
``<out>.evidence.jsonl`` as it is computed, so an interrupted run resumes
where it stopped. The submission CSV itself is written atomically at the end.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from retrieval.recognize import Recognizer, submission_answer

from .evaluate import query_paths
from .csv_io import read_table, write_submission
from .evidence import collect_evidence

logger = logging.getLogger(__name__)


def evidence_path_for(out_csv: str | Path) -> Path:
    """Where predict keeps its resumable per-query evidence."""
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.name + ".evidence.jsonl")


def main(
    index_dir: str | Path,
    queries_csv: str | Path,
    images_dir: str | Path,
    out_csv: str | Path,
    device: str | None = None,
    keep_guesses: bool = True,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
    num_workers: int | None = None,
    engine: str = "local",
    ray_options: Any = None,
) -> dict[str, Any]:
    """Recognise every query id of ``queries_csv`` (column ``id``); write ``id,landmarks``.

    ``engine="ray"`` recognises on Ray actors (``ray_options``: :class:`engines.RayOptions`);
    the evidence file and the submission are written here, as with the local engine.
    """
    from engines import check_engine

    check_engine(engine)
    table = read_table(queries_csv, required=("id",))
    ids = list(table["id"])
    paths = query_paths(ids, images_dir)
    rec = Recognizer.from_index(index_dir, device=device, **dict(overrides or {}))
    records = collect_evidence(rec, ids, paths, evidence_path_for(out_csv), verify=True, early_exit=True,
                               progress=progress, num_workers=num_workers, engine=engine, ray_options=ray_options,
                               device=device)
    predictions = {}
    unreadable = 0
    for qid, r in records.items():  # one record at a time, read back from the evidence file
        predictions[qid] = None if r["evidence"] is None else submission_answer(rec.decide(r["evidence"]), keep_guesses)
        unreadable += bool(r["error"])
    write_submission(predictions, ids, out_csv)
    n_verified = sum(1 for p in predictions.values() if p is not None and p[1] >= 0.5)
    stats = {
        "queries": len(ids),
        "verified": n_verified,
        "guesses": sum(1 for p in predictions.values() if p is not None) - n_verified,
        "unreadable": unreadable,
        "out": str(out_csv),
    }
    logger.info("predict: %s", stats)
    return stats
