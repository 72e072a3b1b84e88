"""The data set writer: :func:`generate_demo_dataset` writes landmark views and distractors in
Google-Landmarks-v2 form (``images/<id>.jpg``, ``train.csv``, ``holdout.csv``, ``id,landmark_id``)
plus ``dataset.json``, and reuses a complete folder made with the same parameters.

Every image draws from its own random stream derived from ``(seed, role, index)``, so images do
not depend on generation order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from index.manifest import atomic_output

from .distractors import make_distractor
from .facades import build_landmark
from .primitives import int_between
from .views import render_view

logger = logging.getLogger(__name__)

#: Bumped whenever the images produced for given parameters change.
GENERATOR_VERSION = 1
#: The generator's name in dataset.json: the module that held it when version 1 was made (kept so
#: that the same parameters still give byte-identical files).
GENERATOR_NAME = "synthetic.photos"
_ID_RE = re.compile(r"^[0-9a-f]{16}\.jpg$")
_MAX_TILT = 0.6  # ~34 degrees out of plane


@dataclass
class DemoDataset:
    """A generated synthetic dataset in GLDv2 form."""

    root: Path
    images_dir: Path
    train_csv: Path
    holdout_csv: Path
    n_landmarks: int
    n_unseen_landmarks: int = 0
    n_train: int = 0
    n_holdout: int = 0
    n_distractor_refs: int = 0
    n_distractor_queries: int = 0
    one_shot_landmarks: tuple[int, ...] = ()
    unseen_landmarks: tuple[int, ...] = ()
    seed: int = 0
    image_size: int = 384
    params: dict = field(default_factory=dict)


def _stream(seed: int, *key) -> np.random.Generator:
    """Independent random stream for (seed, *key)."""
    digest = hashlib.sha256(repr((int(seed),) + tuple(key)).encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest[:16], "little")))


def _image_id(seed: int, *key) -> str:
    """Stable 16-hex-digit image id for (seed, *key)."""
    return hashlib.sha256(("synthetic-gldv2|" + repr((int(seed),) + tuple(key))).encode()).hexdigest()[:16]


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_output(path, keep_suffix=True) as tmp:
        tmp.write_bytes(data)


def _save_jpeg(path: Path, img: np.ndarray, quality: int) -> None:
    with atomic_output(path, keep_suffix=True) as tmp:
        Image.fromarray(img, "RGB").save(tmp, format="JPEG", quality=int(quality))


def _csv_bytes(rows: list[tuple[str, int | None]]) -> bytes:
    """GLDv2 CSV ``id,landmark_id``; a non-landmark row has an empty landmark_id."""
    lines = ["id,landmark_id"] + [f"{i},{'' if lid is None else lid}" for i, lid in rows]
    return ("\n".join(lines) + "\n").encode()


def _read_ids(path: Path) -> list[str]:
    """Image ids listed in a CSV written by :func:`_csv_bytes`."""
    lines = path.read_text().splitlines()
    return [ln.split(",", 1)[0] for ln in lines[1:] if ln]


def _dataset_from_meta(root: Path, meta: dict) -> DemoDataset:
    """The :class:`DemoDataset` that a dataset.json describes."""
    p, c = meta["params"], meta["counts"]
    return DemoDataset(
        root=root, images_dir=root / "images", train_csv=root / "train.csv", holdout_csv=root / "holdout.csv",
        n_landmarks=int(p["n_landmarks"]), n_unseen_landmarks=int(p["n_unseen_landmarks"]),
        n_train=int(c["n_train"]), n_holdout=int(c["n_holdout"]),
        n_distractor_refs=int(p["n_distractor_refs"]), n_distractor_queries=int(p["n_distractor_queries"]),
        one_shot_landmarks=tuple(meta["one_shot_landmarks"]), unseen_landmarks=tuple(meta["unseen_landmarks"]),
        seed=int(p["seed"]), image_size=int(p["image_size"]), params=dict(p),
    )


class _ImageWriter:
    """Writes ``images/<id>.jpg`` under unique ids, at a JPEG quality drawn from the image's own stream."""

    def __init__(self, images_dir: Path, seed: int):
        self.images_dir = images_dir
        self.seed = seed
        self.seen_ids: set[str] = set()

    def write(self, img: np.ndarray, rng: np.random.Generator, *key) -> str:
        """Save ``img`` under the id of ``key`` (salted on the rare collision); returns the id."""
        salt = 0
        iid = _image_id(self.seed, *key)
        while iid in self.seen_ids:
            salt += 1
            iid = _image_id(self.seed, *key, salt)
        self.seen_ids.add(iid)
        _save_jpeg(self.images_dir / f"{iid}.jpg", img, int_between(rng, 60, 95))
        return iid


def _existing_dataset(root: Path, params: dict, overwrite: bool) -> DemoDataset | None:
    """The complete dataset already in ``root`` made with ``params``, or None when it must be (re)generated.

    Raises ValueError (unless ``overwrite``) when ``root`` holds a dataset made with other
    parameters or CSVs that this generator did not write.
    """
    meta_path = root / "dataset.json"
    if meta_path.exists() and not overwrite:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{root}: unreadable dataset.json ({exc}); pass overwrite=True to regenerate") from None
        if meta.get("params") != params:
            raise ValueError(
                f"{root} already holds a synthetic dataset made with different parameters "
                f"({meta.get('params')} != {params}); pass overwrite=True or use another folder")
        complete = (meta.get("version") == GENERATOR_VERSION and (root / "train.csv").exists()
                    and (root / "holdout.csv").exists())
        if complete:
            ids = _read_ids(root / "train.csv") + _read_ids(root / "holdout.csv")
            complete = all((root / "images" / f"{i}.jpg").exists() for i in ids)
        if complete:
            logger.info("reusing synthetic dataset in %s (%d train, %d holdout)", root,
                        meta["counts"]["n_train"], meta["counts"]["n_holdout"])
            return _dataset_from_meta(root, meta)
        logger.info("synthetic dataset in %s is incomplete or stale; regenerating", root)
    elif not overwrite and ((root / "train.csv").exists() or (root / "holdout.csv").exists()):
        raise ValueError(f"{root} holds train.csv/holdout.csv not made by this generator (no dataset.json); "
                         "pass overwrite=True or use another folder")
    return None


def _plan_references(seed: int, n_landmarks: int, lo: int, hi: int) -> tuple[list[int], list[int]]:
    """(one-shot landmarks, reference count per landmark): when the range ``lo..hi`` allows 1, about a
    quarter (at least one; all when hi is 1) get a single reference, the others a count in ``max(lo, 2)..hi``."""
    plan = _stream(seed, "plan")
    n_one = 0
    if lo == 1 and n_landmarks > 0:
        n_one = n_landmarks if hi == 1 else max(1, int(round(n_landmarks / 4)))
    one_shot = sorted(int(i) for i in plan.choice(n_landmarks, n_one, replace=False)) if n_one else []
    n_refs = []
    for lid in range(n_landmarks):
        n_refs.append(1 if lid in one_shot else int(plan.integers(max(lo, 2), hi + 1)) if hi >= 2 else lo)
    return one_shot, n_refs


def generate_demo_dataset(
    out_dir: Path | str,
    n_landmarks: int = 24,
    refs_per_landmark: tuple[int, int] = (1, 5),
    queries_per_landmark: int = 1,
    n_distractor_refs: int = 10,
    n_distractor_queries: int = 20,
    n_unseen_landmarks: int = 0,
    image_size: int = 384,
    seed: int = 0,
    overwrite: bool = False,
) -> DemoDataset:
    """Generate (or reuse) a synthetic GLDv2-style dataset in ``out_dir``.

    Writes ``images/<id>.jpg``, ``train.csv`` (references: landmark views and
    ``n_distractor_refs`` non-landmark photos), ``holdout.csv`` (queries:
    ``queries_per_landmark`` new views per landmark, views of
    ``n_unseen_landmarks`` landmarks absent from train.csv, and
    ``n_distractor_queries`` non-landmark photos) and, last, ``dataset.json``.
    Landmarks ``0..n_landmarks-1`` have references (each gets a count in the
    inclusive ``refs_per_landmark`` range; about a quarter get exactly one when
    the range allows it); unseen landmarks are numbered after them.

    A folder holding a complete dataset made with the same parameters is
    reused as is unless ``overwrite``; a folder made with other parameters (or
    holding other CSVs) raises ``ValueError`` unless ``overwrite``.
    """
    t0 = time.perf_counter()
    lo, hi = (int(v) for v in refs_per_landmark)
    if n_landmarks < 0 or n_unseen_landmarks < 0 or n_distractor_refs < 0 or n_distractor_queries < 0:
        raise ValueError("counts must be >= 0")
    if not 1 <= lo <= hi:
        raise ValueError(f"refs_per_landmark must satisfy 1 <= lo <= hi, got {refs_per_landmark}")
    if queries_per_landmark < 0:
        raise ValueError("queries_per_landmark must be >= 0")
    if image_size < 64:
        raise ValueError("image_size must be >= 64")
    root = Path(out_dir)
    params = {
        "n_landmarks": int(n_landmarks), "refs_per_landmark": [lo, hi],
        "queries_per_landmark": int(queries_per_landmark), "n_distractor_refs": int(n_distractor_refs),
        "n_distractor_queries": int(n_distractor_queries), "n_unseen_landmarks": int(n_unseen_landmarks),
        "image_size": int(image_size), "seed": int(seed),
    }
    existing = _existing_dataset(root, params, overwrite)
    if existing is not None:
        return existing

    # --- (re)generate
    meta_path = root / "dataset.json"
    images_dir = root / "images"
    root.mkdir(parents=True, exist_ok=True)
    if meta_path.exists():
        meta_path.unlink()  # never leave a stale completeness marker behind
    if overwrite and images_dir.is_dir():
        for p in images_dir.iterdir():
            if _ID_RE.match(p.name):
                p.unlink()
    images_dir.mkdir(exist_ok=True)

    one_shot, n_refs = _plan_references(seed, n_landmarks, lo, hi)
    unseen = list(range(n_landmarks, n_landmarks + n_unseen_landmarks))
    facade_size = int(max(256, round(image_size * 4 / 3)))
    writer = _ImageWriter(images_dir, seed)
    train_rows: list[tuple[str, int | None]] = []
    holdout_rows: list[tuple[str, int | None]] = []
    for lid in range(n_landmarks + n_unseen_landmarks):
        lm = build_landmark(_stream(seed, "landmark", lid), facade_size)
        nr = n_refs[lid] if lid < n_landmarks else 0
        nq = queries_per_landmark if lid < n_landmarks else max(1, queries_per_landmark)
        for role, count, rows in (("ref", nr, train_rows), ("query", nq, holdout_rows)):
            for j in range(count):
                rng = _stream(seed, role, lid, j)
                img, _ = render_view(lm.front, rng, image_size, _MAX_TILT, occlusion=True, side=lm.side)
                rows.append((writer.write(img, rng, role, lid, j), lid))
    for role, count, rows in (("distractor-ref", n_distractor_refs, train_rows),
                              ("distractor-query", n_distractor_queries, holdout_rows)):
        for j in range(count):
            rng = _stream(seed, role, j)
            rows.append((writer.write(make_distractor(rng, image_size), rng, role, j), None))

    order = _stream(seed, "order")
    train_rows = [train_rows[i] for i in order.permutation(len(train_rows))]
    holdout_rows = [holdout_rows[i] for i in order.permutation(len(holdout_rows))]
    _write_atomic(root / "train.csv", _csv_bytes(train_rows))
    _write_atomic(root / "holdout.csv", _csv_bytes(holdout_rows))
    meta = {
        "generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "params": params,
        "counts": {"n_train": len(train_rows), "n_holdout": len(holdout_rows),
                   "n_images": len(train_rows) + len(holdout_rows),
                   "n_landmark_refs": int(sum(n_refs)),
                   "n_landmark_queries": len(holdout_rows) - n_distractor_queries,
                   "n_one_shot": len(one_shot)},
        "one_shot_landmarks": one_shot, "unseen_landmarks": unseen,
    }
    _write_atomic(meta_path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    dt = time.perf_counter() - t0
    logger.info("generated synthetic dataset in %s: %d landmarks (%d one-shot) + %d unseen, %d train, %d holdout "
                "images (%d+%d distractors) in %.1fs", root, n_landmarks, len(one_shot), n_unseen_landmarks,
                len(train_rows), len(holdout_rows), n_distractor_refs, n_distractor_queries, dt)
    return _dataset_from_meta(root, meta)
