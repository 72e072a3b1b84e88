"""``--engine ray``: the same per-image code, mapped over a Ray cluster (or a local Ray instance).

Ray Data maps over rows ``(pos, path)`` in batches with a pool of actors (class-based UDFs): each actor
builds its model once (a :class:`~retrieval.extract.FeatureExtractor`, or a ``Recognizer`` for
``predict``), decodes the images from their paths itself (pixels never travel through the driver) and
returns one pickled result per row. The driver iterates the results in input order and feeds the same
code the local engine feeds: :func:`retrieval.extract.main` writes shards and commits,
:func:`eval.runner.collect_evidence` appends evidence lines. Resume semantics are therefore the local
engine's: ids already stored (or queries already in the evidence file) are never sent to Ray, and a
result that Ray delivers twice (a retried task) is dropped by position here and by id at commit.

Ray is an optional extra (``pip install -e ".[ray]"``); it is imported only when this engine is used.
"""
from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from index.choices import check_name

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
# The package root (holds retrieval/, index/, eval/): put on a local Ray instance's workers' PYTHONPATH so
# they import this checkout's code, whatever else is installed.
CODE_ROOT = Path(__file__).resolve().parents[1]


class EngineUnavailableError(ValueError):
    """--engine ray without Ray installed (a ValueError: the CLI shows it as one line, exit 2)."""


@dataclass
class RayOptions:
    """How to run on Ray (the CLI's --engine ray options)."""

    address: str | None = None  # None: start a local Ray instance; "auto" or "ray://host:10001": join a cluster
    num_gpus_per_worker: float = 0.0  # > 0: GPU actors (one model per GPU share); 0: CPU actors
    num_cpus_per_worker: float = 1.0  # CPU actors: torch threads per actor = this (rounded, at least 1)
    workers: int | None = None  # actors in the pool; None: as many as the cluster's GPUs or CPUs allow
    num_cpus: int | None = None  # local instance only: CPUs Ray may use (None: all)


def check_engine(engine: str) -> None:
    """Validate an --engine name; for "ray", fail early (one line naming the extra) when Ray is missing."""
    check_name(engine, ENGINES, "engine")
    if engine == "ray":
        _import_ray()


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the [data] extra)
    except ImportError as exc:
        raise EngineUnavailableError(
            f"--engine ray needs Ray Data, which is not installed ({exc}); install the extra: pip install -e \".[ray]\""
        ) from None
    return ray


def init_ray(options: RayOptions | None = None) -> Any:
    """Connect to the cluster at ``options.address``, or start a local instance (reused if already running)."""
    ray = _import_ray()
    options = options or RayOptions()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "ignore_reinit_error": True, "log_to_driver": False}
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


def map_paths(
    paths: Sequence[str], actor_cls: type, actor_kwargs: Mapping[str, Any], options: RayOptions | None = None,
    batch_size: int = 16,
) -> Iterator[tuple[int, Any]]:
    """(position, result) for each path, in input order, from ``actor_cls(**actor_kwargs)(batch)`` on Ray.

    ``actor_cls`` is a class-based UDF taking a numpy batch ``{"pos", "path"}`` and returning
    ``{"pos", "result"}`` with ``result`` pickled per row (see :class:`ExtractActor`). Every position is
    yielded exactly once (a row that a retried task delivers again is dropped).
    """
    if not len(paths):
        return
    options = options or RayOptions()
    ray = init_ray(options)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # shards and evidence lines in the local engine's order
    n_actors = _pool_size(ray, options)
    gpu = options.num_gpus_per_worker > 0
    # absolute: actors do not share the driver's working directory (on a cluster, the same shared mount)
    items = [{"pos": i, "path": os.path.abspath(str(p))} for i, p in enumerate(paths)]
    n_blocks = max(1, min(len(items), -(-len(items) // batch_size)))
    ds = ray.data.from_items(items, override_num_blocks=n_blocks).map_batches(
        actor_cls,
        fn_constructor_kwargs={**actor_kwargs, "threads": 1 if gpu else max(1, round(options.num_cpus_per_worker))},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=n_actors),  # a fixed pool (``concurrency=n`` before Ray 2.51)
        num_gpus=options.num_gpus_per_worker if gpu else None,
        num_cpus=None if gpu else options.num_cpus_per_worker,
    )
    logger.info("ray: %d paths in batches of %d over %d %s actors", len(paths), batch_size, n_actors,
                "GPU" if gpu else "CPU")
    seen: set[int] = set()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for pos, blob in zip(batch["pos"].tolist(), batch["result"]):
            if pos in seen:
                continue
            seen.add(pos)
            yield pos, pickle.loads(blob)
    if len(seen) != len(paths):
        raise RuntimeError(f"ray returned results for {len(seen)} of {len(paths)} images")


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))


def pack_results(pos: np.ndarray, results: Sequence[Any]) -> dict[str, np.ndarray]:
    """An actor's output batch: positions and one pickled result per row."""
    blobs = np.empty(len(results), dtype=object)
    blobs[:] = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in results]
    return {"pos": np.asarray(pos, np.int64), "result": blobs}


class ExtractActor:
    """Ray actor: a FeatureExtractor built once; per batch, (position, Features | error message) per path.

    Runs :meth:`FeatureExtractor.iter_paths` (decode + global + local), the local engine's code.
    """

    def __init__(self, index_config: Mapping[str, Any], local_pca: Mapping[str, np.ndarray] | None,
                 device: str | None, threads: int = 1):
        from .extract import DEFAULT_LOCAL_IMAGE_SIZE, FeatureExtractor

        _set_threads(threads)
        self.fx = FeatureExtractor(index_config["global"], index_config["local"], device=device,
                                   local_image_size=index_config["local_image_size"] or DEFAULT_LOCAL_IMAGE_SIZE)
        if local_pca is not None and self.fx.local_extractor is not None:
            self.fx.local_extractor.set_pca(dict(local_pca))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        out: list[Any] = [None] * len(paths)
        for i, res in self.fx.iter_paths(paths, batch_size=len(paths), num_workers=0):
            out[i] = res
        return pack_results(batch["pos"], out)


def iter_features(fx: Any, paths: Sequence[str], local_pca: Mapping[str, np.ndarray] | None, device: str | None,
                  options: RayOptions | None = None, batch_size: int = 16) -> Iterator[tuple[int, Any]]:
    """Ray's :meth:`FeatureExtractor.iter_paths`: (position, Features | error message), in input order."""
    kwargs = {"index_config": fx.index_config(), "local_pca": local_pca, "device": device}
    yield from map_paths(paths, ExtractActor, kwargs, options, batch_size)

