"""The recognition service behind the HTTP API (:class:`RecognitionService`): one loaded index, a bounded worker
pool, global batching.

Everything here is synchronous and thread-safe; ``service.app`` runs it off the
event loop. Recognition is the same Python API as the CLI
(``Recognizer.evidence`` + ``Recognizer.decide`` on ``FeatureExtractor``
features, ``Prediction.to_json``); the engine only adds

- a :class:`GlobalBatcher`: the global model runs on the images of concurrent
  requests in one batch (whatever is waiting, no added delay when idle);
- a snapshot (:class:`IndexSnapshot`) of the index that :meth:`RecognitionService.reload` replaces
  atomically: a request keeps the snapshot it started with, and a replaced snapshot is
  closed when its last request ends; the models are shared while the configuration holds;
- caches of recent answers (plain data for their match pictures: the query's features without its decoded
  image, a small JPEG of it) and of thumbnails, each bounded in bytes (``answer_cache_mb``, ``THUMB_CACHE_MB``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import os
import queue
import tempfile
import threading
import time
import uuid
import weakref
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import cv2
import numpy as np

from index.names import load_names, with_names
from index.reader import IndexReader
from index.manifest import package_version
from retrieval.cache import LRU
from retrieval.extract import PCA_AUX, FeatureExtractor, Features, Item
from retrieval.image_io import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, ImageError, ImageTooLarge, load_image, resize_max_side
from retrieval.neighbours import neighbours_table
from retrieval.recognize import Evidence, Prediction, Recognizer

logger = logging.getLogger(__name__)

THUMB_SIDE = 256  # longer side of reference thumbnails
THUMB_CACHE_MB = 16.0  # thumbnails kept (a 256-px JPEG is 5-20 kB: about a thousand)
QUERY_KEEP_SIDE = 480  # the query is kept at this size for its match picture (visualize.PANEL_SIDE)
QUERY_KEEP_QUALITY = 90  # ... as a JPEG of this quality (~40 kB instead of ~0.5 MB of pixels)
ANSWERS_KEPT = 128  # most answers kept, whatever their size (the byte bound usually binds first)
MAX_K = 1000  # neighbours per /neighbours request
MAX_RESULT_K = 100  # neighbours an answer keeps for /results


class BadImage(ValueError):
    """An upload that is not a usable image (the message names the upload, never a server path)."""

    status = 400  # the HTTP status it is answered with


class TooManyPixels(BadImage):
    """An upload over the pixel budget (``serve --max-pixels``), refused from its header before decoding."""

    status = 413


class UnknownResult(KeyError):
    """A request id that is unknown or expired from the answer cache."""


class GlobalBatcher:
    """Runs ``FeatureExtractor.describe_global`` for concurrent callers in shared batches.

    A caller blocks in :meth:`describe` while one thread takes the first waiting
    item and every other item already queued (up to ``max_batch``) and describes
    them together. Nothing waits for a batch to fill: a lone request is described
    at once. Items of different extractors (before and after a reload) are never mixed.
    """

    def __init__(self, max_batch: int = 8):
        self.max_batch = max(1, int(max_batch))
        self._queue: queue.Queue = queue.Queue()
        self.batches = 0
        self.items = 0
        self.sizes: Counter[int] = Counter()  # batches by number of images
        self._thread = threading.Thread(target=self._run, name="global-batcher", daemon=True)
        self._thread.start()

    def describe(self, fx: FeatureExtractor, item: Item) -> tuple[np.ndarray, float]:
        """(global descriptor, seconds of model time per image of its batch) of one decoded item."""
        fut: Future = Future()
        self._queue.put((fx, item, fut))
        return fut.result()

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            by_fx: dict[int, list] = {}
            for entry in batch:
                by_fx.setdefault(id(entry[0]), []).append(entry)
            for group in by_fx.values():
                fx = group[0][0]
                start = time.perf_counter()
                try:
                    descs = fx.describe_global([e[1] for e in group])
                except BaseException as exc:  # noqa: BLE001 - handed to each waiting caller, which raises it
                    for e in group:
                        e[2].set_exception(exc)
                    continue
                per_image = (time.perf_counter() - start) / len(group)
                self.batches += 1
                self.items += len(group)
                self.sizes[len(group)] += 1
                for e, d in zip(group, descs):
                    e[2].set_result((d, per_image))


class IndexSnapshot:
    """One snapshot of the index and its recogniser; replaced whole by a reload.

    Requests hold it through :meth:`RecognitionService.snapshot` (a reference count). A reload retires the
    old snapshot; it is closed (its index files released) once its last request has finished,
    so memory and the disk space of segments removed by ``compact`` do not outlive a reload.
    """

    def __init__(self, rec: Recognizer, index_dir: Path, generation: int, models_key: str,
                 names: Mapping[str, str] | None = None):
        self.rec = rec
        self.names = dict(names or {})  # landmark names stored with the index (index.names); {} when none
        self.index_dir = index_dir
        self.generation = generation
        self.models_key = models_key  # answers drawn later need the same models (see RecognitionService.matches_png)
        self.loaded_at = time.time()
        self._users = 0
        self._retired = False
        self.closed = False
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """Count one more request on this snapshot; False once it is closed (the caller takes the new one)."""
        with self._lock:
            if self.closed:
                return False
            self._users += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._retired and self._users == 0
        if last:
            self._close()

    def retire(self) -> None:
        """Replaced by a reload: close now if idle, else when the last request releases it."""
        with self._lock:
            self._retired = True
            idle = self._users == 0
        if idle:
            self._close()

    def _close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        self.rec.db.close()
        logger.info("closed index snapshot %d of %s", self.generation, self.index_dir)

    def rows_of(self, ids: list[str]) -> np.ndarray:
        """Row numbers of reference ids (-1 when not in the index): a hash lookup, no table in memory."""
        return self.rec.db.find_rows(ids)


@dataclass
class Answer:
    """What a recognize answer keeps for its match picture and neighbour list: plain data, no snapshot.

    The neighbour table is read at answer time; the match picture is drawn later with whatever
    snapshot is then current, from the reference ids in ``evidence`` (references since removed are
    left out), as long as that snapshot's models are the ones that described the query.
    """

    name: str
    generation: int  # the snapshot the answer was computed on
    models_key: str  # its models (IndexSnapshot.models_key)
    features: Features  # the query's global descriptor and local features (numpy arrays; no decoded image)
    evidence: Evidence  # reference ids, landmark ids and scores
    pred: Prediction
    neighbours: list[dict[str, Any]]  # the nearest references as ``query --json`` rows (at most MAX_RESULT_K)
    query_jpeg: bytes  # the query downscaled to QUERY_KEEP_SIDE, JPEG-encoded (decoded when a picture is drawn)
    orig_size: tuple[int, int]
    names: Mapping[str, str] = field(default_factory=dict)  # the snapshot's landmark names ({} when none)
    pngs: dict[int, bytes] = field(default_factory=dict)  # match pictures drawn, by number of candidates
    lock: threading.Lock = field(default_factory=threading.Lock)


def answer_bytes(ans: Answer) -> int:
    """What an answer costs the cache: its arrays, its pictures, and its tables (about 3x their JSON size in
    Python objects). The cache's byte bound counts this."""
    f = ans.features
    arrays = f.global_desc.nbytes + (0 if f.local is None else sum(
        a.nbytes for a in (f.local.keypoints, f.local.scales, f.local.scores, f.local.descriptors)))
    tables = len(json.dumps(ans.neighbours, default=str)) + 200 * (len(ans.evidence.neighbours) + len(ans.evidence.candidates))
    return arrays + len(ans.query_jpeg) + sum(len(p) for p in ans.pngs.values()) + 3 * tables + 4096


def clean_name(name: str | None) -> str:
    """The upload's file name as shown in answers: base name only, printable, bounded."""
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    base = "".join(ch for ch in base if ch.isprintable())[:200]
    return base or "upload"


class RecognitionService:
    """Loads an index once and answers recognise / neighbours / match-picture / thumbnail requests."""

    def __init__(self, index_dir: str | Path, device: str | None = None, overrides: Mapping[str, Any] | None = None,
                 max_batch: int | None = None, answers_kept: int = ANSWERS_KEPT, answer_cache_mb: float = 64.0,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        """``max_batch``: images the global model describes together; None = 8 on a GPU, 1 (no batching) on CPU.
        ``max_pixels``: the pixel budget of an upload (larger ones are refused from the header: TooManyPixels).
        ``answer_cache_mb``: bytes of recent answers kept (:func:`answer_bytes`), at most ``answers_kept`` of them.

        On CPU a batch is slower per image than single images (measured with lite0 at 384 px on
        one thread: 9.5 img/s one at a time, 5 img/s in batches of 4), so there each worker thread
        runs the model itself, in parallel; an accelerator gains from batches.
        """
        self.index_dir = Path(index_dir).resolve()
        self.device = device
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        self.max_pixels = int(max_pixels)
        self.answer_cache_mb = float(answer_cache_mb)
        self.answers: LRU[str, Answer] = LRU(max_items=answers_kept, max_bytes=int(self.answer_cache_mb * 2**20),
                                             sizeof=answer_bytes)
        self.thumbs: LRU[str, bytes] = LRU(max_bytes=int(THUMB_CACHE_MB * 2**20), sizeof=len)
        self._reload_lock = threading.Lock()
        self.reloads = 0
        self.models_loaded = 0  # times the models were built (1 + reloads that changed the configuration)
        self._models: tuple[str, FeatureExtractor] | None = None  # (models_key, extractor) shared by snapshots
        self._snapshots: weakref.WeakSet[IndexSnapshot] = weakref.WeakSet()  # every snapshot still in memory
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="landmarks-serve-"))
        self.state = self._load(generation=0)
        if max_batch is None:
            max_batch = 1 if self.state.rec.fx.global_extractor.device.type == "cpu" else 8
        self.batcher = GlobalBatcher(max_batch) if max_batch > 1 else None
        self._direct = [0]  # global descriptors computed without the batcher

    # ------------------------------------------------------------------ loading

    def _models_key(self, db: IndexReader) -> str:
        """What the models depend on: the index's configurations, its fitted local PCA, the device."""
        config = db.manifest["config"]
        h = hashlib.sha256(json.dumps([config, self.device], sort_keys=True, default=str).encode())
        if isinstance(config.get("local"), Mapping):
            for name, arr in sorted((db.read_aux(PCA_AUX) or {}).items()):
                h.update(name.encode())
                h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]

    def _load(self, generation: int) -> IndexSnapshot:
        start = time.perf_counter()
        overrides = dict(self.overrides)
        match_conf = overrides.pop("match_conf", None)
        db = IndexReader.open(self.index_dir)
        try:
            if db.size == 0:
                raise ValueError(f"{self.index_dir}: the index is empty (build it with build-index)")
            key = self._models_key(db)
            if self._models is not None and self._models[0] == key:
                fx = self._models[1]  # same configuration: the loaded models serve the new snapshot too
            else:
                fx = FeatureExtractor.for_index(db, device=self.device, need_local=True)
                self.models_loaded += 1
            rec = Recognizer(db, fx, overrides, match_conf=match_conf, device=self.device)
            # Warm up what is built lazily (the FAISS search index) before any request sees it.
            db.search(np.ones((1, db.dim), np.float32), 1)
        except BaseException:
            db.close()
            raise
        self._models = (key, fx)
        logger.info("loaded index %s (%d images, index_id %s) in %.1f s", self.index_dir, db.size,
                    db.manifest.get("index_id"), time.perf_counter() - start)
        state = IndexSnapshot(rec, self.index_dir, generation, key, names=load_names(db))
        self._snapshots.add(state)
        return state

    def reload(self) -> dict[str, Any]:
        """Reopen the index (e.g. after build-index added images or tune-threshold changed the manifest).

        The new snapshot replaces the old one in a single assignment: requests in flight finish
        on the snapshot they started with, and the old snapshot is closed when the last of them
        ends. The models are kept when the index's configuration is unchanged. On failure the
        old snapshot is kept and the error raised. Concurrent calls are serialised.
        """
        with self._reload_lock:
            old = self.state
            new = self._load(old.generation + 1)
            self.state = new
            self.reloads += 1
            self.thumbs.clear()  # image paths may have changed
            old.retire()
        return {"reloaded": True, "previous_index_id": old.rec.db.manifest.get("index_id"), **self.health()}

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[IndexSnapshot]:
        """The current snapshot, held open for the duration of a request."""
        while True:
            state = self.state
            if state.acquire():
                break
            # closed by a reload between reading self.state and acquiring it: the new one is in self.state
        try:
            yield state
        finally:
            state.release()

    def live_snapshots(self) -> int:
        """Snapshots still in memory (the current one plus those finishing their requests; 1 when idle)."""
        gc.collect()
        return len(self._snapshots)

    def open_snapshots(self) -> int:
        """Snapshots whose index files are still open."""
        return sum(not s.closed for s in list(self._snapshots))

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        for p in self.tmp_dir.glob("*"):
            p.unlink(missing_ok=True)
        try:
            self.tmp_dir.rmdir()
        except OSError:
            pass

    # ------------------------------------------------------------------ info

    def limits_json(self) -> dict[str, float]:
        """The engine's own bounds, as /health states them beside the service's limits."""
        return {"max_pixels": self.max_pixels, "answer_cache_mb": self.answer_cache_mb,
                "answers_kept_max": self.answers.max_items or 0, "thumbnail_cache_mb": THUMB_CACHE_MB}

    def cache_json(self) -> dict[str, float]:
        """What the caches hold now (answers and thumbnails: entries and MB)."""
        return {"answers": len(self.answers), "answers_mb": round(self.answers.bytes / 2**20, 3),
                "thumbnails": len(self.thumbs), "thumbnails_mb": round(self.thumbs.bytes / 2**20, 3)}

    def health(self) -> dict[str, Any]:
        with self.snapshot() as state:
            rec, db = state.rec, state.rec.db
            manifest = db.manifest
            return {
                "status": "ok",
                "version": package_version(),
                "index": str(state.index_dir),
                "index_id": manifest.get("index_id"),
                "index_updated": manifest.get("updated"),
                "images": db.size,
                "landmarks": manifest.get("counts", {}).get("landmarks"),
                "configs": {
                    "global": manifest["config"].get("global"),
                    "local": manifest["config"].get("local") or {"on_demand": rec.conf["on_demand_local"]},
                    "recognition": rec.conf,
                    "faiss": manifest.get("faiss"),
                },
                "inlier_threshold": rec.conf["inlier_threshold"],
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.loaded_at)),
                "reloads": self.reloads,
                "open_snapshots": self.open_snapshots(),
                "caches": self.cache_json(),
                "global_batches": {
                    "max_batch": self.batcher.max_batch if self.batcher else 1,
                    "batches": (self.batcher.batches if self.batcher else 0) + self._direct[0],
                    "images": (self.batcher.items if self.batcher else 0) + self._direct[0],
                    "largest": max(self.batcher.sizes, default=0) if self.batcher else min(self._direct[0], 1),
                },
            }

    # ------------------------------------------------------------------ requests (blocking; run in the pool)

    def _decode(self, state: IndexSnapshot, data: bytes, name: str, local: bool = True) -> Item:
        """Decode uploaded bytes exactly as the CLI decodes a file (``FeatureExtractor.decode``)."""
        if not data:
            raise BadImage(f"{name}: empty file (0 bytes)")
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, suffix=".upload")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            try:
                enlarged = enlarge_tiny(Path(tmp), self.max_pixels)
                item = state.rec.fx.decode(tmp, local=local, max_pixels=self.max_pixels)
                if enlarged is not None:
                    item.enlarged_from = enlarged  # type: ignore[attr-defined]
                return item
            except ImageTooLarge as exc:
                raise TooManyPixels(str(exc).replace(tmp, name)) from None
            except ImageError as exc:
                raise BadImage(str(exc).replace(tmp, name)) from None
        finally:
            Path(tmp).unlink(missing_ok=True)

    def features(self, state: IndexSnapshot, data: bytes, name: str, local: bool = True) -> tuple[Item, Features]:
        """Decode, global descriptor (batched with concurrent requests) and local features of one upload."""
        fx = state.rec.fx
        item = self._decode(state, data, name, local)
        if self.batcher is not None:
            desc, g_time = self.batcher.describe(fx, item)
        else:
            start = time.perf_counter()
            desc = fx.describe_global([item])[0]
            g_time = time.perf_counter() - start
            self._direct[0] += 1
        if not local:
            return item, Features(desc, None, item.orig_size, {"decode": item.seconds, "global": g_time})
        return item, fx.describe_local(item, desc, g_time)

    def recognize(self, data: bytes, name: str | None) -> tuple[str, dict[str, Any]]:
        """(request id, the JSON of ``recognize --json``) for one uploaded image. Raises BadImage."""
        name = clean_name(name)
        with self.snapshot() as state:
            rec = state.rec
            item, features = self.features(state, data, name)
            evidence, timings = rec.evidence(features)
            pred = rec.decide(evidence)
            pred.timings = {**features.timings, **timings}
            top = evidence.neighbours[:MAX_RESULT_K]
            rows = state.rows_of([n[0] for n in top]).astype(np.int64)
            table = neighbours_table(rec.db, np.array([n[2] for n in top], np.float32), rows)
            generation, models_key = state.generation, state.models_key
        rid = uuid.uuid4().hex[:16]
        keep = resize_max_side(item.local_image if item.local_image is not None else item.global_image, QUERY_KEEP_SIDE)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(keep, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, QUERY_KEEP_QUALITY])
        # the decoded photo (up to 1024 px, megabytes) is not kept: the match picture needs only the features
        kept = dataclasses.replace(features, local_image=None)
        answer = pred.to_json(name)
        # the names of this answer's landmarks only: a snapshot's whole table (200k GLDv2 names) kept alive by
        # cached answers across reloads would escape the cache's byte bound
        names = {lm: state.names[lm] for lm in _landmark_ids([answer, table]) if lm in state.names}
        self.answers.put(rid, Answer(name, generation, models_key, kept, evidence, pred, table,
                                     jpeg.tobytes() if ok else b"", item.orig_size, names=names))
        return rid, _enlarged(_named(answer, state.names), item)

    def neighbours(self, data: bytes, name: str | None, k: int = 10) -> dict[str, Any]:
        """The JSON of ``query --json`` for one uploaded image. Raises BadImage."""
        name = clean_name(name)
        with self.snapshot() as state:
            db = state.rec.db
            item, features = self.features(state, data, name, local=False)
            D, I = db.search(features.global_desc[None].astype(np.float32), min(int(k), db.size))
            return _enlarged(_named({"image": name, "neighbours": neighbours_table(db, D[0], I[0])}, state.names), item)

    def answer(self, rid: str) -> Answer:
        ans = self.answers.get(rid)
        if ans is None:
            raise UnknownResult(rid)
        return ans

    def result(self, rid: str, k: int = 12) -> dict[str, Any]:
        """A recent recognize answer with its nearest references (as ``query --json`` rows)."""
        ans = self.answer(rid)
        return _named({
            "request_id": rid,
            "recognition": ans.pred.to_json(ans.name),
            "neighbours": ans.neighbours[:k],
            "matches": f"/matches/{rid}.png",
        }, ans.names)

    def matches_png(self, rid: str, candidates: int = 3) -> bytes:
        """The match picture of a recent recognize answer: the rendering of ``show-matches``, drawn once.

        Drawn with the current snapshot (references are found by id). Raises UnknownResult when the
        answer expired, or when a reload changed the models, so that the query's features no longer
        compare with the references'.
        """
        from retrieval import visualize

        ans = self.answer(rid)
        with ans.lock:
            if candidates not in ans.pngs:
                with self.snapshot() as state:
                    if state.models_key != ans.models_key:
                        raise UnknownResult(rid)
                    evidence = ans.evidence if state.generation == ans.generation else _still_indexed(state, ans.evidence)
                    query = cv2.imdecode(np.frombuffer(ans.query_jpeg, np.uint8), cv2.IMREAD_COLOR)
                    if query is None:
                        raise RuntimeError("the kept query picture does not decode")
                    sheet = visualize.render(state.rec, ans.name, cv2.cvtColor(query, cv2.COLOR_BGR2RGB), ans.features,
                                             evidence, ans.pred, max_candidates=candidates, names=state.names)
                ok, buf = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
                if not ok:
                    raise RuntimeError("PNG encoding failed")
                ans.pngs[candidates] = buf.tobytes()
                if rid in self.answers:
                    self.answers.put(rid, ans)  # counted again with its picture (may push older answers out)
            return ans.pngs[candidates]

    def thumbnail(self, ref_id: str) -> bytes | None:
        """A JPEG thumbnail of the reference image ``ref_id`` (looked up in the index; None when unknown)."""
        with self.snapshot() as state:
            row = int(state.rows_of([ref_id])[0])
            if row < 0:
                return None
            key = f"{state.generation}:{row}"
            cached = self.thumbs.get(key)
            if cached is not None:
                return cached
            path = state.rec.db.column("path")[row]
        try:
            image, _ = load_image(path, max_side=THUMB_SIDE)
        except ImageError as exc:
            logger.warning("thumbnail of %s: %s", ref_id, exc)
            return None
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        data = buf.tobytes() if ok else None
        if data is not None:
            self.thumbs.put(key, data)
        return data


def enlarge_tiny(path: Path, max_pixels: int, min_side: int = DEFAULT_MIN_SIDE) -> tuple[int, int] | None:
    """Enlarge the image file at ``path`` in place (nearest neighbour) when its shorter side is under ``min_side``.

    The OpenAPI document accepts any image, so a 1 x 1 PNG is answered (almost surely "no landmark") instead of
    refused as the CLI refuses a file too small to describe. Returns its (w, h) before, or None when nothing
    was done (large enough, over the pixel budget, or unreadable: the decoder then says why).
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            w, h = im.size
            if min(w, h) >= min_side or min(w, h) < 1 or w * h > max_pixels:
                return None
            scale = -(-min_side // min(w, h))  # ceil
            if w * h * scale * scale > max_pixels:
                return None
            im = ImageOps.exif_transpose(im).convert("RGB")
            big = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
            orig = (im.width, im.height)
        big.save(path, "PNG")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    logger.info("upload of %dx%d px enlarged %dx to reach %d px", orig[0], orig[1], scale, min_side)
    return orig


def _enlarged(answer: dict[str, Any], item: Item) -> dict[str, Any]:
    """``answer`` with ``enlarged_from: [w, h]`` when the upload was enlarged before recognition (enlarge_tiny)."""
    size = getattr(item, "enlarged_from", None)
    return {**answer, "enlarged_from": list(size)} if size else answer


def _landmark_ids(obj: Any) -> set[str]:
    """Every ``landmark_id`` value in a JSON-like answer."""
    if isinstance(obj, list):
        return set().union(*(_landmark_ids(x) for x in obj)) if obj else set()
    if not isinstance(obj, dict):
        return set()
    found = {obj["landmark_id"]} if isinstance(obj.get("landmark_id"), str) else set()
    return found.union(*(_landmark_ids(v) for v in obj.values() if isinstance(v, (dict, list))))


def _named(answer: dict[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """``answer`` with ``landmark_name`` beside every ``landmark_id`` when the index has names, as the CLI's JSON."""
    return with_names(answer, names) if names else answer


def _still_indexed(state: IndexSnapshot, evidence: Evidence) -> Evidence:
    """``evidence`` without the references a later snapshot no longer holds (removed by a rebuild or compact)."""
    ids = sorted({n[0] for n in evidence.neighbours} | {c.best_match_id for c in evidence.candidates if c.best_match_id})
    present = {i for i, r in zip(ids, state.rows_of(ids)) if r >= 0}
    return Evidence(
        [n for n in evidence.neighbours if n[0] in present],
        [c if c.best_match_id in present or c.best_match_id is None else dataclasses.replace(c, best_match_id=None)
         for c in evidence.candidates],
        evidence.discount,
    )
