"""FAISS parameter choice, build (train + add in chunks), exact re-scoring, and index file I/O.

Metric: inner product on L2-normalised vectors, i.e. cosine similarity. The
vectors handed to these functions must already be L2-normalised (the database
normalises them before storing them as float16).

Life-cycle (as in faiss ``benchs/bench_all_ivf``): choose parameters from the
collection size, train on a seeded random sample, add in chunks, save the CPU
index; later additions are ``add``-ed to the trained index without retraining.

Parameter rules (:func:`choose_params`):

* ``n < FLAT_MAX_N`` (10,000): exact ``IndexFlatIP``. PQ with 8-bit codes trains
  256 centroids per sub-quantizer and faiss' k-means wants >= 39 points per
  centroid, so about 39 * 256 = 9,984 training vectors are needed before PQ
  codebooks are meaningful; below that, exact search is also cheap
  (10k x 1280 x 4 B = 51 MB, about a millisecond per query with BLAS).
* Otherwise IVF-PQ. ``nlist`` is the largest power of two
  <= min(4 * sqrt(n), n / 39): every list must get >= 39 points to train, and
  2..4 * sqrt(n) lists (2,048 at 1M) keep the cost of training and of
  assigning every vector to a list within a few minutes on 2 CPU cores at a
  million vectors (16 * sqrt(n) lists cost 4x that in k-means and assignment
  for a smaller scan per probe, which the exact re-score does not need).
* Descriptors wider than ``PCA_DIM`` (256) are reduced first by a PCA with a
  random rotation (``PCAR256``, trained on the same sample): k-means and list
  assignment run in 256 dimensions (5x cheaper than 1280), the rotation
  balances variance across PQ sub-quantizers, and the exact re-score from the
  stored full-width descriptors restores the ranking. GeM/CNN descriptors have
  a low intrinsic dimension, so 256 components keep the nearest neighbours in
  the shortlist.
* PQ: ``m`` = the largest divisor of the (reduced) dim <= min(64, dim // 4), 8 bits
  each, so a vector costs m bytes (64 for the usual 256..2048-d descriptors; at
  most dim / 4 so each sub-quantizer sees >= 4 dimensions: 2-d sub-quantizers add
  little accuracy and make PQ training several times slower). When ``dim`` has
  no divisor >= 3/4 of that target (e.g. a prime dimension <= 256), an OPQ rotation
  to ``4 * m`` dimensions is prepended: ``OPQ{m}_{4m},IVF{nlist},PQ{m}``.
* The same ``m`` bytes are spent as ``2m`` sub-quantizers of 4 bits in faiss' SIMD "fast scan" layout
  (``PQ{2m}x4fsr``, residuals encoded, as the 8-bit PQ does) when the index is built on the CPU: its lookup
  tables fit in registers, so scanning a list is several times faster than 8-bit PQ (at 10M, 8,192 lists,
  32 probes: 8,100 vs 2,500 queries/s on 2 cores) and the shortlist holds the true neighbour as often (0.993
  vs 0.984); the exact re-score restores the ranking. faiss-gpu has no fast-scan index, so a build on the GPU
  keeps ``PQ{m}`` (8 bits).
* Coarse quantizer training: a flat k-means costs ``ntrain * nlist`` distances per iteration (524k x 8,192 at
  10M: 221 s on 2 cores); from ``TWO_LEVEL_MIN_NLIST`` (4,096) lists it is two-level (:func:`two_level_kmeans`:
  ``sqrt(nlist)`` clusters, each split in proportion to its size; 2.6 s at 10M), as faiss does for large
  ``nlist`` (``contrib.clustering``). Vectors are still assigned to their nearest list exactly when added.
* Training sample: 64 points per list (inside faiss' 39..256 range), at least
  39 * 256 for the PQ codebooks, capped by n.
* ``nprobe = clamp(nlist // 64, 16, 64)``: scanning ~1.5 % of the lists is the
  usual recall/speed knee at million scale; at least 16 so that small indexes
  (few, large lists) do not lose recall; at most 64 because there the
  re-scored recall@1 has < 0.5 % left to gain (0.999 at 10M) while the scan
  grows with every probe (``nlist // 64`` would be 128 at 10M: half the
  speed). The shortlist is re-scored exactly, so coarse recall matters more
  than PQ ranking.
* Search returns a shortlist of ``max(k, shortlist)`` (default 100) that
  :func:`rescore` re-ranks with exact inner products from the stored
  descriptors; Flat indexes are already exact and skip it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .choices import check_name
from .manifest import IndexFormatError, atomic_output

logger = logging.getLogger(__name__)

FLAT_MAX_N = 10_000  # below this many vectors: exact search (see module docstring)
MIN_POINTS_PER_LIST = 39  # faiss k-means warns below 39 training points per centroid
NLIST_SQRT_FACTOR = 4  # nlist <= 4 * sqrt(n) (see module docstring)
PCA_DIM = 256  # wider descriptors are PCA-reduced (with a random rotation) to this before IVF-PQ
TRAIN_POINTS_PER_LIST = 64  # training sample per inverted list (faiss accepts 39..256)
PQ_TARGET_BYTES = 64  # PQ code bytes per vector (m sub-quantizers x 8 bits)
PQ_MIN_DIMS_PER_SUBQUANTIZER = 4  # m <= dim / 4
OPQ_DIMS_PER_SUBQUANTIZER = 4  # OPQ output dim = 4 * m when dim has no good divisor
NPROBE_FRACTION = 64  # default nprobe = nlist // 64 ...
NPROBE_MIN = 16  # ... but at least 16
NPROBE_MAX = 64  # ... and at most 64
DEFAULT_SHORTLIST = 100  # candidates re-scored exactly per query
PQ_TRAIN_ITERATIONS = 10  # k-means iterations per PQ sub-quantizer (faiss default 25; the shortlist is re-scored)
RESCORE_CHUNK = 16  # queries whose shortlists are gathered and scored together in rescore()
ADD_CHUNK = 65_536  # vectors per add() call: bounds memory when reading float16 from disk
TRAIN_SEED = 0
TWO_LEVEL_MIN_NLIST = 4096  # from this many lists the coarse k-means is two-level (module docstring)
ADD_LOG_EVERY = 1_000_000  # add_rows logs its progress every this many vectors
GPU_MODES = ("auto", "cpu", "gpu")


def _largest_pow2_at_most(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(x, 1.0)))))


def _largest_divisor_at_most(n: int, cap: int) -> int:
    for m in range(max(1, min(cap, n)), 0, -1):
        if n % m == 0:
            return m
    return 1


def default_nprobe(nlist: int) -> int:
    """Default number of probed lists for ``nlist`` inverted lists (see module docstring)."""
    return int(min(nlist, NPROBE_MAX, max(NPROBE_MIN, nlist // NPROBE_FRACTION)))


def describe_index(index: faiss.Index) -> dict[str, Any]:
    """Structural description of a FAISS index: transforms, type, nlist, PQ m/nbits, nprobe, code size.

    Used to record parameters in the manifest and to tell whether an existing
    index was built with the factory string a caller asks for.
    """
    top = faiss.downcast_index(index)  # `index` stays referenced by the caller: no dangling wrapper
    transforms: list[str] = []
    inner = top
    while isinstance(inner, faiss.IndexPreTransform):
        for i in range(inner.chain.size()):
            vt = faiss.downcast_VectorTransform(inner.chain.at(i))
            # faiss writes an OPQMatrix as its base class and reads it back as a plain LinearTransform: name
            # it OPQMatrix either way so that a stored OPQ index still matches its factory string
            kind = type(vt).__name__
            transforms.append(f"{'OPQMatrix' if kind == 'LinearTransform' else kind}({vt.d_in}->{vt.d_out})")
        inner = faiss.downcast_index(inner.index)
    name = type(inner).__name__
    if name in ("IndexFlatIP", "IndexFlatL2"):  # read_index returns these, index_factory IndexFlat
        name = "IndexFlat"
    out: dict[str, Any] = {
        "type": name,
        "transforms": transforms,
        "d": int(index.d),
        "metric": "IP" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "L2",
        "nlist": None,
        "m": None,
        "nbits": None,
        "nprobe": None,
        "exact": isinstance(inner, faiss.IndexFlat) and not transforms,
    }
    ivf = _ivf(index)
    pq = getattr(inner, "pq", None)
    if pq is not None:
        out["m"] = int(pq.M)
        out["nbits"] = int(pq.nbits)
    out["residual"] = bool(ivf.by_residual) if ivf is not None else None
    if ivf is not None:
        out["nlist"] = int(ivf.nlist)
        out["nprobe"] = int(ivf.nprobe)
        out["bytes_per_vector"] = int(ivf.code_size)  # code bytes per vector in the lists (+8 B id)
    else:
        try:
            out["bytes_per_vector"] = int(index.sa_code_size())
        except RuntimeError:  # e.g. HNSW has no standalone codec
            out["bytes_per_vector"] = None
    return out


def index_signature(desc: dict[str, Any]) -> tuple:
    """The part of :func:`describe_index` that identifies how an index encodes vectors."""
    return (
        desc["type"],
        tuple(desc["transforms"]),
        desc["d"],
        desc["metric"],
        desc["nlist"],
        desc["m"],
        desc["nbits"],
        desc.get("residual"),
    )


def factory_signature(factory: str, dim: int) -> tuple:
    """Signature of the index that ``factory`` would build (ValueError for an invalid string)."""
    return index_signature(describe_index(new_index(factory, dim)))


def new_index(factory: str, dim: int) -> faiss.Index:
    """An empty inner-product index from a ``faiss.index_factory`` string (ValueError if invalid)."""
    try:
        return faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"invalid faiss factory string {factory!r} for dim {dim}: {e}") from e


def min_train_size(factory: str, dim: int) -> int:
    """Fewest training vectors ``factory`` accepts: one per IVF list and per PQ centroid (0 if untrained)."""
    index = new_index(factory, dim)
    if index.is_trained:
        return 0
    desc = describe_index(index)
    return max(desc["nlist"] or 1, 2 ** desc["nbits"] if desc["nbits"] else 1)


def choose_params(
    n: int,
    dim: int,
    factory: str | None = None,
    nprobe: int | None = None,
    *,
    shortlist: int | None = None,
    for_gpu: bool = False,
) -> dict[str, Any]:
    """Resolve FAISS parameters for ``n`` vectors of dimension ``dim`` (rules in the module docstring).

    Args:
        n: number of database vectors the index will be trained on / hold.
        dim: vector dimension.
        factory: any ``faiss.index_factory`` string overriding the automatic choice.
        nprobe: inverted lists probed per query (IVF only; ignored, with a log line, otherwise).
        shortlist: candidates per query re-scored exactly (default 100).
        for_gpu: the index will be trained and searched on a GPU: 8-bit PQ instead of fast scan.

    Returns:
        JSON-serialisable dict: factory, auto, exact, nlist, m, nbits, opq,
        nprobe, ntrain, metric ("IP"), shortlist, bytes_per_vector, n, dim.

    Raises:
        ValueError: invalid arguments, an invalid factory string, or a factory
            that needs more training vectors than ``n``.
    """
    if n < 0 or dim <= 0:
        raise ValueError(f"need n >= 0 and dim > 0, got n={n}, dim={dim}")
    if nprobe is not None and nprobe < 1:
        raise ValueError(f"nprobe must be >= 1, got {nprobe}")
    shortlist = DEFAULT_SHORTLIST if shortlist is None else int(shortlist)
    if shortlist < 1:
        raise ValueError(f"shortlist must be >= 1, got {shortlist}")
    params: dict[str, Any] = {
        "n": int(n),
        "dim": int(dim),
        "metric": "IP",
        "auto": factory is None,
        "shortlist": shortlist,
        "opq": False,
    }
    if factory is None and n < FLAT_MAX_N:
        params.update(factory="Flat", exact=True, nlist=None, m=None, nbits=None, nprobe=None, ntrain=0)
        params["bytes_per_vector"] = 4 * dim
        logger.info(
            "%d vectors: exact IndexFlatIP (IVF-PQ needs >= %d to train its codebooks)", n, FLAT_MAX_N
        )
        if nprobe is not None:
            logger.info("nprobe=%d ignored: exact index", nprobe)
        return params

    if factory is None:
        nlist = _largest_pow2_at_most(min(NLIST_SQRT_FACTOR * math.sqrt(n), n / MIN_POINTS_PER_LIST))
        if dim > PCA_DIM:
            prefix, d_pq = f"PCAR{PCA_DIM},", PCA_DIM
        else:
            prefix, d_pq = "", dim
        m_target = max(1, min(PQ_TARGET_BYTES, d_pq // PQ_MIN_DIMS_PER_SUBQUANTIZER))
        m = _largest_divisor_at_most(d_pq, m_target)
        if 4 * m >= 3 * m_target:
            fast_scan = not for_gpu and d_pq % (2 * m) == 0
            factory = f"{prefix}IVF{nlist},PQ{2 * m}x4fsr" if fast_scan else f"{prefix}IVF{nlist},PQ{m}"
        else:  # no divisor close to the target code size: rotate + reduce with OPQ
            m = m_target
            d_out = min(OPQ_DIMS_PER_SUBQUANTIZER * m, (dim // m) * m)
            factory = f"OPQ{m}_{d_out},IVF{nlist},PQ{m}"

    index = new_index(factory, dim)
    desc = describe_index(index)
    nlist, m, nbits = desc["nlist"], desc["m"], desc["nbits"]
    params.update(
        factory=factory,
        exact=bool(desc["exact"]),
        nlist=nlist,
        m=m,
        nbits=nbits,
        opq=any(t.startswith("OPQ") for t in desc["transforms"]),
        bytes_per_vector=desc["bytes_per_vector"],
    )
    if index.is_trained:
        params["ntrain"] = 0
    else:
        need = min_train_size(factory, dim)
        if n < need:
            raise ValueError(
                f"faiss factory {factory!r} needs at least {need} training vectors, have {n}; "
                "use a smaller nlist/nbits or the default (exact search below "
                f"{FLAT_MAX_N} vectors)"
            )
        wanted = max(TRAIN_POINTS_PER_LIST * (nlist or 1), MIN_POINTS_PER_LIST * 2 ** (nbits or 8))
        params["ntrain"] = int(min(n, wanted))
    if nlist is not None:
        params["nprobe"] = int(nprobe) if nprobe is not None else default_nprobe(nlist)
    else:
        params["nprobe"] = None
        if nprobe is not None:
            logger.info("nprobe=%d ignored: %s has no inverted lists", nprobe, factory)
    logger.info(
        "%d vectors: %s (nlist=%s, PQ m=%s x %s bits, %s bytes/vector, nprobe=%s, "
        "train on %d, exact re-score of %d candidates)%s",
        n,
        factory,
        nlist,
        m,
        nbits,
        params["bytes_per_vector"],
        params["nprobe"],
        params["ntrain"],
        shortlist,
        "" if params["auto"] else " [factory given by caller]",
    )
    return params


# --------------------------------------------------------------------------- GPU


def use_gpu(gpu: str) -> bool:
    """Whether to run FAISS on GPU: "auto" (when faiss sees one), "cpu" (never), "gpu" (required)."""
    check_name(gpu, GPU_MODES, "gpu mode")
    if gpu == "cpu":
        return False
    n_gpus = getattr(faiss, "get_num_gpus", lambda: 0)()
    if gpu == "gpu" and n_gpus == 0:
        raise RuntimeError("gpu='gpu' but faiss sees no GPU (is faiss-cpu installed instead of faiss-gpu?)")
    return n_gpus > 0


def to_gpu(index: faiss.Index, gpu: str) -> tuple[faiss.Index, bool]:
    """Clone ``index`` to all GPUs when allowed; fall back to the CPU index if the type is unsupported."""
    if not use_gpu(gpu):
        return index, False
    if isinstance(_ivf(index), faiss.IndexIVFPQFastScan):
        # faiss-gpu has no fast-scan index (the automatic choice for CPU builds, module docstring)
        if gpu == "gpu":
            raise RuntimeError(
                "this faiss index (IndexIVFPQFastScan, 4-bit fast-scan PQ) has no GPU implementation: search "
                "with gpu 'auto' or 'cpu', or rebuild it with a GPU index type (an automatic rebuild with gpu "
                "'gpu' chooses 8-bit PQ; a forced --faiss factory must name one, e.g. 'PCAR256,IVF8192,PQ64')")
        logger.info("faiss fast-scan index: no GPU implementation, searching on the CPU")
        return index, False
    try:
        co = faiss.GpuMultipleClonerOptions()
        co.useFloat16 = True  # needed for large PQ code sizes (m >= 56) on GPU
        return faiss.index_cpu_to_all_gpus(index, co), True
    except (RuntimeError, AttributeError) as e:
        if gpu == "gpu":
            raise
        logger.warning("faiss GPU clone failed (%s): running on CPU", e)
        return index, False


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    """The inverted-file index inside ``index`` (behind any transforms), downcast; None when it has none."""
    try:
        return faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        return None


def to_cpu(index: faiss.Index, on_gpu: bool) -> faiss.Index:
    return faiss.index_gpu_to_cpu(index) if on_gpu else index


# --------------------------------------------------------------------------- build / add


def sample_rows(n: int, ntrain: int, seed: int = TRAIN_SEED) -> np.ndarray:
    """Sorted, seeded random sample of ``min(n, ntrain)`` row numbers (sorted reads are disk-friendly)."""
    if ntrain >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=ntrain, replace=False)).astype(np.int64)


def add_rows(
    index: faiss.Index, xb: Any, start: int, stop: int, chunk_size: int = ADD_CHUNK
) -> None:
    """Add ``xb[start:stop]`` (any sliceable (n, d) array, e.g. a float16 memmap) in chunks.

    FAISS ids are sequential, so ``index.ntotal`` must equal ``start``: ids stay row numbers.
    """
    if index.ntotal != start:
        raise RuntimeError(f"faiss index holds {index.ntotal} vectors, cannot add rows from {start}")
    t0, logged = time.perf_counter(), start
    for a in range(start, stop, chunk_size):
        b = min(stop, a + chunk_size)
        index.add(np.ascontiguousarray(xb[a:b], dtype=np.float32))
        if b - logged >= ADD_LOG_EVERY and b < stop:  # long adds (minutes at 10M on 2 cores) say where they are
            logged = b
            rate = (b - start) / max(1e-9, time.perf_counter() - t0)
            logger.info("faiss add: %d / %d vectors (%.0f/s, %.0f s left)", b - start, stop - start, rate,
                        (stop - b) / rate)


def build_faiss(
    xb: Any,
    params: dict[str, Any],
    gpu: str = "auto",
    *,
    chunk_size: int = ADD_CHUNK,
    seed: int = TRAIN_SEED,
) -> faiss.Index:
    """Build a CPU index from ``xb`` ((n, d) L2-normalised, any sliceable array) and resolved ``params``.

    Trains on a seeded random sample of ``params["ntrain"]`` rows, then adds all
    rows in chunks; ids are row numbers. Training and adding run on GPU when
    ``gpu`` allows and faiss has one; the returned index is always on CPU.
    """
    n, d = int(xb.shape[0]), int(xb.shape[1])
    index = new_index(params["factory"], d)
    _disable_polysemous_training(index)
    work, on_gpu = to_gpu(index, gpu)
    if not work.is_trained:
        rows = sample_rows(n, int(params.get("ntrain") or n), seed)
        xt = np.ascontiguousarray(xb[rows], dtype=np.float32)
        logger.info("training %s on %d of %d vectors%s", params["factory"], len(rows), n, " (GPU)" if on_gpu else "")
        _train_pca_with_blas(work, xt)
        if not on_gpu:  # faiss' GPU k-means is fast enough at any nlist
            _train_coarse_two_level(work, xt, seed)
        work.train(xt)  # PQ codebooks (and the coarse quantizer unless trained above)
        del xt
    add_rows(work, xb, 0, n, chunk_size)
    index = to_cpu(work, on_gpu)
    set_nprobe(index, params.get("nprobe"))
    return index


def two_level_kmeans(x: np.ndarray, k: int, *, spherical: bool, niter: int, seed: int = TRAIN_SEED) -> np.ndarray:
    """``k`` centroids of ``x`` by two-level k-means: ``sqrt(k)`` clusters, then each split into a share of ``k``
    proportional to its size (faiss' ``contrib.clustering.two_level_clustering`` recipe).

    A flat k-means costs ``n * k`` distances per iteration, this ``n * 2 * sqrt(k)``: at 10M vectors (8,192
    lists, 524k training points) 221 s became 2.6 s on 2 cores, and the centroids serve IVF probing as well
    (the shortlist is re-scored exactly). ``spherical``: unit-norm centroids, as faiss trains them for
    inner-product IVF.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if n < k:
        raise ValueError(f"two-level k-means needs at least {k} points, got {n}")
    k1 = max(1, int(round(math.sqrt(k))))
    top = faiss.Kmeans(d, k1, niter=niter, seed=seed, spherical=spherical, max_points_per_centroid=256)
    top.train(x)
    _, assign = top.index.search(x, 1)
    assign = assign[:, 0]
    sizes = np.bincount(assign, minlength=k1)
    # centroids per top cluster: proportional to its size (largest remainders), never more than its points
    share = sizes * k / n
    alloc = np.minimum(np.floor(share).astype(np.int64), sizes)
    for c in np.argsort(-(share - alloc), kind="stable"):
        if alloc.sum() >= k:
            break
        if alloc[c] < sizes[c]:
            alloc[c] += 1
    while alloc.sum() < k:  # only when remainders ran out: fill clusters with spare points
        c = int(np.argmax(sizes - alloc))
        alloc[c] += 1
    parts = []
    for c in range(k1):
        if not alloc[c]:
            continue
        sub = x[assign == c]
        if alloc[c] == len(sub):
            parts.append(sub / np.linalg.norm(sub, axis=1, keepdims=True).clip(1e-12) if spherical else sub)
            continue
        km = faiss.Kmeans(d, int(alloc[c]), niter=niter, seed=seed + 1 + c, spherical=spherical,
                          max_points_per_centroid=256)
        km.train(sub)
        parts.append(km.centroids)
    return np.ascontiguousarray(np.vstack(parts), dtype=np.float32)


def _train_coarse_two_level(index: faiss.Index, xt: np.ndarray, seed: int = TRAIN_SEED) -> bool:
    """Fill the empty coarse quantizer of an IVF index with :func:`two_level_kmeans` centroids when it has at
    least ``TWO_LEVEL_MIN_NLIST`` lists (``index.train`` then trains only the rest, e.g. PQ codebooks).

    The transforms before the IVF (a PCA fitted by :func:`_train_pca_with_blas`) must be trained already;
    otherwise (e.g. OPQ, trained with the PQ) nothing is done. Returns whether the quantizer was filled.
    """
    top = faiss.downcast_index(index)
    x = xt
    inner = top
    if isinstance(top, faiss.IndexPreTransform):
        for i in range(top.chain.size()):
            vt = faiss.downcast_VectorTransform(top.chain.at(i))
            if not vt.is_trained:
                return False
            x = vt.apply(x)
        inner = faiss.downcast_index(top.index)
    if not isinstance(inner, faiss.IndexIVF):
        return False
    quantizer = faiss.downcast_index(inner.quantizer)
    if inner.nlist < TWO_LEVEL_MIN_NLIST or quantizer.ntotal or not isinstance(quantizer, faiss.IndexFlat):
        return False
    t0 = time.perf_counter()
    centroids = two_level_kmeans(x, inner.nlist, spherical=bool(inner.cp.spherical), niter=inner.cp.niter,
                                 seed=seed)
    quantizer.add(centroids)
    logger.info("coarse quantizer: %d centroids by two-level k-means on %d vectors in %.1f s", inner.nlist,
                len(x), time.perf_counter() - t0)
    return True


def _train_pca_with_blas(index: faiss.Index, xt: np.ndarray) -> None:
    """Fit a leading untrained PCAMatrix of ``index`` with numpy (BLAS covariance + eigh).

    faiss' own PCAMatrix training is several times slower on few cores; the
    result is the same transform (mean, eigenvectors by decreasing eigenvalue,
    optional random rotation applied by ``prepare_Ab``).
    """
    top = faiss.downcast_index(index)
    if not isinstance(top, faiss.IndexPreTransform) or top.chain.size() == 0:
        return
    pca = faiss.downcast_VectorTransform(top.chain.at(0))
    if not isinstance(pca, faiss.PCAMatrix) or pca.is_trained or pca.eigen_power != 0:
        return
    mean = xt.mean(axis=0, dtype=np.float64)
    cov = np.zeros((xt.shape[1], xt.shape[1]), np.float64)
    for a in range(0, len(xt), 16_384):
        c = xt[a : a + 16_384] - mean.astype(np.float32)
        cov += (c.T @ c).astype(np.float64)
    evals, evecs = np.linalg.eigh(cov / len(xt))
    order = np.argsort(-evals)
    faiss.copy_array_to_vector(mean.astype(np.float32), pca.mean)
    faiss.copy_array_to_vector(evals[order].astype(np.float32), pca.eigenvalues)
    faiss.copy_array_to_vector(np.ascontiguousarray(evecs[:, order].T, dtype=np.float32).ravel(), pca.PCAMat)
    pca.prepare_Ab()
    pca.is_trained = True


def _disable_polysemous_training(index: faiss.Index) -> None:
    """Skip IndexIVFPQ's polysemous code re-ordering (on by default via index_factory).

    It only serves Hamming-distance pre-filtering (``polysemous_ht``), which we
    never enable, and its simulated annealing dominates training time (~15 s
    for a tiny 8-byte PQ, minutes for 64 bytes).
    """
    top = faiss.downcast_index(index)
    inner = top
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False
    pq = getattr(inner, "pq", None)
    if pq is not None:
        pq.cp.niter = PQ_TRAIN_ITERATIONS


def set_nprobe(index: faiss.Index, nprobe: int | None) -> None:
    """Set nprobe on an IVF index (no-op for indexes without inverted lists)."""
    ivf = _ivf(index)
    if nprobe is not None and ivf is not None:
        ivf.nprobe = int(nprobe)


# --------------------------------------------------------------------------- search


def finalize_results(D: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by score descending (ties: smaller id first), keep ``k``, pad with (-inf, -1).

    Missing results (faiss id -1, e.g. fewer than k vectors) always come last
    with score -inf, so the output is always (nq, k).
    """
    D = np.asarray(D, dtype=np.float32).copy()
    I = np.asarray(I, dtype=np.int64)
    D[I < 0] = -np.inf
    order = np.lexsort((I, -D), axis=-1)
    D = np.take_along_axis(D, order, axis=1)[:, :k]
    I = np.take_along_axis(I, order, axis=1)[:, :k]
    if I.shape[1] < k:
        pad = k - I.shape[1]
        D = np.concatenate([D, np.full((D.shape[0], pad), -np.inf, np.float32)], axis=1)
        I = np.concatenate([I, np.full((I.shape[0], pad), -1, np.int64)], axis=1)
    return D, I


def rescore(
    xq: np.ndarray,
    I: np.ndarray,
    fetch: Callable[[np.ndarray], np.ndarray],
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank a shortlist with exact inner products.

    Args:
        xq: (nq, d) float32 queries.
        I: (nq, K) shortlist ids from faiss, -1 for missing.
        fetch: row ids (any order, duplicates allowed) -> (len, d) stored vectors (any float dtype).
        k: results to keep.

    Returns:
        (D, I): (nq, k) float32 exact scores descending and int64 ids, padded with (-inf, -1).
    """
    I = np.asarray(I, dtype=np.int64)
    nq, K = I.shape
    valid = I >= 0
    D = np.full((nq, K), -np.inf, dtype=np.float32)
    if valid.any():
        # Gather each chunk of queries' candidates straight from the (memory-mapped) store and score them with a
        # batched matrix product: 3x faster than gathering the unique rows once and indexing them again
        # (one copy fewer; the (chunk, K, d) block stays in cache). Missing ids (-1) read row 0, masked below.
        step = max(1, min(RESCORE_CHUNK, (1 << 22) // max(1, K * int(xq.shape[1]))))  # block <= 16 MB
        for a in range(0, nq, step):
            b = min(nq, a + step)
            rows = np.where(valid[a:b], I[a:b], 0).ravel()
            xb = np.asarray(fetch(rows), dtype=np.float32).reshape(b - a, K, -1)
            D[a:b] = np.matmul(xb, xq[a:b, :, None])[:, :, 0]
        D[~valid] = -np.inf
    return finalize_results(D, I, k)


# --------------------------------------------------------------------------- file I/O


def read_index(path: str | Path) -> faiss.Index:
    """Read a FAISS index file; IndexFormatError naming the file if it is truncated or invalid."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise IndexFormatError(f"{path}: cannot read faiss index (truncated or corrupt?): {e}") from e


def write_index(index: faiss.Index, path: str | Path) -> None:
    """Write ``index`` atomically (temp file, fsync, rename)."""
    with atomic_output(path) as tmp:
        faiss.write_index(index, str(tmp))
