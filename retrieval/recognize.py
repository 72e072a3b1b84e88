"""Recognition: kNN voting over global neighbours, local-feature verification, the final decision.

The decision is a pure function of a query's *evidence* (neighbours, candidate
votes and inlier counts), so evaluation can store the evidence once and
re-decide under other thresholds in milliseconds (``tune-threshold``).

Confidence bands (documented in the README):
- a verified answer (best inliers >= inlier_threshold) gets a confidence in [0.5, 1]:
  ``0.5 + 0.5 * ((1 - w) * min(inliers, cap) / cap + w * sim)``;
- an unverified guess (the top-voted candidate) gets ``0.49 * sim`` in [0, 0.49]: ranked
  below every verified answer, it can only add correct predictions at the tail of
  the GAP ranking. ``recognize`` shows it as "no landmark"; a submission may keep it.
Here ``sim`` is the candidate's best cosine similarity after the distractor discount.
"""
from __future__ import annotations

import copy
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from index.database import IndexDatabase

from .extract import DEFAULT_LOCAL_IMAGE_SIZE, FeatureExtractor, Features
from .image_io import ImageError, load_image
from .local_features import LocalExtractor, LocalFeatures, make_local_extractor
from .matching import default_match_conf_for, resolve_match_conf, verify_many

logger = logging.getLogger(__name__)

VERIFIED_BASE = 0.5  # confidences >= this are verified answers
GUESS_SCALE = 0.49  # unverified guesses get GUESS_SCALE * sim < VERIFIED_BASE

DEFAULT_RECOGNITION_CONF: dict[str, Any] = {
    "k": 50,  # neighbours taken from the (exactly re-scored) global search
    "alpha": 3.0,  # vote weight of a neighbour: max(sim - discount, 0) ** alpha
    # Breadth before depth: with an off-the-shelf global model the right landmark is often ranked 5th-20th,
    # so verifying the best image of 20 landmarks beats 4 images of 5 (benchmarks/bench_recognition.py).
    "num_candidates": 20,  # C: landmarks verified per query, in vote order
    "refs_per_candidate": 2,  # R: best-ranked images of a candidate verified (all first images before any second)
    "max_verifications": 30,  # total RANSAC pairs per query (about 2 ms each with stored RootSIFT)
    "inlier_threshold": 20,  # below this many inliers the answer is "no landmark" (tuned value lives in the manifest)
    "confirm_inliers": 60,  # early exit: stop verifying once a pair reaches this many inliers (None: verify all)
    "inlier_cap": 100,  # inliers above this add no confidence
    "vote_weight": 0.5,  # w: share of similarity (vs inliers) in a verified confidence
    "distractor_discount": True,  # subtract the mean similarity to the nearest non-landmark references
    "distractor_k": 3,  # how many nearest non-landmark neighbours define that discount
    "on_demand_local": "rootsift",  # local features extracted on demand when the index stores none
}

# The decision parameters that tune-threshold may sweep and store in the manifest under "thresholds".
DECISION_KEYS = ("inlier_threshold", "inlier_cap", "vote_weight")


def resolve_recognition_conf(overrides: Mapping[str, Any] | None = None, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults <- ``base`` (e.g. the index manifest's thresholds) <- non-None ``overrides``; validated."""
    conf = copy.deepcopy(DEFAULT_RECOGNITION_CONF)
    for source in (base or {}, overrides or {}):
        for key, value in source.items():
            if value is None:
                continue
            if key not in conf:
                raise ValueError(f"unknown recognition parameter {key!r}; valid: {', '.join(conf)}")
            conf[key] = value
    explicit_c = any((s or {}).get("num_candidates") is not None for s in (base, overrides))
    if not explicit_c and isinstance(conf["k"], int) and conf["k"] >= 1:
        conf["num_candidates"] = min(conf["num_candidates"], conf["k"])  # a small --k alone limits C too
    checks = [
        ("k", conf["k"] >= 1, "must be >= 1"),
        ("num_candidates", conf["num_candidates"] >= 1, "must be >= 1"),
        ("num_candidates", conf["num_candidates"] <= conf["k"], f"must be <= k ({conf['k']})"),
        ("refs_per_candidate", conf["refs_per_candidate"] >= 1, "must be >= 1"),
        ("max_verifications", conf["max_verifications"] >= 0, "must be >= 0"),
        ("inlier_threshold", conf["inlier_threshold"] >= 0, "must be >= 0"),
        ("inlier_cap", conf["inlier_cap"] >= 1, "must be >= 1"),
        ("vote_weight", 0 <= conf["vote_weight"] <= 1, "must be in [0, 1]"),
        ("alpha", conf["alpha"] > 0, "must be > 0"),
        ("distractor_k", conf["distractor_k"] >= 1, "must be >= 1"),
    ]
    if conf["confirm_inliers"] is not None:
        checks.append(("confirm_inliers", conf["confirm_inliers"] >= 1, "must be >= 1 (or None)"))
    for key, ok, why in checks:
        if not ok:
            raise ValueError(f"{key} = {conf[key]!r} {why}")
    return conf


# ----------------------------------------------------------------------------- evidence and decision


@dataclass
class Candidate:
    """A landmark proposed by kNN voting, with its verification result."""

    landmark_id: str
    vote: float  # sum of neighbour weights
    sim: float  # best neighbour similarity after the distractor discount
    inliers: int = 0  # best RANSAC inlier count over the verified images (0 if none verified)
    best_match_id: str | None = None  # reference image with the most inliers (else the most similar)
    verified_refs: int = 0  # how many of its images were verified
    raw_sim: float = 0.0  # best neighbour similarity before the discount (orders candidates the discount zeroed)


@dataclass
class Evidence:
    """Everything the decision needs for one query (JSON-serialisable)."""

    neighbours: list[tuple[str, str, float]]  # (id, landmark_id or "", cosine)
    candidates: list[Candidate]
    discount: float = 0.0  # mean similarity to the nearest non-landmark references

    def to_json(self) -> dict[str, Any]:
        return {"neighbours": self.neighbours, "candidates": [asdict(c) for c in self.candidates], "discount": self.discount}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "Evidence":
        return cls([tuple(n) for n in obj["neighbours"]], [Candidate(**c) for c in obj["candidates"]], obj.get("discount", 0.0))


@dataclass
class Prediction:
    """The answer for one query: a landmark (or None) and a confidence."""

    landmark_id: str | None
    confidence: float
    inliers: int
    verified: bool
    guess: str | None = None  # the unverified top-voted landmark when landmark_id is None
    candidates: list[Candidate] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self, image: str | None = None) -> dict[str, Any]:
        out = {
            "image": image,
            "landmark_id": self.landmark_id,
            "confidence": round(self.confidence, 6),
            "inliers": self.inliers,
            "candidates": [
                {"landmark_id": c.landmark_id, "vote": round(c.vote, 6), "inliers": c.inliers, "best_match_id": c.best_match_id}
                for c in self.candidates
            ],
        }
        return out


def vote(
    sims: np.ndarray, landmarks: Sequence[str], alpha: float = 3.0, discount_enabled: bool = True, distractor_k: int = 3,
) -> tuple[list[Candidate], float]:
    """Similarity-weighted kNN votes per landmark.

    Args:
        sims: (k,) cosine similarities of the neighbours, descending.
        landmarks: (k,) landmark id per neighbour, "" for non-landmark references.
    Returns:
        (candidates sorted by vote descending, then landmark id; the distractor discount).
    """
    sims = np.asarray(sims, dtype=np.float64)
    lms = np.asarray(landmarks, dtype=object)
    is_bg = lms == ""
    discount = 0.0
    if discount_enabled and is_bg.any():
        # GLR 2020 winner's rule: a query that resembles non-landmark photos is pulled down by how much.
        discount = float(np.sort(sims[is_bg])[::-1][:distractor_k].mean())
    adjusted = np.clip(sims - discount, 0.0, None)
    weights = adjusted**alpha
    cands: dict[str, Candidate] = {}
    for lm, w, s, raw in zip(lms[~is_bg], weights[~is_bg], adjusted[~is_bg], sims[~is_bg]):
        c = cands.get(lm)
        if c is None:
            cands[lm] = Candidate(str(lm), float(w), float(s), raw_sim=float(raw))
        else:
            c.vote += float(w)
            c.sim = max(c.sim, float(s))
            c.raw_sim = max(c.raw_sim, float(raw))
    ordered = sorted(cands.values(), key=lambda c: (-c.vote, -c.sim, -c.raw_sim, c.landmark_id))
    return ordered, discount


def decide(evidence: Evidence, inlier_threshold: float = 20, inlier_cap: float = 100, vote_weight: float = 0.5) -> Prediction:
    """The final answer from a query's evidence (pure; see the module docstring for the bands)."""
    cands = evidence.candidates
    if not cands:
        return Prediction(None, 0.0, 0, False, candidates=cands)
    verified = [c for c in cands if c.verified_refs > 0 and c.inliers >= inlier_threshold]
    if verified:
        def conf(c: Candidate) -> float:
            return VERIFIED_BASE + 0.5 * ((1 - vote_weight) * min(c.inliers, inlier_cap) / inlier_cap + vote_weight * min(c.sim, 1.0))
        best = max(verified, key=lambda c: (conf(c), c.inliers, c.vote, c.landmark_id))
        return Prediction(best.landmark_id, conf(best), best.inliers, True, candidates=cands)
    top = cands[0]
    return Prediction(None, GUESS_SCALE * min(top.sim, 1.0), max(c.inliers for c in cands), False, guess=top.landmark_id, candidates=cands)


def global_only(evidence: Evidence) -> tuple[str, float] | None:
    """Baseline without verification: the top-voted landmark with its similarity as confidence."""
    if not evidence.candidates:
        return None
    top = evidence.candidates[0]
    return top.landmark_id, float(top.sim)


def submission_answer(pred: Prediction, keep_guesses: bool = True) -> tuple[str, float] | None:
    """What a Kaggle submission row holds: the verified answer, else (optionally) the low-confidence guess."""
    if pred.landmark_id is not None:
        return pred.landmark_id, pred.confidence
    if keep_guesses and pred.guess is not None:
        return pred.guess, pred.confidence
    return None


# ----------------------------------------------------------------------------- the recognizer


class _LRU:
    """A small thread-safe LRU cache of reference local features extracted on demand."""

    def __init__(self, size: int = 2048):
        self.size = size
        self.data: OrderedDict[int, LocalFeatures] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: int, make: Callable[[], LocalFeatures]) -> LocalFeatures:
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        value = make()
        with self.lock:
            self.data[key] = value
            while len(self.data) > self.size:
                self.data.popitem(last=False)
        return value


class Recognizer:
    """Answers "landmark L with confidence c" or "no landmark" for query photos against an index."""

    def __init__(self, db: IndexDatabase, fx: FeatureExtractor, conf: Mapping[str, Any] | None = None,
                 match_conf: Mapping[str, Any] | str | None = None, device: str | None = None):
        """``match_conf``: a name in ``matching.match_confs`` (e.g. "mnn", "lightglue") or overrides of
        ``matching.default_match_conf``; None: the local configuration's default matcher."""
        self.db = db
        self.fx = fx
        self.conf = resolve_recognition_conf(conf, db.manifest.get("thresholds") or {})
        self.match_conf = resolve_match_conf(match_conf) if match_conf else {}
        self.stored_local = db.has_local()
        if fx.local_extractor is None:
            # The index stores no local features: both the query and the candidates' references are
            # described on demand by this extractor (reference features are cached).
            fx.local_extractor = make_local_extractor(self.conf["on_demand_local"], device=device)
            fx.local_image_size = DEFAULT_LOCAL_IMAGE_SIZE
        self.local: LocalExtractor = fx.local_extractor
        self.local_image_size = fx.local_image_size
        if not self.match_conf:
            # Each local extractor has a matcher tuned to it (aliked -> lightglue, xfeat -> lighterglue,
            # rootsift -> mnn+ratio, delf -> a looser reprojection threshold for its stride-16 grid).
            self.match_conf = default_match_conf_for(self.local.conf)
        self._cache = _LRU()
        meta = db.metadata
        self._ids = meta["id"].to_numpy()
        self._landmarks = meta["landmark_id"].to_numpy()
        self._paths = meta["path"].to_numpy()

    @classmethod
    def from_index(cls, path: str | Path, device: str | None = None, match_conf: Mapping[str, Any] | str | None = None,
                   **overrides: Any) -> "Recognizer":
        """Open an index and recognise with the configuration it was built with (+ overrides)."""
        db = IndexDatabase.open(path)
        if db.size == 0:
            raise ValueError(f"{path}: the index is empty (build it with build-index)")
        fx = FeatureExtractor.for_index(db, device=device, need_local=True)
        return cls(db, fx, overrides, match_conf=match_conf, device=device)

    # -- features
    def _reference_local(self, row: int) -> LocalFeatures:
        if self.stored_local:
            stored = self.db.local_features(row)
            if stored is not None:
                return LocalFeatures.unpack(*stored)

        def make() -> LocalFeatures:
            try:
                image, _ = load_image(self._paths[row], max_side=self.local_image_size)
            except ImageError as exc:
                logger.warning("reference %s cannot be verified: %s", self._ids[row], exc)
                return LocalFeatures.empty(self.local.dim)
            return self.local.extract(image)  # detection-pixel keypoints, like the stored ones

        return self._cache.get(row, make)

    # -- evidence
    def evidence(self, features: Features, verify: bool = True, early_exit: bool = True) -> tuple[Evidence, dict[str, float]]:
        """Search, vote and (optionally) verify; returns the query's evidence and timings."""
        c = self.conf
        timings: dict[str, float] = {}
        start = time.perf_counter()
        k = min(int(c["k"]), self.db.size)
        D, I = self.db.search(features.global_desc[None].astype(np.float32), k)
        timings["search"] = time.perf_counter() - start
        valid = I[0] >= 0
        rows, sims = I[0][valid], D[0][valid]
        neighbours = [(str(self._ids[r]), str(self._landmarks[r]), float(s)) for r, s in zip(rows, sims)]
        cands, discount = vote(sims, [self._landmarks[r] for r in rows], c["alpha"], c["distractor_discount"], c["distractor_k"])
        cands = cands[: int(c["num_candidates"])]
        evidence = Evidence(neighbours, cands, discount)
        if not verify or not cands or c["max_verifications"] == 0:
            return evidence, timings
        # Pairs to verify: each candidate's best-ranked images, interleaved by rank so that a
        # tight budget still reaches every candidate.
        per_cand = {cand.landmark_id: [r for r in rows if self._landmarks[r] == cand.landmark_id][: c["refs_per_candidate"]] for cand in cands}
        pairs: list[tuple[Candidate, int]] = []
        for depth in range(int(c["refs_per_candidate"])):
            for cand in cands:
                refs = per_cand[cand.landmark_id]
                if depth < len(refs):
                    pairs.append((cand, int(refs[depth])))
        pairs = pairs[: int(c["max_verifications"])]
        start = time.perf_counter()
        loaders = [lambda row=row: self._reference_local(row) for _, row in pairs]
        confirm = c["confirm_inliers"] if early_exit else None
        results = verify_many(features.local, loaders, self.match_conf or None, confirm_inliers=confirm)
        timings["verify"] = time.perf_counter() - start
        timings["pairs"] = float(sum(r is not None for r in results))
        for (cand, row), res in zip(pairs, results):
            if res is None:
                continue
            cand.verified_refs += 1
            if res.inliers > cand.inliers or cand.best_match_id is None:
                cand.inliers = int(res.inliers)
                cand.best_match_id = str(self._ids[row])
        return evidence, timings

    def decide(self, evidence: Evidence) -> Prediction:
        c = self.conf
        return decide(evidence, c["inlier_threshold"], c["inlier_cap"], c["vote_weight"])

    def recognize(self, image: str | Path) -> Prediction:
        """Recognise one image file. Raises ImageError for an unreadable image."""
        features = self.fx.describe_image(image)
        evidence, timings = self.evidence(features)
        pred = self.decide(evidence)
        pred.timings = {**features.timings, **timings}
        return pred
