"""The checkpoint ``landmarks train`` writes (``<out>/model.pt``) and how a global configuration is built from it.

A checkpoint is one ``torch.save`` dict, loadable with ``weights_only=True``:

- ``format``: :data:`CHECKPOINT_FORMAT`;
- ``global_conf``: the global configuration it was trained with (``retrieval.global_model``; ``proj_dim`` is the
  neck's output dimension, ``weights`` is left out: it is the checkpoint itself);
- ``backbone``: the timm backbone's state dict (``create_backbone(weights=<this file>)`` finds it under that key);
- ``head``: GeM exponent and the neck (``pool.p``, ``proj.weight``, ``proj.bias``) of
  :class:`~retrieval.global_model.GlobalDescriptorNet`; the classifier of the fine-tune route is not kept;
- ``neck``: ``{"kind": "whiten" | "linear", "input_norm": bool}`` (``input_norm``: the GeM vector is
  L2-normalised before the neck, as learned whitening expects);
- ``training``: how it was made (route, seed, counts, validation figures, package version).

A global configuration that uses a checkpoint (``weights`` = its path) carries a ``checkpoint`` record with the
file's SHA-256: the index manifest stores it, so an index refuses rows from another model (another record is a
configuration mismatch), and an extractor refuses a file that changed since (:func:`verify_checkpoint`).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Mapping

import torch

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "landmarks-global/1"
# The keys of a global configuration that define the network (the rest: how an image is fed to it).
MODEL_KEYS = ("model", "gem_p", "proj_dim", "mean", "std")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(path: str | Path, tensors: bool = True) -> dict[str, Any] | None:
    """The content of a training checkpoint, or None when ``path`` is another kind of weight file.

    ``tensors=False`` memory-maps the file (the configuration is read without loading the weights).
    Raises ValueError naming the file when it cannot be read.
    """
    path = Path(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=not tensors)
        except RuntimeError:
            if tensors:
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file cannot be mapped
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise ValueError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return dict(obj)
    return None


def save_checkpoint(path: str | Path, global_conf: Mapping[str, Any], backbone: Mapping[str, torch.Tensor],
                    head: Mapping[str, torch.Tensor], neck: Mapping[str, Any], training: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically (temporary name, fsync, rename): ``path`` is whole or absent."""
    from index.manifest import atomic_output, normalise_config

    conf = {k: v for k, v in dict(global_conf).items() if k not in ("weights", "checkpoint")}
    obj = {
        "format": CHECKPOINT_FORMAT,
        "global_conf": normalise_config(conf),
        "backbone": {k: v.detach().cpu().contiguous() for k, v in backbone.items()},
        "head": {k: v.detach().cpu().contiguous() for k, v in head.items()},
        "neck": normalise_config(dict(neck)),
        "training": normalise_config(dict(training)),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)
    return path


def checkpoint_record(path: str | Path, ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The ``checkpoint`` record of a global configuration: what identifies the trained model."""
    training = ckpt.get("training") or {}
    return {
        "sha256": file_sha256(path),
        "route": training.get("route"),
        "neck": (ckpt.get("neck") or {}).get("kind"),
        "trained_images": training.get("images"),
        "trained_landmarks": training.get("landmarks"),
    }


def checkpoint_global_conf(path: str | Path) -> dict[str, Any] | None:
    """The global configuration a training checkpoint was made with, ``weights`` = the checkpoint's absolute
    path and its ``checkpoint`` record added; None when ``path`` is not a training checkpoint."""
    path = Path(path).expanduser().resolve()
    ckpt = read_checkpoint(path, tensors=False)
    if ckpt is None:
        return None
    return {**ckpt["global_conf"], "weights": str(path), "checkpoint": checkpoint_record(path, ckpt)}


def apply_checkpoint(conf: dict[str, Any]) -> dict[str, Any]:
    """A resolved global configuration whose ``weights`` is a training checkpoint, completed from it.

    The network keys (:data:`MODEL_KEYS`) are the checkpoint's; a configuration of another backbone is refused
    (ValueError naming both). A configuration that already carries a ``checkpoint`` record (read back from an
    index manifest) is returned as it is: :func:`verify_checkpoint` checks it against the file.
    """
    weights = conf.get("weights")
    if conf.get("checkpoint") or weights in (None, "auto", "timm", "random") or not Path(weights).is_file():
        return conf
    stored = checkpoint_global_conf(weights)
    if stored is None:
        return conf
    if stored["model"] != conf["model"]:
        raise ValueError(
            f"{weights} was trained from {stored['model']} ({stored.get('name')}), not {conf['model']} "
            f"({conf.get('name')}): drop --conf (the checkpoint's own configuration is used) or name its configuration"
        )
    out = dict(conf)
    out.update({k: stored[k] for k in MODEL_KEYS if k in stored})
    out["checkpoint"] = stored["checkpoint"]
    return out


def verify_checkpoint(conf: Mapping[str, Any]) -> None:
    """Refuse a checkpoint file that is not the one a configuration was made with (its SHA-256 differs).

    An index built with ``--weights runs/g1/model.pt`` must not answer queries with another model written to the
    same path later (a second ``train`` run): its descriptors would not be comparable with the stored ones.
    """
    from retrieval.backbones import WeightsMismatchError

    record = conf.get("checkpoint")
    if not record:
        return
    path = Path(conf["weights"])
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path} (the trained checkpoint this configuration uses)")
    digest = file_sha256(path)
    if digest != record.get("sha256"):
        raise WeightsMismatchError(
            f"{path} is not the checkpoint this index/configuration was built with (SHA-256 {digest[:12]}..., "
            f"recorded {str(record.get('sha256'))[:12]}...): another training run replaced it; restore that file "
            "or build a new index with the new checkpoint"
        )
