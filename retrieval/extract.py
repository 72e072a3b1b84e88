"""Feature extraction over image files and the ``build-index`` stage.

Decoding runs in DataLoader worker processes so the model never waits on JPEG
decode; a file that cannot be decoded becomes an error item (reported and
skipped), never an exception that stops the job.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from index.local_sets import CASCADE_SET_KEY
from index.reader import IndexReader
from index.shards import ShardBatch
from index.writer import IndexWriter

from .global_model import DEFAULT_GLOBAL, GlobalExtractor, resolve_global_conf, target_size
from .image_io import ImageError, ImageTooLarge, load_image
from .local_features import (
    LocalExtractor,
    LocalFeatures,
    check_secondary_sets,
    detection_size,
    local_confs,
    make_local_extractor,
    split_local_conf,
)
from .registry import outdated_set

logger = logging.getLogger(__name__)

# Local features are computed on the photo downscaled to at most this side; keypoints stay in the pixels
# of the image the extractor detected on (its conf's resize_max applies on top), so geometric thresholds
# do not depend on the file's resolution. DELF, SIFT, ALIKED and XFeat all work at roughly this resolution.
DEFAULT_LOCAL_IMAGE_SIZE = 1024
PCA_FIT_IMAGES = 300  # images whose raw local descriptors fit the local PCA (the first ones by id: deterministic)
PCA_AUX = "local_pca"


def default_workers(device: str = "cpu") -> int:
    """Decoding worker processes for a model on ``device`` (a torch device type).

    On the CPU none: torch already uses every core, and decode processes beside it oversubscribe them
    (benchmarks/bench_extract.py on 2 cores: the build path ran at 1.03x a bare forward pass with decoding in
    the main process, 0.63x with one or two decode workers). With an accelerator the cores are free to decode:
    up to 4 workers, leaving a core for the driver.
    """
    if device == "cpu":
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


@dataclass
class Item:
    """One decoded image: arrays for the global and local extractors, or the reason it failed."""

    index: int
    global_image: np.ndarray | None = None
    local_image: np.ndarray | None = None
    orig_size: tuple[int, int] = (0, 0)
    error: str | None = None
    seconds: float = 0.0
    too_large: bool = False  # the error is the pixel budget (the service answers 413)


class ImageDataset(torch.utils.data.Dataset):
    """Decodes images for the global model (resized; ``global_conf`` None: not at all) and optionally the local
    extractor."""

    def __init__(self, paths: Sequence[str], global_conf: Mapping[str, Any] | None, local_size: int | None = None):
        self.paths = list(paths)
        self.image_size = int(global_conf["image_size"]) if global_conf is not None else None
        self.resize = global_conf["resize"] if global_conf is not None else "longer"
        self.local_size = local_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Item:
        return decode_item(self.paths[i], self.image_size, self.resize, self.local_size, index=i)


def decode_item(path: str | Path, image_size: int | None, resize: str, local_size: int | None, index: int = 0,
                max_pixels: int | None = None) -> Item:
    """Decode one image for the global model (resized) and optionally the local extractor; errors become Item.error.

    ``image_size`` None: the local image alone (secondary local sets of an index, :func:`add_local_sets`).

    The global image is decoded the same way whether or not local features are wanted: JPEG draft decoding
    (DCT scaling) at another size gives other pixels, and a photo must get the same global descriptor from
    `query` (global only) as from `recognize`/`build-index --local-conf ...`. The local image is a second
    decode at its own size (local extraction costs far more than that). ``max_pixels``: the pixel budget
    (None: :func:`retrieval.image_io.max_pixels_budget`).
    """
    start = time.perf_counter()
    try:
        if image_size is None:
            local, orig = load_image(path, max_side=local_size, max_pixels=max_pixels)
            return Item(index, None, local, orig, seconds=time.perf_counter() - start)
        image, orig = load_image(path, max_side=image_size if resize == "longer" else None, max_pixels=max_pixels)
        local = load_image(path, max_side=local_size, max_pixels=max_pixels)[0] if local_size else None
    except ImageError as exc:
        return Item(index, error=str(exc), seconds=time.perf_counter() - start, too_large=isinstance(exc, ImageTooLarge))
    w, h = target_size(image.shape[1], image.shape[0], image_size, resize)
    g = image if (w, h) == (image.shape[1], image.shape[0]) else _resize(image, w, h)
    return Item(index, g, local, orig, seconds=time.perf_counter() - start)


def _resize(image: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    interp = cv2.INTER_AREA if w < image.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp)


def _collate(items: list[Item]) -> list[Item]:
    return items


def iter_batches(
    paths: Sequence[str], global_conf: Mapping[str, Any] | None, local_size: int | None = None,
    batch_size: int = 16, num_workers: int | None = None, device: str = "cpu",
) -> Iterator[list[Item]]:
    """Decoded images in batches, in input order (decoded by worker processes when ``num_workers`` > 0;
    None: :func:`default_workers` for a model on ``device``)."""
    dataset = ImageDataset(paths, global_conf, local_size)
    workers = default_workers(device) if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate,
        prefetch_factor=4 if workers else None,
    )
    yield from loader


@dataclass
class Features:
    """Features of one image: global descriptor and optional local features (detection-pixel keypoints,
    ``local.image_size`` the detection image's (w, h); ``orig_size`` the photo's)."""

    global_desc: np.ndarray
    local: LocalFeatures | None = None
    orig_size: tuple[int, int] = (0, 0)
    timings: dict[str, float] = field(default_factory=dict)
    local_image: np.ndarray | None = None  # the decoded image local features come from (a cascade's second set)


def scale_keypoints(feats: LocalFeatures, size: tuple[int, int], resize_max: int | None = None) -> LocalFeatures:
    """Features with keypoints (and scales) mapped from their detection image to the same image at ``size`` (w, h).

    Extraction keeps keypoints in detection-image pixels (so RANSAC thresholds do not depend on the
    file's resolution); use this to draw them on an image of another size. Features read back from
    an index carry no detection size: it is then derived from ``size`` with the rule the extractor
    applied (:func:`detection_size` of the image at ``size`` with the conf's ``resize_max``), which
    holds when ``size`` is the decoded local image (longer side <= the index's local_image_size).
    """
    return feats.in_frame(size, feats.image_size or detection_size(size[0], size[1], resize_max))


class FeatureExtractor:
    """Global (+ optional local) extraction with the configuration an index was built with."""

    def __init__(
        self, global_conf: str | Mapping[str, Any] = DEFAULT_GLOBAL, local_conf: str | Mapping[str, Any] | None = None,
        device: str | None = None, local_image_size: int = DEFAULT_LOCAL_IMAGE_SIZE,
    ):
        self.global_extractor = GlobalExtractor(global_conf, device=device)
        self.global_conf = self.global_extractor.conf
        self.local_extractor: LocalExtractor | None = None
        if local_conf not in (None, "none"):
            self.local_extractor = make_local_extractor(local_conf, device=device)
        self.local_conf = self.local_extractor.conf if self.local_extractor else None
        self.local_image_size = local_image_size if self.local_extractor else None

    def iter_paths(
        self, paths: Sequence[str], batch_size: int = 16, num_workers: int | None = None, raw_local: bool = False,
    ) -> Iterator[tuple[int, Features | str]]:
        """(position, Features) for each path in order, or (position, error message) for a bad image."""
        for batch in iter_batches(paths, self.global_conf, self.local_image_size, batch_size, num_workers,
                                  self.global_extractor.device.type):
            good = [it for it in batch if it.error is None]
            start = time.perf_counter()
            descs = self.describe_global(good)
            g_time = (time.perf_counter() - start) / max(1, len(good))
            by_index = {it.index: d for it, d in zip(good, descs)}
            for it in batch:
                if it.error is not None:
                    yield it.index, it.error
                    continue
                yield it.index, self.describe_local(it, by_index[it.index], g_time, raw_local=raw_local)

    def decode(self, path: str | Path, local: bool = True, max_pixels: int | None = None) -> Item:
        """Decode one image file as ``iter_paths`` does; raises ImageError for a bad file
        (ImageTooLarge: over ``max_pixels``, None: the process's budget).

        ``local=False`` decodes for the global model alone (the global image is the same either way).
        """
        local_size = self.local_image_size if local else None
        item = decode_item(path, int(self.global_conf["image_size"]), self.global_conf["resize"], local_size,
                           max_pixels=max_pixels)
        if item.error is not None:
            raise (ImageTooLarge if item.too_large else ImageError)(item.error)
        return item

    def describe_global(self, items: Sequence[Item]) -> np.ndarray:
        """(len(items), dim) global descriptors of decoded items, in one batch (images of equal input size together)."""
        if not items:
            return np.zeros((0, self.global_extractor.dim), np.float32)
        return self.global_extractor([it.global_image for it in items])

    def describe_local(self, item: Item, global_desc: np.ndarray, global_seconds: float = 0.0,
                       raw_local: bool = False) -> Features:
        """Features of a decoded item given its global descriptor: local features (if any) added here."""
        timings = {"decode": item.seconds, "global": global_seconds}
        local = None
        if self.local_extractor is not None:
            start = time.perf_counter()
            ex = self.local_extractor.extract_raw if raw_local else self.local_extractor.extract
            local = ex(item.local_image)  # keypoints in detection pixels, with local.image_size
            timings["local"] = time.perf_counter() - start
        return Features(global_desc, local, item.orig_size, timings, item.local_image)

    def describe_image(self, path: str | Path) -> Features:
        """Features of one image file; raises ImageError for a bad file."""
        for _, result in self.iter_paths([str(path)], batch_size=1, num_workers=0):
            if isinstance(result, str):
                raise ImageError(result)
            return result
        raise AssertionError("unreachable")

    def index_config(self) -> dict[str, Any]:
        """The configuration written into the index manifest (compared when an index is reopened)."""
        return {
            "global": self.global_conf,
            "local": self.local_conf,
            "local_image_size": self.local_image_size,
        }

    def prepare_local_pca(self, db: IndexWriter, references: pd.DataFrame, num_workers: int | None = None) -> None:
        """Fit (once per index) or load the PCA whitening of local descriptors stored in the index."""
        lex = self.local_extractor
        if lex is None or not lex.needs_pca:
            return
        stored = db.read_aux(PCA_AUX)
        if stored is not None:
            lex.set_pca(stored)
            return
        sample = references.sort_values("id").head(PCA_FIT_IMAGES)
        logger.info("fitting local PCA (%d dims) on the raw features of %d images", lex.dim, len(sample))
        raw = [
            res.local for _, res in tqdm(
                self.iter_paths(list(sample["path"]), num_workers=num_workers, raw_local=True),
                total=len(sample), desc="local PCA", unit="img", leave=False,
            )
            if not isinstance(res, str) and res.local is not None and len(res.local)
        ]
        if not raw:
            raise ValueError("no local features could be extracted from the first images to fit the PCA")
        arrays = lex.fit_pca(raw)
        db.write_aux(PCA_AUX, arrays)
        lex.set_pca(arrays)

    @classmethod
    def for_index(cls, db: IndexReader, device: str | None = None, need_local: bool = True) -> "FeatureExtractor":
        """The extractor an index was built with (global and, when stored, local + its PCA)."""
        config = db.manifest["config"]
        local_conf = config.get("local") if need_local else None
        fx = cls(config["global"], local_conf, device=device,
                 local_image_size=config.get("local_image_size") or DEFAULT_LOCAL_IMAGE_SIZE)
        if fx.local_extractor is not None and fx.local_extractor.needs_pca:
            stored = db.read_aux(PCA_AUX)
            if stored is None:
                raise ValueError(f"{db.path}: the index has no fitted local PCA ({PCA_AUX}); rebuild it with build-index")
            fx.local_extractor.set_pca(stored)
        return fx


def local_set_extractors(db: IndexReader, device: str | None = None) -> dict[str, LocalExtractor]:
    """{name: extractor} for the secondary local sets of an index, built from the confs stored with them.

    A query's features for a set come from the same decoded local image as the primary set's
    (``FeatureExtractor.decode(path).local_image``): ``extractor.extract(item.local_image)``.
    """
    return {name: make_local_extractor(conf, device=device) for name, conf in db.local_sets().items()}


def resolve_local_conf_name(name: str | None) -> str | None:
    """Validate a --local-conf name of one local feature set ("none" = no local features)."""
    primary, secondary = split_local_conf(name)
    if secondary:
        raise ValueError(f"--local-conf {name!r} names several local feature sets; here only one is used "
                         f"(e.g. {primary!r})")
    return primary


def conf_label(conf: Any, confs: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """A short name for a (stored) configuration: its name in ``confs`` (default: the local ones) when it is one."""
    confs = local_confs if confs is None else confs
    if not isinstance(conf, Mapping):
        return "none" if conf is None else str(conf)
    if conf.get("name"):
        return str(conf["name"])
    named = [n for n, c in confs.items() if c.get("output") and c.get("output") == conf.get("output")]
    return named[0] if named else str(conf.get("output") or conf.get("extractor") or conf.get("model"))


def confs_for_index(
    index_dir: str | Path, global_conf: str | None = None, local_conf: str | None = None, **global_overrides: Any,
) -> tuple[dict[str, Any], Any, list[str]]:
    """(global conf, primary local conf, secondary local set names) to build or extend ``index_dir`` with.

    What is given is resolved as asked (``global_overrides``: weights, image_size, resize; None = not
    given; ``local_conf`` may name several sets, e.g. "rootsift+xfeat"). What is not given (None) is taken
    from the existing index, so that adding images to it or rebuilding it needs no option repeated (its
    secondary sets are extended with the new rows by :func:`main` anyway); for a new index it is the default.
    An explicit option that differs from the index is still refused when the index is opened
    (ConfigMismatchError).
    """
    from index.reader import IndexReader

    from .defaults import DEFAULT_LOCAL
    from .global_model import global_confs

    stored = IndexReader.read_manifest(index_dir)["config"] if IndexReader.exists(index_dir) else None
    taken = []
    if global_conf is None and stored is not None and stored.get("global"):
        gconf = resolve_global_conf(stored["global"], **global_overrides)
        taken.append(f"global {conf_label(stored['global'], global_confs)}")
    else:
        base: str | dict[str, Any] = global_conf or DEFAULT_GLOBAL
        weights = global_overrides.get("weights")
        if global_conf is None and weights not in (None, "auto", "timm", "random") and Path(weights).is_file():
            from .training.checkpoint import checkpoint_global_conf

            # --weights runs/g1/model.pt alone: the configuration that checkpoint was trained with
            base = checkpoint_global_conf(weights) or base
        gconf = resolve_global_conf(base, **global_overrides)
    secondary: list[str] = []
    if local_conf is None and stored is not None:
        lconf = stored.get("local")  # the stored conf itself (None: the index stores no local features)
        taken.append(f"local {conf_label(lconf, local_confs)}")
    else:
        lconf, secondary = split_local_conf(DEFAULT_LOCAL if local_conf is None else local_conf)
    if taken:
        logger.info("using %s's configuration: %s", index_dir, ", ".join(taken))
    return gconf, lconf, secondary


def main(
    references: pd.DataFrame,
    index_dir: str | Path,
    global_conf: str | Mapping[str, Any] = DEFAULT_GLOBAL,
    local_conf: str | Mapping[str, Any] | None = None,
    device: str | None = None,
    batch_size: int = 16,
    num_workers: int | None = None,
    shard_size: int = 256,
    shard_seconds: float = 60.0,
    factory: str | None = None,
    nprobe: int | None = None,
    progress: bool = True,
    rebuild: bool = False,
    write_shards: ShardWriter | None = None,
    extractor: FeatureExtractor | None = None,
    local_sets: Sequence[str] = (),
    asmk: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build or extend the index at ``index_dir`` from a reference table (id, landmark_id, path).

    Ids already stored are skipped, so a rerun after an interruption resumes and a
    rerun with more rows adds them (incremental add). Extracted features are written
    as a shard every ``shard_size`` images or ``shard_seconds`` seconds, whichever
    comes first, so a kill loses at most that much work. ``rebuild`` retrains the FAISS index from the
    stored descriptors even when it could be extended. Holds the index's writer lock for the whole run
    (a second writer gets IndexLockedError naming this process). Returns build statistics.

    ``write_shards``: what extracts the images still to do and writes them as shards of the index (a
    :data:`ShardWriter`); None: :func:`write_shards_here`, in this process. Another engine plugs in here
    (:func:`engines.build_index` with ``engine="ray"``: Ray actors write the shards); everything around it
    (labels, resume, PCA, commit) is this function's, so resuming, skipping and labels behave the same.
    ``extractor``: an already built FeatureExtractor to use instead of ``global_conf``/``local_conf``/``device``
    (benchmarks: no model load).

    ``local_sets``: secondary local feature sets (:data:`~retrieval.local_features.local_confs` names) to store
    beside the primary ``local_conf``; after the build they are extracted by :func:`add_local_sets` for every
    row that lacks them, together with the sets the index already holds (so new rows get every set). Stats of
    that pass under ``"local_sets"``. The first of them is recorded in the manifest (``"cascade_set"``) as the
    set the cascade's second matcher uses (``--cascade auto``).

    ``asmk``: add the ASMK inverted file over the stored primary local features (``build-index --asmk``;
    :func:`index.asmk_store.asmk_request`); an index that has it extends it with every commit regardless.
    """
    check_secondary_sets(local_sets)
    start = time.perf_counter()
    index_dir = Path(index_dir)
    if isinstance(global_conf, str):
        global_conf = resolve_global_conf(global_conf)
    fx = extractor or FeatureExtractor(global_conf, local_conf, device=device)
    if asmk is not None and fx.local_extractor is None:
        raise ValueError("--asmk needs local features stored in the index: give a --local-conf that stores them "
                         "(e.g. rootsift), not 'none'")
    db = IndexWriter.create_or_open(index_dir, fx.index_config(), fx.global_extractor.dim)
    held = [name for name in db.local_sets() if name not in local_sets]
    if held:
        logger.info("index %s also holds local set(s) %s: new rows get them too", index_dir, ", ".join(held))
    # Secondary extractors before the build: a requested set stored with another conf is refused before any
    # work; a set the index holds but was not named is extended with its stored conf.
    stored = db.local_sets()
    set_extractors = {}
    for name in local_sets:
        outdated = outdated_set(name, stored[name]) if name in stored else None
        if outdated:  # new rows must match the rows already stored, so the set keeps its stored settings
            logger.warning("%s; new rows are extracted with the stored settings", outdated)
        set_extractors[name] = make_local_extractor(stored[name] if outdated else name, device=device)
    set_extractors.update({name: make_local_extractor(db.local_sets()[name], device=device) for name in held})
    for name, lex in set_extractors.items():
        db.check_local_set(name, lex.conf, lex.dim)
    # One writer at a time: hold the index's writer lock for the whole run, so that a second build-index
    # (or tune-threshold) on this index is refused at once, naming this process. Queries keep working.
    with db.writer_lock(what="build-index"):
        job = ShardJob(batch_size, num_workers, shard_size, shard_seconds, progress)
        stats = _build(db, fx, references, index_dir, job, factory, nprobe, rebuild, write_shards or write_shards_here,
                       asmk)
        if local_sets and db.manifest.get(CASCADE_SET_KEY) != local_sets[0]:
            # what --cascade auto verifies with: the set named second in the last --local-conf A+B
            db.update_manifest(**{CASCADE_SET_KEY: local_sets[0]})
    db.close()
    if set_extractors:
        if write_shards is not None:
            logger.info("local set(s) %s: extracted in this process (the %s engine ran the primary build)",
                        ", ".join(set_extractors), getattr(write_shards, "name", "other"))
        stats["local_sets"] = add_local_sets(index_dir, list(set_extractors), batch_size=batch_size,
                                             num_workers=num_workers, progress=progress, extractors=set_extractors)
    stats["seconds_total"] = round(time.perf_counter() - start, 2)
    return stats


def add_local_sets(
    index_dir: str | Path,
    names: Sequence[str],
    device: str | None = None,
    batch_size: int = 16,
    num_workers: int | None = None,
    part_size: int = 256,
    part_seconds: float = 60.0,
    progress: bool = True,
    extractors: Mapping[str, LocalExtractor] | None = None,
) -> dict[str, dict[str, Any]]:
    """Extract secondary local feature sets ``names`` for every committed row of the index that lacks them.

    Rows are read from the stored image paths in row order and decoded as the primary set is (the photo at
    the index's ``local_image_size``; keypoints in detection pixels). A part is published every ``part_size``
    rows or ``part_seconds`` seconds, so a kill loses at most one part and a rerun resumes at the first
    missing row. An image that cannot be read is logged and stored with no features and size (0, 0), so it
    is not retried at every run. Holds the index's writer lock throughout. ``extractors``: already built
    extractors by name (else built here on ``device``).

    Returns:
        {name: {"rows_extracted", "failed", "rows_total", "seconds", "seconds_per_image",
        "extract_seconds_per_image", "features_per_image", "bytes_per_image", "parts"}}.
    """
    from index.local_sets import LOCAL_SETS_KEY, bytes_per_image

    check_secondary_sets(names)
    if part_size < 1:
        raise ValueError(f"part_size must be >= 1, got {part_size}")
    index_dir = Path(index_dir)
    db = IndexWriter.open_for_write(index_dir)
    try:
        out = {}
        with db.writer_lock(what="add local sets"):
            for name in names:
                lex = (extractors or {}).get(name) or make_local_extractor(name, device=device)
                stats = _add_local_set(db, name, lex, batch_size, num_workers, part_size, part_seconds, progress)
                entry = db.manifest[LOCAL_SETS_KEY].get(name)
                if entry is not None:
                    covered = sum(int(p["rows"]) for p in entry["parts"])
                    stats.update(bytes_per_image=round(bytes_per_image(entry), 1), parts=len(entry["parts"]),
                                 features_per_image=round(sum(int(p["features"]) for p in entry["parts"])
                                                          / max(1, covered), 1))
                out[name] = stats
                logger.info("local set %s: %d rows extracted (%d unreadable) in %.1f s, %s bytes per image", name,
                            stats["rows_extracted"], stats["failed"], stats["seconds"], stats.get("bytes_per_image"))
        return out
    finally:
        db.close()


def _add_local_set(db: IndexWriter, name: str, lex: LocalExtractor, batch_size: int, num_workers: int | None,
                   part_size: int, part_seconds: float, progress: bool) -> dict[str, Any]:
    """The body of :func:`add_local_sets` for one set (the caller holds the writer lock)."""
    t0 = time.perf_counter()
    db.check_local_set(name, lex.conf, lex.dim)
    rows = db.missing_local_rows(name)
    if name in db.local_sets():
        logger.info("local set %s of %s: %d of %d rows to extract", name, db.path, len(rows), db.size)
    else:
        logger.info("adding local set %s to %s: %d rows to extract (conf %s)", name, db.path, len(rows), lex.conf)
    stats: dict[str, Any] = {"rows_extracted": 0, "failed": 0, "rows_total": db.size}
    if not len(rows):
        stats.update(seconds=0.0, seconds_per_image=0.0, extract_seconds_per_image=0.0)
        return stats
    local_size = db.manifest["config"].get("local_image_size") or DEFAULT_LOCAL_IMAGE_SIZE
    paths = [str(p) for p in db.column("path")[rows]]
    buffer: dict[str, list] = {"kp": [], "desc": [], "sizes": []}
    first = [0]  # row of buffer[...][0]
    last_flush = [time.perf_counter()]
    extract_seconds = 0.0

    def flush() -> None:
        last_flush[0] = time.perf_counter()
        if buffer["kp"]:
            db.write_local_part(name, lex.conf, first[0], buffer["kp"], buffer["desc"],
                                np.asarray(buffer["sizes"], np.int32).reshape(-1, 2))
        for v in buffer.values():
            v.clear()

    device_type = getattr(getattr(lex, "device", None), "type", "cpu")
    bar = tqdm(total=len(rows), desc=f"local set {name}", unit="img",
               disable=not progress or bool(os.environ.get("TQDM_DISABLE")))
    for batch in iter_batches(paths, None, local_size, batch_size, num_workers, device_type):
        for it in batch:
            row = int(rows[it.index])
            if buffer["kp"] and row != first[0] + len(buffer["kp"]):
                flush()  # a part holds back-to-back rows
            if not buffer["kp"]:
                first[0] = row
            if it.error is not None:
                logger.warning("local set %s: row %d (%s) unreadable, stored without features: %s", name, row,
                               paths[it.index], it.error)
                feats = LocalFeatures.empty(lex.dim)
                stats["failed"] += 1
            else:
                start = time.perf_counter()
                feats = lex.extract(it.local_image)  # keypoints in detection pixels, with feats.image_size
                extract_seconds += time.perf_counter() - start
            kp, desc = feats.pack()
            buffer["kp"].append(kp)
            buffer["desc"].append(desc)
            buffer["sizes"].append(feats.image_size or (0, 0))
            stats["rows_extracted"] += 1
            bar.update(1)
            if len(buffer["kp"]) >= part_size or time.perf_counter() - last_flush[0] >= part_seconds:
                flush()
    flush()
    bar.close()
    seconds = time.perf_counter() - t0
    n = stats["rows_extracted"]
    stats.update(seconds=round(seconds, 2), seconds_per_image=round(seconds / n, 4),
                 extract_seconds_per_image=round(extract_seconds / max(1, n - stats["failed"]), 4))
    if stats["failed"]:
        logger.warning("local set %s: %d images could not be read (stored without features)", name, stats["failed"])
    return stats


@dataclass
class ShardJob:
    """How the images still to do are extracted and cut into shards (the build's options)."""

    batch_size: int = 16
    num_workers: int | None = None  # decoding worker processes (None: default_workers for the device)
    shard_size: int = 256  # images per shard (at most)
    shard_seconds: float = 60.0  # a shard at least this often (in-process writer)
    progress: bool = True


# A shard writer extracts the rows of ``todo`` (id, landmark_id, path; positions 0..n-1) with ``fx`` and writes
# them as shards of ``db`` (``db.write_shard``, or workers' ``index.writer.write_worker_shard``), recording
# unreadable images with ``db.record_skipped``. Called under the writer lock; returns at least
# {"extracted": n, "skipped": n}, plus statistics of its own.
ShardWriter = Callable[[IndexWriter, FeatureExtractor, pd.DataFrame, ShardJob], dict]


def shard_columns(results: Sequence[Features], with_local: bool) -> dict[str, Any]:
    """The arrays one shard stores for ``results`` (``IndexWriter.write_shard`` keyword arguments but ids)."""
    out: dict[str, Any] = {"xb": np.stack([r.global_desc for r in results])}
    if with_local:
        packed = [r.local.pack() for r in results]
        out["local_keypoints"] = [kp for kp, _ in packed]
        out["local_descriptors"] = [desc for _, desc in packed]
        # the detection image's (w, h): LightGlue normalises keypoints by it, show-matches draws with it
        out["local_sizes"] = np.asarray([r.local.image_size or (0, 0) for r in results], np.int32).reshape(-1, 2)
    return out


def write_shards_here(db: IndexWriter, fx: FeatureExtractor, todo: pd.DataFrame, job: ShardJob) -> dict[str, Any]:
    """The local engine's :data:`ShardWriter`: extract in this process, a shard every ``shard_size`` images
    or ``shard_seconds`` seconds, whichever comes first (a kill loses at most that much work)."""
    buffer: dict[str, list] = {"ids": [], "landmarks": [], "paths": [], "results": []}
    n_skipped = n_done = 0
    last_flush = [time.perf_counter()]

    def flush() -> None:
        last_flush[0] = time.perf_counter()
        if not buffer["ids"]:
            return
        db.write_shard(ShardBatch(buffer["ids"], buffer["landmarks"], buffer["paths"],
                                  **shard_columns(buffer["results"], fx.local_extractor is not None)))
        for v in buffer.values():
            v.clear()

    bar = tqdm(total=len(todo), desc="extract", unit="img",
               disable=not job.progress or bool(os.environ.get("TQDM_DISABLE")))
    for pos, result in fx.iter_paths(list(todo["path"]), job.batch_size, job.num_workers):
        row = todo.iloc[pos]
        bar.update(1)
        if isinstance(result, str):
            n_skipped += 1
            logger.warning("skipped %s: %s", row["id"], result)
            db.record_skipped(row["id"], row["path"], result)
            continue
        buffer["ids"].append(row["id"])
        buffer["landmarks"].append(row["landmark_id"])
        buffer["paths"].append(row["path"])
        buffer["results"].append(result)
        n_done += 1
        if len(buffer["ids"]) >= job.shard_size or time.perf_counter() - last_flush[0] >= job.shard_seconds:
            flush()
    flush()
    bar.close()
    return {"extracted": n_done, "skipped": n_skipped}


def _build(
    db: IndexWriter, fx: FeatureExtractor, references: pd.DataFrame, index_dir: Path, job: ShardJob,
    factory: str | None, nprobe: int | None, rebuild: bool, write_shards: ShardWriter,
    asmk: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The body of :func:`main`, run under the index's writer lock."""
    # Labels of stored images (committed or in shards of an interrupted run) cannot change by a rerun:
    # refuse instead of silently keeping the old ones.
    stored = pd.Series(db.stored_labels_for(references["id"]), dtype=object)  # committed rows + pending shards
    both = references[references["id"].isin(stored.index)]
    changed = both[both["landmark_id"].to_numpy() != stored.loc[both["id"]].to_numpy()]
    if len(changed):
        first = changed.iloc[0]
        raise ValueError(
            f"{len(changed)} images are already indexed with another landmark_id, e.g. {first['id']!r}: "
            f"index has {stored.loc[first['id']]!r}, the CSV says {first['landmark_id']!r}; "
            "labels of indexed images cannot change: build a new index"
        )
    todo = references[~references["id"].isin(stored.index)].reset_index(drop=True)
    logger.info(
        "index %s: %d references, %d already stored, %d to extract (global %s, local %s)",
        index_dir, len(references), len(references) - len(todo), len(todo),
        fx.global_conf.get("name", fx.global_conf["model"]), (fx.local_conf or {}).get("output") or (fx.local_conf or {}).get("extractor", "none"),
    )
    fx.prepare_local_pca(db, references, job.num_workers)
    report = write_shards(db, fx, todo, job) if len(todo) else {"extracted": 0, "skipped": 0}
    n_done, n_skipped = report["extracted"], report["skipped"]
    if not n_done and stored.empty and db.size == 0:
        db.flush_skipped()
        raise ValueError(
            f"no image could be indexed ({n_skipped} of {len(references)} skipped); reasons in {index_dir / 'skipped.csv'}"
        )
    stats = db.commit(factory=factory, nprobe=nprobe, rebuild=rebuild, asmk=asmk)
    stats.update(report)
    stats.update(already_stored=len(references) - len(todo), index=str(index_dir))
    if n_skipped:
        logger.warning("%d images could not be used; see %s", n_skipped, index_dir / "skipped.csv")
    return stats
