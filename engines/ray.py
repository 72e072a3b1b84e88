"""``--engine ray``: the local engine's per-image code on Ray Data actors (a local Ray instance or a cluster).

**build-index: workers write, the driver publishes.** The rows still to extract (position, id, landmark_id,
path) go to Ray as a pandas frame cut into blocks, one block per shard (no Python object per row is made for
Ray). A pool of actors (:class:`ShardActor`) each builds the index's :class:`~retrieval.extract.FeatureExtractor`
once, decodes and extracts the images of a block and writes them straight into the index directory as one
shard (:func:`index.writer.write_worker_shard`: the shard format and crash rules of the local engine, temp
name + fsync + atomic link). Each block has its shard's sequence number, assigned by the driver: a task that
Ray retries finds its shard already published and neither extracts nor writes it again, and shards commit in
input order, so rows come out in the local engine's order. The driver receives one small report per shard
(its name, counts, unreadable images with their reasons, the actor's warnings): ``driver_bytes_per_image`` in
the build statistics is the pickled size of all it received, per image. It then commits (manifest, FAISS
trained from the descriptors stored in the shards) as the local engine does. Resume is the local engine's:
ids in committed segments or in shards on disk are never sent to Ray. Each run numbers its shards from a
fresh multiple of :data:`RUN_STRIDE`, so a shard that an actor of an interrupted run finishes late never takes
the name of one of this run's.

**predict / evaluate**: :func:`map_paths` maps query paths over actors (``eval.evidence.EvidenceActor``), whose
pickled records the driver writes to the evidence file in input order (``preserve_order`` on that dataset's
own context only).

**Safe to share.** Every actor checks at start that it runs the driver's landmarks version, code (a hash of
the package's sources) and key libraries, and that it resolves the driver's configuration to the same one;
a mismatch stops the run with one line naming both versions (:class:`WorkerMismatchError`). Actors' warnings
from the package loggers come back with their results and are logged by the driver under the same logger
names, marked ``[ray worker <node> pid <pid>]``; anything else they print reaches the driver's console
(``log_to_driver``).

Ray is an optional extra (``pip install -e ".[ray]"``); it is imported only when this engine is used.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
import platform
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from . import ENGINES, EngineUnavailableError, RayOptions  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from index.writer import IndexWriter

logger = logging.getLogger(__name__)

# The package root (holds retrieval/, index/, engines/, eval/): put on a local Ray instance's workers'
# PYTHONPATH so they import this checkout's code, whatever else is installed.
CODE_ROOT = Path(__file__).resolve().parents[1]
CODE_PACKAGES = ("retrieval", "index", "engines", "eval")  # what actors run; hashed into the code version
# Loggers whose warnings an actor sends back to the driver.
PACKAGE_LOGGERS = ("retrieval", "index", "engines", "eval")
# Shard sequence numbers of one Ray build start at a fresh multiple of this (module docstring).
RUN_STRIDE = 1_000_000
SHARDS_PER_ACTOR = 4  # a small job is cut into at least this many shards per actor (load balance)


class WorkerMismatchError(ValueError):
    """A Ray worker runs another version, code or configuration than the driver (one line, both named)."""


def import_ray():
    """The ``ray`` module with Ray Data; EngineUnavailableError (one line naming the extra) without it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the [data] extra)
    except ImportError as exc:
        raise EngineUnavailableError(
            f"--engine ray needs Ray Data, which is not installed ({exc}); install the extra: pip install -e \".[ray]\""
        ) from None
    return ray


def init_ray(options: RayOptions | None = None) -> Any:
    """Connect to the cluster at ``options.address``, or start a local instance (reused if already running).

    Actors' output reaches this process (``log_to_driver``, Ray's default).
    """
    ray = import_ray()
    options = options or RayOptions()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "ignore_reinit_error": True}
    if options.address:
        kwargs["address"] = options.address
    else:
        kwargs["num_cpus"] = options.num_cpus
        # Workers of a local instance import this checkout's packages (a cluster's workers use their install).
        path = os.pathsep.join(p for p in (str(CODE_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
    ray.init(**kwargs)
    logger.info("ray: %s", ray.cluster_resources())
    return ray


# ----------------------------------------------------------------------------- versions


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A short hash of this checkout's Python sources (the packages actors run): equal code, equal hash."""
    h = hashlib.sha1()
    for package in CODE_PACKAGES:
        for path in sorted((CODE_ROOT / package).rglob("*.py")):
            h.update(str(path.relative_to(CODE_ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def runtime_versions() -> dict[str, str]:
    """What must be equal on the driver and every worker: landmarks version and code, Python, key libraries."""
    import timm
    import torch

    from index.manifest import package_version

    ray = import_ray()
    return {"landmarks": package_version(), "code": code_version(), "python": platform.python_version(),
            "torch": torch.__version__, "timm": timm.__version__, "ray": ray.__version__}


def describe_versions(v: Mapping[str, str]) -> str:
    """One-line form: ``landmarks 0.1.0 (code 1a2b3c4d5e6f, python 3.11.7, torch 2.4.0, timm 1.0.9, ray 2.60.0)``."""
    rest = ", ".join(f"{k} {v[k]}" for k in v if k != "landmarks")
    return f"landmarks {v.get('landmarks')} ({rest})"


def check_worker(expected: Mapping[str, str]) -> None:
    """WorkerMismatchError naming both versions unless this process runs what the driver runs (``expected``)."""
    mine = runtime_versions()
    if any(mine.get(k) != expected.get(k) for k in set(mine) | set(expected)):
        raise WorkerMismatchError(
            f"ray worker on {socket.gethostname()} runs {describe_versions(mine)}, the driver runs "
            f"{describe_versions(expected)}: install the same landmarks code and libraries on every node"
        )


def check_worker_config(driver: Mapping[str, Any], worker: Mapping[str, Any], versions: Mapping[str, str]) -> None:
    """WorkerMismatchError when this worker resolves the driver's configuration to another one."""
    from index.manifest import config_diff, normalise_config

    diff = config_diff(normalise_config(dict(driver)), normalise_config(dict(worker)))
    if diff:
        raise WorkerMismatchError(
            f"ray worker on {socket.gethostname()} resolves the configuration differently ({', '.join(diff)}) "
            f"although it runs {describe_versions(versions)} like the driver"
        )


def _mismatch_in(exc: BaseException) -> WorkerMismatchError | None:
    """The WorkerMismatchError an actor raised, from the Ray error that wraps it (its text holds the line)."""
    m = re.search(r"WorkerMismatchError: ([^\n]+)", str(exc))
    return WorkerMismatchError(m.group(1).strip()) if m else None


# ----------------------------------------------------------------------------- actors


class _WarningsToDriver(logging.Handler):
    """Keeps an actor's warnings from the package loggers, to be sent back with its next result."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append((record.levelno, record.name, record.getMessage()))
        except Exception:  # noqa: BLE001 (logging must never raise; logging.Handler.handleError reports it)
            self.handleError(record)

    def take(self) -> str:
        """The kept warnings as a JSON list (and forget them); "" when none."""
        if not self.records:
            return ""
        out, self.records = self.records, []
        return json.dumps(out)


class RayActor:
    """Base of this project's Ray Data actors: torch threads, the version check, warnings sent to the driver.

    Subclasses call ``super().__init__(versions, threads)`` first and put :meth:`take_warnings` into their
    results (a ``"log"`` column, see :func:`pack_results`).
    """

    def __init__(self, versions: Mapping[str, str], threads: int = 1):
        import torch

        check_worker(versions)
        self.versions = dict(versions)
        torch.set_num_threads(max(1, int(threads)))
        self._warnings = _WarningsToDriver()
        for name in PACKAGE_LOGGERS:
            log = logging.getLogger(name)
            log.addHandler(self._warnings)
            log.propagate = False  # this worker process only: sent to the driver, not printed here as well
        self.node_id = _node_id()
        self.where = f"{_node_ip()} node {self.node_id[:8]} pid {os.getpid()}"

    def take_warnings(self) -> str:
        return self._warnings.take()


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() or ""
    except Exception:  # noqa: BLE001 (outside Ray, e.g. an actor class called directly)
        return ""


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 (only a label for log lines)
        return socket.gethostname()


def relog(text: str, where: str) -> None:
    """Log an actor's warnings (from :meth:`RayActor.take_warnings`) here, under their own logger names."""
    if not text:
        return
    for level, name, message in json.loads(text):
        logging.getLogger(name).log(int(level), "%s [ray worker %s]", message, where)


def pack_results(pos: np.ndarray, results: Sequence[Any], log: str = "", where: str = "") -> dict[str, np.ndarray]:
    """An actor's output batch: positions, one pickled result per row; its warnings on the first row."""
    blobs = np.empty(len(results), dtype=object)
    blobs[:] = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in results]
    logs = np.full(len(results), "", dtype=object)
    if len(results):
        logs[0] = log
    return {"pos": np.asarray(pos, np.int64), "result": blobs, "log": logs, "where": np.full(len(results), where, dtype=object)}


class ShardActor(RayActor):
    """Ray actor of ``build-index``: extracts the images of each block and writes them as the block's shard.

    Input rows: ``pos``, ``id``, ``landmark_id``, ``path`` (absolute), ``shard`` (sequence number) and
    ``shard_rows`` (rows of that shard). Output: one row per shard, ``report`` a small JSON object
    (``shard`` file name or "", ``seq``, ``written``, ``skipped`` [[pos, reason]], ``retried``), ``log``
    and ``where`` (warnings and where they come from).
    """

    def __init__(self, index_dir: str, index_config: Mapping[str, Any], dim: int,
                 local_pca: Mapping[str, np.ndarray] | None, device: str | None, batch_size: int,
                 versions: Mapping[str, str], threads: int = 1):
        super().__init__(versions, threads)
        from retrieval.extract import DEFAULT_LOCAL_IMAGE_SIZE, FeatureExtractor

        self.fx = FeatureExtractor(index_config["global"], index_config["local"], device=device,
                                   local_image_size=index_config["local_image_size"] or DEFAULT_LOCAL_IMAGE_SIZE)
        if local_pca is not None and self.fx.local_extractor is not None:
            self.fx.local_extractor.set_pca(dict(local_pca))
        check_worker_config(index_config, self.fx.index_config(), versions)
        if self.fx.global_extractor.dim != dim:
            raise WorkerMismatchError(f"ray worker on {socket.gethostname()} builds {self.fx.global_extractor.dim}-d "
                                      f"descriptors, the index stores {dim}-d")
        self.index_dir, self.dim, self.batch_size = Path(index_dir), int(dim), int(batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seqs = np.asarray(batch["shard"], np.int64)
        reports = []
        for seq in dict.fromkeys(seqs.tolist()):  # the shards of this batch, in order
            rows = np.flatnonzero(seqs == seq)
            expected = int(batch["shard_rows"][rows[0]])
            if len(rows) != expected:  # never with one block per shard; a partial shard would be published
                raise RuntimeError(f"shard {seq}: {len(rows)} of its {expected} rows in one batch (Ray split a block)")
            reports.append(json.dumps(self.write_shard(
                int(seq), batch["pos"][rows].tolist(), [str(x) for x in batch["id"][rows]],
                [str(x) for x in batch["landmark_id"][rows]], [str(x) for x in batch["path"][rows]])))
        log = np.full(len(reports), "", dtype=object)
        if reports:
            log[0] = self.take_warnings()
        return {"report": np.asarray(reports, dtype=object), "log": log,
                "where": np.full(len(reports), self.where, dtype=object),
                "node": np.full(len(reports), self.node_id, dtype=object)}

    def write_shard(self, seq: int, pos: list[int], ids: list[str], landmarks: list[str],
                    paths: list[str]) -> dict[str, Any]:
        """Extract one shard's images and write it as ``shard-<seq>.h5``; the report the driver receives."""
        from index.writer import write_worker_shard
        from index.shards import SHARDS_DIR
        from retrieval.extract import shard_columns

        name = f"shard-{seq:06d}.h5"
        final = self.index_dir / SHARDS_DIR / name
        if final.exists():
            return self._retried(final, seq, pos, ids, paths)
        good: list[int] = []
        results = []
        skipped = []
        for i, res in self.fx.iter_paths(paths, batch_size=self.batch_size, num_workers=0):
            if isinstance(res, str):
                logger.warning("skipped %s: %s", ids[i], res)
                skipped.append([pos[i], res])
            else:
                good.append(i)
                results.append(res)
        report = {"shard": "", "seq": seq, "written": 0, "skipped": skipped, "retried": False}
        if good:
            try:
                write_worker_shard(self.index_dir, self.dim, seq, [ids[i] for i in good], [landmarks[i] for i in good],
                                   [paths[i] for i in good], **shard_columns(results, self.fx.local_extractor is not None))
            except FileExistsError:  # another attempt of this task published it meanwhile: keep that one
                return self._retried(final, seq, pos, ids, paths)
            report.update(shard=name, written=len(good))
        return report

    def _retried(self, final: Path, seq: int, pos: list[int], ids: list[str], paths: list[str]) -> dict[str, Any]:
        """The report of a shard an earlier attempt of this task published: nothing is extracted again."""
        from index.shards import ShardReader
        from retrieval.extract import decode_item

        stored = set(ShardReader(final).ids.tolist())
        logger.warning("%s was published by an earlier attempt of this task: not extracted again", final.name)
        skipped = []
        for i, id_ in enumerate(ids):
            if id_ not in stored:  # failed in the earlier attempt: decode again (no model) for its reason
                gconf = self.fx.global_conf
                item = decode_item(paths[i], int(gconf["image_size"]), gconf["resize"], None)
                skipped.append([pos[i], item.error or f"not in {final.name} (an earlier attempt skipped it)"])
        return {"shard": final.name, "seq": seq, "written": len(stored), "skipped": skipped, "retried": True}


# ----------------------------------------------------------------------------- driver


def _pool_size(ray: Any, options: RayOptions) -> int:
    if options.workers:
        return int(options.workers)
    resources = ray.cluster_resources()
    if options.num_gpus_per_worker > 0:
        n = int(resources.get("GPU", 0) // options.num_gpus_per_worker)
        if n < 1:
            raise ValueError(f"--num-gpus-per-worker {options.num_gpus_per_worker}: the Ray cluster has "
                             f"{resources.get('GPU', 0):g} GPUs")
        return n
    return max(1, int(resources.get("CPU", 1) // max(options.num_cpus_per_worker, 1e-3)))


def _map_args(ray: Any, options: RayOptions, n_actors: int) -> dict[str, Any]:
    gpu = options.num_gpus_per_worker > 0
    return dict(
        compute=ray.data.ActorPoolStrategy(size=n_actors),  # a fixed pool (``concurrency=n`` before Ray 2.51)
        num_gpus=options.num_gpus_per_worker if gpu else None,
        num_cpus=None if gpu else options.num_cpus_per_worker,
    )


def _threads(options: RayOptions) -> int:
    return 1 if options.num_gpus_per_worker > 0 else max(1, round(options.num_cpus_per_worker))


def _blocks(frame: pd.DataFrame, rows_per_block: int) -> list[pd.DataFrame]:
    return [frame.iloc[a:a + rows_per_block] for a in range(0, len(frame), rows_per_block)]


def _iterate(ds: Any) -> Iterator[dict[str, np.ndarray]]:
    """``ds``'s output batches as they come; a worker's version mismatch becomes its one-line error."""
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")
    except Exception as exc:
        mismatch = _mismatch_in(exc)
        if mismatch is not None:
            raise mismatch from None
        raise


def next_run_base(shards_dir: Path) -> int:
    """The first shard sequence number of a new Ray run: the next multiple of RUN_STRIDE above every shard."""
    from index.shards import shard_number

    taken = [n for n in (shard_number(p) for p in shards_dir.iterdir()) if n is not None] if shards_dir.is_dir() else []
    return (max(taken, default=-1) // RUN_STRIDE + 1) * RUN_STRIDE


class RayShardWriter:
    """The Ray engine's :data:`retrieval.extract.ShardWriter`: actors extract and write the shards.

    Secondary local sets (``--local-conf rootsift+xfeat``) are not extracted here: after the commit,
    :func:`retrieval.extract.main` extracts them in the driver process, as for the local engine.
    """

    name = "ray"

    def __init__(self, options: RayOptions | None = None, device: str | None = None):
        self.options = options or RayOptions()
        self.device = device

    def __call__(self, db: IndexWriter, fx: Any, todo: pd.DataFrame, job: Any) -> dict[str, Any]:
        from tqdm import tqdm

        from index.shards import SHARDS_DIR
        from retrieval.extract import PCA_AUX

        ray = init_ray(self.options)
        n = len(todo)
        n_actors = _pool_size(ray, self.options)
        per_shard = max(1, min(int(job.shard_size), -(-n // (SHARDS_PER_ACTOR * n_actors))))
        base = next_run_base(Path(db.path) / SHARDS_DIR)
        seq = base + np.arange(n) // per_shard
        frame = pd.DataFrame({
            "pos": np.arange(n, dtype=np.int64),
            "id": todo["id"].astype(str).to_numpy(),
            "landmark_id": todo["landmark_id"].astype(str).to_numpy(),
            # absolute: actors do not share the driver's working directory (on a cluster, the same shared mount)
            "path": [os.path.abspath(str(p)) for p in todo["path"]],
            "shard": seq,
            "shard_rows": np.bincount(seq - base)[seq - base],
        })
        kwargs = {"index_dir": str(Path(db.path).resolve()), "index_config": fx.index_config(), "dim": db.dim,
                  "local_pca": db.read_aux(PCA_AUX), "device": self.device, "batch_size": job.batch_size,
                  "versions": runtime_versions(), "threads": _threads(self.options)}
        ds = ray.data.from_pandas(_blocks(frame, per_shard)).map_batches(
            ShardActor, fn_constructor_kwargs=kwargs, batch_size=None, batch_format="numpy",
            **_map_args(ray, self.options, n_actors))
        n_shards = int(seq[-1] - base) + 1
        logger.info("ray: %d images as %d shards of up to %d, written by %d %s actors into %s", n, n_shards, per_shard,
                    n_actors, "GPU" if self.options.num_gpus_per_worker > 0 else "CPU", db.path)
        bar = tqdm(total=n, desc="extract (ray)", unit="img",
                   disable=not job.progress or bool(os.environ.get("TQDM_DISABLE")))
        done: set[int] = set()
        stats = {"extracted": 0, "skipped": 0, "shards_retried": 0}
        nodes: set[str] = set()
        received = 0
        try:
            for batch in _iterate(ds):
                received += len(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))  # all this process receives
                for report, log, where, node in zip(batch["report"], batch["log"], batch["where"], batch["node"]):
                    relog(log, where)
                    r = json.loads(report)
                    nodes.add(str(node))
                    if r["seq"] in done:
                        continue  # delivered twice (a retried task): counted once
                    done.add(r["seq"])
                    stats["extracted"] += r["written"]
                    stats["shards_retried"] += bool(r["retried"])
                    for pos, reason in r["skipped"]:
                        row = todo.iloc[int(pos)]
                        db.record_skipped(row["id"], row["path"], reason)
                    stats["skipped"] += len(r["skipped"])
                    bar.update(r["written"] + len(r["skipped"]))
                db.flush_skipped()
        finally:
            bar.close()  # the bar's line ends before any error is printed
        if len(done) != n_shards:
            raise RuntimeError(f"ray reported {len(done)} of {n_shards} shards")
        stats.update(driver_bytes_per_image=round(received / max(1, n), 1), ray_nodes=len(nodes), ray_actors=n_actors)
        logger.info("ray: %d images extracted, %d skipped, %.0f bytes per image received by the driver, %d node(s)",
                    stats["extracted"], stats["skipped"], stats["driver_bytes_per_image"], len(nodes))
        return stats


def map_paths(
    paths: Sequence[str], actor_cls: type, actor_kwargs: Mapping[str, Any], options: RayOptions | None = None,
    batch_size: int = 16,
) -> Iterator[tuple[int, Any]]:
    """(position, result) for each path, in input order, from ``actor_cls(**actor_kwargs, versions, threads)(batch)``.

    ``actor_cls`` is a :class:`RayActor` taking a numpy batch ``{"pos", "path"}`` and returning
    :func:`pack_results` (see ``eval.evidence.EvidenceActor``). Every position is yielded exactly once (a row
    that a retried task delivers again is dropped). Order is preserved for this dataset only (its own
    DataContext), not for other Ray Data pipelines of the process.
    """
    if not len(paths):
        return
    options = options or RayOptions()
    ray = init_ray(options)
    n_actors = _pool_size(ray, options)
    # absolute: actors do not share the driver's working directory (on a cluster, the same shared mount)
    frame = pd.DataFrame({"pos": np.arange(len(paths), dtype=np.int64),
                          "path": [os.path.abspath(str(p)) for p in paths]})
    ds = ray.data.from_pandas(_blocks(frame, batch_size)).map_batches(
        actor_cls, fn_constructor_kwargs={**actor_kwargs, "versions": runtime_versions(), "threads": _threads(options)},
        batch_size=batch_size, batch_format="numpy", **_map_args(ray, options, n_actors))
    ds.context.execution_options.preserve_order = True  # evidence lines in the local engine's order
    logger.info("ray: %d paths in batches of %d over %d %s actors", len(paths), batch_size, n_actors,
                "GPU" if options.num_gpus_per_worker > 0 else "CPU")
    seen: set[int] = set()
    for batch in _iterate(ds):
        for pos, blob, log, where in zip(batch["pos"].tolist(), batch["result"], batch["log"], batch["where"]):
            relog(log, where)
            if pos in seen:
                continue
            seen.add(pos)
            yield pos, pickle.loads(blob)
    if len(seen) != len(paths):
        raise RuntimeError(f"ray returned results for {len(seen)} of {len(paths)} images")
