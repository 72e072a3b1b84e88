"""ASMK local-feature retrieval stored in the index: a codebook and an inverted file over the stored local set.

An index option (``build-index --asmk``), off by default. The manifest key ``asmk`` names the files::

    "asmk": {"local_set": "primary", "local_conf": {...the primary local conf...}, "dim": 128,
             "n_words": 1024, "requested_words": null, "query_assign": 3,
             "codebook": "asmk/codebook-<random>.h5",
             "trained_on": {"images": 60, "descriptors": 118000},
             "parts": [{"file": "asmk/ivf-000000000-<random>.h5", "start": 0, "rows": 60, "entries": 36600}, ...]}

The codebook (k-means, :func:`index.asmk.train_codebook`) is fitted on a sample of the index's stored primary
local descriptors (the segments' RootSIFT by default). Each part holds the inverted file of the contiguous
rows ``[start, start + rows)``: per row and visual word, the binarised sum of the residuals of its descriptors
(:meth:`index.asmk.Codebook.aggregate_many`), grouped by word::

    attrs    format=1, start, n, n_words, dim
    rows     (m,) int32, row - start of each entry, sorted by word
    codes    (m, dim / 8) uint8, packed sign bits
    starts   (n_words + 1,) int64, entries of word w are [starts[w], starts[w + 1])
    norms    (n,) float32, 1 / sqrt(words of the row) (0: no local features)

Life-cycle (``IndexWriter.commit`` calls :func:`update_for_commit` before it writes the manifest, so the
inverted file is published in the same atomic manifest replacement as the rows it covers): the commit that
first asks for it (``asmk=`` request) trains the codebook and aggregates every row; later commits aggregate
only their new rows with the existing codebook into a new part (incremental, like the segments);
``rebuild`` retrains the codebook for today's collection and rewrites every part (the replaced files are
retired like a replaced FAISS file). Row numbers never change (``compact`` keeps them), so parts stay valid
through compaction. Every file is written under a temp name, fsynced and renamed; a file no manifest names
is garbage for the next writer (:func:`stale_files`).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import faiss_index as fi
from .asmk import Codebook, InvertedFile, top_k, train_codebook
from .hdf5 import _dataset, h5_file, open_h5
from .manifest import IndexFormatError, atomic_output, fsync_dir

logger = logging.getLogger(__name__)

ASMK_KEY = "asmk"
ASMK_DIR = "asmk"
ASMK_FORMAT = 1
MAX_WORDS = 65536  # the codebook size of HOW/FIRe's ASMK on landmark benchmarks
MIN_WORDS = 8
DESCRIPTORS_PER_WORD = 100  # automatic size: about this many stored descriptors per visual word
TRAIN_POINTS_PER_WORD = 64  # k-means sample (faiss's own cap per centroid)
MAX_TRAIN_POINTS = 1_000_000  # at most this many (512 MB of float32 RootSIFT) for the largest codebooks
QUERY_ASSIGN = 3  # a query descriptor goes to its 3 nearest words (ASMK*'s multiple assignment)
AGGREGATE_CHUNK = 200_000  # descriptors aggregated at a time (bounds memory at any collection size)


def auto_words(n_descriptors: int) -> int:
    """Codebook size for a collection: the power of two nearest below ``n / DESCRIPTORS_PER_WORD``, in
    [MIN_WORDS, MAX_WORDS] (1,024 for devset-large's 118k RootSIFT descriptors; 65,536 from 6.6M)."""
    target = max(1.0, n_descriptors / DESCRIPTORS_PER_WORD)
    return int(min(MAX_WORDS, max(MIN_WORDS, 2 ** int(math.floor(math.log2(target))))))


def asmk_request(words: int | None = None) -> dict[str, Any]:
    """What ``build-index --asmk [--asmk-words N]`` asks of a commit: ``{"words": N or None (automatic)}``."""
    if words is not None and int(words) < 1:
        raise ValueError(f"--asmk-words must be >= 1, got {words}")
    return {"words": None if words is None else int(words)}


def asmk_files(manifest: dict) -> list[str]:
    """Files (relative to the index directory) the manifest's ASMK entry names."""
    entry = manifest.get(ASMK_KEY)
    if not entry:
        return []
    return [entry["codebook"]] + ([entry["graph"]] if entry.get("graph") else []) + [p["file"] for p in entry["parts"]]


def stale_files(index_path: Path, manifest: dict, retired: set[str]) -> list[Path]:
    """Files under ``asmk/`` that neither the manifest nor its retired list names (an interrupted writer's)."""
    d = Path(index_path) / ASMK_DIR
    if not d.is_dir():
        return []
    keep = set(asmk_files(manifest)) | retired
    return [p for p in d.iterdir() if p.is_file() and f"{ASMK_DIR}/{p.name}" not in keep]


# --------------------------------------------------------------------------- writing


def _descriptor_blocks(segments: Sequence[Any], a: int, b: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(counts, descriptors float32) of rows [a, b) of the index, in chunks of whole rows (about
    AGGREGATE_CHUNK descriptors each, so memory stays bounded at any collection size)."""
    start = 0
    for seg in segments:
        lo, hi = max(a, start) - start, min(b, start + seg.n) - start  # rows of this segment
        step = max(1, int(AGGREGATE_CHUNK * seg.n / max(1, seg.n_features)))
        for r in range(lo, hi, step):
            block = seg.local_block(r, min(hi, r + step))
            yield block["counts"], np.asarray(block["descriptors"], dtype=np.float32)
        start += seg.n


def _sample_descriptors(segments: Sequence[Any], n_rows: int, n_points: int, seed: int = 0) -> np.ndarray:
    """About ``n_points`` stored descriptors from random rows (all of them when there are fewer)."""
    total = sum(s.n_features for s in segments)
    if total <= n_points:
        return np.concatenate([d for _, d in _descriptor_blocks(segments, 0, n_rows)])
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n_rows, size=min(n_rows, int(n_points * n_rows / total) + 1), replace=False))
    out, start = [], 0
    for seg in segments:
        out += [seg.local(int(r))[1] for r in rows[(rows >= start) & (rows < start + seg.n)] - start]
        start += seg.n
    return np.concatenate(out)


def _write_codebook(index_path: Path, centroids: np.ndarray) -> tuple[str, str | None]:
    """The codebook file, and for a large codebook the file of its HNSW graph (readers load it instead of
    building it); (codebook, graph or None) relative to the index directory."""
    key = uuid.uuid4().hex[:12]
    name = f"{ASMK_DIR}/codebook-{key}.h5"
    final = index_path / name
    final.parent.mkdir(exist_ok=True)
    with atomic_output(final) as tmp:
        with h5_file(tmp, "w") as f:
            f.attrs.update(format=ASMK_FORMAT, n_words=len(centroids), dim=centroids.shape[1])
            f.create_dataset("centroids", data=np.asarray(centroids, np.float32))
    codebook = Codebook(centroids)
    if not codebook.hnsw:
        return name, None
    graph = f"{ASMK_DIR}/codebook-{key}.hnsw"
    fi.write_index(codebook._index, index_path / graph)  # temp name, fsync, rename
    return name, graph


def open_codebook(index_path: Path, entry: dict[str, Any]) -> Codebook:
    """The codebook an ASMK manifest entry names (with its stored HNSW graph, when it has one)."""
    centroids = read_codebook(Path(index_path) / entry["codebook"])
    graph = None
    if entry.get("graph"):
        gpath = Path(index_path) / entry["graph"]
        try:
            graph = fi.read_index(gpath)
        except (RuntimeError, OSError) as e:
            raise IndexFormatError(f"{gpath}: unreadable ASMK codebook graph (truncated or corrupt?): {e}") from e
    return Codebook(centroids, graph=graph)


def _write_part(index_path: Path, codebook: Codebook, segments: Sequence[Any], a: int, b: int) -> dict[str, Any]:
    """Aggregate rows [a, b) with ``codebook`` and write their inverted file as one part; its manifest entry."""
    words, codes, counts = [], [], []
    for c, x in _descriptor_blocks(segments, a, b):
        w, k, off = codebook.aggregate_many(x, c)
        words.append(w)
        codes.append(k)
        counts.append(np.diff(off))
    n_words, dim = len(codebook.centroids), codebook.dim
    counts = np.concatenate(counts) if counts else np.zeros(b - a, np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    words = np.concatenate(words) if words else np.zeros(0, np.int32)
    codes = np.concatenate(codes) if codes else np.zeros((0, codebook.code_bytes), np.uint8)
    ivf = InvertedFile.from_images(words, codes, offsets, n_words, dim)
    name = f"{ASMK_DIR}/ivf-{a:09d}-{uuid.uuid4().hex[:8]}.h5"
    final = index_path / name
    final.parent.mkdir(exist_ok=True)
    with atomic_output(final) as tmp:
        with h5_file(tmp, "w") as f:
            f.attrs.update(format=ASMK_FORMAT, start=a, n=b - a, n_words=n_words, dim=dim)
            f.create_dataset("rows", data=ivf.rows)
            f.create_dataset("codes", data=ivf.codes)
            f.create_dataset("starts", data=ivf.starts)
            f.create_dataset("norms", data=ivf.norms)
    return {"file": name, "start": a, "rows": b - a, "entries": int(len(words))}


def update_for_commit(index_path: Path, manifest: dict, segments: Sequence[Any], local_conf: Any,
                      request: dict[str, Any] | None, rebuild: bool) -> list[str]:
    """Bring ``manifest[ASMK_KEY]`` up to date with the rows of ``segments`` before the manifest is written
    (the caller holds the writer lock and writes the manifest: the commit point). Returns the files it
    replaced (to retire). No-op for an index without the option that does not ask for it.

    Raises:
        ValueError: ASMK is asked for an index that stores no local features.
    """
    entry = manifest.get(ASMK_KEY)
    if entry is None and request is None:
        return []
    n = sum(s.n for s in segments)
    local_dim = manifest.get("local_dim")
    if not local_dim:
        raise ValueError("ASMK (--asmk) needs local features stored in the index: build it with a --local-conf "
                         "that stores them (e.g. rootsift)")
    t0 = time.perf_counter()
    if entry is not None and request is not None and request.get("words") not in (None, entry.get("requested_words")):
        if not rebuild:
            logger.warning("ASMK codebook of %s keeps its %d words (asked for %d): add --rebuild to retrain it",
                           index_path, entry["n_words"], request["words"])
    retired: list[str] = []
    if entry is None or rebuild:
        if n == 0:
            return []
        words_asked = (request or {}).get("words") or (entry or {}).get("requested_words")
        total = sum(s.n_features for s in segments)
        n_words = words_asked or auto_words(total)
        sample = _sample_descriptors(segments, n, min(MAX_TRAIN_POINTS, TRAIN_POINTS_PER_WORD * n_words))
        if len(sample) < n_words:
            n_words = max(1, len(sample))
            logger.warning("ASMK: only %d stored local descriptors: codebook of %d words", len(sample), n_words)
        centroids = train_codebook(sample, n_words)
        retired = asmk_files(manifest)
        codebook_file, graph_file = _write_codebook(index_path, centroids)
        entry = {"local_set": "primary", "local_conf": local_conf, "dim": int(local_dim), "n_words": len(centroids),
                 "requested_words": words_asked, "query_assign": QUERY_ASSIGN,
                 "codebook": codebook_file, "graph": graph_file,
                 "trained_on": {"images": n, "descriptors": int(total)}, "parts": []}
        logger.info("ASMK: codebook of %d words trained on %d of %d stored descriptors in %.1f s", len(centroids),
                    len(sample), total, time.perf_counter() - t0)
    else:
        entry = dict(entry)
        if int(entry["dim"]) != int(local_dim):
            raise IndexFormatError(f"{index_path}: ASMK codebook is {entry['dim']}-d, local features {local_dim}-d")
    covered = sum(int(p["rows"]) for p in entry["parts"])
    if covered < n:
        codebook = open_codebook(index_path, entry)
        part = _write_part(index_path, codebook, segments, covered, n)
        entry["parts"] = list(entry["parts"]) + [part]
        fsync_dir(index_path / ASMK_DIR)
        logger.info("ASMK: rows %d..%d aggregated (%.0f words per image) in %.1f s", covered, n - 1,
                    part["entries"] / max(1, n - covered), time.perf_counter() - t0)
    manifest[ASMK_KEY] = entry
    return retired


# --------------------------------------------------------------------------- reading


def read_codebook(path: Path) -> np.ndarray:
    """The (n_words, dim) float32 centroids of a codebook file."""
    try:
        with open_h5(path) as f:
            return np.asarray(_dataset(f, "centroids", path, 2, np.float32)[()])
    except (KeyError, OSError) as e:
        raise IndexFormatError(f"{path}: unreadable ASMK codebook (truncated or corrupt?): {e}") from e


def _read_part(path: Path, entry: dict[str, Any], n_words: int, dim: int) -> InvertedFile:
    try:
        with open_h5(path) as f:
            if int(f.attrs.get("start", -1)) != int(entry["start"]) or int(f.attrs.get("n", -1)) != int(entry["rows"]):
                raise IndexFormatError(f"{path}: rows {f.attrs.get('start')}+{f.attrs.get('n')} but the manifest "
                                       f"says {entry['start']}+{entry['rows']}")
            ivf = InvertedFile(dim, n_words, np.asarray(f["rows"][()]), np.asarray(f["codes"][()]),
                               np.asarray(f["starts"][()]), np.asarray(f["norms"][()]))
    except (KeyError, OSError) as e:
        raise IndexFormatError(f"{path}: unreadable ASMK inverted file (truncated or corrupt?): {e}") from e
    if len(ivf.starts) != n_words + 1 or len(ivf.norms) != int(entry["rows"]) or len(ivf.rows) != len(ivf.codes):
        raise IndexFormatError(f"{path}: arrays do not match {entry['rows']} rows and {n_words} words")
    return ivf


class AsmkIndex:
    """The ASMK channel of an opened index: its codebook and the inverted files of its parts (in memory)."""

    def __init__(self, index_path: Path, entry: dict[str, Any]):
        self.entry = entry
        self.codebook = open_codebook(index_path, entry)
        n_words, dim = len(self.codebook.centroids), self.codebook.dim
        self.parts = [(int(p["start"]), _read_part(Path(index_path) / p["file"], p, n_words, dim))
                      for p in entry["parts"]]
        self.size = sum(len(ivf.norms) for _, ivf in self.parts)
        self.query_assign = int(entry.get("query_assign", QUERY_ASSIGN))

    @property
    def nbytes(self) -> int:
        """Memory of the inverted files (entries, codes, word starts, row norms)."""
        return sum(ivf.nbytes for _, ivf in self.parts) + self.codebook.centroids.nbytes

    def search(self, descriptors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the ``k`` images most similar to a query's local descriptors, descending."""
        x = np.asarray(descriptors, np.float32).reshape(-1, self.codebook.dim)
        words, codes = self.codebook.aggregate(x, assign=self.query_assign)
        if not len(words) or not self.parts:
            return np.zeros(0), np.zeros(0, np.int64)
        scores = np.concatenate([ivf.scores(words, codes) for _, ivf in self.parts])
        return top_k(scores, k)
