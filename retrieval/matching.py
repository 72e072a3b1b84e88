"""Descriptor matching and RANSAC verification of local features.

:func:`match_descriptors` gives putative matches (mutual nearest neighbours and/or
Lowe's ratio test); the learned matchers LightGlue (ALIKED features) and LighterGlue
(XFeat features) are the other ``method`` values. :func:`verify_pair` fits a homography or affine transform with
OpenCV's robust estimators and returns the inlier count, :func:`verify_many` verifies
one query against many references in parallel and stops early once one is confirmed.

Following DELF's ``image_reranking``: too few matches, a failed or degenerate fit give
0 inliers (never an exception); a descriptor-dimension mismatch raises ``ValueError``
(it means features of two different extractors are being compared).

Keypoints are in detection-image pixels (:mod:`retrieval.local_features`), so
``reproj_threshold`` is in detection pixels of the reference image: the same pair of
photos gives the same inlier count whatever resolution the files were stored at.
Each local configuration names its default matcher in :mod:`retrieval.registry` (:func:`default_match_conf_for`).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np

from index.choices import check_name, lookup, unknown_name

from .local_features import LocalFeatures
from .registry import entry_for

logger = logging.getLogger(__name__)

DESCRIPTOR_METHODS = ("mnn", "ratio", "mnn+ratio")  # putative matches from descriptor distances alone
LEARNED_METHODS = ("lightglue", "lighterglue")  # learned matchers (retrieval.learned_models): LightGlue, LighterGlue
MATCH_METHODS = DESCRIPTOR_METHODS + LEARNED_METHODS

default_match_conf: dict[str, Any] = {
    # Putative matches: "mnn" mutual nearest neighbours, "ratio" Lowe's test, or both.
    # Both is the default: MNN removes many-to-one matches onto repeated texture, and a lenient
    # ratio (0.9 instead of Lowe's 0.8) removes the ambiguous rest without starving RANSAC.
    # "lightglue" (ALIKED's 128-d descriptors) and "lighterglue" (XFeat's 64-d) are learned matchers that
    # also use keypoint positions; RANSAC then counts inliers among their matches as for the others.
    "method": "mnn+ratio",
    "ratio": 0.9,  # nearest / second-nearest L2 distance must be below this (ratio and mnn+ratio)
    "min_score": 0.1,  # learned matchers: drop matches scored below this (LightGlue's filter_threshold)
    "adaptive": True,  # learned matchers: LightGlue's early stopping and point pruning (deterministic)
    "device": None,  # learned matchers: "cpu", "cuda", ...; None: CUDA when available, else CPU
    "amp": True,  # learned matchers: float16 autocast on CUDA (LightGlue's "mp"; ignored on CPU)
    "ransac": "usac_magsac",  # "usac_magsac" (cv2.USAC_MAGSAC: threshold-robust, LO) or "ransac" (cv2.RANSAC)
    "model": "homography",  # "homography" (cv2.findHomography, planar facades) or "affine" (cv2.estimateAffine2D)
    # Max reprojection error (detection-image px, longer side <= 1024) for an inlier. 8 px is ~1.5% of a ~500 px image:
    # loose enough for SIFT localisation error and perspective that a planar model misses,
    # tight enough that random matches rarely agree. DELF keypoints sit on a stride-16 grid
    # (64 px apart at pyramid scale 0.25), so the "delf" conf uses 16 px.
    "reproj_threshold": 8.0,
    "max_iters": 2000,  # RANSAC iterations cap (OpenCV default 2000)
    "confidence": 0.999,  # stop once this probability of having sampled an all-inlier set is reached
    "seed": 0,  # cv2.setRNGSeed before each estimation (see _estimate for determinism)
    "min_matches": None,  # fewer putative matches -> 0 inliers; None: the model's minimal sample (4 or 3)
}

# Named configurations; each local configuration names the one it is verified with by default
# (retrieval.registry, the entry's ``matcher``).
match_confs: dict[str, dict[str, Any]] = {
    "default": dict(default_match_conf),
    "rootsift": dict(default_match_conf),
    "delf": {**default_match_conf, "reproj_threshold": 16.0},
    "affine": {**default_match_conf, "model": "affine"},
    # Plain mutual nearest neighbours (no ratio test): any extractor, e.g. XFeat without LighterGlue.
    "mnn": {**default_match_conf, "method": "mnn"},
    # Learned matchers, each for the features it was trained on (the default of "aliked" / "xfeat").
    "lightglue": {**default_match_conf, "method": "lightglue"},
    "lighterglue": {**default_match_conf, "method": "lighterglue"},
}


def default_match_conf_for(local_conf: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """The match configuration a local configuration is verified with by default.

    ``local_conf`` is a name in :data:`~retrieval.registry.local_registry` or a (resolved) conf
    dict with an ``"extractor"`` key; None gives :data:`default_match_conf`. The choice is the
    registry entry's ``matcher``: aliked -> "lightglue", xfeat -> "lighterglue",
    rootsift -> "rootsift" (mnn+ratio), delf -> "delf". Pass a name of :data:`match_confs` to
    ``Recognizer(match_conf=...)`` / :func:`verify_pair` to use another matcher.
    """
    if local_conf is None:
        return dict(default_match_conf)
    return resolve_match_conf(entry_for(local_conf).matcher)


_MIN_SAMPLE = {"homography": 4, "affine": 3}
_RANSAC_FLAGS = {"usac_magsac": cv2.USAC_MAGSAC, "ransac": cv2.RANSAC}


def resolve_match_conf(conf: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """``conf`` (a name in :data:`match_confs`, a dict of overrides, or None) merged over the defaults."""
    if conf is None:
        return dict(default_match_conf)
    if isinstance(conf, str):
        return dict(lookup(match_confs, conf, "match configuration"))
    for key in conf:
        check_name(key, default_match_conf, "match setting")
    merged = {**default_match_conf, **conf}
    check_name(merged["method"], MATCH_METHODS, "match method")
    check_name(merged["ransac"], _RANSAC_FLAGS, "ransac")
    check_name(merged["model"], _MIN_SAMPLE, "geometric model")
    return merged


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------
def _check_dims(desc1: np.ndarray, desc2: np.ndarray) -> None:
    if desc1.ndim != 2 or desc2.ndim != 2:
        raise ValueError(f"descriptors must be (n, d) arrays, got shapes {desc1.shape} and {desc2.shape}")
    if desc1.shape[1] != desc2.shape[1]:
        raise ValueError(
            f"descriptor dimension mismatch: {desc1.shape[1]} vs {desc2.shape[1]} "
            "(features of different extractors or PCA settings?)"
        )


def learned_matches(query: LocalFeatures, ref: LocalFeatures, conf: Mapping[str, Any]) -> tuple[np.ndarray, int]:
    """Matches of a learned matcher (``conf["method"]`` in :data:`LEARNED_METHODS`), ``(m, 2)`` int64, and the
    transformer layers it ran (0 when a side has no features).

    The matcher sees keypoints in detection pixels with the detection image size; features
    without ``image_size`` (read back from an index) use the keypoints' extent instead
    (:func:`retrieval.learned_models.estimated_image_size`). Matches scored below ``min_score`` are dropped.

    Raises:
        ValueError: descriptor dimension mismatch between the two sets, or descriptors of
            another dimension than the matcher was trained on (e.g. XFeat features with LightGlue).
    """
    from . import learned_models as learned

    method = conf["method"]
    _check_dims(query.descriptors, ref.descriptors)
    expected = learned.matcher_input_dim(method)
    if query.dim != expected:
        raise ValueError(
            f"{method} matches {expected}-d descriptors, got {query.dim}-d "
            f"({'ALIKED' if method == 'lightglue' else 'XFeat'} features expected; use another match conf, e.g. 'mnn')"
        )
    if len(query) == 0 or len(ref) == 0:
        return np.zeros((0, 2), np.int64), 0
    device = conf["device"] or ("cuda" if torch_cuda_available() else "cpu")
    sizes = [
        np.asarray(f.image_size, np.float32) if f.image_size is not None else learned.estimated_image_size(f.keypoints)
        for f in (query, ref)
    ]
    matches, scores, layers = learned.lightglue_match(
        method, query.keypoints, query.descriptors, sizes[0], ref.keypoints, ref.descriptors, sizes[1],
        device=device, adaptive=bool(conf["adaptive"]), amp=bool(conf["amp"]),
    )
    return matches[scores > float(conf["min_score"])], layers


def torch_cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def match_descriptors(
    desc1: np.ndarray, desc2: np.ndarray, method: str = "mnn+ratio", ratio: float = 0.9
) -> np.ndarray:
    """Putative matches between two descriptor sets.

    Distances come from one BLAS product (``|a|^2 + |b|^2 - 2 a.b``), so L2-normalised
    descriptors are not required. Memory is one ``(n1, n2)`` float32 matrix (4 MB for
    1000 x 1000 features).

    Args:
        desc1: ``(n1, d)`` descriptors.
        desc2: ``(n2, d)`` descriptors.
        method: "mnn" (i and j are each other's nearest neighbour), "ratio" (Lowe: distance to
            the nearest < ``ratio`` * distance to the second nearest in ``desc2``), or "mnn+ratio".
            With a single descriptor in ``desc2`` there is no second neighbour and the ratio
            test passes.
        ratio: Lowe's ratio on (non-squared) L2 distances.
    Returns:
        ``(m, 2)`` int64 pairs ``(i, j)``, sorted by ``i``; ``(0, 2)`` for empty inputs.
    Raises:
        ValueError: different descriptor dimensions, or an unknown method.
    """
    if method not in DESCRIPTOR_METHODS:
        raise unknown_name("match method", method, DESCRIPTOR_METHODS,
                           f" (descriptor matching; the learned matchers {', '.join(LEARNED_METHODS)} run through "
                           "verify_pair)")
    desc1 = np.asarray(desc1, dtype=np.float32)
    desc2 = np.asarray(desc2, dtype=np.float32)
    _check_dims(desc1, desc2)
    if len(desc1) == 0 or len(desc2) == 0:
        return np.zeros((0, 2), np.int64)

    # Squared distances, built in place on the BLAS product (no (n1, n2) temporaries).
    dist2 = desc1 @ desc2.T
    dist2 *= -2.0
    dist2 += np.einsum("ij,ij->i", desc1, desc1)[:, None]
    dist2 += np.einsum("ij,ij->i", desc2, desc2)[None, :]
    rows = np.arange(len(desc1))
    nn12 = np.argmin(dist2, axis=1)
    keep = np.ones(len(desc1), dtype=bool)
    if "mnn" in method:
        nn21 = np.argmin(dist2, axis=0)
        keep &= nn21[nn12] == rows
    if "ratio" in method and dist2.shape[1] > 1:
        two = np.maximum(np.partition(dist2, 1, axis=1)[:, :2], 0.0)  # nearest, second-nearest squared
        keep &= two[:, 0] < (ratio**2) * two[:, 1]
    return np.stack([rows[keep], nn12[keep]], axis=1).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------
@dataclass
class VerificationResult:
    """Outcome of verifying one image pair.

    Attributes:
        inliers: number of RANSAC inliers (0 when too few matches or the fit failed).
        matches: ``(m, 2)`` int64 putative matches (query index, reference index).
        inlier_matches: ``(k, 2)`` the subset of ``matches`` that are inliers; ``k == inliers``.
        transform: 3x3 query -> reference transform (affine padded with ``[0, 0, 1]``), or None.
        seconds: wall time of matching + estimation.
        layers: transformer layers a learned matcher ran (LightGlue's adaptive depth); 0 for descriptor matching.
    """

    inliers: int
    matches: np.ndarray
    inlier_matches: np.ndarray
    transform: np.ndarray | None
    seconds: float
    layers: int = 0


def _estimate(
    src: np.ndarray, dst: np.ndarray, conf: Mapping[str, Any]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Robust fit of ``conf["model"]`` mapping ``src`` onto ``dst``; ``(3x3 transform, inlier mask)`` or Nones.

    Determinism: ``cv2.setRNGSeed`` seeds ``cv::theRNG()``, which OpenCV keeps per thread
    (thread-local storage), so seeding right before the call in the calling thread is
    thread-safe and cannot be disturbed by other verification threads. In OpenCV 4.x/5.x
    both estimators used here also start from a fixed internal random state (classic
    RANSAC: ``RNG(-1)``; USAC: ``randomGeneratorState`` 0), so results are reproducible
    either way; the explicit seed keeps them so should that change.
    """
    cv2.setRNGSeed(int(conf["seed"]))
    flag = _RANSAC_FLAGS[conf["ransac"]]
    try:
        if conf["model"] == "homography":
            transform, mask = cv2.findHomography(
                src, dst, flag, float(conf["reproj_threshold"]),
                maxIters=int(conf["max_iters"]), confidence=float(conf["confidence"]),
            )
        else:
            transform, mask = cv2.estimateAffine2D(
                src, dst, method=flag, ransacReprojThreshold=float(conf["reproj_threshold"]),
                maxIters=int(conf["max_iters"]), confidence=float(conf["confidence"]),
            )
            if transform is not None:
                transform = np.vstack([transform, [0.0, 0.0, 1.0]])
    except cv2.error as exc:  # e.g. degenerate (collinear) point sets in some OpenCV versions
        logger.debug("%s %s estimation failed on %d matches: %s", conf["ransac"], conf["model"], len(src), exc)
        return None, None
    if transform is None or mask is None or transform.shape != (3, 3):
        return None, None
    if not np.all(np.isfinite(transform)) or abs(np.linalg.det(transform)) < 1e-9:
        logger.debug("degenerate %s from %d matches", conf["model"], len(src))
        return None, None
    return transform, mask.ravel().astype(bool)


def verify_pair(
    query: LocalFeatures, ref: LocalFeatures, conf: Mapping[str, Any] | str | None = None
) -> VerificationResult:
    """Match ``query`` against ``ref`` and count RANSAC inliers of a homography / affine fit.

    Args:
        query, ref: local features of the two images (same extractor).
        conf: a name in :data:`match_confs`, overrides of :data:`default_match_conf`, or None.
    Returns:
        :class:`VerificationResult`; ``inliers == 0`` when there are fewer than ``min_matches``
        putative matches, or the estimator fails or returns a degenerate transform.
    Raises:
        ValueError: descriptor dimension mismatch.
    """
    c = resolve_match_conf(conf)
    start = time.perf_counter()
    layers = 0
    if c["method"] in LEARNED_METHODS:
        matches, layers = learned_matches(query, ref, c)
    else:
        matches = match_descriptors(query.descriptors, ref.descriptors, c["method"], c["ratio"])
    min_matches = max(_MIN_SAMPLE[c["model"]], c["min_matches"] or 0)
    empty = np.zeros((0, 2), np.int64)
    if len(matches) < min_matches:
        return VerificationResult(0, matches, empty, None, time.perf_counter() - start, layers)
    src = query.keypoints[matches[:, 0]].astype(np.float32)
    dst = ref.keypoints[matches[:, 1]].astype(np.float32)
    transform, mask = _estimate(src, dst, c)
    if transform is None or int(mask.sum()) < _MIN_SAMPLE[c["model"]]:
        return VerificationResult(0, matches, empty, None, time.perf_counter() - start, layers)
    inlier_matches = matches[mask]
    return VerificationResult(len(inlier_matches), matches, inlier_matches, transform, time.perf_counter() - start,
                              layers)


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter: Any = None  # threadpoolctl limiter while any verify_many runs


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """BLAS limited to one thread while any :func:`verify_many` call runs (reference-counted).

    The matrices of one pair (1000 x 1000 x d) are far too small for BLAS threads to pay
    off, and BLAS threads inside each verification thread oversubscribe the CPUs: measured
    on 2 shared cores, 2.2 ms per reference with one BLAS thread against 15 ms without the
    limit. threadpoolctl's setting is process-wide, so concurrent calls share one limit and
    the last one out restores the previous setting.
    """
    global _blas_users, _blas_limiter
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    with _blas_lock:
        if _blas_users == 0:
            _blas_limiter = threadpool_limits(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def verify_many(
    query: LocalFeatures,
    refs: Sequence[LocalFeatures | Callable[[], LocalFeatures]],
    conf: Mapping[str, Any] | str | None = None,
    confirm_inliers: int | None = None,
    max_workers: int | None = None,
) -> list[VerificationResult | None]:
    """Verify ``query`` against each reference in parallel threads, with optional early exit.

    OpenCV's estimators and numpy's BLAS release the GIL, so threads verify in parallel
    without copying features to other processes. While it runs, BLAS is limited to one
    thread per caller thread (process-wide, see :func:`_single_threaded_blas`).

    Args:
        query: the query's local features.
        refs: reference features, or zero-argument callables that load them (called in the
            worker thread, only if that reference is verified).
        conf: as in :func:`verify_pair`.
        confirm_inliers: once reference ``k`` reaches this many inliers, references after
            ``k`` (in input order) that have not started are skipped (loader not called) and
            every result after ``k`` is None. References before ``k`` are always verified, so
            the first confirmed reference, and the whole output, do not depend on thread timing.
            None: verify all.
        max_workers: threads; default ``min(len(refs), os.cpu_count(), 8)``, and 1 for learned
            matchers (torch already parallelises each pair).
    Returns:
        One entry per reference, in input order; deterministic for given inputs (seeded
        estimation; results after the first confirmed reference dropped).
    Raises:
        whatever a reference loader or :func:`verify_pair` raises (e.g. ValueError on a
        descriptor dimension mismatch), after cancelling the references not yet started.
    """
    c = resolve_match_conf(conf)
    n = len(refs)
    if n == 0:
        return []
    if max_workers is None and c["method"] in LEARNED_METHODS:
        # A learned matcher is a torch model that already uses the cores (intra-op threads): pairs run
        # one after another. Two threads measured 0-13% faster on 2 shared cores (benchmarks/bench_local.py),
        # within the noise, and threads would multiply the model's working memory.
        max_workers = 1
    workers = max(1, min(n, max_workers or min(os.cpu_count() or 1, 8)))
    lock = threading.Lock()
    first_confirmed = [n]  # smallest index that reached confirm_inliers (n: none yet)
    failed = threading.Event()

    def run(i: int) -> VerificationResult | None:
        if failed.is_set() or first_confirmed[0] < i:
            return None
        try:
            ref = refs[i]
            result = verify_pair(query, ref() if callable(ref) else ref, c)
        except BaseException:
            failed.set()  # let the other workers skip their references; the error is raised below
            raise
        if confirm_inliers is not None and result.inliers >= confirm_inliers:
            with lock:
                first_confirmed[0] = min(first_confirmed[0], i)
        return result

    results: list[VerificationResult | None] = [None] * n
    with _single_threaded_blas():
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify")
        try:
            futures = [pool.submit(run, i) for i in range(n)]
            for i, future in enumerate(futures):
                if i > first_confirmed[0]:
                    future.cancel()  # no effect on a reference already running
                results[i] = None if future.cancelled() else future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    # Whether references after the first confirmed one ran depends on thread timing: drop their
    # results so that the output depends on the inputs alone.
    first = first_confirmed[0]
    return results[: first + 1] + [None] * (n - first - 1) if first < n else results
