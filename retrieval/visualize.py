"""``show-matches``: the query beside its best candidates' images, RANSAC inliers drawn as lines."""
from __future__ import annotations

import logging
import unicodedata
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np

from index.manifest import atomic_output
from index.names import load_names

from .extract import Features, scale_keypoints
from .image_io import load_image
from .matching import verify_pair
from .recognize import Candidate, Evidence, Prediction, Recognizer, matcher_of

logger = logging.getLogger(__name__)

PANEL_SIDE = 480  # each image is drawn with its longer side at this many pixels
HEADER = 56  # pixels of text above each pair
NAME_CHARS = 60  # a landmark name in a caption is cut to this many characters


def _fit(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    scale = side / max(image.shape[:2])
    out = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                     interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return out, scale


def ascii_text(text: str) -> str:
    """``text`` as OpenCV's Hershey fonts can draw it: printable ASCII only.

    Accents are dropped (``Café`` -> ``Cafe``); any other character (CJK, emoji, controls) becomes ``?``.
    """
    plain = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in plain if not unicodedata.combining(ch))
    return "".join(ch if " " <= ch <= "~" else "?" for ch in plain)


def landmark_label(landmark_id: str | None, names: Mapping[str, str] | None) -> str:
    """``7`` or ``7 (Eiffel Tower)`` when the index names the landmark (cut to NAME_CHARS)."""
    name = (names or {}).get(landmark_id) if landmark_id is not None else None
    if not name:
        return str(landmark_id)
    if len(name) > NAME_CHARS:
        name = name[: NAME_CHARS - 3] + "..."
    return f"{landmark_id} ({name})"


def _text(canvas: np.ndarray, text: str, org: tuple[int, int], color=(20, 20, 20), scale: float = 0.5) -> None:
    # names and file names come from users' data: cv2.putText draws non-ASCII as '?'s or garbage
    cv2.putText(canvas, ascii_text(text), org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def draw_pair(
    query: np.ndarray, ref: np.ndarray, kq: np.ndarray, kr: np.ndarray, inliers: np.ndarray,
    q_orig: tuple[int, int], r_orig: tuple[int, int], header: list[str], max_lines: int = 200,
) -> np.ndarray:
    """One row: query (left), reference (right), a line per inlier pair.

    ``kq`` / ``kr`` are in the pixels of an image of size ``q_orig`` / ``r_orig`` (w, h): the
    arrays given here, or any other size of the same photos (mapped by the ratio of sizes).
    """
    qa, sq = _fit(query, PANEL_SIDE)
    ra, sr = _fit(ref, PANEL_SIDE)
    sq_x, sq_y = qa.shape[1] / q_orig[0], qa.shape[0] / q_orig[1]
    sr_x, sr_y = ra.shape[1] / r_orig[0], ra.shape[0] / r_orig[1]
    height = HEADER + max(qa.shape[0], ra.shape[0])
    width = qa.shape[1] + ra.shape[1] + 10
    canvas = np.full((height, width, 3), 255, np.uint8)
    canvas[HEADER:HEADER + qa.shape[0], : qa.shape[1]] = qa
    x0 = qa.shape[1] + 10
    canvas[HEADER:HEADER + ra.shape[0], x0:x0 + ra.shape[1]] = ra
    for i, line in enumerate(header[:3]):
        _text(canvas, line, (6, 16 + 17 * i))
    rng = np.random.default_rng(0)
    step = max(1, len(inliers) // max_lines)
    for a, b in inliers[::step]:
        p = (int(kq[a, 0] * sq_x), int(kq[a, 1] * sq_y + HEADER))
        q = (int(kr[b, 0] * sr_x + x0), int(kr[b, 1] * sr_y + HEADER))
        color = tuple(int(c) for c in rng.integers(40, 220, 3))
        cv2.line(canvas, p, q, color, 1, cv2.LINE_AA)
        cv2.circle(canvas, p, 2, color, -1)
        cv2.circle(canvas, q, 2, color, -1)
    return canvas


def sheet_rows(rec: Recognizer, evidence: Evidence, max_candidates: int = 3) -> list[tuple[Candidate, int, str]]:
    """What the match sheet draws, one ``(candidate, matcher, reference id)`` per row: the candidates by score (the
    inliers of the matcher that decided, each on its own threshold's scale: the answer first), each with the
    pair of the matcher that gave it that score (1 the primary, 2 the cascade's second; an unverified candidate:
    the primary matcher on its most similar image)."""
    t1, t2 = rec.conf["inlier_threshold"], rec.conf["cascade_threshold"]

    def score(c: Candidate) -> float:
        return max(c.inliers / max(t1, 1) if c.verified_refs else 0.0, c.inliers2 / max(t2, 1) if c.verified_refs2 else 0.0)

    rows = []
    for cand in sorted(evidence.candidates, key=lambda c: (-score(c), -c.vote, c.landmark_id))[:max_candidates]:
        matcher = matcher_of(cand, t1, t2)
        if matcher == 2 and rec.second is None:  # drawn by a recognizer whose cascade is off (a reload)
            matcher = 1 if cand.verified_refs else 0
        ref_id = cand.best_match_id2 if matcher == 2 else cand.best_match_id
        if ref_id is None:
            # not verified (no local features): show its most similar image
            ref_id = next((n[0] for n in evidence.neighbours if n[1] == cand.landmark_id), None)
        if ref_id is not None:
            rows.append((cand, max(matcher, 1), ref_id))
    return rows


def render(rec: Recognizer, name: str, query_arr: np.ndarray, features: Features, evidence: Evidence,
           pred: Prediction, max_candidates: int = 3, names: Mapping[str, str] | None = None) -> np.ndarray:
    """The match sheet (RGB) of a recognised query: one row per candidate, the answer first (:func:`sheet_rows`).

    Each row draws the pair of the matcher that decided that candidate (RootSIFT's, or the cascade's learned
    matcher's when its inliers gave the score), and the caption quotes that matcher and its threshold.
    ``query_arr`` is the decoded query at any size; ``features``, ``evidence`` and ``pred`` come from ``rec``
    (``describe_image``, ``evidence``, ``decide``). Keypoints are in detection pixels: they are drawn on the
    decoded arrays (the query's features carry their detection size; a stored reference's is derived from
    the decoded size and the extractor's resize rule). ``names``: landmark names to show beside the ids
    (``index.names.load_names``).
    """
    label = lambda lm: landmark_label(lm, names)  # noqa: E731
    explained = rec.explain(pred, label)
    decision = (f"landmark {label(pred.landmark_id)} (confidence {pred.confidence:.3f}, {explained})"
                if pred.landmark_id is not None else f"no landmark ({explained})")
    side = rec.local_image_size or 1024
    q_size = (query_arr.shape[1], query_arr.shape[0])
    query_local = {1: features.local}
    rows = []
    for rank, (cand, matcher, ref_id) in enumerate(sheet_rows(rec, evidence, max_candidates), start=1):
        extractor = rec.second if matcher == 2 else rec.local
        assert extractor is not None
        if matcher not in query_local:  # the query's learned features, from the image the cascade saw
            source = features.local_image if features.local_image is not None else query_arr
            query_local[matcher] = extractor.extract(source)
        row = int(rec.db.find_rows([ref_id])[0])
        ref_local = rec._reference_local(row, second=matcher == 2)
        res = verify_pair(query_local[matcher], ref_local, (rec.second_match_conf if matcher == 2 else rec.match_conf) or None)
        resize_max = extractor.conf.get("resize_max")  # DELF has none: it detects on the decoded image itself
        query_kp = scale_keypoints(query_local[matcher], q_size, resize_max).keypoints
        ref_arr, _ = load_image(rec.db.column("path")[row], max_side=side)
        r_size = (ref_arr.shape[1], ref_arr.shape[0])
        ref_kp = scale_keypoints(ref_local, r_size, resize_max).keypoints
        header = [
            f"{name}: {decision}",
            f"#{rank}: landmark {label(cand.landmark_id)}  vote {cand.vote:.3f}  sim {cand.sim:.3f}  "
            f"{rec.matchers.get(matcher, 'local')} inliers {res.inliers} / {len(res.matches)} matches",
            f"reference {ref_id}",
        ]
        rows.append(draw_pair(query_arr, ref_arr, query_kp, ref_kp, res.inlier_matches, q_size, r_size, header))
    if not rows:
        canvas = np.full((HEADER + 40, 640, 3), 255, np.uint8)
        _text(canvas, f"{name}: no candidate landmark in the index", (6, 20))
        rows = [canvas]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 8), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(rows, axis=0)


def main(index_dir: str | Path, image: str | Path, out_png: str | Path, max_candidates: int = 3,
         device: str | None = None) -> tuple[Path, Prediction, str]:
    """Recognise ``image`` and draw its verification against the best image of each candidate; returns the
    picture's path, the prediction and its evidence in words (:meth:`Recognizer.explain`)."""
    rec = Recognizer.from_index(index_dir, device=device)
    features = rec.fx.describe_image(image)
    evidence, _ = rec.evidence(features, early_exit=False)
    pred = rec.decide(evidence)
    query_arr, _ = load_image(image, max_side=rec.local_image_size or 1024)
    sheet = render(rec, Path(str(image)).name, query_arr, features, evidence, pred, max_candidates,
                   names=load_names(rec.db))
    out_png = Path(out_png)
    with atomic_output(out_png, keep_suffix=True) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            raise ValueError(f"cannot write {out_png}")
    return out_png, pred, rec.explain(pred)
