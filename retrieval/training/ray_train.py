"""``landmarks train --engine ray``: the fine-tune loop (:func:`~.finetune.train_loop`) data-parallel on Ray Train.

A :class:`ray.train.torch.TorchTrainer` starts ``--num-workers`` workers (``--gpus-per-worker`` GPUs each, or CPU
workers) with a torch.distributed process group. Each runs the same loop on its share of every global
micro-batch (rank ``r`` takes positions ``r, r + w, ...``) and the gradients are averaged over the group before
each optimiser step, so N workers train the model one worker trains with the same global batch (BatchNorm
statistics are frozen: tests/test_train.py checks two CPU workers against one). Rank 0 writes ``state.pt`` (resume
works as on the local engine) and, at the end, ``<out>/ray_net.pt``, which the driver turns into ``model.pt``.

The workers read the images from the paths in the CSV: on a cluster they must see the same files (a shared file
system). A local instance's workers import this checkout (engines.ray.init_ray).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

logger = logging.getLogger(__name__)

NET_NAME = "ray_net.pt"


def _worker_loop(config: Mapping[str, Any]) -> None:
    """One Ray Train worker: the shared training loop as this worker's rank; rank 0 saves the trained network."""
    import ray.train
    import ray.train.torch
    import torch

    from index.manifest import atomic_output

    from .finetune import train_loop

    logging.basicConfig(level=config.get("log_level", logging.INFO))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(config.get("threads", 1))))
    job = dict(config["job"], progress=rank == 0 and config["job"].get("progress", True))
    result = train_loop(job, rank=rank, world=world, device=device)
    if rank == 0:
        net = result["net"]
        with atomic_output(Path(job["out"]) / NET_NAME) as tmp:
            torch.save({"net": {k: v.cpu() for k, v in net.state_dict().items()}, "history": result["history"],
                        "skipped": {int(k): v for k, v in result["skipped"].items()}}, tmp)


def train_on_ray(job: Mapping[str, Any], options: Any) -> dict[str, Any]:
    """Run :func:`_worker_loop` on ``options.workers`` Ray Train workers; returns what train_loop's rank 0 returns."""
    import torch

    from engines import RayOptions
    from engines.ray import init_ray

    from .finetune import build_net

    try:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as exc:
        from engines import EngineUnavailableError

        raise EngineUnavailableError(f"--engine ray training needs Ray Train ({exc}); pip install -e \".[ray]\"") from None
    options = options or RayOptions(workers=1)
    init_ray(options)
    workers = int(options.workers or 1)
    gpus = float(options.num_gpus_per_worker or 0.0)
    threads = max(1, round(options.num_cpus_per_worker))
    out = Path(job["out"]).resolve()
    net_path = out / NET_NAME
    net_path.unlink(missing_ok=True)
    logger.info("ray train: %d workers, %g GPUs and %d CPUs each", workers, gpus, threads)
    resources = {"CPU": threads, **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"job": {**job, "out": str(out)}, "threads": threads, "log_level": logging.getLogger().level},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=resources),
        run_config=RunConfig(name="landmarks-train", storage_path=str(out / "ray")),
    )
    trainer.fit()
    saved = torch.load(net_path, map_location="cpu", weights_only=True)
    net, (mean, std) = build_net(job["base_conf"], job["conf"]["dim"])
    net.load_state_dict(saved["net"])
    return {"net": net, "history": saved["history"], "skipped": saved["skipped"], "mean": mean, "std": std}
