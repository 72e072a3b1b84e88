"""Reading solutions and labels, writing and reading Kaggle submissions (I/O).

Every CSV is read as text (``dtype=str``, no NA parsing) so ids such as
``0012`` or ``nan`` survive unchanged. Errors are ``ValueError`` naming the
file and, for a bad row, its 1-based line number in the file (the header is
line 1). Line numbers assume one record per line (no quoted newlines), which
holds for every GLDv2 / Kaggle file.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from eval.metrics import SubmissionRow
from index.manifest import atomic_output
from retrieval.data import read_table, unsafe_id_reason  # noqa: F401  (re-exported: shared table validation)

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


def read_solution(csv_path: PathLike) -> pd.DataFrame:
    """Read a solution in either format into columns ``id`` (str), ``landmarks`` (frozenset[str]).

    * GLDv2 ``id,landmark_id[,...]``: one landmark per row; empty ``landmark_id``
      is a non-landmark query; other columns (``url`` ...) are ignored.
    * Kaggle ``id,landmarks[,Usage]``: space-separated landmark ids, any of
      which is correct; empty is a non-landmark query.

    If a file has both columns, ``landmarks`` wins.
    """
    path = Path(csv_path)
    df = read_table(path, required=("id",))
    if "landmarks" in df.columns:
        sets = [frozenset(v.split()) for v in df["landmarks"]]
    elif "landmark_id" in df.columns:
        sets = []
        for value, line in zip(df["landmark_id"].str.strip(), df["_line"]):
            if len(value.split()) > 1:
                raise ValueError(
                    f"{path}, line {line}: landmark_id {value!r} holds several ids; "
                    "use the Kaggle 'landmarks' column for several correct answers"
                )
            sets.append(frozenset([value]) if value else frozenset())
    else:
        raise ValueError(
            f"{path}: missing required column(s); expected 'id' and one of 'landmark_id' or 'landmarks', "
            f"found {[c for c in df.columns if c != '_line']}"
        )
    out = pd.DataFrame({"id": df["id"].astype(object), "landmarks": pd.Series(sets, dtype=object)})
    logger.info(
        "read solution %s: %d queries, %d with a landmark", path, len(out), sum(1 for s in sets if s)
    )
    return out


def read_labels(csv_path: PathLike) -> pd.DataFrame:
    """Read an ``id,landmark_id`` table (GLDv2 train style) as strings.

    Returns columns ``id``, ``landmark_id`` (``""`` = non-landmark image);
    other columns are dropped. A ``landmark_id`` must be a single id.
    """
    path = Path(csv_path)
    df = read_table(path, required=("id", "landmark_id"))
    for value, line in zip(df["landmark_id"], df["_line"]):
        if len(value.split()) > 1:
            raise ValueError(f"{path}, line {line}: landmark_id {value!r} holds several ids")
    return df[["id", "landmark_id"]].reset_index(drop=True)


def solution_dict(df: pd.DataFrame) -> dict[str, frozenset[str]]:
    """Solution frame (from :func:`read_solution`) -> ``{query id: frozenset of landmark ids}``."""
    return {str(q): frozenset(s) for q, s in zip(df["id"], df["landmarks"])}


def _format_prediction(qid: str, pred: SubmissionRow) -> str:
    if pred is None:
        return ""
    landmark, conf = pred
    landmark = str(landmark)
    if landmark == "" or any(ch.isspace() for ch in landmark) or "," in landmark:
        raise ValueError(f"prediction for {qid!r}: landmark id {landmark!r} cannot be written (empty, space or comma)")
    conf = float(conf)
    if not math.isfinite(conf):
        raise ValueError(f"prediction for {qid!r}: confidence {conf!r} is not finite")
    return f"{landmark} {conf:.6f}"


def write_submission(predictions: Mapping[str, SubmissionRow], ids: Sequence[str], out_csv: PathLike) -> Path:
    """Write a Kaggle recognition submission ``id,landmarks`` atomically.

    One row per id of ``ids``, in that order; the value is
    ``"<landmark_id> <confidence>"`` (6 decimals) or empty for ``None`` or a
    missing prediction. Rounding to 6 decimals can create confidence ties;
    GAP breaks them by query id either way.

    Raises:
        ValueError: duplicate ids, predictions for ids not in ``ids`` (they
            would be silently lost), unwritable landmark ids or confidences.
    """
    ids = [str(i) for i in ids]
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise ValueError(f"duplicate id {i!r} in ids")
        seen.add(i)
    extra = [q for q in predictions if q not in seen]
    if extra:
        raise ValueError(f"{len(extra)} prediction(s) for ids not in ids, e.g. {sorted(extra)[0]!r}")
    rows = pd.DataFrame({"id": ids, "landmarks": [_format_prediction(i, predictions.get(i)) for i in ids]})
    out = Path(out_csv)
    with atomic_output(out, keep_suffix=True) as tmp:
        rows.to_csv(tmp, index=False)
    logger.info("wrote submission %s: %d rows, %d predictions", out, len(rows), int((rows["landmarks"] != "").sum()))
    return out


def read_submission(csv_path: PathLike) -> dict[str, SubmissionRow]:
    """Parse a Kaggle recognition submission back into ``{id: (landmark_id, confidence) | None}``.

    Strict: a value must be empty or exactly ``"<landmark_id> <confidence>"``
    with a finite number; anything else is a ``ValueError`` naming file and line.
    """
    path = Path(csv_path)
    df = read_table(path, required=("id", "landmarks"))
    out: dict[str, SubmissionRow] = {}
    for qid, value, line in zip(df["id"], df["landmarks"], df["_line"]):
        parts = value.split()
        if not parts:
            out[qid] = None
            continue
        if len(parts) != 2:
            raise ValueError(f"{path}, line {line}: expected '<landmark_id> <confidence>' or empty, got {value!r}")
        try:
            conf = float(parts[1])
        except ValueError:
            raise ValueError(f"{path}, line {line}: confidence {parts[1]!r} is not a number") from None
        if not math.isfinite(conf):
            raise ValueError(f"{path}, line {line}: confidence {parts[1]!r} is not finite")
        out[qid] = (parts[0], conf)
    return out
