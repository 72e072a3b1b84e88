"""``landmarks train``: read the labelled set, pick the route, train, write ``<out>/model.pt`` (hloc-style main)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

logger = logging.getLogger(__name__)

ROUTES = ("auto", "whiten", "finetune")
MODEL_NAME = "model.pt"


def choose_route(route: str, device: str | None, engine: str = "local") -> tuple[str, str]:
    """(route, why): ``auto`` fine-tunes on a GPU (or on Ray workers) and whitens on a CPU-only machine."""
    from index.choices import check_name

    check_name(route, ROUTES, "--route")
    if route != "auto":
        return route, "asked for"
    if engine == "ray":
        return "finetune", "--engine ray trains on its workers"
    import torch

    from retrieval.backbones import select_device

    dev = select_device(device)
    if dev.type == "cuda":
        return "finetune", f"a GPU is available ({torch.cuda.get_device_name(dev)})"
    return "whiten", (f"no GPU ({dev.type}): learned whitening needs forward passes only and did not hurt unseen "
                      "landmarks on real photos, where fine-tuning did (docs/training.md; --route finetune to fine-tune "
                      "anyway)")


def main(out: str | Path, train: str | Path | None = None, images: str | Path | None = None,
         index: str | Path | None = None, route: str = "auto", global_conf: str | Mapping[str, Any] | None = None,
         weights: str | None = None, image_size: int | None = None, device: str | None = None, seed: int = 0,
         val_fraction: float = 0.2, batch_size: int = 16, whiten: Mapping[str, Any] | None = None,
         finetune: Mapping[str, Any] | None = None, resume: bool = False, engine: str = "local",
         ray_options: Any = None, progress: bool = True) -> dict[str, Any]:
    """Train a global descriptor on labelled landmarks and write ``<out>/model.pt`` (plus ``train.json``).

    Returns a summary: the route taken and why, the checkpoint path, counts, validation figures, skipped images.
    """
    from retrieval.defaults import DEFAULT_GLOBAL
    from retrieval.global_model import resolve_global_conf

    from .checkpoint import save_checkpoint
    from .data import decode_rows, read_training_rows, split_by_landmark, write_skipped
    from .whiten import DEFAULT_WHITEN_CONF

    out = Path(out)
    route, why = choose_route(route, device, engine)
    if route == "whiten" and engine != "local":
        raise ValueError("--route whiten runs on this machine (minutes on a CPU): drop --engine ray")
    logger.info("route %s: %s", route, why)
    base = resolve_global_conf(global_conf or DEFAULT_GLOBAL, weights=weights, image_size=image_size)
    rows = read_training_rows(train, images, index)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_NAME
    start = time.perf_counter()
    if route == "whiten":
        from .whiten import train_whiten

        conf = {**DEFAULT_WHITEN_CONF, **{k: v for k, v in (whiten or {}).items() if v is not None}}
        if conf["shrinkage"] != "auto":  # checked before minutes of feature extraction, not after
            from .whiten import resolve_shrinkage

            conf["shrinkage"] = resolve_shrinkage(conf["shrinkage"], [])
        logger.info("training configuration: route whiten %s, global %s, seed %d, val fraction %.2f",
                    json.dumps(conf), json.dumps(base, default=str), seed, val_fraction)
        decoded = decode_rows(rows, base, progress)
        if decoded.rows.empty:
            raise ValueError("no training image could be read (see the warnings above)")
        val = split_by_landmark(decoded.rows["landmark_id"].to_numpy(object), val_fraction, seed)
        result = train_whiten(decoded, base, conf, val, device=device, batch_size=batch_size, seed=seed,
                              progress=progress)
        skipped = decoded.skipped
        trained_rows = decoded.rows
        settings = conf
    else:
        from .finetune import DEFAULT_FINETUNE_CONF, train_finetune

        conf = {**DEFAULT_FINETUNE_CONF, **{k: v for k, v in (finetune or {}).items() if v is not None}}
        logger.info("training configuration: route finetune %s, global %s, seed %d, val fraction %.2f, engine %s",
                    json.dumps(conf), json.dumps(base, default=str), seed, val_fraction, engine)
        result = train_finetune(rows, base, conf, out, device=device, seed=seed, val_fraction=val_fraction,
                                resume=resume, engine=engine, ray_options=ray_options, progress=progress)
        skipped = result.pop("skipped")
        trained_rows = result.pop("rows")
        settings = conf
    from index.manifest import package_version

    figures = result["figures"]
    training = {
        "route": route, "route_reason": why, "seed": seed, "settings": settings, "figures": figures,
        "images": int(len(trained_rows)), "landmarks": int(trained_rows["landmark_id"].nunique()),
        "skipped": len(skipped), "source": str(index or train or images), "package_version": package_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_checkpoint(model_path, result["global_conf"], result["backbone"], result["head"], result["neck"], training)
    summary = {"route": route, "route_reason": why, "model": str(model_path), **{k: training[k] for k in
               ("images", "landmarks", "skipped")}, "figures": figures, "seconds": round(time.perf_counter() - start, 1)}
    skipped_path = write_skipped(out, skipped)
    summary["skipped_csv"] = str(skipped_path) if skipped_path else None
    from index.manifest import atomic_write_text

    atomic_write_text(out / "train.json", json.dumps({**summary, "settings": settings,
                                                       "global_conf": result["global_conf"]}, indent=2, default=str) + "\n")
    return summary
