"""Tests for retrieval.local_features: container, pure math, RootSIFT and DELF extractors.

CPU only, offline: DELF uses the lite0 ImageNet weights shipped by a pip package
(weights="auto"); images are generated here.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from retrieval.local_features import (
    DELF,
    LocalFeatures,
    RootSIFT,
    apply_pca_whitening,
    fit_pca_whitening,
    grid_to_image,
    l2_normalize,
    local_confs,
    make_local_extractor,
    pyramid_sizes,
    resized_to_original,
    rootsift,
    stage_for_stride,
    top_k_indices,
)

from tests.conftest import textured_image


def random_features(n: int, d: int, seed: int = 0) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    return LocalFeatures(
        rng.uniform(0, 500, (n, 2)), rng.uniform(1, 30, n), rng.uniform(0, 10, n), l2_normalize(rng.normal(size=(n, d)))
    )


# seeded RNGs and one torch thread for every test here (fixtures in conftest.py)
pytestmark = pytest.mark.usefixtures("seeded", "one_torch_thread")


@pytest.fixture(scope="module")
def delf() -> DELF:
    return make_local_extractor({**local_confs["delf"], "max_side": 384})


@pytest.fixture(scope="module")
def sift() -> RootSIFT:
    return make_local_extractor("rootsift")


# --------------------------------------------------------------------------------------------
# LocalFeatures
# --------------------------------------------------------------------------------------------
def test_pack_unpack_round_trip():
    f = random_features(50, 40)
    kp4, desc16 = f.pack()
    assert kp4.shape == (50, 4) and kp4.dtype == np.float32
    assert desc16.shape == (50, 40) and desc16.dtype == np.float16
    g = LocalFeatures.unpack(kp4, desc16)
    assert len(g) == 50 and g.descriptors.dtype == np.float32
    np.testing.assert_array_equal(g.keypoints, f.keypoints)
    np.testing.assert_array_equal(g.scales, f.scales)
    np.testing.assert_array_equal(g.scores, f.scores)
    np.testing.assert_allclose(g.descriptors, f.descriptors, atol=1e-3)


def test_empty_features():
    e = LocalFeatures.empty(128)
    assert len(e) == 0 and e.dim == 128
    kp4, desc = e.pack()
    assert kp4.shape == (0, 4) and desc.shape == (0, 128)
    back = LocalFeatures.unpack(kp4, desc)
    assert len(back) == 0 and back.dim == 128


def test_inconsistent_lengths_raise():
    with pytest.raises(ValueError, match="inconsistent"):
        LocalFeatures(np.zeros((3, 2)), np.zeros(3), np.zeros(2), np.zeros((3, 8)))
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        LocalFeatures.unpack(np.zeros((3, 3)), np.zeros((3, 8)))


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------
def test_rootsift_math():
    rng = np.random.default_rng(0)
    d = rng.uniform(0, 255, (5, 128)).astype(np.float32)
    d[4] = 0
    r = rootsift(d)
    np.testing.assert_allclose(np.linalg.norm(r[:4], axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(r[:4] ** 2, d[:4] / d[:4].sum(axis=1, keepdims=True), atol=1e-6)  # Hellinger
    assert np.all(r[4] == 0)


def test_grid_to_image_formula():
    # Stride 16 at scale 1: cell j covers pixels 16j..16j+15, centre 16j + 7.5.
    xy = grid_to_image(np.array([0, 2]), np.array([0, 1]), 16, 1.0, 1.0)
    np.testing.assert_allclose(xy, [[7.5, 7.5], [23.5, 39.5]])
    # At scale 0.5 a cell covers 32 original pixels: centre of cell 0 is 15.5; scale 2 -> 3.5.
    np.testing.assert_allclose(grid_to_image(0, 0, 16, 0.5, 0.5), [15.5, 15.5])
    np.testing.assert_allclose(grid_to_image(0, 0, 16, 2.0, 2.0), [3.5, 3.5])
    # Anisotropic resize factors act per axis.
    np.testing.assert_allclose(grid_to_image(1, 1, 16, 2.0, 0.5), [11.5, 47.5])
    # resized_to_original is the pixel-centre inverse of cv2.resize's mapping.
    np.testing.assert_allclose(resized_to_original(np.array([[7.5, 3.5]]), 0.5, 0.25), [[15.5, 15.5]])


def test_pyramid_sizes():
    scales = [0.25, 0.5, 1.0, 2.0]
    assert pyramid_sizes(100, 200, scales, None, 1) == [(25, 50), (50, 100), (100, 200), (200, 400)]
    # Capped at max_side 300: 2.0 collapses onto 1.5 (the cap); 1.0 stays.
    assert pyramid_sizes(100, 200, scales, 300, 1) == [(25, 50), (50, 100), (100, 200), (150, 300)]
    # A cap below 1.0 merges the large scales into one level.
    assert pyramid_sizes(100, 200, scales, 100, 1) == [(25, 50), (50, 100)]
    # Shorter side below min_side: skipped; nothing left for a tiny image.
    assert pyramid_sizes(100, 200, scales, None, 40) == [(50, 100), (100, 200), (200, 400)]
    assert pyramid_sizes(8, 8, scales, 1024, 32) == []


def test_top_k_indices_stable_and_thresholded():
    s = np.array([1.0, 3.0, 2.0, 3.0, 0.5])
    np.testing.assert_array_equal(top_k_indices(s, 3), [1, 3, 2])
    np.testing.assert_array_equal(top_k_indices(s, None, threshold=1.0), [1, 3, 2, 0])
    assert len(top_k_indices(s, 10)) == 5


def test_stage_for_stride():
    assert stage_for_stride([2, 4, 8, 16, 32], 16) == 3  # lite0 and ResNet (layer3)
    assert stage_for_stride([4, 8, 16, 16, 32], 16) == 3  # the last stage at that stride
    with pytest.raises(ValueError, match="stage strides"):
        stage_for_stride([2, 4, 8, 32], 16)


def test_pca_whitening_functions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 64)) * np.linspace(0.1, 3, 64)
    arrays = fit_pca_whitening(x, 16, max_samples=300, seed=0)
    assert arrays["components"].shape == (16, 64) and arrays["mean"].shape == (64,)
    y = apply_pca_whitening(x, arrays)
    assert y.shape == (500, 16) and y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, atol=1e-5)
    again = fit_pca_whitening(x, 16, max_samples=300, seed=0)
    np.testing.assert_array_equal(arrays["components"], again["components"])  # seeded sample
    with pytest.raises(ValueError, match="at least 16 descriptors"):
        fit_pca_whitening(x[:10], 16)
    with pytest.raises(ValueError, match="pca_dim"):
        fit_pca_whitening(x, 65)


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------
def test_make_local_extractor_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="rootsift") as info:
        make_local_extractor("superdelf")
    assert "delf" in str(info.value)
    with pytest.raises(ValueError, match="unknown local extractor"):
        make_local_extractor({"extractor": "nope"})
    with pytest.raises(ValueError, match="max_kepoints"):
        make_local_extractor({"extractor": "rootsift", "max_kepoints": 10})


def test_delf_stage_from_feature_info():
    with pytest.raises(ValueError, match="unknown timm model"):
        make_local_extractor({**local_confs["delf"], "model": "no_such_net"}, weights="random")
    resnet = make_local_extractor({**local_confs["delf"], "model": "resnet18", "scales": [1.0]}, weights="random")
    assert resnet.stage == 3 and resnet.raw_dim == 256  # layer3
    assert len(resnet.extract_raw(textured_image(64))) == 16  # 4x4 cells at stride 16
    with pytest.raises(ValueError, match="stage strides"):
        make_local_extractor({**local_confs["delf"], "stride": 64}, weights="random")
    with pytest.raises(ValueError, match="not 'rootsift'"):
        RootSIFT({"extractor": "delf"})


def test_conf_is_merged_and_resolved(sift, delf):
    assert sift.conf["extractor"] == "rootsift" and sift.conf["max_keypoints"] == 2000 and sift.conf["contrast_threshold"] == 0.02
    assert sift.dim == 128 and not sift.needs_pca
    assert delf.conf["max_side"] == 384 and delf.conf["pca_dim"] == 40 and delf.conf["stride"] == 16
    assert delf.stage == 3 and delf.raw_dim == 112 and delf.dim == 40 and delf.needs_pca
    rebuilt = make_local_extractor(sift.conf)  # the resolved conf (as stored in a manifest) rebuilds it
    assert rebuilt.conf == sift.conf


# --------------------------------------------------------------------------------------------
# RootSIFT
# --------------------------------------------------------------------------------------------
def test_rootsift_extract(sift):
    img = textured_image()
    f = sift.extract(img)
    assert 100 < len(f) <= 1000 and f.dim == 128
    assert f.keypoints.dtype == np.float32 and f.descriptors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-5)
    assert np.all(f.keypoints >= -0.5) and np.all(f.keypoints <= 383.5)
    assert np.all(np.diff(f.scores) <= 0)  # strongest first
    np.testing.assert_array_equal(sift.extract_raw(img).descriptors, f.descriptors)
    few = make_local_extractor({**local_confs["rootsift"], "max_keypoints": 50}).extract(img)
    assert len(few) == 50
    np.testing.assert_allclose(few.scores, f.scores[:50], rtol=1e-5)


def test_rootsift_keypoints_stay_in_detection_pixels(sift):
    """A 2x copy shrunk back for detection gives keypoints in the 256 px detection image, with its size;
    in_frame maps them to the 2x image with the pixel-centre rule."""
    img = textured_image(256, seed=3)
    big = cv2.resize(img, (512, 512), interpolation=cv2.INTER_LINEAR)
    small = sift.extract(img)
    shrunk = make_local_extractor({**local_confs["rootsift"], "resize_max": 256}).extract(big)
    assert small.image_size == (256, 256) and shrunk.image_size == (256, 256)
    assert np.all(shrunk.keypoints >= -0.5) and np.all(shrunk.keypoints <= 255.5)
    in_big = shrunk.in_frame((512, 512))
    assert in_big.image_size == (512, 512)
    expected = (small.keypoints + 0.5) * 2 - 0.5  # the same points in the 2x image (pixel centres)
    offsets = in_big.keypoints[:, None] - expected[None]
    nearest = np.linalg.norm(offsets, axis=2).argmin(axis=1)
    residual = offsets[np.arange(len(offsets)), nearest]
    redetected = np.linalg.norm(residual, axis=1) < 2.0
    assert redetected.mean() > 0.35
    # No systematic shift: mapping with x * 2 instead of (x + 0.5) * 2 - 0.5 would be off by 0.5 px.
    assert np.all(np.abs(residual[redetected].mean(axis=0)) < 0.2), residual[redetected].mean(axis=0)
    assert np.median(in_big.scales) > 1.5 * np.median(small.scales)


# --------------------------------------------------------------------------------------------
# DELF
# --------------------------------------------------------------------------------------------
def test_receptive_field_centres_match_network_gradients(delf):
    """The formula of grid_to_image agrees with the gradient centroid of real feature cells."""
    x = torch.randn(1, 3, 256, 256, requires_grad=True)
    fmap = delf.model(x)[0]
    assert fmap.shape[-2:] == (16, 16)  # stride 16
    ys, xs = np.mgrid[:256, :256]
    for i, j in [(5, 5), (8, 3), (10, 12)]:
        (grad,) = torch.autograd.grad(fmap[0, :, i, j].pow(2).sum(), x, retain_graph=True)
        w = grad.abs().sum(1)[0].numpy()
        centroid = np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()
        np.testing.assert_allclose(centroid, grid_to_image(i, j, 16, 1.0, 1.0), atol=6.0)


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0, None])
@pytest.mark.parametrize("where", [(0.2, 0.35), (0.5, 0.4), (0.75, 0.8)])
def test_bright_spot_lands_on_top_keypoint(delf, scale, where):
    """On a flat image the strongest feature is the one whose receptive field is centred on a bright disc.

    For a single pyramid scale the disc is put on a cell centre given by grid_to_image, so the top
    keypoint must be within a few pixels of it. For the full pyramid the top keypoint may come from
    any level and the disc is off-centre there, so it must be within one cell (of its own level;
    the keypoint scale is two cells, ``2 * stride / f``) of the disc.
    """
    h, w = 256, 320
    x, y = where[0] * w, where[1] * h
    if scale is None:
        ex, tol = delf, None
    else:
        ex, tol = DELF({**delf.conf, "scales": [scale], "max_side": 1024}), 3.0
        col, row = (round((v + 0.5) * scale / 16 - 0.5) for v in (x, y))  # the cell nearest to (x, y)
        x, y = grid_to_image(row, col, 16, scale, scale)
    spot = (int(round(float(x))), int(round(float(y))))
    img = np.full((h, w, 3), 128, np.uint8)
    cv2.circle(img, spot, 6, (255, 255, 255), -1)
    f = ex.extract_raw(img)
    if tol is None:
        tol = f.scales[0] / 2 + 3.0
    assert np.linalg.norm(f.keypoints[0] - np.array(spot)) < tol, (f.keypoints[:3], f.scales[:3], spot)


def test_delf_pca_life_cycle(delf):
    images = [textured_image(256, seed=s) for s in range(2)]
    fresh = DELF(delf.conf)
    with pytest.raises(RuntimeError, match="PCA"):
        fresh.extract(images[0])
    raw = [fresh.extract_raw(im) for im in images]
    assert all(r.dim == 112 for r in raw)
    np.testing.assert_allclose(np.linalg.norm(raw[0].descriptors, axis=1), 1, atol=1e-5)
    arrays = fresh.fit_pca(raw)
    f = fresh.extract(images[0])
    assert f.dim == 40 and len(f) == len(raw[0])
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(f.keypoints, raw[0].keypoints)
    # Stored arrays reproduce the same descriptors in another extractor (e.g. at query time).
    other = DELF(delf.conf)
    other.set_pca({k: v.copy() for k, v in arrays.items()})
    np.testing.assert_allclose(other.extract(images[0]).descriptors, f.descriptors, atol=1e-5)
    with pytest.raises(ValueError, match="at least 40"):
        r = raw[0]
        other.fit_pca([LocalFeatures(r.keypoints[:10], r.scales[:10], r.scores[:10], r.descriptors[:10])])
    with pytest.raises(ValueError, match="do not fit"):
        other.set_pca({**arrays, "components": arrays["components"][:20]})
    with pytest.raises(ValueError, match="112-dimensional"):
        other.fit_pca([random_features(100, 64)])


def test_delf_extract_properties(delf):
    img = textured_image(384, seed=5)
    raw = delf.extract_raw(img)
    assert len(raw) == 1000 and raw.dim == 112
    assert np.all(np.diff(raw.scores) <= 0)
    assert np.all(raw.keypoints >= -0.5) and np.all(raw.keypoints <= 383.5)
    # scale = 2 * stride / f; with max_side 384 the levels above 1.0 are capped at 1.0.
    expected = np.array([32 / f for f in delf.conf["scales"] if f <= 1.0])
    assert np.all(np.abs(raw.scales[:, None] / expected[None] - 1).min(axis=1) < 0.01)
    again = delf.extract_raw(img)
    np.testing.assert_array_equal(raw.descriptors, again.descriptors)  # deterministic
    capped = DELF({**delf.conf, "max_keypoints": 100, "score_threshold": float(raw.scores[50])})
    assert len(capped.extract_raw(img)) == np.sum(raw.scores >= raw.scores[50])


def test_delf_without_pca():
    ex = make_local_extractor({**local_confs["delf"], "pca_dim": None, "scales": [1.0]})
    assert not ex.needs_pca and ex.dim == 112
    f = ex.extract(textured_image(128))
    assert f.dim == 112 and len(f) == 64  # 8x8 cells
    assert ex.fit_pca([f]) == {}


@pytest.mark.parametrize("which", ["sift", "delf"])
def test_grayscale_tiny_and_bad_images(which, sift, delf):
    ex = sift if which == "sift" else delf
    gray_rgb = np.repeat(cv2.cvtColor(textured_image(128), cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    a = ex.extract_raw(gray_rgb)
    b = ex.extract_raw(gray_rgb[:, :, 0])  # a 2-D grayscale array is accepted too
    assert len(a) > 0
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    tiny = ex.extract_raw(np.full((8, 8, 3), 200, np.uint8))
    assert tiny.dim == (128 if which == "sift" else 112)
    if which == "delf":
        assert len(tiny) == 0  # too small for every pyramid level
    flat = ex.extract_raw(np.zeros((64, 64, 3), np.uint8))
    assert flat.descriptors.shape[1] == tiny.dim
    with pytest.raises(ValueError, match="uint8"):
        ex.extract_raw(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="RGB"):
        ex.extract_raw(np.zeros((64, 64, 4), np.uint8))


def test_delf_tiny_image_after_pca(delf):
    ex = DELF(delf.conf)
    ex.fit_pca([ex.extract_raw(textured_image(256))])
    out = ex.extract(np.full((8, 8, 3), 10, np.uint8))
    assert len(out) == 0 and out.dim == 40
