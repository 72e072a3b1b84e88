"""The decision rule (retrieval.decision): invariants as properties over random evidence, and the one scale of a
matcher cascade. decide, decide_many and threshold_sweep share one implementation; they are tested against
reference_answer, the rule written again plainly, one candidate at a time."""
from __future__ import annotations

import copy
from dataclasses import asdict

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from retrieval.decision import (
    VERIFIED_BASE, Candidate, CandidateArrays, ConfidenceModel, Evidence, answer_features, decide, decide_many,
    submission_answer, threshold_sweep,
)

PROPS = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def evidences(draw, max_candidates: int = 6):
    """Random evidence: distinct landmarks, inliers of one or two matchers (some never ran), similarities."""
    n = draw(st.integers(1, max_candidates))
    cands = []
    for i in range(n):
        ran1 = draw(st.booleans())
        ran2 = draw(st.booleans())
        cands.append(Candidate(
            f"L{i}", vote=draw(st.sampled_from([0.3, 0.5, 0.7, 0.9])), sim=draw(st.floats(0.0, 1.2)),
            inliers=draw(st.integers(0, 200)) if ran1 else 0, verified_refs=int(ran1),
            inliers2=draw(st.integers(0, 400)) if ran2 else 0, verified_refs2=int(ran2),
        ))
    cands.sort(key=lambda c: -c.vote)  # candidate order is vote order
    return Evidence([], cands)


params_st = st.fixed_dictionaries({
    "inlier_threshold": st.sampled_from([0, 5, 12, 30]),
    "cascade_threshold": st.sampled_from([1, 30, 40]),
    "min_margin": st.sampled_from([1.0, 1.25, 1.5, 3.0]),
    "vote_weight": st.sampled_from([0.0, 0.5, 1.0]),
    "inlier_cap": st.sampled_from([50, 100]),
})


def _passes(c: Candidate, p: dict) -> bool:
    return bool((c.verified_refs and c.inliers >= p["inlier_threshold"]) or (c.verified_refs2 and c.inliers2 >= p["cascade_threshold"]))


@PROPS
@given(evidences(), params_st)
def test_margin_off_means_off(ev, p):
    """min_margin = 1: verified exactly when some candidate reached a matcher's threshold."""
    pred = decide(ev, **{**p, "min_margin": 1.0})
    assert pred.verified == any(_passes(c, p) for c in ev.candidates)
    assert (pred.confidence >= VERIFIED_BASE) == pred.verified


@PROPS
@given(evidences(), params_st, st.integers(1, 300), st.booleans())
def test_more_inliers_for_the_winner_never_unverify_it(ev, p, extra, second):
    """Adding inliers to the verified winner (either matcher) keeps it the verified winner, confidence not lower."""
    pred = decide(ev, **p)
    if not pred.verified:
        return
    more = copy.deepcopy(ev)
    winner = next(c for c in more.candidates if c.landmark_id == pred.landmark_id)
    if second and winner.verified_refs2:
        winner.inliers2 += extra
    else:
        winner.inliers += extra if winner.verified_refs else 0
    after = decide(more, **p)
    assert after.verified and after.landmark_id == pred.landmark_id
    assert after.confidence >= pred.confidence - 1e-12


def _score(c: Candidate, p: dict) -> float:
    return max(c.inliers / max(p["inlier_threshold"], 1) if c.verified_refs else 0.0,
               c.inliers2 / max(p["cascade_threshold"], 1) if c.verified_refs2 else 0.0)


@PROPS
@given(evidences(), params_st, st.integers(1, 300))
@example(Evidence([], [Candidate("A", 0.9, 0.8, inliers=30, verified_refs=1), Candidate("B", 0.5, 0.5, inliers=2, verified_refs=1)]),
         {"inlier_threshold": 12, "cascade_threshold": 40, "min_margin": 1.0, "vote_weight": 0.5, "inlier_cap": 100}, 5)
@example(Evidence([], [Candidate("A", 0.9, 0.8, inliers=30, verified_refs=1), Candidate("B", 0.5, 0.5, inliers=2, verified_refs=1)]),
         {"inlier_threshold": 12, "cascade_threshold": 40, "min_margin": 1.0, "vote_weight": 0.5, "inlier_cap": 100}, 100)
@example(Evidence([], [Candidate("A", 0.9, 0.8, inliers=30, verified_refs=1), Candidate("B", 0.5, 0.5, inliers=2, verified_refs=1)]),
         {"inlier_threshold": 12, "cascade_threshold": 40, "min_margin": 1.5, "vote_weight": 0.5, "inlier_cap": 100}, 20)
def test_more_inliers_for_another_candidate_never_help_the_winner(ev, p, extra):
    """Inliers added to a non-winning candidate can only take the answer away from the winner, never give it a
    higher confidence: the winner keeps its confidence, or that candidate now outscores it, or (with a margin) the
    winner lost its margin and the query has no verified answer. No third candidate ever wins."""
    pred = decide(ev, **p)
    assume(pred.verified and len(ev.candidates) >= 2)
    more = copy.deepcopy(ev)
    winner = next(c for c in more.candidates if c.landmark_id == pred.landmark_id)
    other = next(c for c in more.candidates if c.landmark_id != pred.landmark_id)
    other.inliers += extra
    other.verified_refs = 1
    after = decide(more, **p)
    if after.landmark_id == pred.landmark_id:
        assert after.confidence == pytest.approx(pred.confidence)
    elif after.landmark_id == other.landmark_id:
        assert _score(other, p) >= _score(winner, p) and after.confidence >= VERIFIED_BASE
    else:
        assert after.landmark_id is None and not after.verified and p["min_margin"] > 1
        assert _score(winner, p) < p["min_margin"] * _score(other, p)


def reference_answer(cands: list[Candidate], p: dict, keep: bool = True) -> tuple[str, float, bool] | None:
    """The rule of retrieval/decision.py's docstring written again, plainly, one candidate at a time: what
    decide, decide_many and threshold_sweep are tested against. (landmark, confidence, verified) or None."""
    if not cands:
        return None
    t1, t2 = max(p["inlier_threshold"], 1), max(p["cascade_threshold"], 1)
    cap, w = p.get("inlier_cap", 100), p.get("vote_weight", 0.5)
    passing = [c for c in cands if _passes(c, p)]
    winner = None
    if passing:
        best = max(_score(c, p) for c in passing)
        winner = max((c for c in passing if _score(c, p) == best), key=lambda c: (c.vote, c.landmark_id))
        others = [_score(c, p) for c in cands if c is not winner]
        if p.get("min_margin", 1.0) > 1 and others and _score(winner, p) < p["min_margin"] * max(others):
            winner = None
    if winner is not None:
        inliers = min(_score(winner, p) * t1, cap)
        return winner.landmark_id, 0.5 + 0.5 * ((1 - w) * inliers / cap + w * min(winner.sim, 1.0)), True
    if not keep:
        return None
    return cands[0].landmark_id, 0.49 * min(cands[0].sim, 1.0), False


@PROPS
@given(evidences(), params_st)
def test_decide_follows_the_reference(ev, p):
    pred = decide(ev, **p)
    landmark, confidence, verified = reference_answer(ev.candidates, p)
    assert (pred.landmark_id if pred.verified else pred.guess) == landmark and pred.verified == verified
    assert pred.confidence == pytest.approx(confidence)


@PROPS
@given(st.lists(st.one_of(st.none(), evidences()), min_size=1, max_size=12), params_st, st.booleans())
@example([Evidence([], [Candidate("A", 0.9, 0.8, inliers=30, verified_refs=1), Candidate("B", 0.5, 0.5, inliers=20, verified_refs=1)])],
         {"inlier_threshold": 5, "cascade_threshold": 40, "min_margin": 1.5, "vote_weight": 0.5, "inlier_cap": 100}, True)  # margin met exactly
def test_decide_many_follows_the_reference_query_by_query(evs, p, keep):
    """Padded (Q, C) arrays of queries with different candidate counts decide each query as the reference does."""
    arrays = CandidateArrays.from_candidates([[asdict(c) for c in ev.candidates] if ev else None for ev in evs])
    column, confidence, verified = decide_many(arrays, keep_guesses=keep, **p)
    for i, ev in enumerate(evs):
        expected = reference_answer(ev.candidates, p, keep) if ev else None
        if expected is None:
            assert column[i] == -1 and np.isnan(confidence[i])
        else:
            assert arrays.landmarks[i, column[i]] == expected[0]
            assert confidence[i] == pytest.approx(expected[1])
            assert verified[i] == expected[2]


def test_threshold_sweep_follows_the_reference():
    rng = np.random.default_rng(1)
    rows = []
    for q in range(200):
        n = int(rng.integers(0, 8))
        rows.append([Candidate(f"L{j}", float(rng.choice([0.5, 0.9])), float(rng.choice([0.6, 0.8, 1.3])),
                               inliers=int(rng.choice([0, 3, 12, 40, 150])), verified_refs=int(rng.integers(0, 2)),
                               inliers2=int(rng.choice([0, 30, 90])), verified_refs2=int(rng.integers(0, 2)))
                     for j in range(n)] if q % 40 else None)
    arrays = CandidateArrays.from_candidates([[asdict(c) for c in r] if r else None for r in rows])
    grid = [0.0, 3.0, 12.0, 13.0, 151.0]
    checked = set()
    for params in [dict(), dict(min_margin=1.5, vote_weight=0.0, cascade_threshold=30)]:
        for t, (column, confidence, verified) in zip(grid, threshold_sweep(arrays, grid, **params)):
            p = {"inlier_threshold": t, "cascade_threshold": 40, "min_margin": 1.0, "vote_weight": 0.5, **params}
            for i, cands in enumerate(rows):
                expected = reference_answer(cands or [], p)
                if expected is None:
                    assert column[i] == -1 and np.isnan(confidence[i])
                    continue
                assert (arrays.landmarks[i, column[i]], bool(verified[i])) == (expected[0], expected[2]), (t, params, i)
                assert confidence[i] == pytest.approx(expected[1])
                checked.add(expected[2])
    assert checked == {True, False}  # both verified answers and guesses were compared


def test_margin_off_with_the_issue_example():
    """A (30 inliers, similarity 0.95) and B (40, 0.40) with RootSIFT defaults: a verified answer, not "none"."""
    ev = Evidence([], [Candidate("A", 0.95, 0.95, inliers=30, verified_refs=1), Candidate("B", 0.40, 0.40, inliers=40, verified_refs=1)])
    pred = decide(ev, inlier_threshold=12, min_margin=1.0)
    assert pred.verified and pred.landmark_id == "B"  # the most inliers on the matcher's scale chose it
    assert decide(ev, inlier_threshold=12, min_margin=1.5).landmark_id is None  # 40 < 1.5 * 30: ambiguous


def test_scores_are_compared_on_one_scale():
    """RootSIFT 18 inliers (1.5x its threshold 12) loses to LighterGlue 100 (2.5x its threshold 40), though
    18 > 12 raw-wise means nothing next to 100 on another matcher's scale; the margin uses the same scale."""
    ev = Evidence([], [Candidate("facade", 0.9, 0.9, inliers=18, verified_refs=1, inliers2=45, verified_refs2=1),
                       Candidate("true", 0.8, 0.8, inliers=8, verified_refs=1, inliers2=100, verified_refs2=1)])
    pred = decide(ev, inlier_threshold=12, cascade_threshold=40, min_margin=1.5)
    assert pred.verified and pred.landmark_id == "true"  # 2.5 >= 1.5 * 1.5
    ev.candidates[1].inliers2 = 80  # 2.0 < 1.5 * 1.5: ambiguous
    assert decide(ev, inlier_threshold=12, cascade_threshold=40, min_margin=1.5).landmark_id is None
    # the confidence of a second-matcher answer is on the primary's inlier scale: 100 / 40 * 12 = 30 inliers
    solo = Evidence([], [Candidate("true", 0.8, 0.8, inliers2=100, verified_refs2=1)])
    pred = decide(solo, inlier_threshold=12, cascade_threshold=40, inlier_cap=100, vote_weight=0.5)
    assert pred.confidence == pytest.approx(0.5 + 0.5 * (0.5 * 30 / 100 + 0.5 * 0.8))


def test_fitted_confidence_is_monotone_and_keeps_the_bands():
    rng = np.random.default_rng(0)
    n = 400
    score = rng.gamma(2.0, 1.0, n)
    sim = rng.uniform(0.2, 1.0, n)
    margin = rng.normal(0, 1, n)
    # the truth depends on score and sim; "margin" is noise that fits a slightly negative weight on this sample
    y = (1.5 * score + 3 * sim - 3 - 0.3 * margin + rng.logistic(0, 0.5, n)) > 0
    model = ConfidenceModel.fit(np.stack([np.log1p(score), margin, sim], axis=1), y)
    assert all(w >= 0 for w in model.weights) and model.weights[0] > 0 and model.weights[2] > 0
    back = ConfidenceModel.from_json(model.to_json())  # stored in the manifest and read back: the same model
    assert back.weights == pytest.approx(model.weights, abs=1e-6) and back.bias == pytest.approx(model.bias, abs=1e-6)
    x = np.stack([np.log1p(score), margin, sim], axis=1)
    np.testing.assert_allclose(back.predict(x), model.predict(x), atol=1e-5)
    ev = Evidence([], [Candidate("a", 0.9, 0.7, inliers=20, verified_refs=1), Candidate("b", 0.5, 0.5, inliers=4, verified_refs=1)])
    low = decide(ev, inlier_threshold=12, confidence_model=model.to_json())
    ev.candidates[0].inliers = 60
    high = decide(ev, inlier_threshold=12, confidence_model=model.to_json())
    assert VERIFIED_BASE <= low.confidence <= high.confidence <= 1.0
    ev.candidates[0].inliers = 5  # not verified: a guess, below every verified answer
    guess = decide(ev, inlier_threshold=12, confidence_model=model.to_json())
    assert not guess.verified and 0 <= guess.confidence < VERIFIED_BASE
    with pytest.raises(ValueError, match="weights"):
        ConfidenceModel.from_json({**model.to_json(), "weights": [-1.0, 0.0, 0.0]})


def test_answer_features_increase_with_the_evidence():
    arrays = CandidateArrays.from_candidates([[asdict(Candidate("a", 0.9, 0.7, inliers=24, verified_refs=1)),
                                               asdict(Candidate("b", 0.5, 0.5, inliers=6, verified_refs=1))]])
    passes, score = arrays.scores(12, 40)
    x = answer_features(arrays, score, np.array([0]))
    assert x[0] == pytest.approx([np.log1p(2.0), np.log1p(2.0) - np.log1p(0.5), 0.7])


def test_cascade_resolution_and_the_second_matchers_reference():
    """The second matcher runs only on a query the primary one left unresolved, and verifies the candidate image
    the primary matcher found the most inliers with (else the most similar one)."""
    from retrieval.recognize import Recognizer, resolved

    conf = {"cascade_resolve_inliers": 20, "cascade_resolve_margin": 2.0}
    clear = [Candidate("a", 0.9, 0.9, inliers=45, verified_refs=1), Candidate("b", 0.8, 0.8, inliers=9, verified_refs=1)]
    assert resolved(clear, conf)
    close = [Candidate("a", 0.9, 0.9, inliers=45, verified_refs=1), Candidate("b", 0.8, 0.8, inliers=30, verified_refs=1)]
    assert not resolved(close, conf)  # 45 < 2 x 30: ambiguous, the learned matcher decides
    assert not resolved([Candidate("a", 0.9, 0.9, inliers=15, verified_refs=1)], conf)  # too few to be sure
    assert not resolved([Candidate("a", 0.9, 0.9)], conf)  # nothing verified (a photo of no landmark)
    id_of = {10: "r10", 11: "r11"}
    seen = Candidate("a", 0.9, 0.9, inliers=7, verified_refs=2, best_match_id="r11")
    assert Recognizer._second_reference(seen, [10, 11], id_of) == 11
    assert Recognizer._second_reference(Candidate("a", 0.9, 0.9, verified_refs=2), [10, 11], id_of) == 10
