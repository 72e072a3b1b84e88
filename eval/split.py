"""Holdout split of a labelled collection into an index and recognition queries.

:func:`make_split` turns ``train`` (``id,landmark_id``; ``""`` = non-landmark
image) into ``(index_df, holdout_df)``. The holdout has three kinds of query,
named in its ``query_type`` column:

``seen``
    An image of a landmark that keeps at least one other image in the index.
    ``landmark_id`` is its landmark. About ``query_fraction`` of the images of
    landmarks with >= 2 images are drawn, never a landmark's last one: each such
    landmark has one randomly chosen protected reference. Single-image
    landmarks stay in the index whole.
``unseen``
    Every image of a held-out landmark (``unseen_fraction`` of the landmarks,
    by count). The landmark is absent from the index, so the correct answer is
    "no landmark": ``landmark_id`` is ``""`` and the true landmark is kept in
    ``true_landmark_id`` for analysis only.
``distractor``
    An image that shows no landmark at all (``landmark_id`` and
    ``true_landmark_id`` both ``""``), drawn first from ``distractors``, then, if
    that is too small or absent, from the non-landmark rows of ``train`` (those
    drawn leave the index; at least half of them always stay in it as
    non-landmark references, which the distractor discount needs). The
    ``distractors`` not drawn are appended to the index as non-landmark
    references, so ``index.csv`` alone describes the index to build.

``distractor_rate`` is the share of distractor queries among all queries:
n_distractor / (n_seen + n_unseen + n_distractor). Unseen queries also have an
empty solution but are counted separately: they measure whether the system
refuses landmarks it does not know, distractors whether it refuses
non-landmarks. Both files have ``id,landmark_id`` first; the holdout adds
``true_landmark_id,query_type``. Rows keep their input order (``train`` rows,
then ``distractors`` rows).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from eval.csv_io import read_labels, read_table
from index.manifest import atomic_output

logger = logging.getLogger(__name__)

INDEX_COLUMNS = ["id", "landmark_id"]
HOLDOUT_COLUMNS = ["id", "landmark_id", "true_landmark_id", "query_type"]


def _check_fraction(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= v < 1.0:  # also rejects nan
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return v


def _check_frame(name: str, df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; expected {columns}, found {list(df.columns)}")
    nulls = [c for c in columns if df[c].isna().any()]
    if nulls:
        raise ValueError(
            f"{name}: missing values (NaN) in column(s) {nulls}; use '' for 'no landmark' "
            "(read CSVs with keep_default_na=False, e.g. eval.csv_io.read_labels)"
        )
    out = df[columns].astype(str).reset_index(drop=True)
    dup = out["id"][out["id"].duplicated()]
    if len(dup):
        raise ValueError(f"{name}: duplicate id {dup.iloc[0]!r}")
    if (out["id"] == "").any():
        raise ValueError(f"{name}: empty id in row {int(np.flatnonzero(out['id'] == '')[0])}")
    return out


def _round(x: float) -> int:
    """Round half up (numpy/python round half to even, which surprises at .5)."""
    return int(math.floor(x + 0.5))


def make_split(
    train: pd.DataFrame,
    query_fraction: float = 0.1,
    unseen_fraction: float = 0.05,
    distractors: pd.DataFrame | None = None,
    distractor_rate: float = 0.5,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``train`` into ``(index_df, holdout_df)``; see the module docstring.

    Args:
        train: columns ``id``, ``landmark_id`` (strings, ``""`` = non-landmark).
        query_fraction: share of the images of landmarks with >= 2 images held
            out as seen queries, in [0, 1).
        unseen_fraction: share of landmarks (by count) held out entirely as
            unseen queries, in [0, 1); at least one landmark stays in the index.
        distractors: optional extra non-landmark images, column ``id``; a
            ``landmark_id`` column, if present, must be empty.
        distractor_rate: wanted n_distractor / n_queries, in [0, 1). When too
            few non-landmark images exist, all are used and a warning gives
            the achieved rate.
        seed: seed of the only random generator used.

    Returns:
        ``index_df`` (``id,landmark_id``) and ``holdout_df``
        (``id,landmark_id,true_landmark_id,query_type``).

    Raises:
        ValueError: bad arguments, malformed frames, ids shared between
            ``train`` and ``distractors``, or a broken final invariant.
    """
    query_fraction = _check_fraction("query_fraction", query_fraction)
    unseen_fraction = _check_fraction("unseen_fraction", unseen_fraction)
    distractor_rate = _check_fraction("distractor_rate", distractor_rate)
    train = _check_frame("train", train, INDEX_COLUMNS)
    if distractors is not None:
        extra = _check_frame("distractors", distractors, ["id"])
        if "landmark_id" in distractors.columns:
            labelled = distractors["landmark_id"].astype(str).reset_index(drop=True) != ""
            if labelled.any():
                raise ValueError(
                    f"distractors: row {int(np.flatnonzero(labelled)[0])} has landmark_id "
                    f"{distractors['landmark_id'].iloc[int(np.flatnonzero(labelled)[0])]!r}; distractors show no landmark"
                )
        shared = extra["id"][extra["id"].isin(set(train["id"]))]
        if len(shared):
            raise ValueError(f"id {shared.iloc[0]!r} is in both train and distractors")
    else:
        extra = pd.DataFrame({"id": pd.Series([], dtype=str)})
    rng = np.random.default_rng(seed)
    n_train = len(train)
    landmark = train["landmark_id"].to_numpy(dtype=object)
    is_lm = landmark != ""

    # 1. unseen landmarks: a random set of landmarks, by count.
    landmarks = np.array(sorted(set(landmark[is_lm])), dtype=object)
    n_unseen_lm = min(_round(unseen_fraction * len(landmarks)), max(len(landmarks) - 1, 0))
    if unseen_fraction > 0 and n_unseen_lm == 0 and len(landmarks):
        logger.warning("unseen_fraction=%g of %d landmarks rounds to 0 unseen landmarks", unseen_fraction, len(landmarks))
    unseen_lm = set(landmarks[rng.permutation(len(landmarks))[:n_unseen_lm]])
    is_unseen = np.fromiter((lm in unseen_lm for lm in landmark), dtype=bool, count=n_train)

    # 2. seen queries: protect one random image per remaining landmark; draw
    #    the queries among the other images of landmarks with >= 2 images.
    perm = rng.permutation(n_train)
    seen_rows = perm[is_lm[perm] & ~is_unseen[perm]]  # rows in random order
    first = ~pd.Series(landmark[seen_rows]).duplicated().to_numpy()
    candidates = seen_rows[~first]  # never a landmark's protected image
    sizes = pd.Series(landmark[seen_rows]).value_counts()
    n_eligible_images = int(sizes[sizes >= 2].sum())
    n_seen_q = min(_round(query_fraction * n_eligible_images), len(candidates))
    candidates = np.sort(candidates)
    seen_q = np.sort(rng.choice(candidates, size=n_seen_q, replace=False)) if n_seen_q else np.array([], dtype=int)

    # 3. distractor queries.
    n_lm_q = n_seen_q + int(is_unseen.sum())
    wanted = _round(distractor_rate / (1.0 - distractor_rate) * n_lm_q)
    n_from_extra = min(wanted, len(extra))
    train_non = np.flatnonzero(~is_lm)
    # Keep at least half of the collection's own non-landmark images in the index: they are the
    # references that the distractor discount of recognition compares queries with.
    n_from_train = min(wanted - n_from_extra, len(train_non) - len(train_non) // 2)
    extra_q = np.sort(rng.choice(len(extra), size=n_from_extra, replace=False)) if n_from_extra else np.array([], dtype=int)
    train_non_q = (
        np.sort(rng.choice(train_non, size=n_from_train, replace=False)) if n_from_train else np.array([], dtype=int)
    )
    n_dis = n_from_extra + n_from_train
    n_queries = n_lm_q + n_dis
    achieved = n_dis / n_queries if n_queries else 0.0
    if n_dis < wanted:
        logger.warning(
            "only %d non-landmark images for %d wanted distractor queries: achieved distractor rate %.3f (asked %.3f)",
            n_dis,
            wanted,
            achieved,
            distractor_rate,
        )

    # 4. assemble.
    query_type = np.full(n_train, "", dtype=object)
    query_type[seen_q] = "seen"
    query_type[is_unseen] = "unseen"
    query_type[train_non_q] = "distractor"
    in_holdout = query_type != ""
    index_df = train.loc[~in_holdout, INDEX_COLUMNS].reset_index(drop=True)
    held = train.loc[in_holdout].reset_index(drop=True)
    held_type = query_type[in_holdout]
    held_true = held["landmark_id"].to_numpy(dtype=object)
    held_answer = np.where(held_type == "seen", held_true, "")
    holdout_df = pd.DataFrame(
        {"id": held["id"], "landmark_id": held_answer, "true_landmark_id": held_true, "query_type": held_type}
    )
    extra_rows = extra.iloc[extra_q].reset_index(drop=True)
    # The distractors not drawn as queries are non-landmark references of the index (for the
    # distractor discount), so that build-index --train index.csv needs no separate --distractors.
    unused = np.setdiff1d(np.arange(len(extra)), extra_q)
    if len(unused):
        index_df = pd.concat(
            [index_df, pd.DataFrame({"id": extra.iloc[unused]["id"].to_numpy(), "landmark_id": ""})],
            ignore_index=True,
        )
    holdout_df = pd.concat(
        [
            holdout_df,
            pd.DataFrame(
                {"id": extra_rows["id"], "landmark_id": "", "true_landmark_id": "", "query_type": "distractor"}
            ),
        ],
        ignore_index=True,
    )
    for df in (index_df, holdout_df):
        for col in df.columns:
            df[col] = df[col].astype(str)
    check_split(index_df, holdout_df, unseen_landmarks=unseen_lm)
    logger.info(
        "split (seed %d): %d index images, %d queries = %d seen + %d unseen (%d landmarks) + %d distractors (rate %.3f)",
        seed,
        len(index_df),
        len(holdout_df),
        n_seen_q,
        int(is_unseen.sum()),
        len(unseen_lm),
        n_dis,
        achieved,
    )
    return index_df, holdout_df


def check_split(index_df: pd.DataFrame, holdout_df: pd.DataFrame, unseen_landmarks: set[str] | None = None) -> None:
    """Raise ``ValueError`` unless the split's invariants hold.

    No id in both files; every query landmark has a reference image in the
    index; unseen landmarks (given, or read from the holdout's
    ``true_landmark_id`` of ``unseen`` rows) are absent from the index.
    """
    both = set(index_df["id"]) & set(holdout_df["id"])
    if both:
        raise ValueError(f"split: id {sorted(both)[0]!r} is in both the index and the holdout ({len(both)} ids)")
    indexed = set(index_df["landmark_id"]) - {""}
    orphans = set(holdout_df["landmark_id"]) - {""} - indexed
    if orphans:
        raise ValueError(f"split: query landmark {sorted(orphans)[0]!r} has no reference image in the index")
    if unseen_landmarks is None and "query_type" in holdout_df.columns:
        unseen_landmarks = set(holdout_df.loc[holdout_df["query_type"] == "unseen", "true_landmark_id"])
    leaked = set(unseen_landmarks or ()) & indexed
    if leaked:
        raise ValueError(f"split: unseen landmark {sorted(leaked)[0]!r} has images in the index")


def main(
    train_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    query_fraction: float,
    unseen_fraction: float,
    distractors_csv: str | os.PathLike | None = None,
    distractor_rate: float = 0.5,
    seed: int = 0,
) -> Path:
    """Read CSVs, split, write ``index.csv``, ``holdout.csv`` and ``split.json`` in ``out_dir``.

    Files are written atomically. ``split.json`` records the inputs, the
    parameters and the counts. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    logger.info(
        "split %s -> %s: query_fraction=%g unseen_fraction=%g distractors=%s distractor_rate=%g seed=%d",
        train_csv,
        out_dir,
        query_fraction,
        unseen_fraction,
        distractors_csv,
        distractor_rate,
        seed,
    )
    train = read_labels(train_csv)
    distractors = None
    if distractors_csv is not None:
        distractors = read_table(distractors_csv, required=("id",)).drop(columns="_line")
    index_df, holdout_df = make_split(
        train,
        query_fraction=query_fraction,
        unseen_fraction=unseen_fraction,
        distractors=distractors,
        distractor_rate=distractor_rate,
        seed=seed,
    )
    kinds = holdout_df["query_type"].value_counts()
    n_queries = len(holdout_df)
    n_dis = int(kinds.get("distractor", 0))
    info = {
        "train_csv": str(train_csv),
        "distractors_csv": None if distractors_csv is None else str(distractors_csv),
        "params": {
            "query_fraction": float(query_fraction),
            "unseen_fraction": float(unseen_fraction),
            "distractor_rate": float(distractor_rate),
            "seed": int(seed),
        },
        "counts": {
            "n_index": len(index_df),
            "n_index_landmarks": int(index_df.loc[index_df["landmark_id"] != "", "landmark_id"].nunique()),
            "n_queries": n_queries,
            "n_landmark_queries": int(kinds.get("seen", 0)),
            "n_unseen_queries": int(kinds.get("unseen", 0)),
            "n_nonlandmark_queries": n_dis,
            "n_unseen_landmarks": int(
                holdout_df.loc[holdout_df["query_type"] == "unseen", "true_landmark_id"].nunique()
            ),
            "distractor_rate_achieved": n_dis / n_queries if n_queries else 0.0,
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / "index.csv", keep_suffix=True) as tmp:
        index_df.to_csv(tmp, index=False)
    with atomic_output(out_dir / "holdout.csv", keep_suffix=True) as tmp:
        holdout_df.to_csv(tmp, index=False)
    with atomic_output(out_dir / "split.json", keep_suffix=True) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    logger.info("wrote %s/{index.csv,holdout.csv,split.json}: %s", out_dir, info["counts"])
    return out_dir
