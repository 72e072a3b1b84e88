"""Local-feature retrieval with the aggregated selective match kernel (ASMK*, Tolias, Avrithis & Jegou, ICCV 2013).

The method of the ``asmk`` package (used by HOW and FIRe), on faiss and numpy:

- a codebook of ``n_words`` visual words, k-means on (a sample of) the stored local descriptors;
- per image and visual word, the residuals of the descriptors assigned to the word are summed, L2-normalised
  and binarised (sign bits, packed: 16 bytes for 128-d RootSIFT): one code per (image, word), which is what
  makes ASMK robust to bursts (repetitive facades count once per word, not once per feature);
- the similarity of two images is the sum over the words they share of the selective function
  ``sigma(u) = u ** alpha if u > tau else 0`` of the codes' normalised Hamming similarity
  ``u = 1 - 2 h / d``, divided by ``sqrt(#words)`` of each image (ASMK's normalisation);
- the database side assigns each descriptor to 1 word, the query to its ``query_assign`` nearest (multiple
  assignment, as in ASMK*).

:class:`InvertedFile` holds the codes word by word (an inverted file): a query touches only the lists of its
own words. Scores per image are turned into per-landmark scores by the best image (fair to class size, as the
global vote).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import faiss
import numpy as np

ALPHA, TAU = 3.0, 0.0  # ASMK*'s selective function (the paper's defaults)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def train_codebook(descriptors: np.ndarray, n_words: int, niter: int = 20, seed: int = 0,
                   max_points_per_word: int = 64) -> np.ndarray:
    """(n_words, d) float32 centroids by k-means (faiss) on ``descriptors`` (subsampled to 64 points a word)."""
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    n_words = int(min(n_words, len(x)))
    if n_words < 1:
        raise ValueError("no local descriptors to train a codebook on")
    km = faiss.Kmeans(x.shape[1], n_words, niter=niter, seed=seed, max_points_per_centroid=max_points_per_word,
                      verbose=False)
    km.train(x)
    return km.centroids.astype(np.float32)


# Codebooks larger than this assign descriptors through an HNSW graph over the centroids instead of an exact
# search: the exact search costs n_words x dim flops a descriptor (65,536 words: 8.4 MFLOP, about 12 GFLOP for a
# 1,500-feature photo), the graph a few thousand distance computations, with nearly the same nearest word.
HNSW_FROM_WORDS = 8192
# efSearch 64: 99.96 % of devset-large's RootSIFT get the exact nearest of 65,536 words, 6.5x faster than exact.
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 64


class Codebook:
    """Visual-word assignment: exact L2 search over the centroids, or an HNSW graph over them for codebooks of
    more than ``HNSW_FROM_WORDS`` words (built single-threaded, so the same centroids give the same graph and
    the same assignments wherever it is built; ``graph``: that graph already built, e.g. read from the index,
    where building it costs tens of seconds for 65,536 words)."""

    def __init__(self, centroids: np.ndarray, hnsw: bool | None = None, graph: Any = None):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.dim = self.centroids.shape[1]
        self.code_bytes = (self.dim + 7) // 8
        self.hnsw = len(self.centroids) > HNSW_FROM_WORDS if hnsw is None else bool(hnsw)
        if graph is not None:
            if graph.ntotal != len(self.centroids) or graph.d != self.dim:
                raise ValueError(f"codebook graph of {graph.ntotal} x {graph.d} does not match "
                                 f"{len(self.centroids)} x {self.dim} centroids")
            self._index, self.hnsw = graph, True
            self._index.hnsw.efSearch = HNSW_EF_SEARCH
        elif self.hnsw:
            self._index = faiss.IndexHNSWFlat(self.dim, HNSW_M)
            self._index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            self._index.hnsw.efSearch = HNSW_EF_SEARCH
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)  # a parallel build inserts in a racy order: another graph each time
            try:
                self._index.add(self.centroids)
            finally:
                faiss.omp_set_num_threads(threads)
        else:
            self._index = faiss.IndexFlatL2(self.dim)
            self._index.add(self.centroids)

    def aggregate(self, descriptors: np.ndarray, assign: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """One image's ASMK representation: (words (w,) int32 sorted, codes (w, code_bytes) uint8).

        Each descriptor goes to its ``assign`` nearest words; per word the residuals are summed, normalised
        and binarised. An image without descriptors gives empty arrays.
        """
        x = np.asarray(descriptors, dtype=np.float32).reshape(-1, self.dim)
        words, codes, _ = self.aggregate_many(x, np.array([len(x)]), assign)
        return words, codes

    def aggregate_many(self, descriptors: np.ndarray, counts: np.ndarray, assign: int = 1
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Many images at once (image i has ``counts[i]`` consecutive rows of ``descriptors``): CSR
        (words (m,) int32, codes (m, code_bytes) uint8, offsets (n + 1,) int64), each image's words sorted."""
        x = np.ascontiguousarray(descriptors, dtype=np.float32)
        counts = np.asarray(counts, np.int64)
        n = len(counts)
        if len(x) == 0:
            return np.zeros(0, np.int32), np.zeros((0, self.code_bytes), np.uint8), np.zeros(n + 1, np.int64)
        _, idx = self._index.search(x, int(assign))
        words = idx.reshape(-1).astype(np.int64)
        resid = np.repeat(x, int(assign), axis=0) - self.centroids[words]
        resid /= np.maximum(np.linalg.norm(resid, axis=1, keepdims=True), 1e-12)
        image = np.repeat(np.arange(n, dtype=np.int64), counts * int(assign))
        key = image * len(self.centroids) + words  # one entry per (image, word)
        order = np.argsort(key, kind="stable")
        key = key[order]
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        agg = np.add.reduceat(resid[order], first, axis=0)  # summed residuals per (image, word)
        per_image = np.bincount(key[first] // len(self.centroids), minlength=n)
        offsets = np.concatenate([[0], np.cumsum(per_image)]).astype(np.int64)
        return (key[first] % len(self.centroids)).astype(np.int32), np.packbits(agg > 0, axis=1), offsets


def selective(codes: np.ndarray, q: np.ndarray, dim: int, alpha: float = ALPHA, tau: float = TAU) -> np.ndarray:
    """sigma(u) of each row of ``codes`` (n, b) against one query code ``q`` (b,), u = 1 - 2 hamming / dim."""
    codes, q = np.ascontiguousarray(codes), np.ascontiguousarray(q)
    if codes.shape[1] % 8 == 0 and hasattr(np, "bitwise_count"):  # 64 bits at a time (numpy >= 2): ~10x faster
        x = np.bitwise_xor(codes.view(np.uint64), q.view(np.uint64))
        h = np.bitwise_count(x).sum(axis=1, dtype=np.int32)
    else:
        h = _POPCOUNT[np.bitwise_xor(codes, q)].sum(axis=1, dtype=np.int32)  # Hamming distance
    u = 1.0 - 2.0 * np.arange(dim + 1) / dim  # sigma of every possible Hamming distance: one table look-up each
    return np.where(u > tau, np.abs(u) ** alpha, 0.0)[h]


@dataclass
class InvertedFile:
    """The codes of many images grouped by visual word: ``rows``/``codes`` sorted by word, ``starts`` per word."""

    dim: int
    n_words: int
    rows: np.ndarray  # (M,) image row of each entry (int32 when stored), sorted by word
    codes: np.ndarray  # (M, code_bytes) uint8
    starts: np.ndarray  # (n_words + 1,) int64: entries of word w are [starts[w], starts[w + 1])
    norms: np.ndarray  # (n_images,) float32: 1 / sqrt(#words) of each image (0 for none)

    @classmethod
    def from_images(cls, words: np.ndarray, codes: np.ndarray, offsets: np.ndarray, n_words: int, dim: int) -> "InvertedFile":
        """From images in CSR form: image i has entries ``offsets[i]:offsets[i + 1]`` of ``words``/``codes``."""
        offsets = np.asarray(offsets, np.int64)
        counts = np.diff(offsets)
        rows = np.repeat(np.arange(len(counts), dtype=np.int32), counts)  # int32: rows of one part
        order = np.argsort(words, kind="stable")
        starts = np.searchsorted(np.asarray(words)[order], np.arange(n_words + 1)).astype(np.int64)
        norms = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0).astype(np.float32)
        return cls(dim, n_words, rows[order], np.ascontiguousarray(codes[order]), starts, norms)

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.codes.nbytes + self.starts.nbytes + self.norms.nbytes)

    def scores(self, words: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """(n_images,) ASMK similarity of every image to one query's (words, codes); 0 for no shared word."""
        n = len(self.norms)
        hit_rows, hit_sims = [], []
        for w, q in zip(np.asarray(words), np.asarray(codes)):
            a, b = self.starts[w], self.starts[w + 1]
            if a < b:
                sim = selective(self.codes[a:b], q, self.dim)
                nz = sim > 0  # most pairs fall below tau: keep the accumulation small
                hit_rows.append(self.rows[a:b][nz])
                hit_sims.append(sim[nz])
        scores = (np.bincount(np.concatenate(hit_rows), np.concatenate(hit_sims), minlength=n) if hit_rows
                  else np.zeros(n))
        return scores * self.norms / np.sqrt(max(1, len(words)))

    def search(self, words: np.ndarray, codes: np.ndarray, k: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the ``k`` best images for one query's (words, codes), scores descending."""
        return top_k(self.scores(words, codes), k)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the ``k`` highest positive ``scores``, descending (ties: lower row first)."""
    k = min(int(k), len(scores))
    if k <= 0:
        return np.zeros(0), np.zeros(0, np.int64)
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.lexsort((top, -scores[top]))]
    keep = scores[top] > 0
    return scores[top][keep], top[keep].astype(np.int64)


def landmark_ranking(scores: np.ndarray, rows: np.ndarray, landmarks: Sequence[str]) -> list[tuple[str, float]]:
    """[(landmark, best image score)] in descending order; non-landmark references ("") propose nothing."""
    best: dict[str, float] = {}
    for s, r in zip(scores, rows):
        lm = str(landmarks[int(r)])
        if lm and s > best.get(lm, -1.0):
            best[lm] = float(s)
    return sorted(best.items(), key=lambda t: (-t[1], t[0]))
