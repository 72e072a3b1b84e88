"""Tests for retrieval.matching: descriptor matching, RANSAC verification, parallel early exit.

CPU only, offline; images and homographies are generated here.
"""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
import torch

from retrieval.local_features import LocalFeatures, l2_normalize, local_confs, make_local_extractor
from retrieval.matching import (
    VerificationResult,
    default_match_conf,
    match_descriptors,
    resolve_match_conf,
    verify_many,
    verify_pair,
)

# A mild perspective warp of a 384 px image (rotation ~5 deg, shear, translation, tilt).
H_TRUE = np.array([[0.9, 0.1, 20.0], [-0.08, 0.95, 30.0], [2e-4, 1e-4, 1.0]])
GRID = np.stack(np.meshgrid(np.linspace(40, 340, 6), np.linspace(40, 340, 6)), -1).reshape(1, -1, 2).astype(np.float32)

from tests.conftest import textured_image


def transfer_error(transform: np.ndarray, points: np.ndarray = GRID, truth: np.ndarray = H_TRUE) -> float:
    """Largest distance between points mapped by ``transform`` and by the true homography."""
    return float(np.abs(cv2.perspectiveTransform(points, transform) - cv2.perspectiveTransform(points, truth)).max())


def synthetic_pair(
    n_true: int = 120, n_noise: int = 80, d: int = 32, seed: int = 0
) -> tuple[LocalFeatures, LocalFeatures]:
    """Query/reference features: ``n_true`` correspondences under H_TRUE (0.5 px noise) plus unrelated ones."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 384, (n_true, 2)).astype(np.float32)
    xy_ref = cv2.perspectiveTransform(xy[None], H_TRUE)[0] + rng.normal(0, 0.5, (n_true, 2)).astype(np.float32)
    desc = l2_normalize(rng.normal(size=(n_true, d)))
    desc_ref = l2_normalize(desc + 0.05 * rng.normal(size=desc.shape))
    noise_q = l2_normalize(rng.normal(size=(n_noise, d)))
    noise_r = l2_normalize(rng.normal(size=(n_noise, d)))

    def feats(points, descriptors):
        return LocalFeatures(points, np.ones(len(points)), np.ones(len(points)), descriptors)

    query = feats(np.vstack([xy, rng.uniform(0, 384, (n_noise, 2))]), np.vstack([desc, noise_q]))
    ref = feats(np.vstack([xy_ref, rng.uniform(0, 384, (n_noise, 2))]), np.vstack([desc_ref, noise_r]))
    return query, ref


# seeded RNGs and one torch thread for every test here (fixtures in conftest.py)
pytestmark = pytest.mark.usefixtures("seeded", "one_torch_thread")


@pytest.fixture(scope="module")
def scene() -> dict[str, np.ndarray]:
    img = textured_image(384, seed=0)
    return {
        "img": img,
        "warped": cv2.warpPerspective(img, H_TRUE, (384, 384), borderMode=cv2.BORDER_REFLECT),
        "other": textured_image(384, seed=1),
    }


# --------------------------------------------------------------------------------------------
# match_descriptors
# --------------------------------------------------------------------------------------------
def _unit(deg: float) -> list[float]:
    return [np.cos(np.radians(deg)), np.sin(np.radians(deg))]


def test_match_descriptors_by_hand():
    # 2-D unit descriptors at angles (chord distance 2 sin(angle / 2)):
    #   a0 = 0 deg, a1 = 10 deg, a2 = 90 deg;  b0 = 0 deg, b1 = 80 deg, b2 = 101 deg.
    # a0 -> b0 (0) vs b1 (80 deg): ratio 0;      b0 -> a0: mutual.
    # a1 -> b0 (10) vs b1 (70 deg): ratio 0.15;  b0 -> a0, not a1: NOT mutual.
    # a2 -> b1 (10) vs b2 (11 deg): ratio 0.909; b1 -> a2: mutual.
    a = np.array([_unit(0), _unit(10), _unit(90)], np.float32)
    b = np.array([_unit(0), _unit(80), _unit(101)], np.float32)
    as_set = lambda m: {tuple(p) for p in m.tolist()}  # noqa: E731
    assert as_set(match_descriptors(a, b, "mnn")) == {(0, 0), (2, 1)}
    assert as_set(match_descriptors(a, b, "ratio", ratio=0.9)) == {(0, 0), (1, 0)}
    assert as_set(match_descriptors(a, b, "ratio", ratio=0.95)) == {(0, 0), (1, 0), (2, 1)}
    assert as_set(match_descriptors(a, b, "mnn+ratio", ratio=0.9)) == {(0, 0)}
    assert as_set(match_descriptors(a, b, "mnn+ratio", ratio=0.95)) == {(0, 0), (2, 1)}
    m = match_descriptors(a, b)
    assert m.dtype == np.int64 and m.shape == (1, 2)
    # A single reference descriptor: no second neighbour, the ratio test passes.
    assert as_set(match_descriptors(a, b[:1], "mnn+ratio")) == {(0, 0)}
    # Unnormalised descriptors give the same matches (distances are computed, not assumed).
    assert as_set(match_descriptors(3 * a, b, "mnn")) == as_set(match_descriptors(a, b, "mnn"))


def test_match_descriptors_empty_and_bad_inputs():
    d = np.ones((5, 8), np.float32)
    for x, y in [(np.zeros((0, 8)), d), (d, np.zeros((0, 8))), (np.zeros((0, 8)), np.zeros((0, 8)))]:
        m = match_descriptors(x, y)
        assert m.shape == (0, 2) and m.dtype == np.int64
    with pytest.raises(ValueError, match="dimension mismatch"):
        match_descriptors(d, np.ones((5, 9)))
    with pytest.raises(ValueError, match="dimension mismatch"):
        match_descriptors(np.zeros((0, 8)), np.zeros((0, 9)))
    with pytest.raises(ValueError, match="unknown match method"):
        match_descriptors(d, d, method="knn")


def test_resolve_match_conf():
    assert resolve_match_conf(None) == default_match_conf
    assert resolve_match_conf("delf")["reproj_threshold"] == 16.0
    assert resolve_match_conf({"ratio": 0.8})["method"] == "mnn+ratio"
    with pytest.raises(ValueError, match="unknown match configuration 'magic'; choose one of: default, rootsift"):
        resolve_match_conf("magic")
    with pytest.raises(ValueError, match="unknown match setting"):
        resolve_match_conf({"ratoi": 0.8})
    for key, bad in [("method", "knn"), ("ransac", "lmeds"), ("model", "fundamental")]:
        with pytest.raises(ValueError, match=key if key != "model" else "geometric model"):
            resolve_match_conf({key: bad})


# --------------------------------------------------------------------------------------------
# verify_pair
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("conf", [None, {"ransac": "ransac"}, "affine", {"model": "affine", "ransac": "ransac"}])
def test_verify_pair_synthetic_homography(conf):
    query, ref = synthetic_pair()
    r = verify_pair(query, ref, conf)
    assert isinstance(r, VerificationResult)
    assert r.inlier_matches.shape == (r.inliers, 2) and r.transform.shape == (3, 3)
    assert set(map(tuple, r.inlier_matches.tolist())) <= set(map(tuple, r.matches.tolist()))
    if resolve_match_conf(conf)["model"] == "homography":
        assert r.inliers >= 110  # 120 true correspondences, 0.5 px noise
        assert np.mean(r.inlier_matches[:, 0] < 120) > 0.95
        assert transfer_error(r.transform) < 2.0
    else:  # an affine model explains a mild perspective only locally: fewer inliers, but a close transform
        assert r.inliers >= 40
        np.testing.assert_array_equal(r.transform[2], [0, 0, 1])
        assert transfer_error(r.transform, GRID[:, 14:16]) < 10.0  # near the image centre
    assert r.seconds > 0


def test_verify_pair_too_few_matches_and_empty():
    query, ref = synthetic_pair(n_true=3, n_noise=0)
    r = verify_pair(query, ref)
    assert r.inliers == 0 and r.transform is None and r.inlier_matches.shape == (0, 2)
    assert len(r.matches) == 3
    assert verify_pair(query, ref, "affine").inliers == 3  # 3 points define an affine map
    assert verify_pair(query, ref, {"model": "affine", "min_matches": 10}).inliers == 0
    empty = verify_pair(LocalFeatures.empty(32), ref)
    assert empty.inliers == 0 and empty.matches.shape == (0, 2)
    with pytest.raises(ValueError, match="dimension mismatch"):
        verify_pair(LocalFeatures.empty(40), ref)


def test_verify_pair_degenerate_geometry_gives_zero():
    """All query keypoints at one spot (or on a line): no homography, 0 inliers, no exception."""
    query, ref = synthetic_pair(n_true=50, n_noise=0)
    same_spot = LocalFeatures(np.full((50, 2), 10.0), query.scales, query.scores, query.descriptors)
    r = verify_pair(same_spot, ref)
    assert r.inliers == 0 and r.transform is None and len(r.matches) == 50
    on_line = LocalFeatures(np.stack([np.arange(50.0), np.zeros(50)], 1), query.scales, query.scores, query.descriptors)
    assert verify_pair(on_line, ref).inliers == 0


def test_verify_pair_is_reproducible():
    query, ref = synthetic_pair(n_true=40, n_noise=200, seed=3)
    first, second = verify_pair(query, ref), verify_pair(query, ref)
    assert first.inliers == second.inliers > 0
    np.testing.assert_array_equal(first.inlier_matches, second.inlier_matches)
    np.testing.assert_array_equal(first.transform, second.transform)


# --------------------------------------------------------------------------------------------
# End to end on images: RootSIFT and DELF
# --------------------------------------------------------------------------------------------
def test_rootsift_two_views_of_a_plane(scene):
    ex = make_local_extractor("rootsift")
    q, w, o = (ex.extract(scene[k]) for k in ("img", "warped", "other"))
    same = verify_pair(q, w, "rootsift")
    assert same.inliers > 50, same.inliers
    assert transfer_error(same.transform) < 3.0
    assert verify_pair(q, o, "rootsift").inliers < 15
    again = verify_pair(q, w, "rootsift")
    assert again.inliers == same.inliers


def test_delf_two_views_of_a_plane(scene):
    ex = make_local_extractor({**local_confs["delf"], "max_side": 512}, weights="auto")
    images = [scene[k] for k in ("img", "warped", "other")]
    ex.fit_pca([ex.extract_raw(im) for im in images])  # the "index" is these three images
    q, w, o = (ex.extract(im) for im in images)
    assert q.dim == 40
    same = verify_pair(q, w, "delf")
    assert same.inliers > 30, same.inliers
    assert transfer_error(same.transform) < 8.0  # keypoints lie on a stride-16 grid
    assert verify_pair(q, o, "delf").inliers < 15


# --------------------------------------------------------------------------------------------
# verify_many
# --------------------------------------------------------------------------------------------
def rows(features: LocalFeatures, keep: np.ndarray) -> LocalFeatures:
    f = features
    return LocalFeatures(f.keypoints[keep], f.scales[keep], f.scores[keep], f.descriptors[keep])


def test_verify_many_matches_serial_and_keeps_order():
    query, ref = synthetic_pair(seed=0)  # 120 true correspondences, then 80 unrelated features
    # References sharing 5, 25, ..., 105 of the true correspondences, and one unrelated.
    refs = [rows(ref, np.r_[0 : 5 + 20 * i, 120:200]) for i in range(6)]
    refs.append(synthetic_pair(seed=99)[1])
    serial = [verify_pair(query, r) for r in refs]
    lazy = [(lambda r=r: r) if i % 2 else r for i, r in enumerate(refs)]  # mix of features and loaders
    parallel = verify_many(query, lazy, max_workers=4)
    assert [p.inliers for p in parallel] == [s.inliers for s in serial]
    for p, s in zip(parallel, serial):
        np.testing.assert_array_equal(p.inlier_matches, s.inlier_matches)
    assert parallel[-1].inliers < 10 < parallel[-2].inliers
    inliers = [p.inliers for p in parallel[:6]]
    assert inliers == sorted(inliers) and inliers[0] <= 5 and inliers[5] >= 95
    assert verify_many(query, []) == []


def test_verify_many_early_exit_skips_loading():
    query, ref = synthetic_pair(seed=0)
    loads = []
    lock = threading.Lock()

    def loader(i):
        def load():
            with lock:
                loads.append(i)
            time.sleep(0.002)  # like reading from disk
            return ref
        return load

    n = 40
    results = verify_many(query, [loader(i) for i in range(n)], confirm_inliers=30, max_workers=1)
    assert results[0] is not None and results[0].inliers >= 30
    assert all(r is None for r in results[1:]) and loads == [0]

    loads.clear()
    results = verify_many(query, [loader(i) for i in range(n)], confirm_inliers=30, max_workers=4)
    assert results[0] is not None and results[0].inliers >= 30
    assert sum(r is None for r in results) > 0 and len(loads) < n
    assert all(r is None or r.inliers == results[0].inliers for r in results)  # same pair, same answer


def test_verify_many_references_before_the_confirmed_one_always_run():
    query, good = synthetic_pair(seed=0)
    bad = synthetic_pair(seed=7)[1]
    refs = [bad, bad, bad, good] + [good] * 20
    results = verify_many(query, refs, confirm_inliers=50, max_workers=3)
    assert all(r is not None for r in results[:4]) and results[3].inliers >= 50
    assert any(r is None for r in results[4:])


def test_verify_many_raises_on_dimension_mismatch():
    query, ref = synthetic_pair()
    with pytest.raises(ValueError, match="dimension mismatch"):
        verify_many(query, [ref, LocalFeatures.empty(7), ref], max_workers=2)


def test_verify_many_restores_blas_threads_also_when_called_concurrently():
    from threadpoolctl import threadpool_info

    query, ref = synthetic_pair()
    before = [(i["internal_api"], i["num_threads"]) for i in threadpool_info()]
    outputs = []
    def call():
        outputs.append(verify_many(query, [ref] * 6, max_workers=2))

    callers = [threading.Thread(target=call) for _ in range(3)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(outputs) == 3 and all(r.inliers == outputs[0][0].inliers for out in outputs for r in out)
    assert [(i["internal_api"], i["num_threads"]) for i in threadpool_info()] == before
