"""The decision: a pure function from a query's evidence to "landmark L with confidence c" or "no landmark".

Importable without torch (``tune-threshold`` re-decides stored evidence with it). Everything that decides
goes through one function, :func:`decide_many`: :func:`decide` is the same function on a single query and
:func:`threshold_sweep` calls it once per value, so ``evaluate``, ``tune-threshold``, ``predict``,
``recognize`` and ``serve`` cannot disagree on a rule.

**Evidence.** Each candidate landmark carries the inliers of every matcher that verified it: the index's
primary local features (``inliers``, e.g. RootSIFT) and, in a cascade, a second learned matcher
(``inliers2``, e.g. XFeat + LighterGlue) that only ran on what the first left unresolved.

**One scale.** Matchers count inliers on different scales (wrong RootSIFT pairs stay under ~10, wrong
LightGlue pairs reach 70), so each count is divided by its own matcher's calibrated threshold:
``score = max(inliers / inlier_threshold, inliers2 / cascade_threshold)`` over the matchers that ran.
A candidate *passes* when some matcher reached its threshold (score >= 1).

**The rule.**

1. The winner is the passing candidate with the highest score (ties: the higher vote, then landmark id).
2. With ``min_margin`` > 1 it must also have ``min_margin`` times the score of every other candidate (a
   repetitive facade of another landmark can collect many inliers, but fewer than the true landmark).
   ``min_margin`` <= 1 is off. Adding inliers to the winner therefore never turns a verified answer into
   "no landmark" (tested as a property over random evidence).
3. Otherwise the answer is the unverified guess: the top-voted candidate, ranked below every verified answer.

**Confidence bands** (documented in docs/recognition.md). A verified answer gets a confidence in [0.5, 1]:
``0.5 + 0.5 * ((1 - w) * min(score * inlier_threshold, cap) / cap + w * sim)`` (for a single matcher,
``score * inlier_threshold`` is just its inlier count); a guess gets ``0.49 * sim`` in [0, 0.49]. With a
fitted :class:`ConfidenceModel` (``tune-threshold`` (``--confidence auto|fitted``)), ``p`` = its probability that the
answer is right replaces the mix: ``0.5 + 0.5 * p`` and ``0.49 * p``. Either way verified answers rank above
guesses, so a guess can only add correct predictions at the tail of the GAP ranking.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

VERIFIED_BASE = 0.5  # confidences >= this are verified answers
GUESS_SCALE = 0.49  # unverified guesses get GUESS_SCALE * sim (or * p) < VERIFIED_BASE

# The decision parameters (what decide() takes); tune-threshold may sweep the numeric ones and store them in
# the manifest under "thresholds".
DECISION_KEYS = ("inlier_threshold", "inlier_cap", "vote_weight", "min_margin", "cascade_threshold", "confidence_model")
_SCORE_CAP = 100.0  # scores (multiples of a threshold) above this add nothing to the fitted confidence's features


# ----------------------------------------------------------------------------- evidence


@dataclass
class Candidate:
    """A landmark proposed by kNN voting, with its verification results (JSON-serialisable)."""

    landmark_id: str
    vote: float  # the per-landmark score that ranks candidates (conf "candidate_score")
    sim: float  # best neighbour similarity after the distractor discount
    inliers: int = 0  # best RANSAC inlier count of the primary matcher over the verified images (0 if none)
    best_match_id: str | None = None  # reference image with the most primary inliers (else the most similar)
    verified_refs: int = 0  # how many of its images the primary matcher verified
    raw_sim: float = 0.0  # best neighbour similarity before the discount (orders candidates the discount zeroed)
    inliers2: int = 0  # the cascade's second matcher: best inlier count (0 if it did not run on this candidate)
    verified_refs2: int = 0  # how many of its images the second matcher verified
    best_match_id2: str | None = None  # reference image of inliers2
    # The retrieval channels that proposed it ("global": the global kNN vote; see eval/shortlist.py)
    channels: list[str] = field(default_factory=lambda: ["global"])


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
    inliers: int  # the answer's (or guess's) inliers by the matcher that decided (see ``matcher``)
    verified: bool
    guess: str | None = None  # the unverified top-voted landmark when landmark_id is None
    candidates: list[Candidate] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    matcher: int = 0  # which matcher's inliers decided: 1 the primary, 2 the cascade's second, 0 none ran

    def to_json(self, image: str | None = None) -> dict[str, Any]:
        return {
            "image": image,
            "landmark_id": self.landmark_id,
            "confidence": round(self.confidence, 6),
            "inliers": self.inliers,
            "candidates": [
                {"landmark_id": c.landmark_id, "vote": round(c.vote, 6), "inliers": c.inliers, "best_match_id": c.best_match_id,
                 "channels": list(c.channels)}
                for c in self.candidates
            ],
        }


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


# ----------------------------------------------------------------------------- many queries at once


@dataclass
class CandidateArrays:
    """The candidates of many queries as padded ``(Q, C)`` arrays, to decide every query at once.

    ``tune-threshold`` re-decides 100,000 queries for hundreds of parameter values in seconds with these.
    """

    landmarks: np.ndarray  # (Q, C) object: landmark ids ("" = padding)
    inliers: np.ndarray  # (Q, C) float64: primary matcher
    verified: np.ndarray  # (Q, C) bool: the primary matcher verified at least one image of the candidate
    sim: np.ndarray  # (Q, C) float64: best similarity after the discount
    valid: np.ndarray  # (Q, C) bool: a real candidate (not padding)
    tie_rank: np.ndarray  # (Q, C) int: order by (vote, landmark id), the tie-break between equal scores
    inliers2: np.ndarray = None  # type: ignore[assignment]  # (Q, C) float64: the cascade's second matcher
    verified2: np.ndarray = None  # type: ignore[assignment]  # (Q, C) bool

    def __post_init__(self) -> None:
        if self.inliers2 is None:
            self.inliers2 = np.zeros(self.inliers.shape)
        if self.verified2 is None:
            self.verified2 = np.zeros(self.inliers.shape, bool)

    @classmethod
    def from_candidates(cls, rows: Sequence[Sequence[Mapping[str, Any]] | None]) -> "CandidateArrays":
        """From each query's candidate dicts (``Candidate`` fields, as in evidence JSON; None: no evidence)."""
        q = len(rows)
        c = max([len(r) for r in rows if r] or [1])
        out = cls(np.full((q, c), "", dtype=object), np.zeros((q, c)), np.zeros((q, c), bool), np.zeros((q, c)),
                  np.zeros((q, c), bool), np.zeros((q, c), np.int64), np.zeros((q, c)), np.zeros((q, c), bool))
        for i, cands in enumerate(rows):
            if not cands:
                continue
            n = len(cands)
            out.landmarks[i, :n] = [str(x["landmark_id"]) for x in cands]
            out.inliers[i, :n] = [x["inliers"] for x in cands]
            out.verified[i, :n] = [x["verified_refs"] > 0 for x in cands]
            out.inliers2[i, :n] = [x.get("inliers2", 0) for x in cands]
            out.verified2[i, :n] = [x.get("verified_refs2", 0) > 0 for x in cands]
            out.sim[i, :n] = [x["sim"] for x in cands]
            out.valid[i, :n] = True
            order = sorted(range(n), key=lambda j: (cands[j]["vote"], str(cands[j]["landmark_id"])))
            out.tie_rank[i, order] = np.arange(1, n + 1)
        return out

    def scores(self, inlier_threshold: float, cascade_threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """``(passes, score)``, both (Q, C): whether some matcher reached its threshold, and the candidate's
        inliers on one scale (multiples of each matcher's threshold, the better matcher; 0 where none ran)."""
        ran1 = self.valid & self.verified
        ran2 = self.valid & self.verified2
        passes = (ran1 & (self.inliers >= inlier_threshold)) | (ran2 & (self.inliers2 >= cascade_threshold))
        score = np.maximum(np.where(ran1, self.inliers / max(float(inlier_threshold), 1.0), 0.0),
                           np.where(ran2, self.inliers2 / max(float(cascade_threshold), 1.0), 0.0))
        return passes, score


def runner_up(values: np.ndarray, valid: np.ndarray, column: np.ndarray) -> np.ndarray:
    """(Q,) the largest of ``values`` among each row's valid entries other than ``column`` (0 when none)."""
    v = np.where(valid, values, 0.0)
    if v.shape[1] < 2:
        return np.zeros(len(v))
    first = np.argmax(v, axis=1)
    second = np.partition(v, -2, axis=1)[:, -2]
    return np.where(column == first, second, v[np.arange(len(v)), first])


def decide_many(arrays: CandidateArrays, inlier_threshold: float = 20, inlier_cap: float = 100, vote_weight: float = 0.5,
                min_margin: float = 1.0, cascade_threshold: float = 40, confidence_model: Any = None,
                keep_guesses: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decision (module docstring) + :func:`submission_answer` for every query at once.

    Returns ``(column, confidence, verified)``: the chosen candidate's column per query (-1: no answer), its
    confidence (NaN: no answer) and whether it is a verified answer (else a guess, kept when ``keep_guesses``).
    """
    a = arrays
    q = len(a.valid)
    rows = np.arange(q)
    passes, score = a.scores(inlier_threshold, cascade_threshold)
    # the winner: the best score among passing candidates, ties by (vote, landmark id)
    key = np.where(passes, score, -np.inf)
    top = key.max(axis=1, initial=-np.inf)
    best = np.argmax(np.where(passes & (key == top[:, None]), a.tie_rank, -1), axis=1) if q else np.zeros(0, np.int64)
    verified = passes.any(axis=1)
    if min_margin > 1:
        verified &= score[rows, best] >= min_margin * runner_up(score, a.valid, best)
    guess = a.valid[:, 0] & keep_guesses
    column = np.where(verified, best, np.where(guess, 0, -1))
    col = np.maximum(column, 0)
    if confidence_model is not None:
        model = ConfidenceModel.from_json(confidence_model) if isinstance(confidence_model, Mapping) else confidence_model
        p = model.predict(answer_features(a, score, col))
        conf_verified, conf_guess = VERIFIED_BASE + (1 - VERIFIED_BASE) * p, GUESS_SCALE * p
    else:
        equivalent = score[rows, col] * max(float(inlier_threshold), 1.0)  # the primary matcher's inlier scale
        conf_verified = verified_confidence(equivalent, a.sim[rows, col], inlier_cap, vote_weight)
        conf_guess = GUESS_SCALE * np.minimum(a.sim[rows, col], 1.0)
    confidence = np.where(verified, conf_verified, np.where(guess, conf_guess, np.nan))
    return column, confidence, verified


def verified_confidence(inliers: Any, sim: Any, inlier_cap: float, vote_weight: float) -> Any:
    """Confidence of a verified answer in [0.5, 1] (scalars or arrays): inliers (capped) and similarity mixed."""
    return VERIFIED_BASE + 0.5 * ((1 - vote_weight) * np.minimum(inliers, inlier_cap) / inlier_cap
                                  + vote_weight * np.minimum(sim, 1.0))


def threshold_sweep(arrays: CandidateArrays, thresholds: Sequence[float], keep_guesses: bool = True,
                    **params: Any) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`decide_many` for each inlier threshold in turn (the other parameters fixed)."""
    for t in thresholds:
        yield decide_many(arrays, inlier_threshold=t, keep_guesses=keep_guesses, **params)


def decide(evidence: Evidence, inlier_threshold: float = 20, inlier_cap: float = 100, vote_weight: float = 0.5,
           min_margin: float = 1.0, cascade_threshold: float = 40, confidence_model: Any = None) -> Prediction:
    """The answer for one query's evidence: :func:`decide_many` on one row (see the module docstring)."""
    cands = evidence.candidates
    if not cands:
        return Prediction(None, 0.0, 0, False, candidates=cands)
    arrays = CandidateArrays.from_candidates([[asdict(c) for c in cands]])
    column, confidence, verified = decide_many(
        arrays, inlier_threshold, inlier_cap, vote_weight, min_margin, cascade_threshold, confidence_model, keep_guesses=True)
    chosen = cands[int(column[0])]
    matcher = matcher_of(chosen, inlier_threshold, cascade_threshold)
    inliers = chosen.inliers2 if matcher == 2 else chosen.inliers
    if verified[0]:
        return Prediction(chosen.landmark_id, float(confidence[0]), inliers, True, candidates=cands, matcher=matcher)
    return Prediction(None, float(confidence[0]), inliers, False, guess=chosen.landmark_id, candidates=cands,
                      matcher=matcher)


def matcher_of(cand: Candidate, inlier_threshold: float, cascade_threshold: float) -> int:
    """The matcher whose inliers give ``cand`` its score (the larger multiple of that matcher's own threshold; the
    primary on a tie): 1 the primary, 2 the cascade's second, 0 when neither verified it."""
    first = cand.inliers / max(float(inlier_threshold), 1.0) if cand.verified_refs else None
    second = cand.inliers2 / max(float(cascade_threshold), 1.0) if cand.verified_refs2 else None
    if first is None and second is None:
        return 0
    return 2 if second is not None and (first is None or second > first) else 1


def explain(pred: Prediction, params: Mapping[str, Any], matchers: Mapping[int, str],
            label: Any = str) -> str:
    """A verified answer's or a "no landmark"'s evidence in words, quoting the matcher that decided and *its*
    threshold (``params``: the decision parameters; ``matchers``: {1: primary name, 2: second name}; ``label``:
    how a landmark id is written). E.g. ``116 aliked inliers``, ``best guess 3, 6 rootsift inliers < threshold
    12``, or, when a candidate passed a threshold but not the margin, ``best guess 3; 7 has 45 aliked inliers,
    under 1.5x the runner-up's score``."""
    def count(cand: Candidate | None, matcher: int) -> str:
        if cand is None or matcher == 0:
            return "not verified"
        return f"{cand.inliers2 if matcher == 2 else cand.inliers} {matchers.get(matcher, 'local')} inliers"

    t1, t2 = params["inlier_threshold"], params["cascade_threshold"]
    if pred.landmark_id is not None:
        return count(next(c for c in pred.candidates if c.landmark_id == pred.landmark_id), pred.matcher)
    guess = next((c for c in pred.candidates if c.landmark_id == pred.guess), None)
    head = f"best guess {label(pred.guess) if pred.guess is not None else '-'}"
    passing = [c for c in pred.candidates if (c.verified_refs and c.inliers >= t1) or (c.verified_refs2 and c.inliers2 >= t2)]
    if passing:  # a threshold was reached, the margin was not
        score = lambda c: max(c.inliers / max(t1, 1) if c.verified_refs else 0, c.inliers2 / max(t2, 1) if c.verified_refs2 else 0)  # noqa: E731
        best = max(passing, key=score)
        return (f"{head}; {label(best.landmark_id)} has {count(best, matcher_of(best, t1, t2))}, under "
                f"{params['min_margin']:g}x the runner-up's score")
    matcher = matcher_of(guess, t1, t2) if guess is not None else 0
    if matcher == 0:
        return f"{head}, not verified"
    return f"{head}, {count(guess, matcher)} < threshold {t2 if matcher == 2 else t1:g}"


# ----------------------------------------------------------------------------- fitted confidence


CONFIDENCE_FEATURES = ("score", "margin", "sim")


def answer_features(arrays: CandidateArrays, score: np.ndarray, column: np.ndarray) -> np.ndarray:
    """(Q, 3) features of each query's answer in ``column``, each one increasing with the evidence for it:
    ``log1p`` of its score (inliers on one scale), its ``log1p`` score over the runner-up's, its similarity."""
    rows = np.arange(len(column))
    own = np.minimum(score[rows, column], _SCORE_CAP)
    other = np.minimum(runner_up(score, arrays.valid, column), _SCORE_CAP)
    return np.stack([np.log1p(own), np.log1p(own) - np.log1p(other), np.minimum(arrays.sim[rows, column], 1.5)], axis=1)


@dataclass
class ConfidenceModel:
    """A logistic model of "the answer is right" that is monotone in the evidence (no negative weight).

    Fitted by ``tune-threshold`` (``--confidence auto|fitted``) on the answers of a labelled holdout, stored in the index
    manifest (``thresholds.confidence_model``) and used by every command that decides.
    """

    weights: list[float]  # one per CONFIDENCE_FEATURES, >= 0
    bias: float
    features: tuple[str, ...] = CONFIDENCE_FEATURES

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = np.asarray(x, float) @ np.asarray(self.weights, float) + float(self.bias)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def to_json(self) -> dict[str, Any]:
        return {"type": "logistic", "features": list(self.features), "weights": [round(float(w), 6) for w in self.weights],
                "bias": round(float(self.bias), 6)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "ConfidenceModel":
        if obj.get("type") != "logistic" or tuple(obj.get("features", ())) != CONFIDENCE_FEATURES:
            raise ValueError(f"unknown confidence model {dict(obj)!r}; expected a logistic model over {CONFIDENCE_FEATURES}")
        weights = [float(w) for w in obj["weights"]]
        if len(weights) != len(CONFIDENCE_FEATURES) or any(w < 0 or not math.isfinite(w) for w in weights):
            raise ValueError(f"confidence model weights must be {len(CONFIDENCE_FEATURES)} finite numbers >= 0, got {weights}")
        return cls(weights, float(obj["bias"]))

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, c: float = 1.0) -> "ConfidenceModel":
        """Logistic regression (L2, ``c`` as scikit-learn's C) with non-negative weights: a feature whose weight
        comes out negative is dropped and the rest refitted, so the confidence never falls as evidence grows."""
        from sklearn.linear_model import LogisticRegression

        x = np.asarray(x, float)
        y = np.asarray(y, bool)
        if len(np.unique(y)) < 2:
            # one class only: a constant model (its rate), nothing to learn from
            rate = float(np.clip(y.mean() if len(y) else 0.5, 1e-3, 1 - 1e-3))
            return cls([0.0] * x.shape[1], math.log(rate / (1 - rate)))
        active = list(range(x.shape[1]))
        while True:
            lr = LogisticRegression(C=c, max_iter=1000).fit(x[:, active], y)
            w = lr.coef_[0]
            if (w >= 0).all() or not active:
                break
            active.pop(int(np.argmin(w)))
            if not active:
                rate = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
                return cls([0.0] * x.shape[1], math.log(rate / (1 - rate)))
        weights = [0.0] * x.shape[1]
        for j, wj in zip(active, w):
            weights[j] = float(wj)
        return cls(weights, float(lr.intercept_[0]))
