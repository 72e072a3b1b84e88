"""Tests for eval.split."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from eval import csv_io, split
from eval.split import make_split


def make_train(n_landmarks=40, n_nonlandmark=30, seed=0):
    """Landmarks with 1..12 images (several singletons) plus non-landmark rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_landmarks):
        size = 1 if k % 5 == 0 else int(rng.integers(2, 13))
        rows += [(f"img{k:03d}_{j:02d}", f"{1000 + k}") for j in range(size)]
    rows += [(f"bg{j:03d}", "") for j in range(n_nonlandmark)]
    order = rng.permutation(len(rows))
    return pd.DataFrame([rows[i] for i in order], columns=["id", "landmark_id"])


def make_distractors(n=300):
    return pd.DataFrame({"id": [f"dis{j:04d}" for j in range(n)]})


def check_invariants(train, distractors, index_df, holdout_df):
    assert list(index_df.columns) == ["id", "landmark_id"]
    assert list(holdout_df.columns) == ["id", "landmark_id", "true_landmark_id", "query_type"]
    index_ids, holdout_ids = set(index_df["id"]), set(holdout_df["id"])
    assert not index_ids & holdout_ids
    assert len(index_ids) == len(index_df) and len(holdout_ids) == len(holdout_df)
    # nothing lost, nothing invented
    # every train image is in exactly one file; the distractors not drawn as queries join the index
    assert index_ids | (holdout_ids - set(distractors["id"])) == set(train["id"]) | (set(distractors["id"]) - holdout_ids)
    assert index_ids <= set(train["id"]) | set(distractors["id"])
    # labels carried over unchanged (distractors join the index as non-landmarks)
    truth = {**{i: "" for i in distractors["id"]}, **dict(zip(train["id"], train["landmark_id"]))}
    assert all(truth[i] == lm for i, lm in zip(index_df["id"], index_df["landmark_id"]))
    indexed = set(index_df["landmark_id"]) - {""}
    seen = holdout_df[holdout_df["query_type"] == "seen"]
    unseen = holdout_df[holdout_df["query_type"] == "unseen"]
    dis = holdout_df[holdout_df["query_type"] == "distractor"]
    assert (seen["landmark_id"] != "").all() and (seen["landmark_id"] == seen["true_landmark_id"]).all()
    assert set(seen["landmark_id"]) <= indexed  # every query landmark keeps a reference
    assert (unseen["landmark_id"] == "").all() and (unseen["true_landmark_id"] != "").all()
    assert not set(unseen["true_landmark_id"]) & indexed  # unseen landmarks absent from the index
    assert all(truth[i] == lm for i, lm in zip(unseen["id"], unseen["true_landmark_id"]))
    # an unseen landmark is held out whole
    for lm in set(unseen["true_landmark_id"]):
        assert (train["landmark_id"] == lm).sum() == (unseen["true_landmark_id"] == lm).sum()
    assert (dis["landmark_id"] == "").all() and (dis["true_landmark_id"] == "").all()
    assert all(truth.get(i, "") == "" for i in dis["id"])
    return seen, unseen, dis


def test_split_invariants_and_rates():
    train, distractors = make_train(), make_distractors()
    index_df, holdout_df = make_split(
        train, query_fraction=0.2, unseen_fraction=0.1, distractors=distractors, distractor_rate=0.6, seed=0
    )
    seen, unseen, dis = check_invariants(train, distractors, index_df, holdout_df)
    # 10% of 40 landmarks are unseen
    assert unseen["true_landmark_id"].nunique() == 4
    # ~20% of the images of the remaining landmarks with >= 2 images
    remaining = train[(train["landmark_id"] != "") & ~train["landmark_id"].isin(set(unseen["true_landmark_id"]))]
    sizes = remaining["landmark_id"].value_counts()
    eligible = int(sizes[sizes >= 2].sum())
    assert abs(len(seen) - 0.2 * eligible) <= 1
    # single-image landmarks are never queries
    singletons = set(sizes[sizes == 1].index)
    assert not set(seen["landmark_id"]) & singletons
    assert singletons <= set(index_df["landmark_id"])
    # distractor rate over all queries
    assert abs(len(dis) / len(holdout_df) - 0.6) <= 1 / len(holdout_df)
    # the external distractors suffice, so train's non-landmark rows stay in the index
    assert set(dis["id"]) <= set(distractors["id"])
    # ... and so do the external distractors not drawn as queries
    assert (index_df["landmark_id"] == "").sum() == 30 + len(distractors) - len(dis)
    assert (holdout_df["landmark_id"] == "").sum() == len(unseen) + len(dis)


def test_split_is_deterministic_per_seed():
    train, distractors = make_train(), make_distractors()
    a = make_split(train, 0.2, 0.1, distractors, 0.5, seed=1)
    b = make_split(train, 0.2, 0.1, distractors, 0.5, seed=1)
    c = make_split(train, 0.2, 0.1, distractors, 0.5, seed=2)
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])
    assert set(a[1]["id"]) != set(c[1]["id"])


def test_split_uses_train_nonlandmark_rows_when_no_distractors():
    train = make_train(n_nonlandmark=200)
    index_df, holdout_df = make_split(train, 0.2, 0.05, None, distractor_rate=0.5, seed=0)
    seen, unseen, dis = check_invariants(train, make_distractors(0), index_df, holdout_df)
    assert len(dis) > 0 and set(dis["id"]) <= set(train.loc[train["landmark_id"] == "", "id"])
    assert abs(len(dis) / len(holdout_df) - 0.5) <= 1 / len(holdout_df)
    # the undrawn ones stay in the index as non-landmark references
    assert (index_df["landmark_id"] == "").sum() == 200 - len(dis)


def test_split_too_few_distractors_warns_with_achieved_rate(caplog):
    train = make_train(n_nonlandmark=3)
    with caplog.at_level(logging.WARNING, logger="eval.split"):
        index_df, holdout_df = make_split(train, 0.2, 0.1, make_distractors(5), distractor_rate=0.9, seed=0)
    dis = holdout_df[holdout_df["query_type"] == "distractor"]
    # all 5 external + 2 of the 3 from train (at least half of train's non-landmarks stay in the index)
    assert len(dis) == 7
    assert (index_df["landmark_id"] == "").sum() == 1
    assert "achieved distractor rate" in caplog.text
    assert f"{7 / len(holdout_df):.3f}" in caplog.text


def test_split_zero_fractions():
    train = make_train()
    index_df, holdout_df = make_split(train, 0.0, 0.0, None, 0.0, seed=0)
    assert holdout_df.empty and len(index_df) == len(train)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"query_fraction": 1.0}, "query_fraction.*1.0"),
        ({"query_fraction": -0.1}, "query_fraction.*-0.1"),
        ({"unseen_fraction": float("nan")}, "unseen_fraction.*nan"),
        ({"unseen_fraction": 1.5}, "unseen_fraction.*1.5"),
        ({"distractor_rate": 1.0}, "distractor_rate.*1.0"),
        ({"query_fraction": "a lot"}, "query_fraction.*a lot"),
    ],
)
def test_split_rejects_bad_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        make_split(make_train(), **kwargs)


def test_split_rejects_bad_frames():
    train = make_train()
    with pytest.raises(ValueError, match="missing column"):
        make_split(train.rename(columns={"landmark_id": "label"}))
    with pytest.raises(ValueError, match="duplicate id"):
        make_split(pd.concat([train, train.iloc[:1]]))
    with pytest.raises(ValueError, match=r"NaN.*landmark_id"):
        make_split(train.assign(landmark_id=train["landmark_id"].replace("", None)))
    with pytest.raises(ValueError, match="both train and distractors"):
        make_split(train, distractors=pd.DataFrame({"id": [train["id"].iloc[0]]}))
    with pytest.raises(ValueError, match="distractors show no landmark"):
        make_split(train, distractors=pd.DataFrame({"id": ["x"], "landmark_id": ["5"]}))


def test_check_split_refuses_orphan_query_landmark():
    index_df = pd.DataFrame({"id": ["a"], "landmark_id": ["1"]})
    holdout = pd.DataFrame({"id": ["b"], "landmark_id": ["2"], "true_landmark_id": ["2"], "query_type": ["seen"]})
    with pytest.raises(ValueError, match="'2' has no reference image"):
        split.check_split(index_df, holdout)
    with pytest.raises(ValueError, match="in both"):
        split.check_split(index_df, holdout.assign(id=["a"], landmark_id=["1"]))
    leaked = pd.DataFrame({"id": ["b"], "landmark_id": [""], "true_landmark_id": ["1"], "query_type": ["unseen"]})
    with pytest.raises(ValueError, match="unseen landmark '1'"):
        split.check_split(index_df, leaked)


def test_main_writes_files(tmp_path):
    train = make_train()
    train.to_csv(tmp_path / "train.csv", index=False)
    make_distractors().to_csv(tmp_path / "dis.csv", index=False)
    out = split.main(tmp_path / "train.csv", tmp_path / "split", 0.2, 0.1, tmp_path / "dis.csv", 0.5, seed=3)
    assert out == tmp_path / "split"
    index_df = csv_io.read_labels(out / "index.csv")
    holdout_df = csv_io.read_table(out / "holdout.csv", required=("id", "landmark_id")).drop(columns="_line")
    check_invariants(train, make_distractors(), index_df, holdout_df)
    info = json.loads((out / "split.json").read_text())
    counts = info["counts"]
    assert counts["n_index"] == len(index_df)
    assert counts["n_queries"] == len(holdout_df)
    assert counts["n_landmark_queries"] + counts["n_unseen_queries"] + counts["n_nonlandmark_queries"] == len(holdout_df)
    assert counts["n_unseen_landmarks"] == 4
    assert counts["distractor_rate_achieved"] == pytest.approx(counts["n_nonlandmark_queries"] / len(holdout_df))
    assert info["params"] == {"query_fraction": 0.2, "unseen_fraction": 0.1, "distractor_rate": 0.5, "seed": 3}
    # the holdout reads as a solution: unseen and distractor queries have no landmark
    sol = csv_io.solution_dict(csv_io.read_solution(out / "holdout.csv"))
    assert sum(1 for s in sol.values() if s) == counts["n_landmark_queries"]
    assert sorted(p.name for p in out.iterdir()) == ["holdout.csv", "index.csv", "split.json"]


def test_main_rejects_duplicate_ids_with_lines(tmp_path):
    (tmp_path / "train.csv").write_text("id,landmark_id\na,1\nb,1\na,2\n")
    with pytest.raises(ValueError, match=r"train.csv: duplicate id 'a' on lines \[2, 4\]"):
        split.main(tmp_path / "train.csv", tmp_path / "out", 0.1, 0.0)
    (tmp_path / "t2.csv").write_text("id,label\na,1\n")
    with pytest.raises(ValueError, match=r"t2.csv: missing required column"):
        split.main(tmp_path / "t2.csv", tmp_path / "out", 0.1, 0.0)
