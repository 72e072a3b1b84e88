"""The shortlist: true-landmark ranks and channel costs, training-free re-ranking math, ASMK retrieval."""
from __future__ import annotations

import numpy as np
import pytest

from eval import shortlist
from index.asmk import Codebook, InvertedFile, landmark_ranking, selective, train_codebook
from retrieval.decision import Candidate, Evidence, Prediction
from retrieval.global_rerank import alpha_qe, dba, superglobal_rerank


def _ev(*landmarks: str) -> Evidence:
    return Evidence([], [Candidate(lm, 1.0 - 0.1 * i, 1.0 - 0.1 * i) for i, lm in enumerate(landmarks)])


def test_true_rank_and_summary():
    assert shortlist.true_rank(_ev("a", "b", "c"), frozenset({"c"})) == 3
    assert shortlist.true_rank(_ev("a", "b"), frozenset({"z"})) is None
    assert shortlist.true_rank(None, frozenset({"a"})) is None
    ranks = {"q1": 1, "q2": 3, "q3": None, "q4": 7}
    timings = [{"global": 0.1, "search": 0.02, "verify": 1.0}, {"global": 0.2, "search": 0.04}, None]
    s = shortlist.summary(ranks, timings)
    assert s["n_landmark_queries"] == 4 and s["n_among_candidates"] == 3 and s["n_first"] == 1
    assert s["recall"] == {"1": 0.25, "5": 0.5, "10": 0.75}
    assert s["ranks"] == ranks
    assert s["channel_ms"] == {"global": pytest.approx(180.0)}  # median of 120 and 240 ms; verify is not a channel
    assert shortlist.summary({})["recall"]["1"] is None


def test_candidates_say_their_channel_and_old_evidence_reads():
    ev = Evidence.from_json({"neighbours": [], "candidates": [{"landmark_id": "a", "vote": 0.9, "sim": 0.9}]})
    assert ev.candidates[0].channels == ["global"]  # evidence written before channels existed
    pred = Prediction("a", 0.9, 30, True, candidates=ev.candidates)
    assert pred.to_json()["candidates"][0]["channels"] == ["global"]
    assert Evidence.from_json(ev.to_json()).candidates[0].channels == ["global"]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_query_expansion_and_dba_move_towards_neighbours():
    rng = np.random.default_rng(0)
    xb = _unit(rng.standard_normal((20, 16)))
    q = _unit(xb[3] + 0.8 * rng.standard_normal(16))
    s = xb @ q
    rows = np.argsort(-s)
    q2 = alpha_qe(q, xb, s[rows], rows, k=1)
    assert np.linalg.norm(q2) == pytest.approx(1.0, abs=1e-5)
    assert q2 @ xb[rows[0]] > q @ xb[rows[0]]  # pulled towards its first neighbour
    np.testing.assert_allclose(alpha_qe(q, xb, s[rows], rows, k=0), q)
    xa = dba(xb, k=1)
    np.testing.assert_allclose(np.linalg.norm(xa, axis=1), 1.0, atol=1e-5)
    nn = np.argsort(-(xb @ xb.T - 2 * np.eye(20)), axis=1)[:, 0]
    assert np.all(np.sum(xa * xb[nn], axis=1) >= np.sum(xb * xb[nn], axis=1) - 1e-6)
    np.testing.assert_allclose(dba(xb, k=0), xb)


def test_superglobal_rerank_keeps_the_plain_order_for_an_exact_match():
    rng = np.random.default_rng(1)
    xm = _unit(rng.standard_normal((10, 32)))
    q = xm[4].copy()
    scores = superglobal_rerank(q, xm, k=1)
    assert scores.shape == (10,) and int(np.argmax(scores)) == 4
    np.testing.assert_allclose(superglobal_rerank(q, xm, k=0), xm @ q)


def test_asmk_finds_the_image_that_shares_local_features():
    rng = np.random.default_rng(0)
    images = [rng.standard_normal((120, 32)).astype(np.float32) for _ in range(12)]
    cb = Codebook(train_codebook(np.concatenate(images), 64))
    agg = [cb.aggregate(x) for x in images] + [cb.aggregate(np.zeros((0, 32), np.float32))]  # one image without any
    words, codes = agg[0]
    assert words.dtype == np.int32 and codes.shape == (len(words), 4) and np.all(np.diff(words) > 0)
    offsets = np.cumsum([0] + [len(w) for w, _ in agg])
    ivf = InvertedFile.from_images(np.concatenate([w for w, _ in agg]), np.concatenate([c for _, c in agg]), offsets, 64, 32)
    query = images[5][:60] + 0.2 * rng.standard_normal((60, 32)).astype(np.float32)
    scores, rows = ivf.search(*cb.aggregate(query, assign=2), k=5)
    assert rows[0] == 5 and np.all(np.diff(scores) <= 0) and 12 not in rows
    assert landmark_ranking(scores, rows, ["a"] * 5 + ["b"] + ["c"] * 7)[0][0] == "b"
    assert landmark_ranking(scores, rows, [""] * 13) == []  # non-landmark references propose nothing
    same = codes[:1]
    assert selective(same, same[0], 32)[0] == pytest.approx(1.0)
    assert selective(np.bitwise_not(same), same[0], 32)[0] == 0.0  # opposite codes: below tau
