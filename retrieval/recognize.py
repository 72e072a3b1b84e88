"""Recognition: kNN voting over global neighbours, local-feature verification (a matcher cascade), the decision.

The decision is a pure function of a query's *evidence* (neighbours, candidate votes and the inlier counts of
every matcher that ran), in :mod:`retrieval.decision`, so evaluation can store the evidence once and
re-decide under other thresholds in milliseconds (``tune-threshold``); the confidence bands are documented
there.

The cascade: the index's primary local features (RootSIFT by default, cheap) verify every candidate first;
only a query they leave unresolved (:func:`resolved`) goes to the second, learned matcher (XFeat +
LighterGlue or ALIKED + LightGlue, from a secondary local set of the index: ``--local-conf rootsift+xfeat``),
on the first ``cascade_pairs`` candidates in candidate order. Most real queries show no landmark and are never
resolved by RootSIFT, so ``cascade_pairs`` is what bounds the cost of every query.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from index.local_sets import CASCADE_SET_KEY
from index.reader import IndexReader

from .asmk_channel import asmk_landmarks, merge_candidates
from .cache import LRU
from .decision import (  # noqa: F401 (re-exported: the decision's public names, as before)
    DECISION_KEYS, GUESS_SCALE, VERIFIED_BASE, Candidate, CandidateArrays, ConfidenceModel, Evidence, Prediction,
    decide, decide_many, explain, global_only, matcher_of, submission_answer, threshold_sweep, verified_confidence,
)
from .defaults import DEFAULT_RECOGNITION_CONF
from .global_rerank import alpha_qe, superglobal_rerank
from .extract import DEFAULT_LOCAL_IMAGE_SIZE, FeatureExtractor, Features, conf_label
from .image_io import ImageError, load_image
from .local_features import LocalExtractor, LocalFeatures, extractors, local_confs, make_local_extractor
from .matching import default_match_conf_for, resolve_match_conf, verify_many
from .registry import check_cascade, decision_defaults, outdated_set

logger = logging.getLogger(__name__)

CANDIDATE_SCORES = ("best", "top2", "sum")
GLOBAL_RERANKS = ("none", "qe", "superglobal")


def resolve_recognition_conf(overrides: Mapping[str, Any] | None = None, base: Mapping[str, Any] | None = None,
                             extractor: str | None = None, second: str | None = None) -> dict[str, Any]:
    """Defaults <- the decisions calibrated for the local ``extractor`` <- those of the cascade's ``second``
    extractor <- ``base`` (e.g. the index manifest's tuned thresholds) <- non-None ``overrides``; validated.

    With a second matcher, the resolve rule is never looser than the decision (:func:`resolved`): it is raised
    to ``inlier_threshold`` inliers and ``min_margin`` times the runner-up when those are higher, so a query the
    first matcher settles is always a verified answer."""
    conf = copy.deepcopy(DEFAULT_RECOGNITION_CONF)
    for source in (decision_defaults(extractor), decision_defaults(second, as_second=True), base or {},
                   overrides or {}):
        for key, value in source.items():
            if value is None:
                continue
            if key not in conf:
                raise ValueError(f"unknown recognition parameter {key!r}; valid: {', '.join(conf)}")
            conf[key] = value
    explicit_c = any((s or {}).get("num_candidates") is not None for s in (base, overrides))
    if not explicit_c and isinstance(conf["k"], int) and conf["k"] >= 1:
        conf["num_candidates"] = min(conf["num_candidates"], conf["k"])  # a small --k alone limits C too
    check_cascade(conf["cascade"])
    checks = [
        ("k", conf["k"] >= 1, "must be >= 1"),
        ("num_candidates", conf["num_candidates"] >= 1, "must be >= 1"),
        ("num_candidates", conf["num_candidates"] <= conf["k"], f"must be <= k ({conf['k']})"),
        ("asmk_candidates", conf["asmk_candidates"] >= 0, "must be >= 0"),
        ("refs_per_candidate", conf["refs_per_candidate"] >= 1, "must be >= 1"),
        ("max_verifications", conf["max_verifications"] >= 0, "must be >= 0"),
        ("inlier_threshold", conf["inlier_threshold"] >= 0, "must be >= 0"),
        ("inlier_cap", conf["inlier_cap"] >= 1, "must be >= 1"),
        ("vote_weight", 0 <= conf["vote_weight"] <= 1, "must be in [0, 1]"),
        ("min_margin", conf["min_margin"] >= 1, "must be >= 1"),
        ("candidate_score", conf["candidate_score"] in CANDIDATE_SCORES, f"must be one of {', '.join(CANDIDATE_SCORES)}"),
        ("alpha", conf["alpha"] > 0, "must be > 0"),
        ("global_rerank", conf["global_rerank"] in GLOBAL_RERANKS, f"must be one of {', '.join(GLOBAL_RERANKS)}"),
        ("global_rerank_k", conf["global_rerank_k"] >= 1, "must be >= 1"),
        ("distractor_k", conf["distractor_k"] >= 1, "must be >= 1"),
        ("cache_mb", conf["cache_mb"] >= 0, "must be >= 0"),
        ("cascade_pairs", conf["cascade_pairs"] >= 0, "must be >= 0"),
        ("cascade_threshold", conf["cascade_threshold"] >= 0, "must be >= 0"),
        ("cascade_resolve_inliers", conf["cascade_resolve_inliers"] >= 0, "must be >= 0"),
        ("cascade_resolve_margin", conf["cascade_resolve_margin"] >= 1, "must be >= 1"),
    ]
    on_demand = local_confs.get(conf["on_demand_local"])
    checks.append(("on_demand_local", on_demand is not None and not extractors[on_demand["extractor"]].needs_pca,
                   "must name a local configuration that needs no fitted PCA (delf's PCA is fitted on an index's "
                   f"stored features; build the index with --local-conf delf instead): one of "
                   f"{', '.join(n for n, lc in local_confs.items() if not extractors[lc['extractor']].needs_pca)}"))
    if conf["confidence_model"] is not None:
        try:
            ConfidenceModel.from_json(conf["confidence_model"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"confidence_model = {conf['confidence_model']!r} is not a fitted model: {exc}") from None
    if conf["confirm_inliers"] is not None:
        checks.append(("confirm_inliers", conf["confirm_inliers"] >= 1, "must be >= 1 (or None)"))
    for key, ok, why in checks:
        if not ok:
            raise ValueError(f"{key} = {conf[key]!r} {why}")
    if second is not None and conf["cascade_pairs"] > 0:
        # a query the first matcher resolves never reaches the second one, so the decision must verify it
        for key, floor in (("cascade_resolve_inliers", "inlier_threshold"), ("cascade_resolve_margin", "min_margin")):
            if conf[floor] > conf[key]:
                logger.info("%s raised from %s to %s = %s: the first matcher settles no query the decision "
                            "would not verify", key, conf[key], floor, conf[floor])
                conf[key] = conf[floor]
    return conf


def index_local_extractor(manifest: Mapping[str, Any]) -> str:
    """The local extractor that verifies against an index: the stored one, else the on-demand default."""
    local = (manifest.get("config") or {}).get("local") or {}
    return str(local.get("extractor") or DEFAULT_RECOGNITION_CONF["on_demand_local"])



def index_decision_conf(db: IndexReader, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The recognition conf a :class:`Recognizer` of this index would resolve (no model loaded): the defaults
    calibrated for its primary and cascade extractors, its tuned thresholds, then ``overrides``."""
    tuned = db.manifest.get("thresholds") or {}
    first = resolve_recognition_conf(overrides, tuned)
    _, second = cascade_set(db, first["cascade"])
    return resolve_recognition_conf(overrides, tuned, index_local_extractor(db.manifest), (second or {}).get("extractor"))


def cascade_set(db: IndexReader, cascade: str) -> tuple[str | None, dict[str, Any] | None]:
    """(name, extractor conf) of the cascade's second local set, or (None, None) for no cascade.

    ``cascade``: "auto" (the set the index was built with: the manifest's ``cascade_set``, recorded by
    build-index; an index built before that was recorded and holding several sets takes the first by name, said
    in a warning; none when it holds no set), "none", or a name of
    :data:`~retrieval.local_features.local_confs` (the index's stored set of that name, else that conf with
    reference features extracted on demand and cached: slow, for experiments). A stored set that does not
    cover every image of the index is said in a warning: the images it lacks are extracted on demand.
    """
    sets = db.local_sets()
    if cascade == "none":
        return None, None
    if cascade == "auto":
        if not sets:
            return None, None
        name = db.manifest.get(CASCADE_SET_KEY)
        if name not in sets:
            name = sorted(sets)[0]
            if len(sets) > 1:
                logger.warning("index %s holds local sets %s and does not record which one it was built with: the "
                               "cascade uses %s (choose with --cascade NAME)", db.path, ", ".join(sorted(sets)), name)
    else:
        name = cascade
    if name in sets:
        missing = len(db.missing_local_rows(name))
        if missing:
            logger.warning("local set %s of index %s covers %d of its %d images: the other %d are extracted on demand "
                           "when verified (slow); complete it with build-index --index %s --local-conf %s+%s",
                           name, db.path, db.size - missing, db.size, missing, db.path,
                           conf_label(db.manifest["config"].get("local")), name)
        return name, sets[name]
    return name, local_confs[name]


def resolved(cands: Sequence[Candidate], conf: Mapping[str, Any]) -> bool:
    """Whether the primary matcher settled the query, so the cascade's second matcher need not run: its best
    candidate has ``cascade_resolve_inliers`` inliers and ``cascade_resolve_margin`` times any other's.

    Evidence parameters of their own (not the tunable ``inlier_threshold``/``min_margin``), so that the
    evidence ``evaluate`` stores is the evidence ``predict`` computes after ``tune-threshold``."""
    counts = sorted((c.inliers for c in cands if c.verified_refs), reverse=True)
    if not counts:
        return False
    runner = counts[1] if len(counts) > 1 else 0
    return counts[0] >= conf["cascade_resolve_inliers"] and counts[0] >= conf["cascade_resolve_margin"] * runner


# ----------------------------------------------------------------------------- voting


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



# ----------------------------------------------------------------------------- the recognizer


def feature_bytes(value: LocalFeatures) -> int:
    """Memory held by one image's local features (what the on-demand cache is bounded by)."""
    return sum(a.nbytes for a in (value.keypoints, value.scales, value.scores, value.descriptors))


class Recognizer:
    """Answers "landmark L with confidence c" or "no landmark" for query photos against an index."""

    def __init__(self, db: IndexReader, fx: FeatureExtractor, conf: Mapping[str, Any] | None = None,
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
        # The cascade's second matcher: a secondary local set of the index ("auto"), or a named one.
        self.second_name, second_conf = cascade_set(db, self.conf["cascade"])
        second_extractor = (second_conf or {}).get("extractor")
        # the decision defaults calibrated for these extractors' inlier scales, under the tuned values
        self.conf = resolve_recognition_conf(conf, tuned, self.local.conf.get("extractor"), second_extractor)
        if not self.match_conf:
            # Each local extractor has a matcher tuned to it (aliked -> lightglue, xfeat -> lighterglue,
            # rootsift -> mnn+ratio, delf -> a looser reprojection threshold for its stride-16 grid).
            self.match_conf = default_match_conf_for(self.local.conf)
        self.second: LocalExtractor | None = None
        self.second_match_conf: dict[str, Any] = {}
        self.second_stored = False
        if self.second_name is not None and int(self.conf["cascade_pairs"]) > 0:
            self.second = make_local_extractor(second_conf, device=device)
            self.second_match_conf = default_match_conf_for(self.second.conf)
            self.second_stored = self.second_name in db.local_sets()
            outdated = outdated_set(self.second_name, second_conf) if self.second_stored else None
            if outdated:
                logger.warning("%s; queries extract with the stored settings (both sides of a pair must match)", outdated)
        self._cache: LRU[tuple[int, int], LocalFeatures] = LRU(max_bytes=int(self.conf["cache_mb"] * 2**20), sizeof=feature_bytes)
        # lazily read columns: indexing reads just those rows (no per-row strings for the whole index)
        self._ids = db.column("id")
        self._landmarks = db.column("landmark_id")
        self._paths = db.column("path")
        self._background: np.ndarray | None = None  # descriptors of the non-landmark references, loaded on demand
        # the ASMK channel (index option build-index --asmk; None without it), its inverted file in memory
        self.asmk = db.asmk() if self.stored_local and self.conf["asmk_candidates"] > 0 else None

    @classmethod
    def from_index(cls, path: str | Path, device: str | None = None, match_conf: Mapping[str, Any] | str | None = None,
                   **overrides: Any) -> "Recognizer":
        """Open an index and recognise with the configuration it was built with (+ overrides)."""
        db = IndexReader.open(path)
        if db.size == 0:
            raise ValueError(f"{path}: the index is empty (build it with build-index)")
        fx = FeatureExtractor.for_index(db, device=device, need_local=True)
        return cls(db, fx, overrides, match_conf=match_conf, device=device)

    # -- features
    def _reference_local(self, row: int, second: bool = False) -> LocalFeatures:
        """A reference's local features of the primary set (or the cascade's second set): stored in the index,
        else extracted on demand from its image (cached in memory, bounded in bytes)."""
        extractor = self.second if second else self.local
        assert extractor is not None
        if second and self.second_stored:
            stored = self.db.local_features(row, self.second_name)
            if stored is not None:
                return LocalFeatures.unpack(*stored, self.db.local_image_size(row, self.second_name))
        elif not second and self.stored_local:
            stored = self.db.local_features(row)
            if stored is not None:
                return LocalFeatures.unpack(*stored, self.db.local_image_size(row))

        def make() -> LocalFeatures:
            try:
                image, _ = load_image(self._paths[row], max_side=self.local_image_size)
            except ImageError as exc:
                logger.warning("reference %s cannot be verified: %s", self._ids[row], exc)
                return LocalFeatures.empty(extractor.dim)
            return extractor.extract(image)  # detection-pixel keypoints, like the stored ones

        return self._cache.get_or_make((int(second), row), make)

    # -- evidence
    def evidence(self, features: Features, verify: bool = True, early_exit: bool = True) -> tuple[Evidence, dict[str, float]]:
        """Search, vote and (optionally) verify; returns the query's evidence and timings.

        Verification is a cascade: the primary matcher verifies each candidate's best ``refs_per_candidate``
        images; when it leaves the query unresolved (:func:`resolved`) and the recognizer has a second
        matcher, that one verifies one image of each of the first ``cascade_pairs`` candidates, in candidate
        order (the image the primary matcher found the most inliers with, else the most similar). ``early_exit=False`` ignores ``confirm_inliers`` (show-matches draws every pair); evaluate and
        predict both keep it, so that they decide on the same evidence.
        """
        c = self.conf
        timings: dict[str, float] = {}
        start = time.perf_counter()
        k = min(int(c["k"]), self.db.size)
        D, I = self.db.search(features.global_desc[None].astype(np.float32), k)
        timings["search"] = time.perf_counter() - start
        valid = I[0] >= 0
        rows, sims = I[0][valid], D[0][valid]
        if c["global_rerank"] != "none" and len(rows):
            start = time.perf_counter()
            rows, sims = self.rerank(features.global_desc, rows, sims, k)
            timings["rerank"] = time.perf_counter() - start
        ids, lms = (self._ids[rows], self._landmarks[rows]) if len(rows) else ([], [])  # one read per column
        neighbours = [(str(i), str(lm), float(s)) for i, lm, s in zip(ids, lms, sims)]
        discount = self.distractor_discount(features.global_desc) if c["distractor_discount"] else 0.0
        cands = vote(sims, list(lms), c["candidate_score"], c["alpha"], discount)
        cands = cands[: int(c["num_candidates"])]
        asmk_rows: dict[str, list[int]] = {}
        if self.asmk is not None and c["asmk_candidates"] > 0 and features.local is not None:
            start = time.perf_counter()  # the ASMK channel (retrieval/asmk_channel.py): its landmarks appended
            cands, asmk_rows = self._asmk_candidates(features, cands, discount)
            timings["asmk"] = time.perf_counter() - start
        evidence = Evidence(neighbours, cands, discount)
        if not verify or not cands or c["max_verifications"] == 0:
            return evidence, timings
        # Pairs to verify: each candidate's best-ranked images, interleaved by rank so that a
        # tight budget still reaches every candidate.
        id_of = {int(r): str(i) for r, i in zip(rows, ids)}
        per_cand: dict[str, list[int]] = {}
        for r, lm in zip(rows, lms):  # each candidate's images in rank order
            per_cand.setdefault(str(lm), []).append(int(r))
        for lm, extra in asmk_rows.items():  # an appended ASMK landmark's images in ASMK order
            per_cand[lm] = extra[: int(c["refs_per_candidate"])]
            id_of.update(zip(per_cand[lm], (str(i) for i in self._ids[np.asarray(per_cand[lm])])))
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
        if self.second is not None and features.local_image is not None and not resolved(cands, c):
            self._second_stage(features, cands, per_cand, id_of, timings)
        return evidence, timings

    def _asmk_candidates(self, features: Features, cands: list[Candidate],
                         discount: float) -> tuple[list[Candidate], dict[str, list[int]]]:
        """The global candidates with the ASMK channel's landmarks merged in (:func:`merge_candidates`); an
        appended landmark is voted for by the query's global similarity to its ASMK images."""
        c = self.conf
        q = np.asarray(features.global_desc, np.float32)
        ranking = asmk_landmarks(self.asmk, features.local.descriptors, self._landmarks)

        def make(landmark: str, rows: list[int]) -> Candidate:
            sims = self.db.global_descriptors(np.asarray(rows, np.int64)) @ q
            return vote(sims, [landmark] * len(rows), c["candidate_score"], c["alpha"], discount)[0]

        return merge_candidates(cands, ranking, int(c["num_candidates"]), int(c["asmk_candidates"]), make)

    @staticmethod
    def _second_reference(cand: Candidate, rows: Sequence[int], id_of: Mapping[int, str]) -> int:
        """The image of a candidate the second matcher verifies: the one the primary matcher found the most
        inliers with (it saw some of the same structure), else the most similar one."""
        if cand.inliers > 0 and cand.best_match_id is not None:
            for row in rows:
                if id_of[row] == cand.best_match_id:
                    return row
        return rows[0]

    def _second_stage(self, features: Features, cands: list[Candidate], per_cand: Mapping[str, list[int]],
                      id_of: Mapping[int, str], timings: dict[str, float]) -> None:
        """The cascade's learned matcher on one image of each of the first ``cascade_pairs`` candidates."""
        assert self.second is not None
        start = time.perf_counter()
        query2 = self.second.extract(features.local_image)
        timings["local2"] = time.perf_counter() - start
        pairs = [(cand, self._second_reference(cand, per_cand[cand.landmark_id], id_of))
                 for cand in cands[: int(self.conf["cascade_pairs"])]]
        start = time.perf_counter()
        results = verify_many(query2, [lambda row=row: self._reference_local(row, second=True) for _, row in pairs],
                              self.second_match_conf)
        timings["verify2"] = time.perf_counter() - start
        timings["pairs2"] = float(len(pairs))
        timings["layers2"] = float(sum(res.layers for res in results if res is not None))  # LightGlue's adaptive depth
        for (cand, row), res in zip(pairs, results):
            if res is not None:
                cand.verified_refs2 += 1
                cand.inliers2 = int(res.inliers)
                cand.best_match_id2 = id_of[row]

    def rerank(self, q: np.ndarray, rows: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The global neighbours after the configured training-free re-ranking (``global_rerank``), from the
        stored descriptors of the neighbours (one descriptor per photo, as built): (rows, scores), descending."""
        q = np.asarray(q, np.float32)
        kk = int(self.conf["global_rerank_k"])
        if self.conf["global_rerank"] == "qe":
            q2 = alpha_qe(q, self.db.global_descriptors(rows[:kk]), sims[:kk], np.arange(min(kk, len(rows))), kk)
            D, I = self.db.search(q2[None].astype(np.float32), k)
            keep = I[0] >= 0
            return I[0][keep], D[0][keep]
        scores = superglobal_rerank(q, self.db.global_descriptors(rows), kk)
        order = np.argsort(-scores, kind="stable")
        return rows[order], scores[order].astype(np.float32)

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

    @property
    def matchers(self) -> dict[int, str]:
        """{1: the primary local features' name, 2: the cascade's second set's, when it runs} (what
        :meth:`explain` quotes)."""
        out = {1: str(self.local.conf.get("extractor"))}
        if self.second is not None:
            out[2] = str(self.second_name)
        return out

    def explain(self, pred: Prediction, label: Any = str) -> str:
        """``pred``'s evidence in words, by the matcher that decided (:func:`retrieval.decision.explain`)."""
        return explain(pred, self.conf, self.matchers, label)

    def recognize(self, image: str | Path) -> Prediction:
        """Recognise one image file. Raises ImageError for an unreadable image."""
        features = self.fx.describe_image(image)
        evidence, timings = self.evidence(features)
        pred = self.decide(evidence)
        pred.timings = {**features.timings, **timings}
        return pred
