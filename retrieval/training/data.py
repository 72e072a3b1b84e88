"""The labelled training set of ``landmarks train``: its rows, its decoded images, its split held out by landmark."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


def read_training_rows(train: str | Path | None = None, images: str | Path | None = None,
                       index: str | Path | None = None) -> pd.DataFrame:
    """The labelled rows to train on: ``id``, ``landmark_id``, ``path``.

    From a CSV (``id,landmark_id``) with its image folder, a folder per landmark (``images`` alone), or an index's
    stored rows (``index``). Non-landmark rows are left out (counted in the log); a landmark with one image is
    kept (it is the common case: it still teaches what the others are not). Raises ValueError, one line naming
    the file, when not a single landmark is left.
    """
    if index is not None:
        if train is not None or images is not None:
            raise ValueError("--index takes the index's own rows: give either --index or --train/--images")
        from index.reader import IndexReader

        with IndexReader.open(index) as db:
            rows = db.metadata[["id", "landmark_id", "path"]].copy()
        source = f"index {index}"
    else:
        if images is None:
            raise ValueError("give --train CSV and --images folder (or --images alone for a folder per landmark), or --index")
        from retrieval.data import read_references

        rows = read_references(train, images)
        source = str(train or images)
    rows = rows.astype({"id": str, "landmark_id": str})
    labelled = rows[rows["landmark_id"] != ""].reset_index(drop=True)
    if labelled.empty:
        raise ValueError(f"{source}: no labelled landmark image at all ({len(rows)} rows, every landmark_id empty): "
                         "nothing to train on")
    sizes = labelled["landmark_id"].value_counts()
    logger.info("%s: %d labelled images of %d landmarks (%d with one image), %d non-landmark rows left out",
                source, len(labelled), len(sizes), int((sizes == 1).sum()), len(rows) - len(labelled))
    return labelled


@dataclass
class Decoded:
    """Decoded training images (the global model's input size) and those that could not be read."""

    rows: pd.DataFrame  # the readable rows, in input order
    images: list[np.ndarray]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (id, path, reason)


def decode_rows(rows: pd.DataFrame, global_conf: Mapping[str, Any], progress: bool = True) -> Decoded:
    """Decode every row as the global model sees it (``retrieval.extract.decode_item``: the pixels of inference).

    An unreadable image is reported (a warning naming it and the reason) and skipped.
    """
    from tqdm import tqdm

    from retrieval.extract import decode_item

    keep, images, skipped = [], [], []
    for i, (image_id, path) in enumerate(tqdm(list(zip(rows["id"], rows["path"])), desc="decode", unit="img",
                                              disable=not progress)):
        item = decode_item(path, int(global_conf["image_size"]), global_conf["resize"], None, index=i)
        if item.error:
            logger.warning("skipped %s (%s): %s", image_id, path, item.error)
            skipped.append((str(image_id), str(path), item.error))
            continue
        keep.append(i)
        images.append(item.global_image)
    return Decoded(rows.iloc[keep].reset_index(drop=True), images, skipped)


def write_skipped(out: Path, skipped: Sequence[tuple[str, str, str]]) -> Path | None:
    """``<out>/skipped.csv`` (id, path, reason) of the images training could not read; None when there were none."""
    if not skipped:
        return None
    from index.manifest import atomic_output

    path = out / "skipped.csv"
    with atomic_output(path) as tmp:
        pd.DataFrame(list(skipped), columns=["id", "path", "reason"]).to_csv(tmp, index=False)
    return path


def split_by_landmark(labels: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the validation rows: whole landmarks (only landmarks with >= 2 images, so that each
    validation image has a true match), about ``fraction`` of the images; none when too few landmarks qualify."""
    labels = np.asarray(labels, dtype=object)
    names, counts = np.unique(labels, return_counts=True)
    multi = names[counts >= 2]
    if fraction <= 0 or len(multi) < 2:
        return np.zeros(len(labels), bool)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(multi))
    target = fraction * len(labels)
    chosen, total = [], 0
    for i in order:
        if total >= target or len(chosen) == len(multi) - 1:  # keep at least one repeated landmark to train on
            break
        chosen.append(multi[i])
        total += int(counts[names == multi[i]][0])
    return np.isin(labels, chosen)


def retrieval_figures(xq: np.ndarray, q_labels: Sequence[str], xb: np.ndarray, b_labels: Sequence[str],
                      same: np.ndarray | None = None) -> dict[str, float]:
    """1-NN accuracy and GAP (cosine of the nearest neighbour as confidence) of queries ``xq`` against ``xb``.

    ``same``: (nq, nb) mask of pairs to ignore (a query against itself).
    """
    from eval.metrics import gap

    if len(xq) == 0:
        return {"r1": float("nan"), "gap": float("nan"), "queries": 0}
    sims = xq @ xb.T
    if same is not None:
        sims = np.where(same, -np.inf, sims)
    nn = sims.argmax(1)
    preds = {str(i): (str(b_labels[j]), float(sims[i, j])) for i, j in enumerate(nn)}
    solution = {str(i): frozenset([str(q_labels[i])]) for i in range(len(xq))}
    r1 = float(np.mean([preds[str(i)][0] == str(q_labels[i]) for i in range(len(xq))]))
    return {"r1": r1, "gap": float(gap(preds, solution)), "queries": int(len(xq))}


def leave_one_out_figures(x: np.ndarray, labels: Sequence[str], query_mask: np.ndarray | None = None) -> dict[str, float]:
    """Each image (of ``query_mask``; only images whose landmark has another image) against all the others."""
    labels = np.asarray(labels, dtype=object)
    names, counts = np.unique(labels, return_counts=True)
    repeated = np.isin(labels, names[counts >= 2])
    q = repeated if query_mask is None else repeated & query_mask
    idx = np.flatnonzero(q)
    same = np.zeros((len(idx), len(x)), bool)
    same[np.arange(len(idx)), idx] = True
    return retrieval_figures(x[idx], labels[idx], x, labels, same)


def augment(image: np.ndarray, rng: np.random.Generator, scale: tuple[float, float] = (0.5, 1.0),
            jitter: float = 0.25) -> np.ndarray:
    """A landmark-friendly random view of an RGB uint8 image, at the same size.

    Random resized crop at mild scale (``scale`` of the area, aspect 3/4..4/3: a landmark stays in view),
    brightness/contrast/saturation jitter of +-``jitter``, horizontal flip half the time; never a vertical flip
    (photos of buildings are upright).
    """
    import cv2

    h, w = image.shape[:2]
    for _ in range(10):
        area = rng.uniform(*scale) * h * w
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw, ch = w, h
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = cv2.resize(image[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    b, c, s = (1 + rng.uniform(-jitter, jitter) for _ in range(3))
    out = out * b
    out = (out - out.mean()) * c + out.mean()
    grey = out.mean(axis=2, keepdims=True)
    out = (out - grey) * s + grey
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(np.clip(out, 0, 255).astype(np.uint8))
