"""Tests for eval.tuning and eval.plots.plot_gap_vs_value."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from eval import metrics, plots, tuning

S = frozenset

A, B = 0.5, 0.73  # the sensible value and the peculiar one


def base_solution(n_landmark=40, n_non=20):
    sol = {f"q{i:03d}": S({f"L{i % 9}"}) for i in range(n_landmark)}
    sol.update({f"n{i:03d}": S() for i in range(n_non)})
    return sol


def overfit_case(n_folds=5, seed=0):
    """A peculiar value B that beats A on the whole set only thanks to 3 queries of one fold.

    A answers every landmark query correctly except the three "lucky" queries
    of fold 0. B answers those three correctly but gets two queries wrong, one
    in fold 1 and one in fold 2. Non-landmark queries get low-confidence
    answers from both. On the whole set B has 2 errors and A 3, so B wins in
    sample; without fold 0 the lucky queries are unseen and A wins.
    """
    sol = base_solution()
    fold_of = tuning.assign_folds(sol, n_folds=n_folds, seed=seed)
    lm_ids = sorted(q for q in sol if sol[q])
    lucky = [q for q in lm_ids if fold_of[q] == 0][:3]
    broken = [[q for q in lm_ids if fold_of[q] == f][0] for f in (1, 2)]
    conf = {q: 0.9 - 0.01 * i for i, q in enumerate(lm_ids)}  # distinct confidences

    def answer(q, right):
        truth = next(iter(sol[q]))
        return (truth if right else "WRONG", conf[q])

    pa = {q: answer(q, q not in lucky) for q in lm_ids}
    pb = {q: answer(q, q not in broken) for q in lm_ids}
    for q in sol:
        if not sol[q]:
            pa[q] = pb[q] = ("L0", 0.05)
    by_value = {
        0.0: {q: ("WRONG", 0.5) for q in sol},  # far too permissive: everything wrong
        A: pa,
        B: pb,
        1.0: {q: None for q in sol},  # far too strict: no answers
    }
    return by_value, sol, fold_of, lucky, broken


# --------------------------------------------------------------------------- choose_value


def test_choose_value_picks_max_and_restricts():
    by_value, sol, fold_of, lucky, broken = overfit_case()
    value, best = tuning.choose_value(by_value, sol)
    assert value == B and best == pytest.approx(metrics.gap(by_value[B], sol))
    assert best > metrics.gap(by_value[A], sol)
    # without fold 0 (where the lucky queries are) A is better
    rest = [q for q in sol if fold_of[q] != 0]
    assert tuning.choose_value(by_value, sol, query_ids=rest)[0] == A


def test_choose_value_tie_break_is_lower_median_of_ties():
    sol = {"a": S({"L"}), "b": S({"M"})}
    good = {"a": ("L", 0.9), "b": ("M", 0.8)}  # GAP 1
    half = {"a": ("L", 0.9), "b": None}  # GAP 1/2
    by_value = {4.0: good, 1.0: good, 3.0: good, 2.0: good, 5.0: half}
    # ties {1, 2, 3, 4}: lower median = 2
    assert tuning.choose_value(by_value, sol) == (2.0, 1.0)
    del by_value[4.0]
    assert tuning.choose_value(by_value, sol) == (2.0, 1.0)  # ties {1, 2, 3}: median 2
    assert tuning.choose_value({7.0: good}, sol) == (7.0, 1.0)
    # insertion order never matters
    assert tuning.choose_value(dict(reversed(list(by_value.items()))), sol) == (2.0, 1.0)


def test_choose_value_errors():
    sol = {"a": S({"L"}), "n": S()}
    with pytest.raises(ValueError, match="empty"):
        tuning.choose_value({}, sol)
    with pytest.raises(ValueError, match="'zzz'"):
        tuning.choose_value({1.0: {}}, sol, query_ids=["a", "zzz"])
    with pytest.raises(ValueError, match="M == 0"):
        tuning.choose_value({1.0: {}}, sol, query_ids=["n"])
    with pytest.raises(ValueError, match="finite"):
        tuning.choose_value({float("nan"): {}}, sol)


# --------------------------------------------------------------------------- sweep


def test_sweep_columns_and_values():
    by_value, sol, *_ = overfit_case()
    df = tuning.sweep(by_value, sol, n_boot=50, seed=0)
    assert list(df.columns) == ["value", "gap", "gap_ci_lo", "gap_ci_hi", "top1_accuracy", "nonlandmark_prediction_rate"]
    assert df["value"].tolist() == [0.0, A, B, 1.0]
    for v, g in zip(df["value"], df["gap"]):
        assert g == pytest.approx(metrics.gap(by_value[v], sol))
    assert (df["gap_ci_lo"] <= df["gap"] + 1e-12).all() and (df["gap"] <= df["gap_ci_hi"] + 1e-12).all()
    row = df.set_index("value").loc[1.0]
    assert row["gap"] == 0.0 and row["nonlandmark_prediction_rate"] == 0.0
    assert df.set_index("value").loc[A, "top1_accuracy"] == pytest.approx(37 / 40)


# --------------------------------------------------------------------------- cross-validation


def test_assign_folds_stratified_and_deterministic():
    sol = base_solution(n_landmark=23, n_non=11)
    folds = tuning.assign_folds(sol, n_folds=5, seed=1)
    assert folds == tuning.assign_folds(dict(reversed(list(sol.items()))), n_folds=5, seed=1)
    assert folds != tuning.assign_folds(sol, n_folds=5, seed=2)
    sizes = np.bincount(list(folds.values()), minlength=5)
    lm_sizes = np.bincount([f for q, f in folds.items() if sol[q]], minlength=5)
    assert sizes.max() - sizes.min() <= 1 and lm_sizes.min() >= 4 and lm_sizes.max() - lm_sizes.min() <= 1


def test_cross_validation_exposes_in_sample_overfit():
    by_value, sol, fold_of, lucky, broken = overfit_case()
    res = tuning.cross_validated_gap(by_value, sol, n_folds=5, seed=0)
    assert res["in_sample_value"] == B
    assert res["in_sample_gap"] == pytest.approx(metrics.gap(by_value[B], sol))
    assert res["cv_gap"] < res["in_sample_gap"]
    chosen = {fd["fold"]: fd["chosen_value"] for fd in res["folds"]}
    # fold 0 holds the lucky queries: without them A is chosen, and scores badly there
    assert chosen == {0: A, 1: B, 2: B, 3: B, 4: B}
    fold0 = res["folds"][0]
    held0 = {q for q, f in fold_of.items() if f == 0}
    sol0 = {q: sol[q] for q in held0}
    assert fold0["heldout_gap"] == pytest.approx(metrics.gap({q: by_value[A][q] for q in held0}, sol0))
    assert fold0["heldout_gap"] < metrics.gap({q: by_value[B][q] for q in held0}, sol0)
    assert sum(fd["n_queries"] for fd in res["folds"]) == len(sol)
    assert res["cv_gap"] == pytest.approx(np.mean([fd["heldout_gap"] for fd in res["folds"]]))
    assert res["cv_gap_std"] > 0 and res["n_folds"] == 5
    assert res["cv_gap_pooled"] < res["in_sample_gap"]


def test_each_fold_chooses_without_its_own_queries(monkeypatch):
    by_value, sol, *_ = overfit_case()
    calls = []
    real = tuning.choose_value

    def spy(pbv, solution, query_ids=None, **kwargs):
        calls.append(None if query_ids is None else set(query_ids))
        return real(pbv, solution, query_ids=query_ids, **kwargs)

    monkeypatch.setattr(tuning, "choose_value", spy)
    res = tuning.cross_validated_gap(by_value, sol, n_folds=4, seed=3)
    fold_of = tuning.assign_folds(sol, n_folds=4, seed=3)
    fold_calls = [c for c in calls if c is not None]
    assert len(fold_calls) == 4 and calls.count(None) == 1  # one per fold + the in-sample choice
    for f, used in enumerate(fold_calls):
        held = {q for q, g in fold_of.items() if g == f}
        assert not used & held
        assert used | held == set(sol)
        assert res["folds"][f]["n_queries"] == len(held)


def test_cross_validation_reduces_folds_when_few_landmark_queries(caplog):
    sol = {"a": S({"L"}), "b": S({"M"}), "c": S({"L"}), **{f"n{i}": S() for i in range(10)}}
    by_value = {1.0: {"a": ("L", 0.9), "b": ("M", 0.8), "c": ("X", 0.7)}, 2.0: {"a": ("L", 0.9)}}
    with caplog.at_level(logging.WARNING, logger="eval.tuning"):
        res = tuning.cross_validated_gap(by_value, sol, n_folds=5, seed=0)
    assert res["n_folds"] == 3 and len(res["folds"]) == 3
    assert "using 3 folds" in caplog.text
    with pytest.raises(ValueError, match="at least 2 landmark queries"):
        tuning.cross_validated_gap(by_value, {"a": S({"L"}), "n": S()}, n_folds=5)
    with pytest.raises(ValueError, match="n_folds"):
        tuning.cross_validated_gap(by_value, sol, n_folds=1)


def test_cross_validation_is_deterministic():
    by_value, sol, *_ = overfit_case()
    assert tuning.cross_validated_gap(by_value, sol, seed=5) == tuning.cross_validated_gap(by_value, sol, seed=5)


# --------------------------------------------------------------------------- plot


def test_plot_gap_vs_value(tmp_path):
    by_value, sol, *_ = overfit_case()
    df = tuning.sweep(by_value, sol, n_boot=30, seed=0)
    out = plots.plot_gap_vs_value(df, tmp_path / "plots" / "gap.png", chosen_value=B, title="tuning")
    assert out.stat().st_size > 0
    with Image.open(out) as im:
        im.verify()
        assert im.format == "PNG"
    assert [p.name for p in out.parent.iterdir()] == ["gap.png"]
    with pytest.raises(ValueError, match="gap_ci_lo"):
        plots.plot_gap_vs_value(df.drop(columns="gap_ci_lo"), tmp_path / "x.png")


def test_ties_broken_by_fewest_wrong_accepted_answers():
    """GAP is blind to a wrong answer ranked last; the accept-confidence tie-break is not."""
    sol = {"q1": frozenset({"a"}), "q2": frozenset()}
    # value 0: q2 (no landmark) is answered above the accept level, but below q1: same GAP as value 5
    low = {"q1": ("a", 0.9), "q2": ("b", 0.6)}
    high = {"q1": ("a", 0.9), "q2": ("b", 0.3)}
    by_value = {0.0: low, 5.0: high, 10.0: {"q1": ("a", 0.4), "q2": ("b", 0.3)}}
    assert tuning.choose_value(by_value, sol)[1] == 1.0
    assert tuning.choose_value(by_value, sol, accept_confidence=0.5) == (5.0, 1.0)


def test_prediction_matrix_agrees_with_the_dict_metrics():
    """The array path (tune-threshold at scale) scores exactly as eval.metrics, ties and missing answers included."""
    rng = np.random.default_rng(4)
    sol = {f"q{i:03d}": S({f"L{i % 7}"}) if i % 3 else S() for i in range(90)}
    by_value = {}
    for value in (0.0, 1.0, 2.0):
        preds = {}
        for q, truth in sol.items():
            r = rng.random()
            if r < 0.2:
                preds[q] = None
            else:  # confidences on a coarse grid: many ties, broken by query id
                preds[q] = (next(iter(truth)) if truth and r < 0.7 else "L9", float(rng.choice([0.2, 0.5, 0.9])))
        by_value[value] = preds
    pm = tuning.PredictionMatrix.from_predictions(by_value, sol)
    some = set(sorted(sol)[::2])
    for v, value in enumerate(pm.values):
        assert pm.gap(v, pm.mask(None)) == pytest.approx(metrics.gap(by_value[value], sol), abs=1e-12)
        sub = {q: p for q, p in by_value[value].items() if q in some}
        assert pm.gap(v, pm.mask(some)) == pytest.approx(metrics.gap(sub, {q: sol[q] for q in some}), abs=1e-12)
        preds, s = pm.as_dicts(v)
        assert metrics.gap(preds, s) == pytest.approx(metrics.gap(by_value[value], sol), abs=1e-12)
    assert tuning.cross_validated_gap(pm, sol, seed=1) == tuning.cross_validated_gap(by_value, sol, seed=1)


def test_evidence_lines_parse_fast_and_slow_alike():
    import json as _json

    from eval.evaluate import _id_and_candidates

    cands = [{"landmark_id": "7", "vote": 0.9, "sim": 0.9, "inliers": 40, "best_match_id": "r", "verified_refs": 1, "raw_sim": 0.9}]
    record = {"id": "q1", "path": '/x/"candidates": odd.jpg', "evidence": {"neighbours": [["r", "7", 0.9]], "candidates": cands,
              "discount": 0.0}, "error": None, "timings": {"global": 0.1}}
    assert _id_and_candidates(_json.dumps(record)) == ("q1", cands)
    assert _id_and_candidates(_json.dumps(record, indent=None, separators=(",", ":"))) == ("q1", cands)  # other layout
    assert _id_and_candidates(_json.dumps({**record, "evidence": None, "error": "bad"})) == ("q1", None)
    with pytest.raises(ValueError):
        _id_and_candidates(_json.dumps(record)[:40])
