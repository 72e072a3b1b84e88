"""ALIKED's dense network on ONNX Runtime (retrieval.fast_runtime): the same features and matches as PyTorch
within float rounding, the runtime choice, and the PyTorch fallback.

Tolerance (float32 rounding of a different kernel library, ~1e-5 on the score map): keypoints matched one to
one within 0.01 px for >= 99% of them, their descriptors within 1e-3, and >= 95% of LightGlue's matches between
an image and its warped view identical, with RANSAC inliers within 3%. One torch thread, a 240 px image.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from retrieval import fast_runtime
from retrieval.fast_runtime import RUNTIME_ENV, resolve_runtime
from retrieval.local_features import make_local_extractor
from retrieval.matching import verify_pair

from tests.conftest import textured_image
from tests.test_learned_features import S, warped_view

pytestmark = pytest.mark.usefixtures("seeded", "one_torch_thread")


def _without_onnxruntime(monkeypatch):
    """Make ``onnxruntime`` look uninstalled to the runtime choice."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))


def _match_coords(f, v, matches) -> set[tuple]:
    """Matches as keypoint coordinates (indices differ between runtimes when a keypoint's rank does)."""
    xy = np.hstack([f.keypoints[matches[:, 0]], v.keypoints[matches[:, 1]]]).round(2)
    return {tuple(row) for row in xy}


def test_same_features_and_matches_as_pytorch(monkeypatch, caplog):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    img = textured_image(S, seed=1)
    view = warped_view(img, wobble=1.0)
    monkeypatch.setenv(RUNTIME_ENV, "torch")
    ref = make_local_extractor("aliked")
    assert ref.runtime == "torch"
    monkeypatch.setenv(RUNTIME_ENV, "auto")
    # A damaged cached file (an interrupted copy, a full disk) is replaced, not fatal.
    monkeypatch.setattr(fast_runtime, "_sessions", {})
    path = fast_runtime.cached_path(ref.model, "aliked-n16")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an onnx model")
    with caplog.at_level("WARNING", logger="retrieval.fast_runtime"):
        fast = make_local_extractor("aliked")
    assert fast.runtime == "onnxruntime"
    f_fast, v_fast = fast.extract(img), fast.extract(view)
    assert "unreadable" in caplog.text and path.stat().st_size > 1_000_000  # exported again, kept
    f_ref, v_ref = ref.extract(img), ref.extract(view)

    for a, b in ((f_ref, f_fast), (v_ref, v_fast)):
        assert len(a) > 100 and abs(len(a) - len(b)) <= 0.01 * len(a)
        d = np.linalg.norm(a.keypoints[:, None] - b.keypoints[None], axis=2)
        nearest = d.argmin(axis=1)
        same = d[np.arange(len(a)), nearest] < 0.01
        assert same.mean() >= 0.99
        assert np.abs(a.descriptors[same] - b.descriptors[nearest[same]]).max() < 1e-3
        assert a.image_size == b.image_size

    r_ref, r_fast = verify_pair(f_ref, v_ref, "lightglue"), verify_pair(f_fast, v_fast, "lightglue")
    assert r_ref.inliers >= 50  # a true pair: the comparison below is about many matches
    pairs_ref, pairs_fast = _match_coords(f_ref, v_ref, r_ref.matches), _match_coords(f_fast, v_fast, r_fast.matches)
    assert len(pairs_ref & pairs_fast) >= 0.95 * max(len(pairs_ref), len(pairs_fast))
    assert abs(r_ref.inliers - r_fast.inliers) <= 0.03 * r_ref.inliers


def test_runtime_choice_and_fallback(monkeypatch):
    monkeypatch.setenv(RUNTIME_ENV, "torch")
    ex = make_local_extractor("aliked")
    assert ex.runtime == "torch" and ex._dense_map == ex.model.extract_dense_map
    monkeypatch.setenv(RUNTIME_ENV, "auto")
    assert resolve_runtime("cuda") == "torch"  # GPUs keep PyTorch (the device need not exist to decide)
    _without_onnxruntime(monkeypatch)
    assert resolve_runtime("cpu") == "torch"
    assert make_local_extractor("aliked").runtime == "torch"  # not installed: PyTorch, no error
    monkeypatch.setenv(RUNTIME_ENV, "onnxruntime")  # asked for explicitly: say what is missing
    with pytest.raises(RuntimeError, match=r"pip install 'landmarks\[onnx\]'"):
        resolve_runtime("cpu")
    with pytest.raises(ValueError, match="CPU only"):
        resolve_runtime(torch.device("cuda"))
    monkeypatch.setenv(RUNTIME_ENV, "tensorrt")
    with pytest.raises(ValueError, match="unknown runtime.*'tensorrt'.*auto, torch, onnxruntime"):
        resolve_runtime("cpu")


def test_runtime_that_cannot_run_falls_back(monkeypatch, caplog):
    """An ONNX Runtime that cannot run the graph (one without a CPU DeformConv) leaves PyTorch running, unless
    ONNX Runtime was asked for by name."""
    def no_deform_conv(*args):
        raise RuntimeError("NOT_IMPLEMENTED : Could not find an implementation for DeformConv(19)")

    monkeypatch.setattr(fast_runtime, "onnxruntime_available", lambda: True)
    monkeypatch.setattr(fast_runtime, "_session", no_deform_conv)
    monkeypatch.setenv(RUNTIME_ENV, "auto")
    with caplog.at_level("WARNING", logger="retrieval.fast_runtime"):
        assert make_local_extractor("aliked").runtime == "torch"
    assert "DeformConv" in caplog.text and "PyTorch runs it" in caplog.text
    monkeypatch.setenv(RUNTIME_ENV, "onnxruntime")
    with pytest.raises(RuntimeError, match="DeformConv"):
        make_local_extractor("aliked")


def test_a_sound_cached_model_is_kept_when_the_runtime_cannot_open_it(monkeypatch, caplog):
    """Only a damaged cached file is exported again: a runtime that cannot open a sound one (no DeformConv
    kernel, another version) raises, and the file stays for the runtimes that can."""
    import onnxruntime as ort

    ex = make_local_extractor("aliked")  # exports (or finds) the cached model
    path = fast_runtime.cached_onnx(ex.model, ex.conf["model_name"])
    before = path.stat().st_mtime_ns
    fast_runtime._sessions.clear()

    def cannot_open(*args, **kwargs):
        raise RuntimeError("NOT_IMPLEMENTED : Could not find an implementation for DeformConv(19)")

    monkeypatch.setattr(ort, "InferenceSession", cannot_open)
    with pytest.raises(RuntimeError, match="DeformConv"):
        fast_runtime._session(ex.model, ex.conf["model_name"], 1)
    assert path.is_file() and path.stat().st_mtime_ns == before and "unreadable" not in caplog.text
