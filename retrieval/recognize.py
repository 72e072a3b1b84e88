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
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from index.database import IndexDatabase

from .defaults import EXTRACTOR_DEFAULTS, DEFAULT_RECOGNITION_CONF
from .extract import DEFAULT_LOCAL_IMAGE_SIZE, FeatureExtractor, Features
from .image_io import ImageError, load_image
from .local_features import LocalExtractor, LocalFeatures, extractors, local_confs, make_local_extractor
from .matching import default_match_conf_for, resolve_match_conf, verify_many

logger = logging.getLogger(__name__)

VERIFIED_BASE = 0.5  # confidences >= this are verified answers
GUESS_SCALE = 0.49  # unverified guesses get GUESS_SCALE * sim < VERIFIED_BASE

CANDIDATE_SCORES = ("best", "top2", "sum")

# The decision parameters that tune-threshold may sweep and store in the manifest under "thresholds".
DECISION_KEYS = ("inlier_threshold", "inlier_cap", "vote_weight", "min_margin")


def resolve_recognition_conf(overrides: Mapping[str, Any] | None = None, base: Mapping[str, Any] | None = None,
                             extractor: str | None = None) -> dict[str, Any]:
    """Defaults <- the decisions calibrated for the local ``extractor`` <- ``base`` (e.g. the index manifest's
    tuned thresholds) <- non-None ``overrides``; validated."""
    conf = copy.deepcopy(DEFAULT_RECOGNITION_CONF)
    for source in (EXTRACTOR_DEFAULTS.get(extractor or "", {}), base or {}, overrides or {}):
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
        ("min_margin", conf["min_margin"] >= 1, "must be >= 1"),
        ("candidate_score", conf["candidate_score"] in CANDIDATE_SCORES, f"must be one of {', '.join(CANDIDATE_SCORES)}"),
        ("alpha", conf["alpha"] > 0, "must be > 0"),
        ("distractor_k", conf["distractor_k"] >= 1, "must be >= 1"),
        ("cache_mb", conf["cache_mb"] >= 0, "must be >= 0"),
    ]
    on_demand = local_confs.get(conf["on_demand_local"])
    checks.append(("on_demand_local", on_demand is not None and not extractors[on_demand["extractor"]].needs_pca,
                   "must name a local configuration that needs no fitted PCA (delf's PCA is fitted on an index's "
                   f"stored features; build the index with --local-conf delf instead): one of "
                   f"{', '.join(n for n, lc in local_confs.items() if not extractors[lc['extractor']].needs_pca)}"))
    if conf["confirm_inliers"] is not None:
        checks.append(("confirm_inliers", conf["confirm_inliers"] >= 1, "must be >= 1 (or None)"))
    for key, ok, why in checks:
        if not ok:
            raise ValueError(f"{key} = {conf[key]!r} {why}")
    return conf


def index_local_extractor(manifest: Mapping[str, Any]) -> str:
    """The local extractor that verifies against an index: the stored one, else the on-demand default."""
    local = (manifest.get("config") or {}).get("local") or {}
    return str(local.get("extractor") or DEFAULT_RECOGNITION_CONF["on_demand_local"])


# ----------------------------------------------------------------------------- evidence and decision


@dataclass
class Candidate:
    """A landmark proposed by kNN voting, with its verification result."""

    landmark_id: str
    vote: float  # the per-landmark score that ranks candidates (conf "candidate_score")
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
    sims: np.ndarray, landmarks: Sequence[str], score: str = "best", alpha: float = 3.0, discount: float = 0.0,
) -> list[Candidate]:
    """Per-landmark scores over a query's neighbours.

    Args:
        sims: (k,) cosine similarities of the neighbours, descending.
        landmarks: (k,) landmark id per neighbour, "" for non-landmark references (they do not vote).
        score: "best" (a landmark's best similarity), "top2" (mean of its two best, a missing one counts 0)
            or "sum" (sum of max(sim - discount, 0) ** alpha).
        discount: subtracted from every similarity (the distractor discount; 0: none).
    Returns:
        candidates sorted by score descending, then best similarity, then landmark id (deterministic).
    """
    if score not in CANDIDATE_SCORES:
        raise ValueError(f"unknown candidate score {score!r}; valid: {', '.join(CANDIDATE_SCORES)}")
    sims = np.asarray(sims, dtype=np.float64)
    lms = np.asarray(landmarks, dtype=object)
    keep = lms != ""
    adjusted = np.clip(sims - discount, 0.0, None)
    per: dict[str, list[tuple[float, float]]] = {}
    for lm, s, raw in zip(lms[keep], adjusted[keep], sims[keep]):
        per.setdefault(str(lm), []).append((float(s), float(raw)))
    cands = []
    for lm, values in per.items():
        adj = sorted((v[0] for v in values), reverse=True)
        if score == "best":
            value = adj[0]
        elif score == "top2":
            value = (adj[0] + (adj[1] if len(adj) > 1 else 0.0)) / 2
        else:
            value = float(sum(a**alpha for a in adj))
        cands.append(Candidate(lm, value, adj[0], raw_sim=max(v[1] for v in values)))
    return sorted(cands, key=lambda c: (-c.vote, -c.sim, -c.raw_sim, c.landmark_id))


def verified_confidence(inliers: Any, sim: Any, inlier_cap: float, vote_weight: float) -> Any:
    """Confidence of a verified answer in [0.5, 1] (scalars or arrays): inliers (capped) and similarity mixed."""
    return VERIFIED_BASE + 0.5 * ((1 - vote_weight) * np.minimum(inliers, inlier_cap) / inlier_cap
                                  + vote_weight * np.minimum(sim, 1.0))


def decide(evidence: Evidence, inlier_threshold: float = 20, inlier_cap: float = 100, vote_weight: float = 0.5,
           min_margin: float = 1.0) -> Prediction:
    """The final answer from a query's evidence (pure; see the module docstring for the bands).

    A candidate is verified when its inliers reach ``inlier_threshold`` and, with ``min_margin`` > 1, are
    at least ``min_margin`` times the inliers of every other candidate (a repetitive facade of another
    landmark may collect many inliers, but fewer than the true landmark). Otherwise the answer is the
    unverified guess: the top-scored candidate, ranked below every verified answer.
    """
    cands = evidence.candidates
    if not cands:
        return Prediction(None, 0.0, 0, False, candidates=cands)
    verified = [c for c in cands if c.verified_refs > 0 and c.inliers >= inlier_threshold]
    if verified:
        def conf(c: Candidate) -> float:
            return float(verified_confidence(c.inliers, c.sim, inlier_cap, vote_weight))
        best = max(verified, key=lambda c: (conf(c), c.inliers, c.vote, c.landmark_id))
        runner_up = max((c.inliers for c in cands if c is not best), default=0)
        if best.inliers >= min_margin * runner_up:
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


@dataclass
class CandidateArrays:
    """The candidates of many queries as padded ``(Q, C)`` arrays, to decide every query at once.

    :func:`decide_many` gives the same answers as :func:`decide` query by query (tested), in a few vectorised
    passes: ``tune-threshold`` re-decides 100,000 queries for hundreds of parameter values in seconds.
    """

    landmarks: np.ndarray  # (Q, C) object: landmark ids ("" = padding)
    inliers: np.ndarray  # (Q, C) float64
    verified: np.ndarray  # (Q, C) bool: at least one image of the candidate was verified
    sim: np.ndarray  # (Q, C) float64: best similarity after the discount
    valid: np.ndarray  # (Q, C) bool: a real candidate (not padding)
    tie_rank: np.ndarray  # (Q, C) int: order by (inliers, vote, landmark id), the tie-break of decide()

    def runner_up(self, best: np.ndarray) -> np.ndarray:
        """(Q,) the most inliers among each query's candidates other than column ``best`` (padding counts 0)."""
        inl = np.where(self.valid, self.inliers, 0.0)
        first = np.argmax(inl, axis=1)
        second = np.partition(inl, -2, axis=1)[:, -2] if inl.shape[1] > 1 else np.zeros(len(inl))
        return np.where(best == first, second, inl[np.arange(len(inl)), first])

    @classmethod
    def from_candidates(cls, rows: Sequence[Sequence[Mapping[str, Any]] | None]) -> "CandidateArrays":
        """From each query's candidate dicts (``Candidate`` fields, as in evidence JSON; None: no evidence)."""
        q = len(rows)
        c = max([len(r) for r in rows if r] or [1])
        out = cls(np.full((q, c), "", dtype=object), np.zeros((q, c)), np.zeros((q, c), bool), np.zeros((q, c)),
                  np.zeros((q, c), bool), np.zeros((q, c), np.int64))
        for i, cands in enumerate(rows):
            if not cands:
                continue
            n = len(cands)
            out.landmarks[i, :n] = [str(x["landmark_id"]) for x in cands]
            out.inliers[i, :n] = [x["inliers"] for x in cands]
            out.verified[i, :n] = [x["verified_refs"] > 0 for x in cands]
            out.sim[i, :n] = [x["sim"] for x in cands]
            out.valid[i, :n] = True
            order = sorted(range(n), key=lambda j: (cands[j]["inliers"], cands[j]["vote"], str(cands[j]["landmark_id"])))
            out.tie_rank[i, order] = np.arange(1, n + 1)
        return out


def decide_many(arrays: CandidateArrays, inlier_threshold: float = 20, inlier_cap: float = 100, vote_weight: float = 0.5,
                min_margin: float = 1.0, keep_guesses: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`decide` + :func:`submission_answer` for every query at once.

    Returns ``(column, confidence, verified)``: the chosen candidate's column per query (-1: no answer), its
    confidence (NaN: no answer) and whether it is a verified answer (else a guess, kept when ``keep_guesses``).
    """
    a = arrays
    rows = np.arange(len(a.valid))
    ok = a.valid & a.verified & (a.inliers >= inlier_threshold)
    conf = verified_confidence(a.inliers, a.sim, inlier_cap, vote_weight)
    masked = np.where(ok, conf, -np.inf)
    top = masked.max(axis=1, initial=-np.inf)
    best = np.argmax(np.where(ok & (masked == top[:, None]), a.tie_rank, -1), axis=1)  # ties: decide()'s key
    # runner-up: the most inliers among the other candidates (padding counts 0, as a missing candidate)
    runner = a.runner_up(best)
    verified = ok.any(axis=1) & (a.inliers[rows, best] >= min_margin * runner)
    guess = a.valid[:, 0] & keep_guesses
    column = np.where(verified, best, np.where(guess, 0, -1))
    confidence = np.where(verified, conf[rows, best], np.where(guess, GUESS_SCALE * np.minimum(a.sim[:, 0], 1.0), np.nan))
    return column, confidence, verified


def threshold_sweep(arrays: CandidateArrays, thresholds: Sequence[float], inlier_cap: float = 100, vote_weight: float = 0.5,
                    min_margin: float = 1.0, keep_guesses: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`decide_many` for each inlier threshold in turn (same outputs, tested), sharing the work.

    Raising the threshold only shrinks each query's verified set from the bottom: with candidates sorted by
    inliers, the best verified one is a running maximum of decide()'s key along that order, so each threshold
    costs one comparison per candidate instead of a full decision.
    """
    a = arrays
    q, c = a.valid.shape
    rows = np.arange(q)
    conf = verified_confidence(a.inliers, a.sim, inlier_cap, vote_weight)
    usable = a.valid & a.verified
    inl = np.where(usable, a.inliers, -np.inf)  # never reaches a threshold >= 0
    order = np.argsort(-inl, axis=1, kind="stable")
    inl_sorted = np.take_along_axis(inl, order, axis=1)
    # decide()'s key (confidence, then the tie rank) as an integer rank per row; prefix maxima along `order`
    key = np.lexsort((a.tie_rank.ravel(), np.where(usable, conf, -np.inf).ravel(), np.repeat(rows, c))).argsort().reshape(q, c)
    key_sorted = np.take_along_axis(np.where(usable, key, -1), order, axis=1)
    best_key = np.maximum.accumulate(key_sorted, axis=1)
    col_of_key = np.full(q * c, 0, np.int64)
    col_of_key[key.ravel()] = np.tile(np.arange(c), q)
    guess = a.valid[:, 0] & keep_guesses
    guess_conf = GUESS_SCALE * np.minimum(a.sim[:, 0], 1.0)
    for t in thresholds:
        count = (inl_sorted >= t).sum(axis=1)
        has = count > 0
        k = best_key[rows, np.maximum(count - 1, 0)]
        best = col_of_key[np.maximum(k, 0)]
        runner = a.runner_up(best)
        verified = has & (a.inliers[rows, best] >= min_margin * runner)
        column = np.where(verified, best, np.where(guess, 0, -1))
        confidence = np.where(verified, conf[rows, best], np.where(guess, guess_conf, np.nan))
        yield column, confidence, verified


# ----------------------------------------------------------------------------- the recognizer


class _LRU:
    """A thread-safe LRU cache of reference local features extracted on demand, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.data: OrderedDict[int, LocalFeatures] = OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def _size(value: LocalFeatures) -> int:
        return sum(a.nbytes for a in (value.keypoints, value.scales, value.scores, value.descriptors))

    def get(self, key: int, make: Callable[[], LocalFeatures]) -> LocalFeatures:
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
        value = make()
        with self.lock:
            if key not in self.data:
                self.data[key] = value
                self.bytes += self._size(value)
            while self.bytes > self.max_bytes and self.data:
                _, old = self.data.popitem(last=False)
                self.bytes -= self._size(old)
        return value


class Recognizer:
    """Answers "landmark L with confidence c" or "no landmark" for query photos against an index."""

    def __init__(self, db: IndexDatabase, fx: FeatureExtractor, conf: Mapping[str, Any] | None = None,
                 match_conf: Mapping[str, Any] | str | None = None, device: str | None = None):
        """``match_conf``: a name in ``matching.match_confs`` (e.g. "mnn", "lightglue") or overrides of
        ``matching.default_match_conf``; None: the local configuration's default matcher."""
        self.db = db
        self.fx = fx
        tuned = db.manifest.get("thresholds") or {}
        self.conf = resolve_recognition_conf(conf, tuned)
        self.match_conf = resolve_match_conf(match_conf) if match_conf else {}
        self.stored_local = db.has_local()
        if fx.local_extractor is None:
            # The index stores no local features: both the query and the candidates' references are
            # described on demand by this extractor (reference features are cached).
            fx.local_extractor = make_local_extractor(self.conf["on_demand_local"], device=device)
            fx.local_image_size = DEFAULT_LOCAL_IMAGE_SIZE
        self.local: LocalExtractor = fx.local_extractor
        self.local_image_size = fx.local_image_size
        # the decision defaults calibrated for this extractor's inlier scale, under the tuned values
        self.conf = resolve_recognition_conf(conf, tuned, self.local.conf.get("extractor"))
        if not self.match_conf:
            # Each local extractor has a matcher tuned to it (aliked -> lightglue, xfeat -> lighterglue,
            # rootsift -> mnn+ratio, delf -> a looser reprojection threshold for its stride-16 grid).
            self.match_conf = default_match_conf_for(self.local.conf)
        self._cache = _LRU(int(self.conf["cache_mb"] * 2**20))
        # lazily read columns: indexing reads just those rows (no per-row strings for the whole index)
        self._ids = db.column("id")
        self._landmarks = db.column("landmark_id")
        self._paths = db.column("path")
        self._background: np.ndarray | None = None  # descriptors of the non-landmark references, loaded on demand

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
                return LocalFeatures.unpack(*stored, self.db.local_image_size(row))

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
        ids, lms = (self._ids[rows], self._landmarks[rows]) if len(rows) else ([], [])  # one read per column
        neighbours = [(str(i), str(lm), float(s)) for i, lm, s in zip(ids, lms, sims)]
        discount = self.distractor_discount(features.global_desc) if c["distractor_discount"] else 0.0
        cands = vote(sims, list(lms), c["candidate_score"], c["alpha"], discount)
        cands = cands[: int(c["num_candidates"])]
        evidence = Evidence(neighbours, cands, discount)
        if not verify or not cands or c["max_verifications"] == 0:
            return evidence, timings
        # Pairs to verify: each candidate's best-ranked images, interleaved by rank so that a
        # tight budget still reaches every candidate.
        id_of = {int(r): str(i) for r, i in zip(rows, ids)}
        per_cand: dict[str, list[int]] = {}
        for r, lm in zip(rows, lms):  # each candidate's images in rank order
            per_cand.setdefault(str(lm), []).append(int(r))
        pairs: list[tuple[Candidate, int]] = []
        for depth in range(int(c["refs_per_candidate"])):
            for cand in cands:
                refs = per_cand[cand.landmark_id][: int(c["refs_per_candidate"])]
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
                cand.best_match_id = id_of[row]
        return evidence, timings

    def distractor_discount(self, global_desc: np.ndarray) -> float:
        """Mean similarity of a query to its ``distractor_k`` nearest non-landmark references (0 if none).

        Searched exactly among all non-landmark references (loaded once), so that the discount is a
        continuous function of the query and never depends on which references made the top k.
        """
        if self._background is None:
            # one pass over the landmark column, in chunks (only when the discount is asked for)
            chunk = 1 << 17
            rows = np.concatenate([np.int64(a) + np.flatnonzero(self._landmarks[np.arange(a, min(a + chunk, self.db.size))] == "")
                                   for a in range(0, self.db.size, chunk)] or [np.zeros(0, np.int64)])
            self._background = self.db.global_descriptors(rows) if len(rows) else np.zeros((0, self.db.dim), np.float32)
        if not len(self._background):
            return 0.0
        sims = self._background @ np.asarray(global_desc, dtype=np.float32)
        k = min(int(self.conf["distractor_k"]), len(sims))
        return float(np.partition(sims, len(sims) - k)[-k:].mean())

    def decide(self, evidence: Evidence) -> Prediction:
        c = self.conf
        return decide(evidence, **{k: c[k] for k in DECISION_KEYS})

    def recognize(self, image: str | Path) -> Prediction:
        """Recognise one image file. Raises ImageError for an unreadable image."""
        features = self.fx.describe_image(image)
        evidence, timings = self.evidence(features)
        pred = self.decide(evidence)
        pred.timings = {**features.timings, **timings}
        return pred
