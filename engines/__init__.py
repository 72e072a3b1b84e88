"""Engines: where the per-image work of ``build-index``, ``evaluate`` and ``predict`` runs.

* ``local`` (the default): in this process, by the extraction and recognition code itself
  (:func:`retrieval.extract.main` writes the shards, :func:`eval.evidence.collect_evidence` the evidence).
* ``ray``: on Ray Data actors, on a local Ray instance or a cluster (:mod:`engines.ray`): for a build the
  actors write their shards straight into the index directory and this process only commits them.

Dependencies run one way: ``cli.py`` and ``eval/`` call ``engines/``, which calls ``retrieval/`` and
``index/``. The extraction code knows nothing of engines: :func:`build_index` hands
:func:`retrieval.extract.main` the Ray engine's shard writer as an argument. Importing this package imports
neither Ray nor torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from index.choices import check_name

ENGINES = ("local", "ray")


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
        from .ray import import_ray

        import_ray()


def build_index(references: Any, index_dir: str | Path, *args: Any, engine: str = "local",
                ray_options: RayOptions | None = None, device: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """:func:`retrieval.extract.main` (build or extend an index) with its extraction on ``engine``.

    ``engine="ray"``: Ray actors (``ray_options``) extract and write the shards; this process commits them,
    and extracts any secondary local sets afterwards (see :class:`engines.ray.RayShardWriter`). Arguments
    and returned statistics are those of :func:`retrieval.extract.main`, plus the writer's own statistics.
    """
    from retrieval import extract

    check_engine(engine)
    writer = None
    if engine == "ray":
        from .ray import RayShardWriter

        writer = RayShardWriter(ray_options or RayOptions(), device)
    return extract.main(references, index_dir, *args, device=device, write_shards=writer, **kwargs)
