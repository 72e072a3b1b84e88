"""The CPU route of ``landmarks train``: learned whitening on frozen global descriptors.

Radenović, Tolias and Chum, "Fine-tuning CNN image retrieval with no human annotation" (TPAMI 2018), section
"learned whitening" (after Mikolajczyk and Matas, 2007): with ``m`` the mean descriptor, ``C_S`` the covariance of
the differences of matching pairs and ``C_D`` the covariance of the descriptors once whitened by ``C_S^-1/2``,

    P = eig(C_S^-1/2 C_D C_S^-1/2)^T C_S^-1/2,    x -> L2(P (L2(x) - m))

whitens what varies between two photos of the same landmark and keeps (ranked by variance) what tells
landmarks apart. It is one linear layer over the frozen backbone + GeM (``proj`` of
:class:`~retrieval.global_model.GlobalDescriptorNet`, input L2-normalised), so an index built with it costs
nothing more than today's.

A small collection has few matching pairs (most landmarks have one image), so the matching pairs are (a) every
two images of a landmark and (b) each image with ``views`` random augmented views of itself (mild crop, colour
jitter, flip: the variation a second photo of the same place brings), and ``C_S`` is shrunk towards a multiple of
the identity (Ledoit-Wolf style: ``(1 - a) C_S + a tr(C_S)/d I``) so that directions no pair constrains are not
blown up. ``shrinkage`` 1 with ``dim`` = the width leaves only the centring by ``m``.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_WHITEN_CONF: dict[str, Any] = {
    "views": 4,  # augmented views of each image: matching pairs (image, view) for C_S
    "shrinkage": 0.6,  # a in (1 - a) C_S + a tr(C_S)/d I, or "auto" (Ledoit-Wolf); chosen on real photos (docs/figures.md)
    "dim": None,  # output dimension (top eigenvectors of C_D); None: the backbone's width (index unchanged)
    "max_pairs_per_landmark": 100,  # matching pairs of images taken from one landmark (a large one dominates C_S)
}


def describe(extractor, images: Sequence[np.ndarray], batch_size: int = 16, progress: bool = True,
             desc: str = "describe") -> np.ndarray:
    """(n, d) global descriptors of decoded images by ``extractor`` (a GlobalExtractor), in batches."""
    from tqdm import tqdm

    out = [extractor(list(images[i:i + batch_size]))
           for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress)]
    return np.concatenate(out) if out else np.zeros((0, extractor.dim), np.float32)


def matching_pairs(labels: Sequence[str], max_per_landmark: int, seed: int) -> np.ndarray:
    """(p, 2) row pairs of images of the same landmark, at most ``max_per_landmark`` per landmark."""
    labels = np.asarray(labels, dtype=object)
    rng = np.random.default_rng(seed)
    pairs = []
    for name in np.unique(labels):
        rows = np.flatnonzero(labels == name)
        if len(rows) < 2:
            continue
        ii, jj = np.triu_indices(len(rows), 1)
        take = np.arange(len(ii))
        if len(take) > max_per_landmark:
            take = np.sort(rng.choice(len(ii), max_per_landmark, replace=False))
        pairs.append(np.stack([rows[ii[take]], rows[jj[take]]], 1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), int)


def resolve_shrinkage(shrinkage: float | str, diffs: np.ndarray) -> float:
    """The shrinkage intensity: a number in [0, 1] as given, or ``"auto"``: the Ledoit-Wolf estimate (Ledoit and
    Wolf, "A well-conditioned estimator for large-dimensional covariance matrices", 2004) from the matching-pair
    differences themselves (zero-mean by construction), so that few pairs get much shrinkage and many pairs little."""
    if isinstance(shrinkage, str):
        if shrinkage != "auto":
            try:
                shrinkage = float(shrinkage)
            except ValueError:
                raise ValueError(f"shrinkage must be a number in [0, 1] or 'auto', got {shrinkage!r}") from None
        elif len(diffs) < 2:
            return 1.0
        else:
            from sklearn.covariance import ledoit_wolf_shrinkage

            return float(ledoit_wolf_shrinkage(np.asarray(diffs, np.float64), assume_centered=True))
    if not 0.0 <= float(shrinkage) <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1] or 'auto', got {shrinkage}")
    return float(shrinkage)


def learn_whitening(x: np.ndarray, diffs: np.ndarray, shrinkage: float | str, dim: int | None = None,
                    eps: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Learned whitening (module docstring). Pure math.

    Args:
        x: (n, d) unit descriptors whose mean and spread are modelled (C_D).
        diffs: (p, d) differences of matching descriptors (C_S); p = 0 leaves C_S isotropic.
        shrinkage: a in [0, 1], or "auto" (:func:`resolve_shrinkage`).
        dim: output dimension (<= d); None keeps d.
    Returns:
        (m (d,), P (dim, d)) so that a descriptor becomes ``P @ (x - m)`` (then L2).
    """
    x = np.asarray(x, np.float64)
    d = x.shape[1]
    shrinkage = resolve_shrinkage(shrinkage, diffs)
    dim = d if dim is None else int(dim)
    if not 1 <= dim <= d:
        raise ValueError(f"dim must be in 1..{d}, got {dim}")
    m = x.mean(0)
    if len(diffs):
        diffs = np.asarray(diffs, np.float64)
        cs = diffs.T @ diffs / len(diffs)
    else:
        cs = np.eye(d) * (np.mean(np.sum((x - m) ** 2, 1)) / d)
    cs = (1 - shrinkage) * cs + shrinkage * (np.trace(cs) / d) * np.eye(d)
    w, v = np.linalg.eigh(cs)
    p1 = (v / np.sqrt(np.maximum(w, eps))) @ v.T  # C_S^-1/2 (symmetric)
    z = (x - m) @ p1.T
    w2, u = np.linalg.eigh(z.T @ z / len(z))
    u = u[:, np.argsort(w2)[::-1][:dim]]
    return m.astype(np.float32), (u.T @ p1).astype(np.float32)


def apply_whitening(x: np.ndarray, m: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``L2(P (x - m))`` of (n, d) descriptors: what the network's neck computes."""
    y = (np.asarray(x, np.float32) - m) @ p.T
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def fit(x: np.ndarray, labels: Sequence[str], views: np.ndarray, view_of: np.ndarray, conf: Mapping[str, Any],
        seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Whitening from clean descriptors ``x`` (landmark ``labels``) and augmented ``views`` (row ``view_of``):
    (m, P, the shrinkage intensity used)."""
    pairs = matching_pairs(labels, int(conf["max_pairs_per_landmark"]), seed)
    diffs = [x[pairs[:, 0]] - x[pairs[:, 1]]] if len(pairs) else []
    if len(views):
        diffs.append(x[view_of] - views)
    d = np.concatenate(diffs) if diffs else np.zeros((0, x.shape[1]), np.float32)
    a = resolve_shrinkage(conf["shrinkage"], d)
    m, p = learn_whitening(np.concatenate([x, views]) if len(views) else x, d, a, conf["dim"])
    return m, p, a


def train_whiten(decoded, base_conf: Mapping[str, Any], conf: Mapping[str, Any], val_mask: np.ndarray,
                 device: str | None = None, batch_size: int = 16, seed: int = 0,
                 progress: bool = True) -> dict[str, Any]:
    """Fit the whitening on decoded training images; the pieces of the checkpoint and the figures.

    Returns {"backbone", "head", "neck", "global_conf", "figures"}: validation figures (images of the landmarks
    of ``val_mask`` against every image, whitening fitted without those landmarks) before and after, then the
    whitening refitted on every image.
    """
    import torch

    from retrieval.global_model import GlobalExtractor

    from .data import augment, leave_one_out_figures

    if base_conf.get("checkpoint") or base_conf.get("proj_dim"):
        raise ValueError("--route whiten starts from a backbone without a neck (proj_dim None, no trained checkpoint); "
                         f"got {base_conf.get('weights')} with proj_dim {base_conf.get('proj_dim')}")
    start = time.perf_counter()
    extractor = GlobalExtractor(base_conf, device=device)
    x = describe(extractor, decoded.images, batch_size, progress, "descriptors")
    rng = np.random.default_rng(seed)
    n_views = int(conf["views"])
    view_images, view_of = [], []
    for i, im in enumerate(decoded.images):
        for _ in range(n_views):
            view_images.append(augment(im, rng))
            view_of.append(i)
    views = describe(extractor, view_images, batch_size, progress, "augmented views")
    view_of = np.asarray(view_of, int)
    labels = decoded.rows["landmark_id"].to_numpy(object)
    seconds_features = time.perf_counter() - start

    figures: dict[str, Any] = {"images": len(x), "views": len(views), "seconds_features": round(seconds_features, 1)}
    if val_mask.any():
        train = ~val_mask
        m, p, _ = fit(x[train], labels[train], views[train[view_of]], _reindex(view_of[train[view_of]], train), conf, seed)
        figures["val_before"] = leave_one_out_figures(x, labels, val_mask)
        figures["val_after"] = leave_one_out_figures(apply_whitening(x, m, p), labels, val_mask)
        figures["val_landmarks"] = int(len(np.unique(labels[val_mask])))
    m, p, a = fit(x, labels, views, view_of, conf, seed)
    figures["shrinkage"] = round(a, 4)
    logger.info("whitening fitted on %d images and %d views, shrinkage %.3f (%s)", len(x), len(views), a, conf["shrinkage"])
    figures["train_before"] = leave_one_out_figures(x, labels)
    figures["train_after"] = leave_one_out_figures(apply_whitening(x, m, p), labels)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    pm = torch.from_numpy(p)
    head = {"pool.p": extractor.net.pool.p.detach().cpu(), "proj.weight": pm,
            "proj.bias": -(pm @ torch.from_numpy(m))}
    return {
        "backbone": extractor.net.backbone.state_dict(),
        "head": head,
        "neck": {"kind": "whiten", "input_norm": True},
        "global_conf": {**base_conf, "proj_dim": int(p.shape[0])},
        "figures": figures,
    }


def _reindex(rows: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Row numbers of the full set -> row numbers among the ``kept`` rows."""
    return (np.cumsum(kept) - 1)[rows]
