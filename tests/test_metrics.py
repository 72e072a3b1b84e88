"""Tests for eval.metrics, eval.csv_io (I/O) and the metric plots of eval.plots."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from PIL import Image

from eval import csv_io, metrics, plots
from eval.metrics import bootstrap_gap_ci, gap

S = frozenset  # shorthand for solution sets


def reference_gap(predictions, solution):
    """Straight transcription of the Kaggle definition, for comparison."""
    items = [(-p[1], q, p[0]) for q, p in predictions.items() if p is not None]
    items.sort()  # confidence descending, then query id ascending
    m = sum(1 for s in solution.values() if s)
    total, hits = 0.0, 0
    for i, (_, q, landmark) in enumerate(items, start=1):
        if landmark in solution[q]:
            hits += 1
            total += hits / i
    return total / m


# --------------------------------------------------------------------------- GAP, hand computed


def test_gap_all_correct():
    sol = {"a": S({"L1"}), "b": S({"L2"}), "c": S({"L1"})}
    preds = {"a": ("L1", 0.9), "b": ("L2", 0.8), "c": ("L1", 0.7)}
    # P(1)=P(2)=P(3)=1, all relevant: (1+1+1)/3 = 1
    assert gap(preds, sol) == pytest.approx(1.0)


def test_gap_all_wrong():
    sol = {"a": S({"L1"}), "b": S({"L2"})}
    preds = {"a": ("L2", 0.9), "b": ("L1", 0.8)}
    # no rel(i) = 1: 0/2
    assert gap(preds, sol) == 0.0


def test_gap_abstentions_and_missing_queries():
    sol = {"q1": S({"A"}), "q2": S({"B"}), "q3": S({"C"}), "q4": S({"D"})}
    preds = {"q1": ("A", 0.9), "q2": None, "q3": ("X", 0.8), "q4": ("D", 0.7)}
    # ranked q1(rel 1), q3(0), q4(1): P(1)=1, P(3)=2/3; M=4 -> (1 + 2/3)/4 = 5/12
    assert gap(preds, sol) == pytest.approx(5 / 12)
    # q2 absent from the dict is the same as None
    del preds["q2"]
    assert gap(preds, sol) == pytest.approx(5 / 12)


def test_gap_nonlandmark_queries_lower_precision_only_when_ranked_above():
    sol = {"a": S({"L1"}), "b": S({"L2"}), "n1": S()}
    preds = {"a": ("L1", 0.5), "b": ("L2", 0.4)}
    # without the distractor answer: (1 + 1)/2 = 1
    assert gap(preds, sol) == pytest.approx(1.0)
    # answer to the non-landmark query on top: n1(0), a(1), b(1)
    # P(2)=1/2, P(3)=2/3 -> (1/2 + 2/3)/2 = 7/12
    assert gap({**preds, "n1": ("L1", 0.9)}, sol) == pytest.approx(7 / 12)
    # ranked below every other answer it costs nothing: a(1), b(1), n1(0) -> 1
    assert gap({**preds, "n1": ("L1", 0.1)}, sol) == pytest.approx(1.0)


def test_gap_ties_are_deterministic_regardless_of_insertion_order():
    sol = {"a": S({"L"}), "b": S({"L"}), "c": S({"L"})}
    items = [("a", ("WRONG", 0.5)), ("b", ("L", 0.5)), ("c", ("L", 0.9))]
    # tie a/b at 0.5 broken by query id ascending: c(1), a(0), b(1)
    # P(1)=1, P(3)=2/3 -> (1 + 2/3)/3 = 5/9  (the other order would give 2/3)
    rnd = random.Random(0)
    for _ in range(10):
        rnd.shuffle(items)
        assert gap(dict(items), sol) == pytest.approx(5 / 9)
        assert gap(dict(items), dict(reversed(list(sol.items())))) == pytest.approx(5 / 9)


def test_gap_several_correct_landmarks():
    sol = {"q1": S({"A", "B"}), "q2": S({"C"})}
    preds = {"q1": ("B", 0.9), "q2": ("A", 0.8)}
    # q1 "B" is one of its answers (rel 1), q2 "A" is wrong: (1/1)/2 = 1/2
    assert gap(preds, sol) == pytest.approx(0.5)


def test_gap_no_predictions_is_zero():
    assert gap({}, {"a": S({"L"}), "n": S()}) == 0.0


@pytest.mark.parametrize("sol", [{}, {"n1": S(), "n2": S()}])
def test_gap_without_landmark_queries_raises(sol):
    with pytest.raises(ValueError, match="M == 0"):
        gap({}, sol)


def test_gap_prediction_for_unknown_query_raises():
    with pytest.raises(ValueError, match="'ghost'"):
        gap({"a": ("L", 1.0), "ghost": ("L", 0.5)}, {"a": S({"L"})})


@pytest.mark.parametrize(
    "pred, exc",
    [(("L", float("nan")), ValueError), (("", 0.3), ValueError), ((1, 0.3), TypeError), ("L 0.3", TypeError)],
)
def test_gap_malformed_prediction_raises(pred, exc):
    with pytest.raises(exc, match="'a'"):
        gap({"a": pred}, {"a": S({"L"})})


def test_gap_solution_value_must_be_a_set():
    with pytest.raises(TypeError, match="set"):
        gap({}, {"a": "L1"})


def test_gap_matches_reference_on_random_data():
    rng = np.random.default_rng(0)
    sol = {f"q{i}": (S({f"L{i % 7}"}) if i % 3 else S()) for i in range(300)}
    preds = {
        q: (None if rng.random() < 0.2 else (f"L{rng.integers(0, 7)}", float(rng.integers(0, 10)) / 10)) for q in sol
    }
    assert gap(preds, sol) == pytest.approx(reference_gap(preds, sol), abs=1e-12)


# --------------------------------------------------------------------------- other metrics


def small_case():
    sol = {"a": S({"A"}), "b": S({"B"}), "c": S({"C"}), "n1": S(), "n2": S()}
    preds = {"a": ("A", 0.9), "b": ("X", 0.8), "c": None, "n1": ("A", 0.95)}
    return preds, sol


def test_top1_and_nonlandmark_rate():
    preds, sol = small_case()
    assert metrics.top1_accuracy(preds, sol) == pytest.approx(1 / 3)  # only "a" right of a, b, c
    assert metrics.nonlandmark_prediction_rate(preds, sol) == pytest.approx(1 / 2)  # n1 answered, n2 not
    only_lm = {q: s for q, s in sol.items() if s}
    assert math.isnan(metrics.nonlandmark_prediction_rate({"a": ("A", 1.0)}, only_lm))
    assert math.isnan(metrics.top1_accuracy({}, {"n": S()}))


def test_gap_landmark_queries_only():
    preds, sol = small_case()
    # all queries: n1(0), a(1), b(0): P(2)=1/2 -> (1/2)/3 = 1/6
    assert gap(preds, sol) == pytest.approx(1 / 6)
    # non-landmark queries removed: a(1), b(0) -> 1/3
    assert metrics.gap_landmark_queries_only(preds, sol) == pytest.approx(1 / 3)


def test_summary_is_json_serialisable():
    preds, sol = small_case()
    out = metrics.summary(preds, sol, n_boot=50, seed=0)
    assert set(out) == {
        "gap",
        "gap_ci95",
        "top1_accuracy",
        "nonlandmark_prediction_rate",
        "gap_landmark_queries_only",
        "n_queries",
        "n_landmark_queries",
        "n_nonlandmark_queries",
        "n_predictions",
    }
    assert (out["n_queries"], out["n_landmark_queries"], out["n_nonlandmark_queries"], out["n_predictions"]) == (
        5,
        3,
        2,
        3,
    )
    assert out["gap"] == pytest.approx(1 / 6)
    json.dumps(out, allow_nan=False)
    # nan -> None
    out2 = metrics.summary({"a": ("A", 1.0)}, {"a": S({"A"})}, n_boot=10)
    assert out2["nonlandmark_prediction_rate"] is None
    json.dumps(out2, allow_nan=False)


def test_ranked_predictions_order():
    preds, sol = small_case()
    df = metrics.ranked_predictions(preds, sol)
    assert df["id"].tolist() == ["n1", "a", "b"]
    assert df["correct"].tolist() == [False, True, False]
    assert df["precision"].tolist() == pytest.approx([0.0, 0.5, 1 / 3])


# --------------------------------------------------------------------------- bootstrap


def synthetic(n, seed=0, p_correct=0.7, p_landmark=0.5):
    rng = np.random.default_rng(seed)
    sol, preds = {}, {}
    for i in range(n):
        q = f"q{i:06d}"
        is_lm = rng.random() < p_landmark
        sol[q] = S({f"L{i % 50}"}) if is_lm else S()
        if is_lm and rng.random() < p_correct:
            preds[q] = (f"L{i % 50}", float(rng.uniform(0.5, 1.0)))
        else:
            preds[q] = ("L999", float(rng.uniform(0.0, 0.8)))
    return preds, sol


def test_bootstrap_matches_explicit_resampling():
    preds, sol = synthetic(25, seed=3)
    ids = sorted(sol)
    n_boot = 40
    draws = np.random.default_rng(7).integers(0, len(ids), size=(n_boot, len(ids)))
    values = []
    for row in draws:
        # a query drawn k times becomes k queries "<id>#<draw position>"
        s, p = {}, {}
        for pos, qi in enumerate(sorted(row)):
            new = f"{ids[qi]}#{pos:03d}"
            s[new] = sol[ids[qi]]
            if preds.get(ids[qi]) is not None:
                p[new] = preds[ids[qi]]
        if any(s.values()):
            values.append(reference_gap(p, s))
    expected = np.percentile(values, [2.5, 97.5])
    assert bootstrap_gap_ci(preds, sol, n_boot=n_boot, seed=7) == pytest.approx(tuple(expected), abs=1e-12)


def test_bootstrap_contains_estimate_and_narrows():
    small_p, small_s = synthetic(60, seed=1)
    big_p, big_s = synthetic(6000, seed=1)
    lo_s, hi_s = bootstrap_gap_ci(small_p, small_s, n_boot=300, seed=0)
    lo_b, hi_b = bootstrap_gap_ci(big_p, big_s, n_boot=300, seed=0)
    assert lo_s <= gap(small_p, small_s) <= hi_s
    assert lo_b <= gap(big_p, big_s) <= hi_b
    assert (hi_b - lo_b) < 0.5 * (hi_s - lo_s)
    # deterministic for a seed
    assert bootstrap_gap_ci(small_p, small_s, n_boot=300, seed=0) == (lo_s, hi_s)


def test_bootstrap_at_scale_brackets_the_estimate():
    # speed is measured in benchmarks/bench_metrics.py, not asserted here
    preds, sol = synthetic(20_000, seed=2)
    lo, hi = bootstrap_gap_ci(preds, sol, n_boot=200, seed=0)
    assert lo <= gap(preds, sol) <= hi and hi - lo < 0.05


def test_cluster_bootstrap_resamples_whole_landmarks():
    """Queries of one landmark succeed or fail together: drawing whole clusters widens the interval."""
    from eval.metrics import landmark_clusters

    sol, preds = {}, {}
    for lm in range(12):
        for j in range(8):
            q = f"l{lm:02d}q{j}"
            sol[q] = S({f"L{lm}"})
            preds[q] = (f"L{lm}" if lm % 3 else "L999", 0.5 + 0.01 * j)  # every third landmark always wrong
    for j in range(30):
        sol[f"n{j:02d}"] = S()
    clusters = landmark_clusters(sol)
    assert clusters["l03q1"] == clusters["l03q7"] != clusters["l04q1"] and clusters["n01"] != clusters["n02"]
    lo_q, hi_q = bootstrap_gap_ci(preds, sol, n_boot=400, seed=0)
    lo_c, hi_c = bootstrap_gap_ci(preds, sol, n_boot=400, seed=0, clusters=clusters)
    assert lo_c <= gap(preds, sol) <= hi_c
    assert hi_c - lo_c > 1.5 * (hi_q - lo_q)
    # singleton clusters are the per-query bootstrap
    assert bootstrap_gap_ci(preds, sol, n_boot=50, seed=1, clusters={q: q for q in sol}) == pytest.approx(
        bootstrap_gap_ci(preds, sol, n_boot=50, seed=1))
    with pytest.raises(ValueError, match="no entry"):
        bootstrap_gap_ci(preds, sol, clusters={})


def test_bootstrap_bad_arguments():
    preds, sol = small_case()
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_gap_ci(preds, sol, n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_gap_ci(preds, sol, alpha=1.5)
    with pytest.raises(ValueError, match="M == 0"):
        bootstrap_gap_ci({}, {"n": S()})


# --------------------------------------------------------------------------- read_solution


def write(path, text):
    path.write_text(text)
    return path


def test_read_solution_gldv2_format(tmp_path):
    f = write(tmp_path / "sol.csv", "id,url,landmark_id\n0012,http://x/1.jpg,7\nnan,http://x/2.jpg,\nabc,u,0042\n")
    df = csv_io.read_solution(f)
    assert list(df.columns) == ["id", "landmarks"]
    assert csv_io.solution_dict(df) == {"0012": S({"7"}), "nan": S(), "abc": S({"0042"})}


def test_read_solution_kaggle_format(tmp_path):
    f = write(tmp_path / "sol.csv", "id,landmarks,Usage\nq1,12 34,Public\nq2,,Private\nq3,5,Private\n\n")
    assert csv_io.solution_dict(csv_io.read_solution(f)) == {"q1": S({"12", "34"}), "q2": S(), "q3": S({"5"})}


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty"),
        ("id,url\na,u\n", r"expected 'id' and one of 'landmark_id' or 'landmarks', found \['id', 'url'\]"),
        ("image,landmark_id\na,1\n", r"missing required column.*\['id'\].*found \['image', 'landmark_id'\]"),
        ("id,landmark_id\na,1\nb,2\na,3\nc,4\nb,5\n", r"duplicate id 'a' on lines \[2, 4\].*1 more"),
        ("id,landmark_id\na,1\n../etc,2\n", r"line 3: invalid id '\.\./etc'"),
        ("id,landmark_id\na,1\nx/y,2\n", r"line 3: .*contains '/'"),
        ("id,landmark_id\na,1\n/abs,2\n", r"line 3: .*starts with '/'"),
        ("id,landmark_id\na,1\nb\\c,2\n", r"line 3: .*contains '\\\\'"),
        ("id,landmark_id\na,1\n,2\n", r"line 3: .*empty id"),
        ("id,landmark_id\n", "no data rows"),
    ],
)
def test_read_solution_malformed(tmp_path, text, match):
    f = write(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match=match) as info:
        csv_io.read_solution(f)
    assert "bad.csv" in str(info.value)


def test_read_solution_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nope.csv: file not found"):
        csv_io.read_solution(tmp_path / "nope.csv")


def test_duplicate_line_numbers_count_blank_lines(tmp_path):
    f = write(tmp_path / "sol.csv", "id,landmark_id\na,1\n\nb,2\na,3\n")
    with pytest.raises(ValueError, match=r"lines \[2, 5\]"):
        csv_io.read_solution(f)


# --------------------------------------------------------------------------- submissions


def test_submission_round_trip(tmp_path):
    preds = {"0012": ("7", 0.123456789), "b": None, "nan": ("42", 1.0)}
    ids = ["nan", "0012", "b", "c"]
    out = csv_io.write_submission(preds, ids, tmp_path / "sub" / "submission.csv")
    lines = out.read_text().splitlines()
    assert lines == ["id,landmarks", "nan,42 1.000000", "0012,7 0.123457", "b,", "c,"]
    back = csv_io.read_submission(out)
    assert back == {"nan": ("42", 1.0), "0012": ("7", 0.123457), "b": None, "c": None}
    assert [p.name for p in out.parent.iterdir()] == ["submission.csv"]  # no temp file left


def test_write_submission_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="'x'"):
        csv_io.write_submission({"x": ("1", 0.5)}, ["a"], tmp_path / "s.csv")
    with pytest.raises(ValueError, match="not finite"):
        csv_io.write_submission({"a": ("1", float("inf"))}, ["a"], tmp_path / "s.csv")
    with pytest.raises(ValueError, match="duplicate"):
        csv_io.write_submission({}, ["a", "a"], tmp_path / "s.csv")
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(
    "value, match",
    [("12", "expected"), ("12 0.5 3", "expected"), ("12 high", "not a number"), ("12 nan", "not finite")],
)
def test_read_submission_malformed(tmp_path, value, match):
    f = write(tmp_path / "sub.csv", f"id,landmarks\na,1 0.9\nb,{value}\n")
    with pytest.raises(ValueError, match=rf"sub.csv, line 3: .*{match}"):
        csv_io.read_submission(f)


# --------------------------------------------------------------------------- plots


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG"


def test_plot_precision_vs_rank(tmp_path):
    preds, sol = synthetic(200, seed=4)
    out = plots.plot_precision_vs_rank(preds, sol, tmp_path / "prec.png")
    assert_png(out)


def test_plot_confidence_histogram(tmp_path):
    preds, sol = synthetic(200, seed=5)
    assert_png(plots.plot_confidence_histogram(preds, sol, tmp_path / "hist.png"))
    # degenerate input: no prediction at all
    assert_png(plots.plot_confidence_histogram({}, {"a": S({"L"})}, tmp_path / "empty.png"))


# ----------------------------------------------------------------------------- retrieval mAP@100


def test_map_at_100_hand_computed():
    from eval.metrics import map_at_k

    solution = {"a": {"x1", "x2", "x3"}, "b": {"y1"}, "c": set(), "d": {"z1", "z2"}}
    predictions = {
        "a": ["x1", "n1", "x2", "n2"],  # P(1) = 1, P(3) = 2/3; m = 3: (1 + 2/3) / 3 = 5/9
        "b": ["n1", "n2", "y1"],  # P(3) = 1/3; m = 1: 1/3
        "c": ["x1"],  # no relevant image: left out of the mean
        "e": ["x1"],  # not in the solution: ignored
    }  # d has no prediction: AP 0
    assert map_at_k(predictions, solution) == pytest.approx((5 / 9 + 1 / 3 + 0) / 3)  # 8/27
    assert map_at_k(dict(reversed(list(predictions.items()))), solution) == map_at_k(predictions, solution)


def test_map_at_k_cut_off_duplicates_and_many_relevant():
    from eval.metrics import average_precision_at_k, map_at_k

    filler = [f"n{i}" for i in range(99)]
    assert average_precision_at_k(filler + ["r"], {"r"}) == pytest.approx(1 / 100)  # rank 100 counts
    assert average_precision_at_k(filler + ["n99", "r"], {"r"}) == 0.0  # rank 101 does not
    assert average_precision_at_k(["x1", "x1", "x2"], {"x1", "x2"}) == 1.0  # a repeat is one image, one rank
    assert average_precision_at_k(["a", "b"], {"a", "b", "c"}, k=2) == 1.0  # divided by min(m, k)
    with pytest.raises(ValueError, match="no query of the solution has a relevant image"):
        map_at_k({"a": ["x"]}, {"a": set()})


def test_cluster_bootstrap_memory_does_not_grow_with_the_largest_cluster():
    """One landmark with 2,000 queries among 20,000 others: the harmonic table is sized by the largest resample
    drawn, not by clusters x the largest cluster (that was 40 million floats, 320 MB, here)."""
    import tracemalloc

    from eval.metrics import bootstrap_gap_ci, landmark_clusters

    solution = {f"a{i:05d}": frozenset({"A"}) for i in range(2000)}
    solution.update({f"n{i:05d}": frozenset() for i in range(20000)})
    predictions = {q: ("A", 0.9 - 1e-6 * i) for i, q in enumerate(sorted(solution)) if i % 3}
    tracemalloc.start()
    lo, hi = bootstrap_gap_ci(predictions, solution, n_boot=20, seed=0, clusters=landmark_clusters(solution))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert 0 <= lo <= hi <= 1
    assert peak < 150 * 2**20, peak / 2**20
