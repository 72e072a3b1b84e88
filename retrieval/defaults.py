"""The shipped defaults, in one place and importable without torch (the CLI shows them in ``--help``).

Recognition defaults were chosen on real photos with ``benchmarks/bench_real.py`` and
``benchmarks/bench_local.py`` (docs/figures.md), not on generated ones. The defaults calibrated for
each kind of local features (each matcher has its own inlier scale and cost per pair) are part of that local
configuration's entry in :mod:`retrieval.registry`; they apply over :data:`DEFAULT_RECOGNITION_CONF`.
"""
from __future__ import annotations

from typing import Any

DEFAULT_GLOBAL = "lite2-gem"  # global configuration of build-index (retrieval.global_model.global_confs)
# Local features build-index stores (a name in retrieval.registry): RootSIFT verifies every candidate, ALIKED +
# LightGlue (640 px, 1024 keypoints) the first 3 candidates of a query it leaves unresolved. Chosen on devset-large
# (benchmarks/bench_second.py, bench_cascade.py): no wrong verified answer at any depth up to 10 pairs at 640 px,
# and 3 pairs are the most that keep recognize at <= 1.5 s a photo at 1024 px on 2 cores (docs/figures.md).
DEFAULT_LOCAL = "rootsift+aliked"

DEFAULT_RECOGNITION_CONF: dict[str, Any] = {
    "k": 50,  # neighbours taken from the (exactly re-scored) global search
    # Per-landmark score that ranks the candidates. "best": the landmark's best neighbour similarity
    # (fair to class size: in GLDv2 a landmark has 1 to hundreds of images, and a sum over many
    # neighbours is a size prior, not evidence); "top2": mean of its two best (a missing second counts 0);
    # "sum": the old sum of max(sim - discount, 0) ** alpha over its neighbours. Measured on real photos
    # (benchmarks/bench_real.py): "best" ranks the true landmark first far more often.
    "candidate_score": "best",
    "alpha": 3.0,  # exponent of a neighbour's weight in the "sum" score
    # Training-free re-ranking of the global neighbours before the vote (retrieval.global_rerank): "none", "qe"
    # (alpha query expansion: the query averaged with its first global_rerank_k neighbours, searched again) or
    # "superglobal" (the k neighbours re-scored SuperGlobal-style, each refined with its own nearest ones among
    # them). Measured on real photos with benchmarks/bench_shortlist.py (docs/recognition.md#the-shortlist).
    "global_rerank": "none",
    "global_rerank_k": 1,  # neighbours that refine a descriptor (small: one- and two-image landmarks are common)
    "num_candidates": 10,  # C: landmarks verified per query, in score order
    # The ASMK channel (an index option, build-index --asmk): up to this many landmarks that ASMK's local-feature
    # retrieval ranks first and the global vote did not propose are appended to the C candidates (0: the channel
    # off). Appending never moves a global candidate (retrieval/asmk_channel.py); no effect on an index without it.
    "asmk_candidates": 3,
    "refs_per_candidate": 2,  # R: best-ranked images of a candidate verified (all first images before any second)
    "max_verifications": 20,  # total verification pairs per query
    "inlier_threshold": 20,  # below this many inliers the answer is "no landmark" (tuned value lives in the manifest)
    # A verified answer needs this many times the inliers of the best other candidate (1: off). Learned
    # matchers give wrong pairs of repetitive facades many inliers, but the true landmark has more.
    "min_margin": 1.0,
    # Early exit: stop verifying once a pair reaches this many inliers (None: verify every planned pair). Off:
    # a facade verified first with many inliers would hide a true landmark further down from the margin rule,
    # and the saving is small (most real queries show no landmark and never reach it). evaluate and predict
    # apply the same value, so they decide on the same evidence.
    "confirm_inliers": None,
    "inlier_cap": 100,  # inliers above this add no confidence
    "vote_weight": 0.5,  # w: share of similarity (vs inliers) in a verified confidence
    # Subtract from every similarity the mean similarity of the query to its `distractor_k` nearest
    # non-landmark references (GLR 2020 winner's discount), searched among all of them, not only among the
    # k neighbours (that made it jump when one moved from rank k+1 to k). Off by default: see docs/recognition.md.
    "distractor_discount": False,
    "distractor_k": 3,
    "on_demand_local": "rootsift",  # local features extracted on demand when the index stores none
    "cache_mb": 256,  # memory for reference features extracted on demand (LRU; about 1,000 RootSIFT images)
    # The matcher cascade (retrieval.recognize): a learned second matcher verifies what the primary one leaves
    # unresolved. "auto": the index's secondary local set (build-index --local-conf rootsift+xfeat), if any;
    # "none"; or a local conf name (reference features then extracted on demand: slow, for experiments).
    "cascade": "auto",
    "cascade_pairs": 5,  # budget: second-matcher pairs per query (one image of each of the first candidates)
    "cascade_threshold": 40,  # the second matcher's inlier threshold (its scale; see retrieval.registry, as_second)
    # The primary matcher resolves a query (no second stage) when its best candidate has this many inliers and
    # this many times the runner-up's. Per first matcher (its scale) in retrieval.registry: these are RootSIFT's,
    # whose wrong pairs of real photos stay at <= 10 inliers. Never looser than the decision: raised to
    # inlier_threshold / min_margin when those are higher (retrieval.recognize.resolve_recognition_conf).
    "cascade_resolve_inliers": 20,
    "cascade_resolve_margin": 2.0,
    # A fitted confidence (tune-threshold writes one into the manifest when it beats the bands in cross-validation); None: the bands.
    "confidence_model": None,
}

