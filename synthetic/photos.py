"""Seeded synthetic landmark photos in Google-Landmarks-v2 (GLDv2) form.

No real photos can ship with the product, so ``landmarks demo`` and the test
suite use this generator instead.  It is fast (a default demo set of about a
hundred and twenty 384-px JPEGs takes a few seconds on two CPU cores) and
deterministic: the same parameters and seed give byte-identical images and
CSVs on the same platform and library versions.

Generation model
----------------
*Landmarks.*  Each landmark is a procedurally built building, drawn as one
RGBA texture of its front facade (alpha = silhouette against the sky) plus a
plain side wall.  A per-landmark *style* fixes its kind (palace, tower,
church, temple, triumphal gate, modern glass building), its palette (wall,
trim, roof, glass, accent colours) and its wall material (brick, rusticated
ashlar, banded stone, lozenge tiles, plaster, glass panels).  On top of the
wall the builder draws floors of windows (rectangular, arched, gridded,
shuttered, pedimented, with per-window curtains and lighting), cornices with
ornament bands (dentils, zig-zags, meanders, rosettes, glyph "scripts"),
pilasters and columns, portals with voussoirs, rose windows, clocks,
inscriptions in Hershey fonts, niches with statues and roofs (pediments,
domes, spires, crenellations, balustrades, mansards).  Weathering (stains,
vertical grime streaks) and fine grain give the high-frequency texture on
which local features (SIFT and friends) find repeatable keypoints.

*Photos.*  A landmark is "photographed" by a pinhole camera: a random
out-of-plane rotation of the facade plane (yaw up to ``max_tilt`` radians,
mostly upward-looking pitch, a little roll), a focal length between tele and
mild wide angle, a scale change of 0.6-1.5 around a framing that fits the
building, and a translation (crop) that keeps the facade centre in view.  The
front facade is a plane, so the facade-to-photo map is the exact homography
``H = K [r1 r2 t] T`` that :func:`render_view` returns; the side wall, when
the camera sees it, is a second plane warped with its own homography
(piecewise-planar buildings).  Faces are shaded by a random sun (or overcast
light) and may carry a soft cast shadow.  The building stands on a random
background: sky gradient with clouds, distant hazy skyline and trees, ground
(paving in perspective, grass or asphalt).  In front of it there may be an
occluder (people, a tree, a car, a lamp post with a sign, a poster board or a
plain blob).  Finally the photo goes through a camera pipeline: optical or
motion blur, exposure, white balance, gamma, contrast, saturation,
vignetting, signal-dependent sensor noise and, when written to disk, JPEG
compression at a random quality.

*Distractors.*  Non-landmark photos are landscapes (sky, hazy mountain
layers, lakes, meadows, forests), indoor rooms in one-point perspective
(furniture, shelves of books, paintings, lamps), table tops with everyday
objects, and close-ups of natural textures (foliage, gravel, water, bark).
They share the camera pipeline but never use the building textures.

*Datasets.*  :func:`generate_demo_dataset` writes ``images/<id>.jpg`` plus
``train.csv`` (reference images) and ``holdout.csv`` (queries) with the GLDv2
columns ``id,landmark_id``; non-landmark rows have an empty ``landmark_id``.
About a quarter of the landmarks get a single reference image (one-shot);
"unseen" landmarks appear only among the queries (open-set).  Every image
draws from its own random stream derived from ``(seed, role, index)``, so
images do not depend on generation order.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from index.manifest import atomic_output

__all__ = [
    "DemoDataset",
    "generate_demo_dataset",
    "make_landmark",
    "render_view",
    "make_distractor",
]

logger = logging.getLogger(__name__)

#: Bumped whenever the images produced for given parameters change.
GENERATOR_VERSION = 1

_AA = cv2.LINE_AA
_ID_RE = re.compile(r"^[0-9a-f]{16}\.jpg$")


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def _ellipse(img, center, axes, angle, a0, a1, color, thickness=1, line_type=cv2.LINE_8) -> None:
    """cv2.ellipse that tolerates degenerate (negative) axes."""
    axes = (max(0, int(axes[0])), max(0, int(axes[1])))
    cv2.ellipse(img, (int(center[0]), int(center[1])), axes, float(angle), float(a0), float(a1), color, thickness, line_type)


def _circle(img, center, radius, color, thickness=1, line_type=cv2.LINE_8) -> None:
    """cv2.circle that tolerates negative radii."""
    cv2.circle(img, (int(center[0]), int(center[1])), max(0, int(radius)), color, thickness, line_type)


def _u(rng: np.random.Generator, a: float, b: float) -> float:
    return float(rng.uniform(a, b))


def _ri(rng: np.random.Generator, a: int, b: int) -> int:
    """Random integer in the inclusive range [a, b]."""
    return int(rng.integers(a, b + 1))


def _pick(rng: np.random.Generator, seq, p=None):
    return seq[int(rng.choice(len(seq), p=p))]


def _col(c) -> tuple[float, float, float]:
    """Colour as a tuple for OpenCV drawing calls (clipped to 0..255)."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


def _shade(c, k: float) -> np.ndarray:
    return np.clip(np.asarray(c, dtype=np.float32) * k, 0, 255)


def _mix(a, b, t: float) -> np.ndarray:
    return np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t


def _jitter(rng: np.random.Generator, c, hue: float = 0.03, sat: float = 0.12, val: float = 0.10) -> np.ndarray:
    """Jitter an RGB colour in HSV space."""
    r, g, b = (float(v) / 255.0 for v in c)
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    h = (h + _u(rng, -hue, hue)) % 1.0
    s = min(1.0, max(0.0, s * (1 + _u(rng, -sat, sat)) + _u(rng, -0.02, 0.02)))
    v = min(1.0, max(0.0, v * (1 + _u(rng, -val, val))))
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255


def _lum(c) -> float:
    c = np.asarray(c, np.float32)
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _noise(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 1,
           aspect: float = 1.0) -> np.ndarray:
    """Smooth value noise (float32, zero mean, unit std) of shape (h, w).

    ``cell`` is the feature size in pixels of the first octave; ``aspect``
    > 1 stretches features vertically (streaks), < 1 horizontally.
    """
    h, w = max(int(h), 1), max(int(w), 1)
    out = np.zeros((h, w), np.float32)
    amp = 1.0
    for o in range(octaves):
        cx = max(1.0, cell / 2 ** o / math.sqrt(aspect))
        cy = max(1.0, cell / 2 ** o * math.sqrt(aspect))
        gh, gw = int(h / cy) + 3, int(w / cx) + 3
        g = rng.standard_normal((gh, gw), dtype=np.float32)
        up = cv2.resize(g, (int(math.ceil(gw * cx)), int(math.ceil(gh * cy))), interpolation=cv2.INTER_CUBIC)
        out += amp * up[:h, :w]
        amp *= 0.5
    sd = float(out.std())
    return out / sd if sd > 1e-6 else out


def _noise1d(rng: np.random.Generator, n: int, cell: float, octaves: int = 3) -> np.ndarray:
    return _noise(rng, 1, n, cell, octaves)[0]


def _words(rng: np.random.Generator, n_words: int) -> str:
    """Pseudo-Latin capitalised words for inscriptions and signs."""
    cons = "BCDFGLMNPRSTVZ"
    vows = "AEIOU"
    words = []
    for _ in range(n_words):
        syl = _ri(rng, 2, 4)
        w = "".join(cons[_ri(rng, 0, len(cons) - 1)] + vows[_ri(rng, 0, len(vows) - 1)] for _ in range(syl))
        if rng.random() < 0.4:
            w += cons[_ri(rng, 0, len(cons) - 1)]
        words.append(w)
    return " ".join(words)


_FONTS = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
          cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL, cv2.FONT_HERSHEY_SCRIPT_COMPLEX]


def _text_fit(img: np.ndarray, text: str, x0: int, y0: int, x1: int, y1: int, color, font: int,
              thick: int = 1) -> None:
    """Draw ``text`` centred and scaled to fit the box (x0, y0)-(x1, y1)."""
    if x1 - x0 < 6 or y1 - y0 < 4:
        return
    (tw, th), base = cv2.getTextSize(text, font, 1.0, thick)
    scale = min((x1 - x0) * 0.92 / max(tw, 1), (y1 - y0) * 0.8 / max(th + base * 0.5, 1))
    if scale <= 0.05:
        return
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    org = (int((x0 + x1 - tw) / 2), int((y0 + y1 + th) / 2))
    cv2.putText(img, text, org, font, scale, _col(color), thick, _AA)


def _glyph(img: np.ndarray, rng: np.random.Generator, x: float, y: float, w: float, h: float, color,
           thick: int = 1) -> None:
    """A random 'script' glyph: strokes between points of a 3x3 lattice."""
    lat = [(x + w * i / 2, y + h * j / 2) for j in range(3) for i in range(3)]
    n = _ri(rng, 2, 4)
    for _ in range(n):
        a, b = rng.choice(9, 2, replace=False)
        p, q = lat[int(a)], lat[int(b)]
        cv2.line(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), _col(color), thick, _AA)
    if rng.random() < 0.3:
        p = lat[_ri(rng, 0, 8)]
        _circle(img, (int(p[0]), int(p[1])), max(1, int(w / 5)), _col(color), thick, _AA)


# --------------------------------------------------------------------------
# landmark style and facade construction
# --------------------------------------------------------------------------

_WALLS = [(214, 186, 140), (196, 112, 78), (232, 228, 218), (152, 152, 158), (158, 72, 52),
          (216, 164, 82), (166, 192, 212), (222, 168, 164), (176, 200, 164), (236, 214, 128),
          (112, 56, 44), (242, 238, 228), (182, 176, 164), (120, 110, 100), (205, 133, 63)]
_TRIMS = [(245, 242, 232), (228, 218, 192), (70, 70, 76), (200, 178, 130), (40, 40, 44),
          (160, 150, 138), (250, 250, 250), (120, 90, 60)]
_ROOFS = [(70, 76, 88), (86, 156, 138), (168, 72, 52), (212, 172, 66), (118, 120, 126),
          (44, 46, 52), (120, 60, 50), (60, 110, 150)]
_GLASS = [(38, 48, 62), (30, 34, 40), (52, 78, 92), (44, 66, 60), (60, 70, 90), (90, 110, 130)]
_KINDS = ["palace", "tower", "church", "temple", "gate", "modern"]


@dataclass
class _Style:
    kind: str
    wall_kind: str
    wall: np.ndarray
    wall2: np.ndarray
    trim: np.ndarray
    accent: np.ndarray
    accent2: np.ndarray
    glass: np.ndarray
    roof: np.ndarray
    mortar: np.ndarray
    block_h: int
    block_w: int
    window_kinds: list[str]
    shutters: bool
    pediments: bool
    pilasters: bool
    cornice: str
    font: int
    text: str
    k: float  # drawing scale (size / 512)


def _make_style(rng: np.random.Generator, size: int) -> _Style:
    k = size / 512.0
    kind = _pick(rng, _KINDS, p=[0.22, 0.18, 0.18, 0.14, 0.12, 0.16])
    wall = _jitter(rng, _pick(rng, _WALLS))
    trim = _jitter(rng, _pick(rng, _TRIMS), val=0.05)
    for _ in range(6):
        if abs(_lum(wall) - _lum(trim)) >= 45:
            break
        trim = _jitter(rng, _pick(rng, _TRIMS), val=0.05)
    if abs(_lum(wall) - _lum(trim)) < 45:
        trim = _shade(wall, 1.5 if _lum(wall) < 128 else 0.5)
    accent = _hsv(_u(rng, 0, 1), _u(rng, 0.45, 0.9), _u(rng, 0.35, 0.8))
    accent2 = _hsv(_u(rng, 0, 1), _u(rng, 0.5, 0.95), _u(rng, 0.5, 0.95))
    wall_kind = _pick(rng, ["brick", "ashlar", "bands", "lozenge", "plaster"],
                      p=[0.28, 0.26, 0.14, 0.1, 0.22])
    if kind == "modern":
        wall_kind = "panels"
    wall2 = _jitter(rng, _pick(rng, _WALLS)) if wall_kind in ("bands", "lozenge") else _shade(wall, 0.85)
    if wall_kind in ("bands", "lozenge") and abs(_lum(wall) - _lum(wall2)) < 35:
        wall2 = _shade(wall, 0.62 if _lum(wall) > 110 else 1.45)
    bh = {"brick": _ri(rng, 6, 9), "ashlar": _ri(rng, 14, 24), "bands": _ri(rng, 10, 22),
          "lozenge": _ri(rng, 12, 22), "plaster": 10, "panels": _ri(rng, 28, 44)}[wall_kind]
    bw = {"brick": int(bh * _u(rng, 2.2, 2.9)), "ashlar": int(bh * _u(rng, 1.5, 3.0))}.get(wall_kind, bh)
    win = _pick(rng, [["rect"], ["arch"], ["rect", "arch"], ["grid"], ["arch", "grid"], ["lancet"],
                      ["rect", "grid", "round"]])
    return _Style(
        kind=kind, wall_kind=wall_kind, wall=wall, wall2=wall2, trim=trim, accent=accent, accent2=accent2,
        glass=_jitter(rng, _pick(rng, _GLASS)), roof=_jitter(rng, _pick(rng, _ROOFS)),
        mortar=_shade(wall, _u(rng, 0.55, 0.75)) if rng.random() < 0.6 else _mix(wall, (235, 230, 220), 0.6),
        block_h=max(3, int(round(bh * k))), block_w=max(4, int(round(bw * k))), window_kinds=win,
        shutters=bool(rng.random() < 0.3), pediments=bool(rng.random() < 0.45),
        pilasters=bool(rng.random() < 0.5),
        cornice=_pick(rng, ["dentil", "zigzag", "circles", "glyphs", "key", "plain"]),
        font=_pick(rng, _FONTS[:5]), text=_words(rng, _ri(rng, 1, 3)), k=k,
    )


def _wall_texture(rng: np.random.Generator, h: int, w: int, st: _Style) -> np.ndarray:
    """Wall material of shape (h, w, 3), float32 0..255."""
    h, w = max(h, 1), max(w, 1)
    ys = np.arange(h)[:, None]
    xs = np.arange(w)[None, :]
    img = np.empty((h, w, 3), np.float32)
    img[:] = st.wall
    kind = st.wall_kind
    if kind in ("brick", "ashlar"):
        bh, bw = st.block_h, st.block_w
        row = ys // bh
        off = (row % 2) * (bw // 2)
        col = (xs + off) // bw
        nr, nc = int(row.max()) + 1, int(col.max()) + 2
        jit_sd = 14.0 if kind == "brick" else 9.0
        jit = rng.normal(0, jit_sd, (nr, nc, 1)).astype(np.float32) + rng.normal(0, jit_sd / 3, (nr, nc, 3)).astype(np.float32)
        img = img + jit[np.broadcast_to(row, (h, w)), col]
        ly = ys % bh
        lx = (xs + off) % bw
        mt = max(1, int(round(bh / (7 if kind == "brick" else 9))))
        if kind == "ashlar":
            # bevel: lit top edge, dark bottom edge
            img = img * np.where(ly == mt, 1.12, 1.0)[..., None].astype(np.float32)
            img = img * np.where(ly >= bh - 2, 0.82, 1.0)[..., None].astype(np.float32)
        mortar = (ly < mt) | (lx < mt)
        img[np.broadcast_to(mortar, (h, w))] = st.mortar
    elif kind == "bands":
        band = (ys // st.block_h) % 2
        img = np.where(band[..., None] == 1, st.wall2[None, None, :], img).astype(np.float32)
        img = np.broadcast_to(img, (h, w, 3)).copy()
        img *= np.where(ys % st.block_h == 0, 0.8, 1.0)[..., None].astype(np.float32)
    elif kind == "lozenge":
        d = st.block_h
        u = (xs + ys) // d
        v = (xs - ys + 10 * d * 1000) // d
        chk = (u + v) % 2
        img = np.where(chk[..., None] == 1, st.wall2[None, None, :], img).astype(np.float32)
        edge = ((xs + ys) % d == 0) | ((xs - ys) % d == 0)
        img[edge] *= 0.85
    elif kind == "plaster":
        img += (_noise(rng, h, w, 24 * st.k, 3) * 8 + _noise(rng, h, w, 2.5 * st.k, 1) * 6)[..., None]
        # rusticated courses: faint horizontal joints every other block
        img *= np.where(ys % (st.block_h * 3) == 0, 0.88, 1.0)[..., None].astype(np.float32)
    elif kind == "panels":
        pw, ph = st.block_w, st.block_h
        row, col = ys // ph, xs // int(pw * 1.4)
        nr, nc = int(row.max()) + 1, int(col.max()) + 1
        refl = _noise(rng, h, w, w / 2.5, 3)[..., None]
        sky = _mix(st.glass, _jitter(rng, (170, 195, 220)), _u(rng, 0.35, 0.6))
        glass = sky[None, None, :] * (1.0 + 0.18 * refl) + 35 * np.clip(refl, 0, None)
        pick = rng.random((nr, nc)) < 0.12
        tint = (rng.random((nr, nc, 1)) * 0.35 + 0.8).astype(np.float32)
        cell_tint = tint[np.broadcast_to(row, (h, w)), np.broadcast_to(col, (h, w))]
        img = glass * cell_tint
        img = np.where(pick[np.broadcast_to(row, (h, w)), np.broadcast_to(col, (h, w))][..., None],
                       st.accent[None, None, :] * 0.8 + 0.2 * glass, img).astype(np.float32)
        frame = (ys % ph < max(2, ph // 9)) | (xs % int(pw * 1.4) < max(2, pw // 10))
        img[np.broadcast_to(frame, (h, w))] = st.trim
    img += rng.normal(0, 5.0, (h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255)


class _Canvas:
    """RGB uint8 image + alpha silhouette, with drawing helpers."""

    def __init__(self, h: int, w: int):
        self.img = np.zeros((h, w, 3), np.uint8)
        self.alpha = np.zeros((h, w), np.uint8)
        self.h, self.w = h, w

    def poly(self, pts, color, opaque: bool = True) -> None:
        p = np.round(np.asarray(pts, np.float64)).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(self.img, [p], _col(color), _AA)
        if opaque:
            cv2.fillPoly(self.alpha, [p], 255, _AA)

    def rect(self, x0, y0, x1, y1, color, opaque: bool = False) -> None:
        x0, y0, x1, y1 = int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))
        cv2.rectangle(self.img, (x0, y0), (x1, y1), _col(color), -1)
        if opaque:
            cv2.rectangle(self.alpha, (x0, y0), (x1, y1), 255, -1)

    def scale_region(self, x0, y0, x1, y1, k: float) -> None:
        x0, y0 = max(0, int(round(x0))), max(0, int(round(y0)))
        x1, y1 = min(self.w, int(round(x1))), min(self.h, int(round(y1)))
        if x1 > x0 and y1 > y0:
            reg = self.img[y0:y1, x0:x1].astype(np.float32) * k
            self.img[y0:y1, x0:x1] = np.clip(reg, 0, 255).astype(np.uint8)

    def texture(self, x0, y0, x1, y1, tex: np.ndarray, opaque: bool = True) -> None:
        x0, y0 = int(round(x0)), int(round(y0))
        x1 = min(int(round(x1)), x0 + tex.shape[1])
        y1 = min(int(round(y1)), y0 + tex.shape[0])
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(self.w, x1), min(self.h, y1)
        if cx1 <= cx0 or cy1 <= cy0:
            return
        self.img[cy0:cy1, cx0:cx1] = tex[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0].astype(np.uint8)
        if opaque:
            self.alpha[cy0:cy1, cx0:cx1] = 255


def _glass_fill(cv: _Canvas, rng: np.random.Generator, st: _Style, x0, y0, x1, y1) -> None:
    """Window glass with a vertical reflection gradient and random interior."""
    x0, y0, x1, y1 = int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(cv.w, x1), min(cv.h, y1)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return
    hh = y1 - y0
    t = np.linspace(0, 1, hh, dtype=np.float32)[:, None, None]
    base = st.glass * _u(rng, 0.7, 1.3)
    top = _mix(base, (200, 215, 230), _u(rng, 0.1, 0.45))
    grad = top * (1 - t) + base * t
    r = rng.random()
    if r < 0.15:  # lit interior
        grad = _mix(grad, (250, 220, 150), 0.6)
    elif r < 0.35:  # curtain
        grad = np.broadcast_to(grad, (hh, 1, 3)).copy()
        grad[: max(1, int(hh * _u(rng, 0.3, 0.8)))] = _jitter(rng, (225, 215, 190))
    cv.img[y0:y1, x0:x1] = np.clip(np.broadcast_to(grad, (hh, x1 - x0, 3)), 0, 255).astype(np.uint8)


def _window(cv: _Canvas, rng: np.random.Generator, st: _Style, cx: float, y0: float, ww: float, wh: float,
            kind: str, pediment: str | None = None) -> None:
    k = st.k
    ft = max(1, int(round(_u(rng, 1.5, 3.5) * k)))
    # keep proportions plausible whatever the bay size
    ww = min(ww, wh * {"lancet": 0.38, "arch": 0.7, "round": 1.0}.get(kind, 1.4))
    x0, x1, y1 = cx - ww / 2, cx + ww / 2, y0 + wh
    trim = st.trim
    # recess shadow
    cv.rect(x0 - ft, y0 - ft, x1 + ft, y1 + ft, _shade(st.wall, 0.55))
    if kind in ("arch", "lancet"):
        r = ww / 2
        ytop = y0 + r if kind == "arch" else y0 + ww * 0.9
        cv.rect(x0 - ft, ytop, x1 + ft, y1 + ft, trim)
        if kind == "arch":
            _ellipse(cv.img, (int(cx), int(ytop)), (int(r + ft), int(r + ft)), 0, 180, 360, _col(trim), -1, _AA)
        else:
            cv.poly([(x0 - ft, ytop), (cx, y0 - ft * 2), (x1 + ft, ytop)], trim, opaque=False)
        _glass_fill(cv, rng, st, x0, ytop, x1, y1)
        gl = _col(st.glass * 1.2)
        if kind == "arch":
            _ellipse(cv.img, (int(cx), int(ytop)), (int(r), int(r)), 0, 180, 360, gl, -1, _AA)
            # keystone
            cv.poly([(cx - ft * 1.5, y0 - ft * 2), (cx + ft * 1.5, y0 - ft * 2), (cx + ft, y0 + ft), (cx - ft, y0 + ft)],
                    _shade(trim, 0.9), opaque=False)
        else:
            cv.poly([(x0, ytop), (cx, y0), (x1, ytop)], gl, opaque=False)
        cv2.line(cv.img, (int(cx), int(y0 + ft)), (int(cx), int(y1)), _col(trim), max(1, ft // 2), _AA)
    elif kind == "round":
        r = min(ww, wh) / 2
        cy = y0 + wh / 2
        _circle(cv.img, (int(cx), int(cy)), int(r + ft), _col(trim), -1, _AA)
        _circle(cv.img, (int(cx), int(cy)), int(r), _col(st.glass * _u(rng, 0.8, 1.4)), -1, _AA)
        for a in range(0, 180, 45):
            dx, dy = r * math.cos(math.radians(a)), r * math.sin(math.radians(a))
            cv2.line(cv.img, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), _col(trim), 1, _AA)
        return
    else:
        cv.rect(x0 - ft, y0 - ft, x1 + ft, y1 + ft, trim)
        _glass_fill(cv, rng, st, x0, y0, x1, y1)
        # mullions / muntins
        nx = 1 if kind == "rect" else 2
        ny = 1 if kind == "rect" else 3
        for i in range(1, nx + 1):
            xx = int(x0 + ww * i / (nx + 1))
            cv2.line(cv.img, (xx, int(y0)), (xx, int(y1)), _col(trim), max(1, ft // 2))
        for j in range(1, ny + 1):
            yy = int(y0 + wh * j / (ny + 1) * (0.7 if kind == "rect" else 1.0))
            cv2.line(cv.img, (int(x0), yy), (int(x1), yy), _col(trim), max(1, ft // 2))
    # sill with shadow
    cv.rect(x0 - ft * 2, y1 + ft, x1 + ft * 2, y1 + ft * 2.5, _shade(trim, 1.05))
    cv.scale_region(x0 - ft * 2, y1 + ft * 2.5, x1 + ft * 2, y1 + ft * 4, 0.72)
    if st.shutters and kind in ("rect", "grid", "arch"):
        sw = ww * 0.45
        for sx in (x0 - ft - sw, x1 + ft):
            cv.rect(sx, y0 + (ww / 2 if kind == "arch" else 0), sx + sw, y1, st.accent)
            yy = y0 + (ww / 2 if kind == "arch" else 0) + 2
            while yy < y1 - 1:
                cv2.line(cv.img, (int(sx), int(yy)), (int(sx + sw), int(yy)), _col(_shade(st.accent, 0.7)), 1)
                yy += max(2.0, 3 * k)
    if pediment == "tri":
        py = y0 - ft * 3
        cv.poly([(x0 - ft * 3, py), (cx, py - ww * 0.35), (x1 + ft * 3, py)], trim, opaque=False)
        cv.poly([(x0, py - 1), (cx, py - ww * 0.35 + ft * 2), (x1, py - 1)], _shade(st.wall, 0.8), opaque=False)
    elif pediment == "seg":
        py = y0 - ft * 3
        _ellipse(cv.img, (int(cx), int(py)), (int(ww / 2 + ft * 3), int(ww * 0.25)), 0, 180, 360, _col(trim), -1, _AA)
        _ellipse(cv.img, (int(cx), int(py)), (int(ww / 2), int(ww * 0.25 - ft * 2)), 0, 180, 360,
                    _col(_shade(st.wall, 0.8)), -1, _AA)
    elif pediment == "lintel":
        cv.rect(x0 - ft * 3, y0 - ft * 4, x1 + ft * 3, y0 - ft, trim)


def _band(cv: _Canvas, rng: np.random.Generator, st: _Style, x0: float, x1: float, y: float, h: float,
          pattern: str | None = None) -> None:
    """Cornice / frieze band with an ornament pattern and a drop shadow."""
    pattern = pattern or st.cornice
    h = max(2.0, h)
    y0, y1 = y, y + h
    trim = st.trim
    dark = _shade(trim, 0.62)
    cv.rect(x0, y0, x1, y1, trim)
    cv.rect(x0, y0, x1, y0 + max(1, h * 0.12), _shade(trim, 1.12))
    cv.scale_region(x0, y1, x1, y1 + max(2, h * 0.45), 0.62)
    p = max(4.0, h * _u(rng, 0.8, 1.4))
    xs = np.arange(x0 + p / 2, x1 - p / 4, p)
    if pattern == "dentil":
        for x in xs:
            cv.rect(x - p * 0.22, y0 + h * 0.45, x + p * 0.22, y1 - 1, dark)
    elif pattern == "zigzag":
        pts = [(x, y0 + 2 if i % 2 else y1 - 2) for i, x in enumerate(np.arange(x0, x1 + p / 2, p / 2))]
        cv2.polylines(cv.img, [np.int32(pts).reshape(-1, 1, 2)], False, _col(dark), max(1, int(h / 6)), _AA)
    elif pattern == "circles":
        for i, x in enumerate(xs):
            _circle(cv.img, (int(x), int(y0 + h / 2)), max(1, int(h / 3)),
                       _col(dark if i % 2 else st.accent), -1 if i % 3 == 0 else 1, _AA)
    elif pattern == "glyphs":
        for x in xs:
            _glyph(cv.img, rng, x - p * 0.35, y0 + h * 0.15, p * 0.7, h * 0.7, dark, 1)
    elif pattern == "key":
        a = h * 0.2
        b = h - a
        for x in xs:
            pts = [(x - p / 2, y0 + b), (x - p / 2, y0 + a), (x + p / 4, y0 + a), (x + p / 4, y0 + b * 0.7),
                   (x - p / 6, y0 + b * 0.7)]
            cv2.polylines(cv.img, [np.int32(pts).reshape(-1, 1, 2)], False, _col(dark), 1, _AA)


def _rose(cv: _Canvas, rng: np.random.Generator, st: _Style, cx: float, cy: float, r: float) -> None:
    """Rose window: stained-glass petals, rings, spokes."""
    c = (int(cx), int(cy))
    _circle(cv.img, c, int(r * 1.12), _col(st.trim), -1, _AA)
    _circle(cv.img, c, int(r), _col(st.glass * 0.8), -1, _AA)
    n = _ri(rng, 8, 16)
    cols = [_hsv(_u(rng, 0, 1), _u(rng, 0.5, 0.9), _u(rng, 0.4, 0.85)) for _ in range(3)]
    for i in range(n):
        a = 2 * math.pi * (i + 0.5) / n
        px, py = cx + r * 0.62 * math.cos(a), cy + r * 0.62 * math.sin(a)
        _circle(cv.img, (int(px), int(py)), max(2, int(r * 0.22)), _col(cols[i % 3]), -1, _AA)
        _circle(cv.img, (int(px), int(py)), max(2, int(r * 0.22)), _col(st.trim), 1, _AA)
        a2 = 2 * math.pi * i / n
        cv2.line(cv.img, (int(cx + r * 0.3 * math.cos(a2)), int(cy + r * 0.3 * math.sin(a2))),
                 (int(cx + r * math.cos(a2)), int(cy + r * math.sin(a2))), _col(st.trim), max(1, int(r / 25)), _AA)
    _circle(cv.img, c, int(r * 0.3), _col(st.trim), max(1, int(r / 20)), _AA)
    _circle(cv.img, c, int(r * 0.16), _col(cols[0]), -1, _AA)
    _circle(cv.img, c, int(r), _col(st.trim), max(1, int(r / 18)), _AA)


def _clock(cv: _Canvas, rng: np.random.Generator, st: _Style, cx: float, cy: float, r: float) -> None:
    c = (int(cx), int(cy))
    ring = _pick(rng, [(212, 175, 55), (40, 40, 40), tuple(st.trim)])
    _circle(cv.img, c, int(r * 1.15), _col(ring), -1, _AA)
    face = _pick(rng, [(245, 243, 235), (30, 40, 70), (20, 20, 20)])
    ink = (20, 20, 20) if _lum(face) > 128 else (220, 190, 90)
    _circle(cv.img, c, int(r), _col(face), -1, _AA)
    for i in range(12):
        a = 2 * math.pi * i / 12
        r0 = r * (0.75 if i % 3 == 0 else 0.85)
        cv2.line(cv.img, (int(cx + r0 * math.cos(a)), int(cy + r0 * math.sin(a))),
                 (int(cx + r * 0.95 * math.cos(a)), int(cy + r * 0.95 * math.sin(a))), _col(ink),
                 2 if i % 3 == 0 else 1, _AA)
    for length, wdt in ((0.55, 2), (0.8, 1)):
        a = _u(rng, 0, 2 * math.pi)
        cv2.line(cv.img, c, (int(cx + r * length * math.cos(a)), int(cy + r * length * math.sin(a))), _col(ink), wdt, _AA)


def _portal(cv: _Canvas, rng: np.random.Generator, st: _Style, cx: float, y1: float, w: float, h: float,
            voussoirs: bool = True) -> None:
    """Arched doorway with voussoirs and a panelled wooden door."""
    r = w / 2
    ytop = y1 - h + r
    ring = max(3.0, w * 0.14)
    if voussoirs:
        n = _ri(rng, 9, 15)
        c2 = st.accent if rng.random() < 0.4 else _shade(st.trim, 0.8)
        for i in range(n):
            a0, a1 = 180 + 180 * i / n, 180 + 180 * (i + 1) / n
            _ellipse(cv.img, (int(cx), int(ytop)), (int(r + ring), int(r + ring)), 0, a0, a1,
                        _col(st.trim if i % 2 else c2), -1, _AA)
    else:
        _ellipse(cv.img, (int(cx), int(ytop)), (int(r + ring), int(r + ring)), 0, 180, 360, _col(st.trim), -1, _AA)
    cv.rect(cx - r - ring, ytop, cx + r + ring, y1, st.trim)
    wood = _jitter(rng, _pick(rng, [(92, 58, 36), (60, 40, 30), (110, 40, 30), (40, 60, 50), (50, 50, 60)]))
    _ellipse(cv.img, (int(cx), int(ytop)), (int(r), int(r)), 0, 180, 360, _col(_shade(wood, 0.6)), -1, _AA)
    cv.rect(cx - r, ytop, cx + r, y1, wood)
    # door panels
    for side in (-1, 1):
        px0 = cx + (0 if side > 0 else -r) + r * 0.12
        px1 = px0 + r * 0.76
        for j in range(3):
            py0 = ytop + (y1 - ytop) * (0.06 + j * 0.31)
            cv2.rectangle(cv.img, (int(px0), int(py0)), (int(px1), int(py0 + (y1 - ytop) * 0.25)),
                          _col(_shade(wood, 0.7)), 1)
    cv2.line(cv.img, (int(cx), int(ytop - r)), (int(cx), int(y1)), _col(_shade(wood, 0.5)), 1)
    # fan light
    _ellipse(cv.img, (int(cx), int(ytop)), (int(r * 0.8), int(r * 0.8)), 0, 180, 360, _col(st.glass), -1, _AA)
    for a in range(180, 361, 30):
        cv2.line(cv.img, (int(cx), int(ytop)),
                 (int(cx + r * 0.8 * math.cos(math.radians(a))), int(ytop + r * 0.8 * math.sin(math.radians(a)))),
                 _col(st.trim), 1, _AA)


def _column(cv: _Canvas, st: _Style, cx: float, y0: float, y1: float, w: float, color, flutes: bool = True) -> None:
    """A column or pilaster with capital, base, fluting and round shading."""
    x0, x1 = int(cx - w / 2), int(cx + w / 2)
    y0i, y1i = int(y0), int(y1)
    if x1 <= x0 or y1i <= y0i:
        return
    t = np.linspace(-1, 1, x1 - x0, dtype=np.float32)
    prof = (0.72 + 0.38 * np.sqrt(np.clip(1 - t ** 2, 0, 1)))[None, :, None]
    body = np.asarray(color, np.float32)[None, None, :] * prof
    x0c, x1c = max(0, x0), min(cv.w, x1)
    y0c, y1c = max(0, y0i), min(cv.h, y1i)
    if x1c > x0c and y1c > y0c:
        cv.img[y0c:y1c, x0c:x1c] = np.clip(np.broadcast_to(body[:, x0c - x0:x1c - x0], (y1c - y0c, x1c - x0c, 3)), 0, 255)
    if flutes:
        nfl = max(2, int(w / 4))
        for i in range(1, nfl):
            xx = int(x0 + (x1 - x0) * i / nfl)
            cv2.line(cv.img, (xx, y0i), (xx, y1i), _col(_shade(color, 0.7)), 1)
    cw = w * 0.35
    cv.rect(cx - w / 2 - cw, y0 - w * 0.35, cx + w / 2 + cw, y0, _shade(color, 1.08))
    cv.rect(cx - w / 2 - cw * 0.6, y0 - w * 0.5, cx + w / 2 + cw * 0.6, y0 - w * 0.35, _shade(color, 0.9))
    cv.rect(cx - w / 2 - cw * 0.6, y1 - w * 0.3, cx + w / 2 + cw * 0.6, y1, _shade(color, 0.95))


def _niche(cv: _Canvas, rng: np.random.Generator, st: _Style, cx: float, y0: float, w: float, h: float) -> None:
    """Arched niche with a statue."""
    r = w / 2
    _ellipse(cv.img, (int(cx), int(y0 + r)), (int(r), int(r)), 0, 180, 360, _col(_shade(st.wall, 0.45)), -1, _AA)
    cv.rect(cx - r, y0 + r, cx + r, y0 + h, _shade(st.wall, 0.45))
    stone = _jitter(rng, _pick(rng, [(225, 222, 212), (200, 190, 170), (80, 110, 90), (150, 110, 60)]))
    hr = w * 0.14
    _circle(cv.img, (int(cx), int(y0 + h * 0.2)), max(1, int(hr)), _col(stone), -1, _AA)
    cv.poly([(cx - w * 0.28, y0 + h * 0.3), (cx + w * 0.28, y0 + h * 0.3), (cx + w * 0.34, y0 + h * 0.95),
             (cx - w * 0.34, y0 + h * 0.95)], _shade(stone, 0.9), opaque=False)
    cv2.line(cv.img, (int(cx + w * 0.05), int(y0 + h * 0.35)), (int(cx - w * 0.05), int(y0 + h * 0.9)),
             _col(_shade(stone, 0.7)), 1, _AA)
    cv.rect(cx - w * 0.42, y0 + h * 0.95, cx + w * 0.42, y0 + h, _shade(stone, 1.05))


def _floors(cv: _Canvas, rng: np.random.Generator, st: _Style, x0: float, x1: float, y0: float, y1: float,
            n_floors: int, n_bays: int, door: bool = True, clock_floor: int | None = None) -> list[float]:
    """Floors of windows between x0..x1 and y0..y1 (top to bottom); returns cornice y positions."""
    k = st.k
    fh = (y1 - y0) / n_floors
    bw = (x1 - x0) / n_bays
    ww_frac = _u(rng, 0.35, 0.6)
    wh_frac = _u(rng, 0.45, 0.68)
    floor_kinds = [_pick(rng, st.window_kinds) for _ in range(n_floors)]
    floor_peds = [(_pick(rng, ["tri", "seg", "lintel", None]) if st.pediments else None) for _ in range(n_floors)]
    alt = bool(rng.random() < 0.5)
    bands = []
    if st.pilasters and n_bays >= 3:
        pw = max(4.0, bw * 0.12)
        pc = _shade(st.trim, 0.95) if rng.random() < 0.5 else _shade(st.wall, 1.12)
        for b in range(n_bays + 1):
            _column(cv, st, x0 + b * bw, y0 + pw * 0.6, y1, pw, pc, flutes=bool(b % 2 == 0))
    for f in range(n_floors):
        fy = y0 + f * fh
        ch = max(3.0, fh * _u(rng, 0.07, 0.12) * (1.6 if f == 0 else 1.0))
        if f > 0 or rng.random() < 0.7:
            _band(cv, rng, st, x0, x1, fy, ch, None if f % 2 == 0 else "plain")
            bands.append(fy)
        ground = f == n_floors - 1
        for b in range(n_bays):
            cx = x0 + (b + 0.5) * bw
            if door and ground and (b == n_bays // 2):
                dw = min(bw * 0.7, fh * 0.55)
                _portal(cv, rng, st, cx, y1, dw, fh * 0.85, voussoirs=bool(rng.random() < 0.6))
                continue
            if clock_floor is not None and f == clock_floor and b == n_bays // 2:
                _clock(cv, rng, st, cx, fy + fh * 0.55, min(bw, fh) * 0.36)
                continue
            ww, wh = bw * ww_frac, fh * wh_frac
            if f == 0 and n_floors > 2:
                wh *= 0.7
            kind = floor_kinds[f]
            if ground and rng.random() < 0.35:
                kind = "arch"
            ped = floor_peds[f]
            if ped is not None and alt and b % 2 and ped in ("tri", "seg"):
                ped = "seg" if ped == "tri" else "tri"
            _window(cv, rng, st, cx, fy + ch + (fh - ch - wh) * 0.55, ww, wh, kind, ped)
    return bands


def _roof(cv: _Canvas, rng: np.random.Generator, st: _Style, x0: float, x1: float, ybase: float, top: float,
          kind: str) -> None:
    """Roof / crowning element between x0..x1 standing on ybase, rising up to y=top."""
    w = x1 - x0
    cx = (x0 + x1) / 2
    roof = st.roof
    hgt = ybase - top
    if kind == "pediment":
        ph = min(hgt, w * _u(rng, 0.18, 0.3))
        cv.poly([(x0 - 2, ybase), (cx, ybase - ph), (x1 + 2, ybase)], st.trim)
        inset = max(3.0, ph * 0.15)
        cv.poly([(x0 + inset * 2.5, ybase - inset * 0.6), (cx, ybase - ph + inset), (x1 - inset * 2.5, ybase - inset * 0.6)],
                _shade(st.wall, 0.92), opaque=False)
        r = ph * 0.28
        if rng.random() < 0.5:
            _clock(cv, rng, st, cx, ybase - ph * 0.4, r)
        else:
            _circle(cv.img, (int(cx), int(ybase - ph * 0.4)), max(2, int(r)), _col(st.accent), -1, _AA)
            for i in range(_ri(rng, 6, 10)):
                _glyph(cv.img, rng, cx - ph * 1.2 + i * ph * 0.25, ybase - ph * 0.3, ph * 0.18, ph * 0.22,
                       _shade(st.trim, 0.6), 1)
        # acroteria
        for px in (x0, cx, x1):
            py = ybase - ph if px == cx else ybase
            cv.poly([(px - 4 * st.k, py), (px, py - 10 * st.k), (px + 4 * st.k, py)], st.trim)
    elif kind == "dome":
        dw = w * _u(rng, 0.35, 0.6)
        drum_h = hgt * _u(rng, 0.18, 0.28)
        dh = hgt * _u(rng, 0.4, 0.55)
        cv.rect(cx - dw / 2, ybase - drum_h, cx + dw / 2, ybase, st.trim, opaque=True)
        nw = _ri(rng, 5, 9)
        for i in range(nw):
            xx = cx - dw / 2 + dw * (i + 0.5) / nw
            _window(cv, rng, st, xx, ybase - drum_h * 0.85, dw / nw * 0.45, drum_h * 0.6, "arch")
        cv.rect(cx - dw / 2 - 3, ybase - drum_h - 4 * st.k, cx + dw / 2 + 3, ybase - drum_h, _shade(st.trim, 0.85), True)
        dyb = ybase - drum_h - 4 * st.k
        p = np.array([[cx + dw / 2 * math.cos(a), dyb - dh * math.sin(a)] for a in np.linspace(0, math.pi, 40)])
        cv.poly(p, roof)
        # ribs
        for i in range(1, 8):
            fx = -1 + 2 * i / 8
            pts = [(cx + fx * dw / 2 * math.cos(a), dyb - dh * math.sin(a)) for a in np.linspace(0, math.pi / 2, 12)]
            cv2.polylines(cv.img, [np.int32(pts).reshape(-1, 1, 2)], False, _col(_shade(roof, 0.7)), 1, _AA)
        # highlight
        _ellipse(cv.img, (int(cx - dw * 0.15), int(dyb - dh * 0.6)), (max(1, int(dw * 0.07)), max(1, int(dh * 0.2))),
                    20, 0, 360, _col(_shade(roof, 1.35)), -1, _AA)
        lw, lh = dw * 0.14, min(dh * 0.45, max(4.0, dyb - dh - top))
        cv.rect(cx - lw / 2, dyb - dh - lh, cx + lw / 2, dyb - dh + 2, st.trim, True)
        cv.poly([(cx - lw / 2, dyb - dh - lh), (cx, dyb - dh - lh * 1.6), (cx + lw / 2, dyb - dh - lh)], roof)
        cv.poly([(cx - 1.2, dyb - dh - lh * 1.5), (cx, max(top, dyb - dh - lh * 2.2)), (cx + 1.2, dyb - dh - lh * 1.5)],
                (212, 175, 55))
    elif kind == "spire":
        sw = w * _u(rng, 0.5, 0.9)
        cv.poly([(cx - sw / 2, ybase), (cx, top + hgt * 0.04), (cx + sw / 2, ybase)], roof)
        n = _ri(rng, 6, 14)
        for i in range(1, n):
            t = i / n
            yy = ybase - (ybase - top) * 0.96 * t
            half = sw / 2 * (1 - t)
            cv2.line(cv.img, (int(cx - half), int(yy)), (int(cx + half), int(yy)), _col(_shade(roof, 0.65)), 1, _AA)
        cv2.line(cv.img, (int(cx), int(ybase)), (int(cx), int(top + hgt * 0.04)), _col(_shade(roof, 1.25)), 1, _AA)
        cv.rect(cx - 1, top, cx + 1, top + hgt * 0.06, (200, 170, 60), True)
        cv.rect(cx - 4 * st.k, top + hgt * 0.015, cx + 4 * st.k, top + hgt * 0.025, (200, 170, 60), True)
    elif kind == "crenel":
        mh = min(hgt, max(6.0, w * 0.06))
        n = max(3, int(w / (mh * 1.6)))
        mw = w / (2 * n - 1)
        for i in range(n):
            cv.rect(x0 + 2 * i * mw, ybase - mh, x0 + (2 * i + 1) * mw, ybase, _shade(st.wall, 0.97), True)
        cv.rect(x0 - 2, ybase - 3, x1 + 2, ybase + 3, _shade(st.trim, 0.9), True)
    elif kind == "balustrade":
        bh = min(hgt, max(8.0, w * 0.035))
        cv.rect(x0, ybase - bh, x1, ybase, st.trim, True)
        cv.rect(x0, ybase - bh + 2, x1, ybase - 2, _shade(st.wall, 0.5), True)
        step = max(3.0, bh * 0.45)
        for xx in np.arange(x0 + step, x1 - 1, step):
            _ellipse(cv.img, (int(xx), int(ybase - bh / 2)), (max(1, int(step * 0.28)), max(1, int(bh / 2 - 2))), 0, 0, 360,
                        _col(st.trim), -1, _AA)
        for xx in np.linspace(x0 + 3, x1 - 3, _ri(rng, 3, 7)):
            _circle(cv.img, (int(xx), int(ybase - bh - bh * 0.4)), max(2, int(bh * 0.4)), _col(st.trim), -1, _AA)
            _circle(cv.alpha, (int(xx), int(ybase - bh - bh * 0.4)), max(2, int(bh * 0.4)), 255, -1, _AA)
    elif kind == "mansard":
        mh = min(hgt, w * _u(rng, 0.12, 0.2))
        inset = mh * 0.5
        cv.poly([(x0, ybase), (x0 + inset, ybase - mh), (x1 - inset, ybase - mh), (x1, ybase)], roof)
        for yy in np.arange(ybase - mh + 3, ybase, max(2.0, 3 * st.k)):
            cv2.line(cv.img, (int(x0), int(yy)), (int(x1), int(yy)), _col(_shade(roof, 0.75)), 1)
        nd = max(2, int(w / (mh * 1.6)))
        for i in range(nd):
            dx = x0 + inset + (w - 2 * inset) * (i + 0.5) / nd
            dw = mh * 0.45
            cv.rect(dx - dw / 2, ybase - mh * 0.75, dx + dw / 2, ybase - mh * 0.15, st.trim)
            _glass_fill(cv, rng, st, dx - dw / 2 + 2, ybase - mh * 0.7, dx + dw / 2 - 2, ybase - mh * 0.2)
            cv.poly([(dx - dw / 2 - 2, ybase - mh * 0.75), (dx, ybase - mh * 0.98), (dx + dw / 2 + 2, ybase - mh * 0.75)],
                    st.trim)
    elif kind == "pyramid":
        cv.poly([(x0 - 3, ybase), (cx, top + hgt * 0.1), (x1 + 3, ybase)], roof)
        for i in range(1, 7):
            t = i / 7
            cv2.line(cv.img, (int(x0 + (cx - x0) * t), int(ybase - (ybase - top - hgt * 0.1) * t)),
                     (int(x1 - (x1 - cx) * t), int(ybase - (ybase - top - hgt * 0.1) * t)), _col(_shade(roof, 0.7)), 1)
        cv.rect(cx - 1, top, cx + 1, top + hgt * 0.12, (200, 170, 60), True)


def _weather(rng: np.random.Generator, img: np.ndarray, k: float) -> np.ndarray:
    """Stains, vertical grime streaks and fine grain on a facade texture."""
    h, w = img.shape[:2]
    f = img.astype(np.float32)
    stain = (1.0 + 0.07 * _noise(rng, h, w, 70 * k, 3)) * (1.0 + 0.05 * _noise(rng, h, w, 2.5 * k, 1))
    streak = 1.0 - 0.07 * np.clip(_noise(rng, h, w, 14 * k, 2, aspect=30.0), 0, None)
    f *= (stain * streak)[..., None]
    f += rng.normal(0, 4.0, (h, w, 1)).astype(np.float32) + rng.normal(0, 1.5, (h, w, 3)).astype(np.float32)
    return np.clip(f, 0, 255).astype(np.uint8)


@dataclass
class _Landmark:
    front: np.ndarray  # RGBA uint8
    side: np.ndarray   # RGBA uint8 (same height as front)
    kind: str


def _build_landmark(rng: np.random.Generator, size: int = 512) -> _Landmark:
    """Build one landmark: front facade (RGBA) and side wall (RGBA)."""
    st = _make_style(rng, size)
    k = st.k
    kind = st.kind
    if kind == "tower":
        H, W = size, int(size * _u(rng, 0.36, 0.52))
    elif kind == "church":
        H, W = size, int(size * _u(rng, 0.68, 0.92))
    elif kind in ("palace", "temple"):
        W, H = size, int(size * _u(rng, 0.56, 0.78))
    elif kind == "gate":
        W, H = size, int(size * _u(rng, 0.68, 0.9))
    else:  # modern
        if rng.random() < 0.5:
            H, W = size, int(size * _u(rng, 0.5, 0.8))
        else:
            W, H = size, int(size * _u(rng, 0.6, 0.85))
    cv = _Canvas(H, W)
    roof_kind = None
    side_floors = 3
    if kind == "palace":
        roof_kind = _pick(rng, ["balustrade", "dome", "pediment", "mansard", "crenel"])
        top_frac = {"dome": _u(rng, 0.3, 0.42), "pediment": _u(rng, 0.14, 0.22), "mansard": _u(rng, 0.12, 0.18)}.get(
            roof_kind, _u(rng, 0.05, 0.08))
        yb = int(H * top_frac)
        cv.texture(0, yb, W, H, _wall_texture(rng, H - yb, W, st))
        nf, nb = _ri(rng, 2, 4), _ri(rng, 5, 11)
        if rng.random() < 0.5:  # risalit: projecting, lighter central section
            c0, c1 = W * (0.5 - 1.5 / nb), W * (0.5 + 1.5 / nb)
            cv.scale_region(c0, yb, c1, H, 1.1)
            cv.scale_region(c0 - 3 * k, yb, c0, H, 0.6)
        _floors(cv, rng, st, 0, W, yb, H, nf, nb)
        _band(cv, rng, st, 0, W, yb, max(6.0, 12 * k), "dentil")
        if roof_kind == "dome":
            _roof(cv, rng, st, W * 0.25, W * 0.75, yb, 0, "dome")
            _roof(cv, rng, st, 0, W, yb, yb - 12 * k, "balustrade")
        else:
            _roof(cv, rng, st, 0, W, yb, 0, roof_kind)
        side_floors = nf
    elif kind == "tower":
        roof_kind = _pick(rng, ["spire", "dome", "crenel", "pyramid"])
        top_frac = {"spire": _u(rng, 0.25, 0.4), "dome": _u(rng, 0.22, 0.32), "pyramid": _u(rng, 0.15, 0.25)}.get(
            roof_kind, 0.04)
        yb = int(H * top_frac)
        cv.texture(0, yb, W, H, _wall_texture(rng, H - yb, W, st))
        nf = _ri(rng, 4, 8)
        _floors(cv, rng, st, 0, W, yb + 10 * k, H, nf, _ri(rng, 1, 3), clock_floor=_ri(rng, 0, 1))
        _band(cv, rng, st, 0, W, yb, max(5.0, 10 * k))
        if roof_kind == "dome":
            _roof(cv, rng, st, W * 0.05, W * 0.95, yb, 0, "dome")
        else:
            _roof(cv, rng, st, 0, W, yb, 0, roof_kind)
        side_floors = nf
    elif kind == "church":
        towers = rng.random() < 0.55
        tw = W * _u(rng, 0.2, 0.26) if towers else 0.0
        yb = int(H * _u(rng, 0.36, 0.48))
        tower_top = int(H * _u(rng, 0.16, 0.26))
        wall = _wall_texture(rng, H, W, st)
        cv.texture(0, yb, W, H, wall[yb:])
        # gable between the towers
        cv.poly([(tw, yb + 1), (W / 2, yb - (W - 2 * tw) * _u(rng, 0.28, 0.45)), (W - tw, yb + 1)], st.wall)
        gmask = cv.alpha[:yb].copy()
        cv.img[:yb][gmask > 0] = wall[:yb][gmask > 0].astype(np.uint8)
        _band(cv, rng, st, tw, W - tw, yb, max(5.0, 9 * k))
        _rose(cv, rng, st, W / 2, yb + (H - yb) * 0.22, min(W - 2 * tw, H - yb) * 0.17)
        _portal(cv, rng, st, W / 2, H, (W - 2 * tw) * 0.3, (H - yb) * 0.5)
        for s in (-1, 1):
            _portal(cv, rng, st, W / 2 + s * (W - 2 * tw) * 0.3, H, (W - 2 * tw) * 0.13, (H - yb) * 0.3, False)
        if towers:
            for tx0 in (0.0, W - tw):
                cv.texture(tx0, tower_top, tx0 + tw, yb, wall[tower_top:yb, int(tx0):int(tx0 + tw)])
                _band(cv, rng, st, tx0, tx0 + tw, tower_top, max(4.0, 8 * k))
                nfl = 2
                fh = (H - tower_top) / (nfl + 2)
                for j in range(nfl + 1):
                    _window(cv, rng, st, tx0 + tw / 2, tower_top + fh * (j + 0.3), tw * 0.35, fh * 0.6, "lancet")
                _roof(cv, rng, st, tx0, tx0 + tw, tower_top, 0, _pick(rng, ["spire", "pyramid", "crenel"]))
        # blind arcade under the gable
        na = _ri(rng, 5, 9)
        for i in range(na):
            xx = tw + (W - 2 * tw) * (i + 0.5) / na
            if abs(xx - W / 2) > (W - 2 * tw) * 0.18:
                _niche(cv, rng, st, xx, yb + (H - yb) * 0.1, (W - 2 * tw) / na * 0.55, (H - yb) * 0.22)
        side_floors = 2
    elif kind == "temple":
        yb = int(H * _u(rng, 0.2, 0.3))
        wall = _wall_texture(rng, H - yb, W, st)
        cv.texture(0, yb, W, H, wall)
        steps_h = (H - yb) * 0.12
        ent_h = (H - yb) * 0.2
        cv.scale_region(0, yb + ent_h, W, H - steps_h, 0.68)  # shadowed portico
        stone = st.trim if _lum(st.trim) >= _lum(st.wall) else _mix(st.wall, (240, 236, 225), 0.5)
        _portal(cv, rng, st, W / 2, H - steps_h, W * 0.12, (H - yb - ent_h - steps_h) * 0.7, False)
        for i in range(4):
            sy = H - steps_h + steps_h * i / 4
            cv.rect(0, sy, W, sy + steps_h / 4, _shade(stone, 1.0 - 0.08 * i))
            cv2.line(cv.img, (0, int(sy)), (W, int(sy)), _col(_shade(stone, 0.6)), 1)
        nc = _ri(rng, 6, 10)
        colw = W / nc * _u(rng, 0.32, 0.45)
        for i in range(nc):
            _column(cv, st, W * (i + 0.5) / nc, yb + ent_h + colw * 0.5, H - steps_h, colw, stone)
        _band(cv, rng, st, 0, W, yb, ent_h * 0.35, "dentil")
        cv.rect(0, yb + ent_h * 0.35, W, yb + ent_h, _shade(st.trim, 0.95))
        if rng.random() < 0.5:
            _text_fit(cv.img, st.text, int(W * 0.05), int(yb + ent_h * 0.4), int(W * 0.95), int(yb + ent_h * 0.95),
                      _shade(st.trim, 0.35), st.font, max(1, int(2 * k)))
        else:  # triglyphs and metopes
            nt = _ri(rng, 12, 20)
            for i in range(nt):
                xx = W * (i + 0.5) / nt
                for d in (-1, 0, 1):
                    cv2.line(cv.img, (int(xx + d * 3 * k), int(yb + ent_h * 0.45)), (int(xx + d * 3 * k), int(yb + ent_h * 0.9)),
                             _col(_shade(st.trim, 0.55)), 1)
                _glyph(cv.img, rng, xx + W / nt * 0.25, yb + ent_h * 0.45, W / nt * 0.4, ent_h * 0.4,
                       _shade(st.trim, 0.6), 1)
        _roof(cv, rng, st, 0, W, yb + 1, 0, "pediment")
        side_floors = 1
    elif kind == "gate":
        yb = int(H * _u(rng, 0.05, 0.12))
        cv.texture(0, yb, W, H, _wall_texture(rng, H - yb, W, st))
        att = (H - yb) * _u(rng, 0.2, 0.28)
        _band(cv, rng, st, 0, W, yb + att, max(6.0, 10 * k), "dentil")
        ink = (30, 28, 26) if _lum(st.wall) > 120 else (215, 180, 70)
        _text_fit(cv.img, st.text, int(W * 0.29), int(yb + att * 0.1), int(W * 0.71), int(yb + att * 0.9),
                  ink, st.font, max(1, int(2 * k)))
        mw = W * _u(rng, 0.26, 0.34)
        body_h = H - yb - att
        # central arch (dark passage with coffering)
        r = mw / 2
        ytop = H - body_h * 0.72 + r
        dark = _shade(st.wall, 0.28)
        _ellipse(cv.img, (int(W / 2), int(ytop)), (int(r + 8 * k), int(r + 8 * k)), 0, 180, 360, _col(st.trim), -1, _AA)
        _ellipse(cv.img, (int(W / 2), int(ytop)), (int(r), int(r)), 0, 180, 360, _col(dark), -1, _AA)
        cv.rect(W / 2 - r, ytop, W / 2 + r, H, dark)
        cs = _u(rng, 7, 14) * k
        for gx in np.arange(W / 2 - r + cs * 0.6, W / 2 + r - cs * 0.4, cs):
            for gy in np.arange(ytop - r * 0.7, ytop + r * _u(rng, 0.2, 0.5), cs):
                cv2.rectangle(cv.img, (int(gx), int(gy)), (int(gx + cs * 0.6), int(gy + cs * 0.6)), _col(_shade(dark, 1.6)), 1)
        for s in (-1, 1):
            sx = W / 2 + s * W * 0.33
            _portal(cv, rng, st, sx, H, W * 0.13, body_h * 0.45, True)
            _niche(cv, rng, st, sx, H - body_h * 0.92, W * 0.08, body_h * 0.3)
            for cxx in (W / 2 + s * (r + W * 0.05), W / 2 + s * W * 0.46):
                _column(cv, st, cxx, yb + att + 12 * k, H - 6 * k, W * 0.04, _shade(st.trim, 0.97))
        # reliefs
        for s in (-1, 1):
            rx = W / 2 + s * W * 0.33
            cv.rect(rx - W * 0.11, yb + att * 0.15, rx + W * 0.11, yb + att * 0.85, _shade(st.trim, 0.85))
            for _ in range(_ri(rng, 5, 9)):
                _glyph(cv.img, rng, rx + _u(rng, -0.1, 0.06) * W, yb + att * _u(rng, 0.2, 0.5), W * 0.04, att * 0.3,
                       _shade(st.trim, 0.45), 2)
        # statue group on top
        for s in np.linspace(-0.3, 0.3, _ri(rng, 1, 3)):
            gx = W / 2 + s * W
            bronze = _jitter(rng, (70, 110, 95))
            cv.poly([(gx - W * 0.05, yb), (gx - W * 0.03, yb * 0.3), (gx + W * 0.03, yb * 0.3), (gx + W * 0.05, yb)], bronze)
            _circle(cv.img, (int(gx), int(yb * 0.25)), max(2, int(yb * 0.15)), _col(bronze), -1, _AA)
            _circle(cv.alpha, (int(gx), int(yb * 0.25)), max(2, int(yb * 0.15)), 255, -1, _AA)
        side_floors = 1
    else:  # modern
        yb = int(H * _u(rng, 0.02, 0.05))
        cv.texture(0, yb, W, H, _wall_texture(rng, H - yb, W, st))
        # spandrel bands and fins
        nb = _ri(rng, 4, 12)
        for i in range(nb):
            yy = yb + (H - yb) * (i + 1) / (nb + 1)
            if rng.random() < 0.5:
                cv.rect(0, yy, W, yy + 4 * k, _shade(st.trim, 0.9))
        for xx in np.linspace(0, W, _ri(rng, 3, 8)):
            cv.rect(xx - 2 * k, yb, xx + 2 * k, H, _shade(st.trim, 0.8))
        # lobby
        lh = (H - yb) * 0.12
        cv.rect(0, H - lh, W, H, _shade(st.glass, 1.4))
        for xx in np.arange(0, W, 18 * k):
            cv2.line(cv.img, (int(xx), int(H - lh)), (int(xx), H), _col(st.trim), 1)
        cv.rect(W * 0.3, H - lh - 6 * k, W * 0.7, H - lh, st.trim)
        # sign with logo
        sy = yb + (H - yb) * _u(rng, 0.05, 0.2)
        sh = max(10.0, (H - yb) * 0.06)
        sign_col = _shade(st.accent2, 0.6) if rng.random() < 0.5 else np.array([245, 245, 245], np.float32)
        cv.rect(W * 0.08, sy, W * 0.92, sy + sh, sign_col)
        txt_col = (245, 245, 245) if _lum(sign_col) < 128 else _shade(st.accent, 0.6)
        _text_fit(cv.img, st.text.split(" ")[0], int(W * 0.2), int(sy), int(W * 0.9), int(sy + sh), txt_col, st.font,
                  max(1, int(2 * k)))
        lcx, lcy = W * 0.14, sy + sh / 2
        _circle(cv.img, (int(lcx), int(lcy)), max(2, int(sh * 0.42)), _col(st.accent2), -1, _AA)
        cv.poly([(lcx - sh * 0.3, lcy + sh * 0.2), (lcx, lcy - sh * 0.35), (lcx + sh * 0.3, lcy + sh * 0.2)],
                (250, 250, 250), opaque=False)
        side_floors = max(1, nb)
    front = _weather(rng, cv.img, k)

    # --- side wall: same material, simpler composition, body height only
    depth = int(W * (_u(rng, 0.75, 1.0) if kind == "tower" else _u(rng, 0.35, 0.7)))
    depth = max(depth, 16)
    yb_side = int(yb)
    sc = _Canvas(H, depth)
    sc.texture(0, yb_side, depth, H, _wall_texture(rng, H - yb_side, depth, st))
    nb = max(1, int(round(depth / max(W / 6, 24 * k))))
    if kind != "modern":
        nf = max(1, min(side_floors, 6))
        _floors(sc, rng, st, 0, depth, yb_side + 6 * k, H, nf, nb, door=False)
    _band(sc, rng, st, 0, depth, yb_side, max(4.0, 8 * k), "plain")
    side = _weather(rng, sc.img, k)
    return _Landmark(front=np.dstack([front, cv.alpha]), side=np.dstack([side, sc.alpha]), kind=kind)


def make_landmark(rng: np.random.Generator, size: int = 512, with_alpha: bool = False) -> np.ndarray:
    """Frontal texture of one procedurally generated landmark facade.

    Returns an RGB uint8 image (H x W x 3) whose longer side is ``size``;
    pixels outside the building silhouette (sky around roofs, domes, spires)
    are filled with a neutral light sky colour.  With ``with_alpha=True`` the
    result is RGBA, alpha being the silhouette; :func:`render_view` accepts
    both forms (an RGBA facade is composited onto the photo background along
    its silhouette, an RGB one is an opaque rectangle).
    """
    lm = _build_landmark(rng, size)
    if with_alpha:
        return lm.front.copy()
    a = lm.front[..., 3:4].astype(np.float32) / 255.0
    sky = np.array([200, 214, 228], np.float32)
    rgb = lm.front[..., :3].astype(np.float32) * a + sky * (1 - a)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------
# scene: background, occluders, camera pipeline
# --------------------------------------------------------------------------


def _photo_size(rng: np.random.Generator, image_size: int, tall: bool = False) -> tuple[int, int]:
    """(width, height) of a photo whose longer side is image_size (portrait more likely when ``tall``)."""
    p = [0.2, 0.1, 0.1, 0.4, 0.2] if tall else [0.4, 0.2, 0.08, 0.22, 0.1]
    aspect = _pick(rng, [4 / 3, 3 / 2, 1.0, 3 / 4, 2 / 3], p=p)
    if aspect >= 1:
        return int(image_size), int(round(image_size / aspect))
    return int(round(image_size * aspect)), int(image_size)


def _sky(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    kind = _pick(rng, ["clear", "hazy", "overcast", "sunset"], p=[0.45, 0.2, 0.25, 0.1])
    if kind == "clear":
        top, bot = _jitter(rng, (70, 120, 190)), _jitter(rng, (175, 205, 230))
    elif kind == "hazy":
        top, bot = _jitter(rng, (135, 165, 200)), _jitter(rng, (215, 220, 225))
    elif kind == "overcast":
        g = _u(rng, 150, 215)
        top, bot = np.array([g, g + 3, g + 8], np.float32), np.array([g + 20, g + 22, g + 24], np.float32)
    else:
        top, bot = _jitter(rng, (80, 90, 150)), _jitter(rng, (250, 170, 110))
    t = (np.arange(h, dtype=np.float32) / max(h - 1, 1)) ** _u(rng, 0.6, 1.3)
    img = top[None, None, :] * (1 - t)[:, None, None] + bot[None, None, :] * t[:, None, None]
    img = np.broadcast_to(img, (h, w, 3)).astype(np.float32)
    if kind != "clear" or rng.random() < 0.7:
        n = _noise(rng, h, w, w / _u(rng, 2.0, 4.0), 5, aspect=0.4)
        thr = _u(rng, -0.3, 1.2) if kind != "overcast" else _u(rng, -1.0, 0.2)
        c = np.clip((n - thr) * _u(rng, 0.5, 1.0), 0, 1) * _u(rng, 0.5, 0.95)
        shade = 1.0 - 0.1 * np.clip(_noise(rng, h, w, w / 6, 2), 0, None)
        cloud = (np.array([248, 248, 250], np.float32) if kind != "sunset" else _jitter(rng, (255, 200, 170)))
        cloud_img = cloud[None, None, :] * shade[..., None]
        img = img * (1 - c[..., None]) + cloud_img * c[..., None]
    return np.ascontiguousarray(img, dtype=np.float32)


def _ground(rng: np.random.Generator, img: np.ndarray, y0: int) -> None:
    """Ground below row y0 (in place): perspective paving, grass or asphalt."""
    h, w = img.shape[:2]
    y0 = int(np.clip(y0, 0, h))
    if y0 >= h:
        return
    rows = h - y0
    kind = _pick(rng, ["paving", "grass", "asphalt"], p=[0.5, 0.3, 0.2])
    yh = y0 - _u(rng, 3, 25)  # true horizon slightly above ground top
    ys = np.arange(y0, h, dtype=np.float32)[:, None] - yh + 1.0
    xs = np.arange(w, dtype=np.float32)[None, :] - w / 2 + _u(rng, -w / 3, w / 3)
    f = max(w, h) * 1.2
    zg = f * 1.6 / ys
    xg = xs * zg / f
    if kind == "paving":
        base = _jitter(rng, _pick(rng, [(170, 165, 155), (190, 175, 150), (140, 140, 145), (175, 130, 110)]))
        ts = _u(rng, 0.35, 0.9)
        u, v = xg / ts, zg / ts
        chk = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
        lines = ((u % 1) < 0.06) | ((v % 1) < 0.06)
        tex = 1.0 + 0.05 * (chk - 0.5) - 0.25 * lines.astype(np.float32)
        tex = cv2.GaussianBlur(tex, (0, 0), 0.7)
        g = base[None, None, :] * tex[..., None]
    elif kind == "grass":
        base = _jitter(rng, (95, 130, 60), hue=0.05)
        n = _noise(rng, rows, w, 40, 3) * 0.12 + _noise(rng, rows, w, 3, 1, aspect=3.0) * 0.08
        g = base[None, None, :] * (1 + n)[..., None]
    else:
        base = _jitter(rng, (85, 85, 90), val=0.2)
        n = _noise(rng, rows, w, 30, 2) * 0.06
        g = base[None, None, :] * (1 + n)[..., None]
        lane = np.abs(xg - _u(rng, -2, 2)) < 0.08
        g[lane & ((zg % 3.0) < 1.6)] = (215, 210, 195)
    g = g + rng.normal(0, 4.0, (rows, w, 1)).astype(np.float32)
    # haze towards the horizon
    haze = np.clip(1.0 - (ys - (y0 - yh)) / (rows * 0.5 + 1), 0, 1)[..., None] * 0.35
    g = g * (1 - haze) + img[max(0, y0 - 1):y0].mean(axis=(0, 1)) * haze if y0 > 0 else g
    img[y0:] = g


def _far_clutter(rng: np.random.Generator, img: np.ndarray, y0: int) -> None:
    """Distant hazy skyline and trees standing on row y0 (in place)."""
    h, w = img.shape[:2]
    if y0 <= 2 or y0 > h + 20:
        return
    y0 = min(y0, h)
    haze_col = img[max(0, y0 - 3):y0].mean(axis=(0, 1))
    layer = img.copy()
    for _ in range(_ri(rng, 0, 8)):
        bw = w * _u(rng, 0.04, 0.2)
        bh = h * _u(rng, 0.02, 0.18)
        x = _u(rng, -0.1, 1.0) * w
        c = _mix(_jitter(rng, _pick(rng, _WALLS), val=0.2), haze_col, _u(rng, 0.35, 0.7))
        cv2.rectangle(layer, (int(x), int(y0 - bh)), (int(x + bw), y0 + 2), _col(c), -1)
        if rng.random() < 0.4:
            cv2.rectangle(layer, (int(x + bw * 0.3), int(y0 - bh * 1.3)), (int(x + bw * 0.5), int(y0 - bh)), _col(c), -1)
    for _ in range(_ri(rng, 0, 7)):
        tx = _u(rng, 0, 1) * w
        tr = h * _u(rng, 0.02, 0.07)
        c = _mix(_jitter(rng, (55, 85, 45), hue=0.05), haze_col, _u(rng, 0.2, 0.5))
        for _j in range(_ri(rng, 3, 7)):
            _circle(layer, (int(tx + _u(rng, -1.5, 1.5) * tr), int(y0 - tr * _u(rng, 0.5, 2.0))),
                       int(tr * _u(rng, 0.6, 1.1)), _col(c), -1, _AA)
    img[:] = layer


def _occluder(rng: np.random.Generator, img: np.ndarray, box: tuple[float, float, float, float], ground_y: float) -> None:
    """Draw one object in front of the building (in place, float32 image)."""
    h, w = img.shape[:2]
    bx0, by0, bx1, by1 = box
    bw, bh = max(bx1 - bx0, 8.0), max(by1 - by0, 8.0)
    layer = np.zeros((h, w, 3), np.float32)
    mask = np.zeros((h, w), np.float32)
    kind = _pick(rng, ["people", "tree", "car", "pole", "board", "blob"], p=[0.25, 0.2, 0.15, 0.12, 0.13, 0.15])
    base_y = min(float(h), max(ground_y, by1) + _u(rng, 0, 0.15) * h)
    cx = _u(rng, bx0 + 0.1 * bw, bx1 - 0.1 * bw)

    def fill(draw):
        draw(layer, 1)
        draw(mask, 0)

    if kind == "people":
        for _ in range(_ri(rng, 1, 3)):
            ph = bh * _u(rng, 0.2, 0.55)
            px = cx + _u(rng, -0.15, 0.15) * bw
            cloth = _hsv(_u(rng, 0, 1), _u(rng, 0.2, 0.8), _u(rng, 0.2, 0.8))
            legs = _hsv(_u(rng, 0, 1), _u(rng, 0.1, 0.5), _u(rng, 0.1, 0.5))
            skin = _jitter(rng, _pick(rng, [(230, 190, 160), (180, 130, 95), (120, 80, 55)]))
            hw = ph * 0.14

            def person(a, is_col, px=px, ph=ph, hw=hw, cloth=cloth, legs=legs, skin=skin):
                val = (lambda c: _col(c)) if is_col else (lambda c: 1.0)
                cv2.rectangle(a, (int(px - hw * 0.9), int(base_y - ph * 0.48)), (int(px + hw * 0.9), int(base_y)), val(legs), -1)
                _ellipse(a, (int(px), int(base_y - ph * 0.66)), (int(hw * 1.25), int(ph * 0.22)), 0, 0, 360, val(cloth), -1, _AA)
                _circle(a, (int(px), int(base_y - ph * 0.92)), max(2, int(ph * 0.08)), val(skin), -1, _AA)

            fill(person)
    elif kind == "tree":
        th = bh * _u(rng, 0.5, 1.0)
        trunk = _jitter(rng, (80, 60, 45))
        leaf = _jitter(rng, (60, 100, 45), hue=0.06)
        cr = min(th * _u(rng, 0.2, 0.32), bw * _u(rng, 0.15, 0.3))
        blobs = [(cx + _u(rng, -1, 1) * cr * 0.8, base_y - th + cr + _u(rng, -0.5, 0.6) * cr, cr * _u(rng, 0.5, 0.9))
                 for _ in range(_ri(rng, 4, 8))]

        def tree(a, is_col):
            val = (lambda c: _col(c)) if is_col else (lambda c: 1.0)
            cv2.rectangle(a, (int(cx - th * 0.03), int(base_y - th * 0.6)), (int(cx + th * 0.03), int(base_y)), val(trunk), -1)
            for bx, by, br in blobs:
                _circle(a, (int(bx), int(by)), int(br), val(leaf), -1, _AA)

        fill(tree)
        # leafy texture
        x0, x1 = max(0, int(cx - th)), min(w, int(cx + th))
        if x1 > x0:
            n = _noise(rng, h, x1 - x0, max(2.0, th / 40), 2)
            layer[:, x0:x1] *= (1 + 0.3 * n)[..., None]
            mask[:, x0:x1] *= np.clip(1.4 + 0.8 * n, 0, 1)
    elif kind == "car":
        cw = bw * _u(rng, 0.3, 0.6)
        chh = cw * _u(rng, 0.32, 0.4)
        body = _hsv(_u(rng, 0, 1), _u(rng, 0.0, 0.8), _u(rng, 0.2, 0.9))
        x0 = cx - cw / 2
        pts = np.int32([(x0, base_y - chh * 0.25), (x0 + cw * 0.04, base_y - chh * 0.6), (x0 + cw * 0.25, base_y - chh * 0.65),
                        (x0 + cw * 0.35, base_y - chh), (x0 + cw * 0.72, base_y - chh), (x0 + cw * 0.85, base_y - chh * 0.62),
                        (x0 + cw, base_y - chh * 0.55), (x0 + cw, base_y - chh * 0.22)]).reshape(-1, 1, 2)
        win_pts = np.int32([(x0 + cw * 0.3, base_y - chh * 0.64), (x0 + cw * 0.37, base_y - chh * 0.93),
                            (x0 + cw * 0.7, base_y - chh * 0.93), (x0 + cw * 0.8, base_y - chh * 0.64)]).reshape(-1, 1, 2)

        def car(a, is_col):
            val = (lambda c: _col(c)) if is_col else (lambda c: 1.0)
            cv2.fillPoly(a, [pts], val(body), _AA)
            cv2.fillPoly(a, [win_pts], val((40, 50, 60)), _AA)
            for wx in (x0 + cw * 0.2, x0 + cw * 0.8):
                _circle(a, (int(wx), int(base_y - chh * 0.2)), max(2, int(chh * 0.2)), val((25, 25, 25)), -1, _AA)

        fill(car)
    elif kind == "pole":
        ph = bh * _u(rng, 0.6, 1.2)
        pc = _jitter(rng, (50, 55, 50))
        sc = _hsv(_u(rng, 0, 1), _u(rng, 0.5, 0.9), _u(rng, 0.5, 0.9))
        pw = max(2.0, w * 0.008)
        sw, sh = bw * _u(rng, 0.08, 0.18), bh * _u(rng, 0.06, 0.14)

        def pole(a, is_col):
            val = (lambda c: _col(c)) if is_col else (lambda c: 1.0)
            cv2.rectangle(a, (int(cx - pw), int(base_y - ph)), (int(cx + pw), int(base_y)), val(pc), -1)
            cv2.rectangle(a, (int(cx - sw / 2), int(base_y - ph * 0.7)), (int(cx + sw / 2), int(base_y - ph * 0.7 + sh)),
                          val(sc), -1)
            _ellipse(a, (int(cx), int(base_y - ph)), (int(pw * 4), int(pw * 2)), 0, 0, 360, val(pc), -1, _AA)

        fill(pole)
    elif kind == "board":
        bw2, bh2 = bw * _u(rng, 0.15, 0.35), bh * _u(rng, 0.2, 0.4)
        by = base_y - bh2 - _u(rng, 0, 0.2) * bh
        frame = _jitter(rng, (60, 60, 65))

        def board(a, is_col):
            val = (lambda c: _col(c)) if is_col else (lambda c: 1.0)
            cv2.rectangle(a, (int(cx - bw2 / 2), int(by)), (int(cx + bw2 / 2), int(by + bh2)), val(frame), -1)
            cv2.rectangle(a, (int(cx - 2), int(by + bh2)), (int(cx + 2), int(base_y)), val(frame), -1)

        fill(board)
        # poster content: coloured blotches
        x0, x1 = max(0, int(cx - bw2 / 2 + 3)), min(w, int(cx + bw2 / 2 - 3))
        y0, y1 = max(0, int(by + 3)), min(h, int(by + bh2 - 3))
        if x1 > x0 and y1 > y0:
            n = _noise(rng, y1 - y0, x1 - x0, max(3.0, (x1 - x0) / 4), 2)
            c1 = _hsv(_u(rng, 0, 1), 0.7, 0.9)
            c2 = _hsv(_u(rng, 0, 1), 0.6, 0.5)
            t = np.clip(n * 0.8 + 0.5, 0, 1)[..., None]
            layer[y0:y1, x0:x1] = c1 * t + c2 * (1 - t)
    else:  # blob
        r = math.sqrt(bw * bh) * _u(rng, 0.08, 0.17)
        by = _u(rng, by0 + 0.3 * bh, min(float(h), by1))
        ang = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        rad = r * (1 + 0.35 * _noise1d(rng, 24, 5, 2))
        pts = np.int32(np.stack([cx + rad * np.cos(ang), by + rad * np.sin(ang) * _u(rng, 0.6, 1.4)], 1)).reshape(-1, 1, 2)
        col = _hsv(_u(rng, 0, 1), _u(rng, 0.1, 0.8), _u(rng, 0.15, 0.8))

        def blob(a, is_col):
            cv2.fillPoly(a, [pts], _col(col) if is_col else 1.0, _AA)

        fill(blob)
    # texture and shading on the occluder
    ys, xs = np.nonzero(mask > 0)
    if len(ys):
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        n = _noise(rng, y1 - y0, x1 - x0, max(2.0, (x1 - x0) / 8), 3)
        grad = np.linspace(1.1, 0.8, y1 - y0, dtype=np.float32)[:, None]
        layer[y0:y1, x0:x1] *= ((1 + 0.08 * n) * grad)[..., None]
        layer[y0:y1, x0:x1] += rng.normal(0, 3.0, (y1 - y0, x1 - x0, 1)).astype(np.float32)
    m = mask[..., None]
    img[:] = img * (1 - m) + layer * m


def _camera_pipeline(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Blur, exposure, white balance, gamma, contrast, saturation, vignetting, noise -> uint8."""
    x = np.clip(img, 0, 255).astype(np.float32) / 255.0
    r = rng.random()
    if r < 0.45:
        x = cv2.GaussianBlur(x, (0, 0), _u(rng, 0.3, 0.9))
    elif r < 0.53:
        n = _ri(rng, 3, 5)
        kern = np.zeros((n, n), np.float32)
        kern[n // 2, :] = 1.0 / n
        rot = cv2.getRotationMatrix2D((n / 2 - 0.5, n / 2 - 0.5), _u(rng, 0, 180), 1.0)
        kern = cv2.warpAffine(kern, rot, (n, n))
        kern /= max(float(kern.sum()), 1e-6)
        x = cv2.filter2D(x, -1, kern)
    gain = math.exp(_u(rng, -0.35, 0.3))
    wb = np.array([_u(rng, 0.9, 1.1), 1.0, _u(rng, 0.9, 1.1)], np.float32)
    x = np.clip(x * gain * wb, 0, 1) ** _u(rng, 0.8, 1.2)
    mean = float(x.mean())
    x = (x - mean) * _u(rng, 0.85, 1.2) + mean
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * _u(rng, 0.7, 1.3)
    h, w = x.shape[:2]
    vig = _u(rng, 0.0, 0.35)
    if vig > 0.02:
        yy = (np.arange(h, dtype=np.float32)[:, None] - h / 2) / (h / 2)
        xx = (np.arange(w, dtype=np.float32)[None, :] - w / 2) / (w / 2)
        x = x * (1 - vig * 0.5 * (xx ** 2 + yy ** 2))[..., None]
    sigma = _u(rng, 0.004, 0.02)
    x = x + rng.standard_normal(x.shape, dtype=np.float32) * sigma * (0.4 + np.sqrt(np.clip(x, 0, 1)))
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _rot(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def _pyramid(tex: np.ndarray, levels: int) -> list[np.ndarray]:
    pyr = [tex]
    for _ in range(levels):
        if min(pyr[-1].shape[:2]) < 16:
            break
        pyr.append(cv2.pyrDown(pyr[-1]))
    return pyr


def _warp(tex_rgba: np.ndarray, H: np.ndarray, m: float, size: tuple[int, int]) -> np.ndarray:
    """Warp a premultiplied RGBA texture (float32) with homography H; m = approx. output px per texel."""
    level = 0
    while m * 2 ** level < 0.5 and level < 4:
        level += 1
    pyr = _pyramid(tex_rgba, level)
    level = len(pyr) - 1
    s = 2.0 ** level
    Hl = H @ np.diag([s, s, 1.0])
    return cv2.warpPerspective(pyr[level], Hl, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=(0, 0, 0, 0))


def _premult(rgba: np.ndarray, shade: np.ndarray | float) -> np.ndarray:
    f = rgba.astype(np.float32)
    a = f[..., 3:4] / 255.0
    rgb = f[..., :3] * shade
    return np.concatenate([rgb * a, a * 255.0], axis=2)


def _render(front: np.ndarray, side: np.ndarray | None, rng: np.random.Generator, image_size: int,
            max_tilt: float, occlusion: bool) -> tuple[np.ndarray, np.ndarray]:
    if front.ndim != 3 or front.shape[2] not in (3, 4):
        raise ValueError(f"facade must be HxWx3 or HxWx4, got shape {front.shape}")
    if front.shape[2] == 3:
        front = np.dstack([front, np.full(front.shape[:2], 255, np.uint8)])
    Hf, Wf = front.shape[:2]
    ow, oh = _photo_size(rng, image_size, tall=Hf > 1.3 * Wf)
    S = max(ow, oh)
    # --- camera
    yaw = _u(rng, -max_tilt, max_tilt)
    pitch = _u(rng, -0.8, 0.15) * max_tilt
    roll = float(np.clip(rng.normal(0, 0.03), -0.08, 0.08))
    f = S * _u(rng, 0.85, 1.7)
    scale = math.exp(_u(rng, math.log(0.6), math.log(1.5)))
    m = min(ow / Wf, oh / Hf) * _u(rng, 0.72, 0.85) * scale
    ox = _u(rng, -0.45, 0.45) * abs(ow - m * Wf * math.cos(yaw))
    oy = _u(rng, -0.45, 0.45) * abs(oh - m * Hf)
    tz = f / m
    t = np.array([ox * tz / f, oy * tz / f, tz])
    R = _rot(yaw, pitch, roll)
    K = np.array([[f, 0, (ow - 1) / 2], [0, f, (oh - 1) / 2], [0, 0, 1.0]])
    T = np.array([[1, 0, -Wf / 2], [0, 1, -Hf / 2], [0, 0, 1.0]])
    H = K @ np.column_stack([R[:, 0], R[:, 1], t]) @ T
    H = H / H[2, 2]
    C = -R.T @ t
    side_H = None
    side_n = None
    if side is not None:
        if C[0] > Wf / 2:
            side_H = K @ np.column_stack([R[:, 2], R[:, 1], R @ np.array([Wf / 2, -Hf / 2, 0]) + t])
            side_n = np.array([1.0, 0, 0])
        elif C[0] < -Wf / 2:
            side_H = K @ np.column_stack([R[:, 2], R[:, 1], R @ np.array([-Wf / 2, -Hf / 2, 0]) + t])
            side_n = np.array([-1.0, 0, 0])
    # --- lighting
    if rng.random() < 0.3:  # overcast
        amb, sun = _u(rng, 0.8, 0.95), np.zeros(3)
    else:
        amb = _u(rng, 0.5, 0.7)
        sun = np.array([_u(rng, -1, 1), _u(rng, -1, -0.2), _u(rng, -1.0, -0.15)])
        sun /= np.linalg.norm(sun)
    diff = 1.0 - amb

    def shade_of(n):
        return amb + diff * max(0.0, float(np.dot(n, sun))) * 1.25

    front_shade = shade_of(np.array([0, 0, -1.0]))
    # soft gradient + optional cast shadow on the facade
    gy = np.linspace(1.0 + _u(rng, 0, 0.08), 1.0 - _u(rng, 0, 0.08), Hf, dtype=np.float32)[:, None]
    gx = np.linspace(1.0 - _u(rng, -0.06, 0.06), 1.0 + _u(rng, -0.06, 0.06), Wf, dtype=np.float32)[None, :]
    fshade = gy * gx * front_shade
    if rng.random() < 0.3 and sun.any():
        mask = np.zeros((Hf, Wf), np.float32)
        x_edge = _u(rng, 0.1, 0.6) * Wf
        slope = _u(rng, -0.8, 0.8)
        if rng.random() < 0.5:
            pts = [(0, 0), (x_edge, 0), (x_edge + slope * Hf, Hf), (0, Hf)]
        else:
            pts = [(Wf, 0), (Wf - x_edge, 0), (Wf - x_edge + slope * Hf, Hf), (Wf, Hf)]
        cv2.fillPoly(mask, [np.int32(pts).reshape(-1, 1, 2)], 1.0)
        mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, Wf / 120))
        fshade = fshade * (1 - mask * (1 - amb / max(front_shade, 1e-3)))
    # --- background
    bottoms = [H @ np.array([0, Hf, 1.0]), H @ np.array([Wf, Hf, 1.0]), H @ np.array([Wf / 2, Hf, 1.0])]
    base_y = min(float(p[1] / p[2]) for p in bottoms)
    ground_y = int(np.clip(base_y - _u(rng, 0.0, 0.08) * oh, 0.25 * oh, oh + 5))
    img = _sky(rng, ow, oh)
    _far_clutter(rng, img, ground_y)
    _ground(rng, img, ground_y)
    img = cv2.GaussianBlur(img, (0, 0), _u(rng, 0.5, 1.3))
    # --- building
    if side_H is not None:
        sshade = shade_of(side_n) * _u(rng, 0.85, 1.0)
        ws = _warp(_premult(side, sshade), side_H, m * 0.7, (ow, oh))
        a = ws[..., 3:4] / 255.0
        img = img * (1 - a) + ws[..., :3]
    wf = _warp(_premult(front, fshade[..., None]), H, m, (ow, oh))
    a = wf[..., 3:4] / 255.0
    img = img * (1 - a) + wf[..., :3]
    # --- occluder
    if occlusion and rng.random() < 0.65:
        corners = np.array([H @ np.array([x, y, 1.0]) for x, y in ((0, 0), (Wf, 0), (Wf, Hf), (0, Hf))])
        corners = corners[:, :2] / corners[:, 2:]
        bx0, by0 = np.clip(corners.min(axis=0), 0, [ow, oh])
        bx1, by1 = np.clip(corners.max(axis=0), 0, [ow, oh])
        if bx1 - bx0 > 10 and by1 - by0 > 10:
            _occluder(rng, img, (float(bx0), float(by0), float(bx1), float(by1)), float(ground_y))
    return _camera_pipeline(rng, img), H


def render_view(facade: np.ndarray, rng: np.random.Generator, image_size: int = 384, max_tilt: float = 0.3,
                occlusion: bool = True, side: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Photograph a facade texture from a random viewpoint.

    Args:
        facade: RGB (or RGBA, alpha = silhouette) uint8 facade texture, e.g. from :func:`make_landmark`.
        rng: random generator; the result depends only on its state, the facade shape and the
            arguments (not on the facade pixel values), so two facades of equal shape rendered
            with equally seeded generators get the same camera, background and lighting.
        image_size: longer side of the photo in pixels.
        max_tilt: maximum out-of-plane rotation (yaw) of the facade plane in radians; the
            pitch (mostly looking up) is limited to 0.8 * max_tilt.
        occlusion: allow an object in front of the building (drawn with probability 0.65).
        side: optional RGBA side-wall texture of the same height, drawn as a second plane
            when the camera sees that side.

    Returns:
        ``(photo, H)``: RGB uint8 photo and the 3x3 float64 homography mapping facade pixel
        coordinates ``(x, y, 1)`` to photo pixel coordinates (pixel centres at integers).
    """
    return _render(np.asarray(facade), side, rng, int(image_size), float(max_tilt), bool(occlusion))


# --------------------------------------------------------------------------
# distractors
# --------------------------------------------------------------------------


def _nature(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    img = _sky(rng, w, h)
    horizon = int(h * _u(rng, 0.35, 0.65))
    sky_col = img[max(0, horizon - 5):horizon].mean(axis=(0, 1))
    xs = np.arange(w)
    n_layers = _ri(rng, 1, 3)
    for i in range(n_layers):
        depth = (n_layers - i) / n_layers  # 1 = far
        amp = h * _u(rng, 0.08, 0.25) * (0.5 + depth)
        prof = horizon - amp * (0.6 + 0.5 * _noise1d(rng, w, w / _u(rng, 1.5, 5), 5)) + h * 0.05 * (1 - depth)
        col = _mix(_jitter(rng, _pick(rng, [(70, 90, 70), (100, 95, 90), (80, 100, 60), (120, 110, 100)]), hue=0.05),
                   sky_col, 0.55 * depth)
        tex = 1 + 0.07 * _noise(rng, h, w, _u(rng, 12, 40), 4)
        mask = (np.arange(h)[:, None] >= prof[None, :]).astype(np.float32)
        mask = cv2.GaussianBlur(mask, (0, 0), 0.8)[..., None]
        img = np.ascontiguousarray(img * (1 - mask) + (col[None, None, :] * tex[..., None]) * mask, dtype=np.float32)
    fg = _pick(rng, ["meadow", "lake", "forest"])
    fy = int(horizon + h * _u(rng, 0.02, 0.12))
    if fg == "lake":
        refl = img[max(0, 2 * fy - h):fy][::-1]
        rows = h - fy
        refl = cv2.resize(refl, (w, rows)) if refl.shape[0] != rows else refl
        ripple = _noise(rng, rows, w, 6, 2, aspect=0.1)
        water = refl * 0.75 + _jitter(rng, (40, 70, 90)) * 0.25
        img[fy:] = water * (1 + 0.08 * ripple)[..., None]
    else:
        base = _jitter(rng, (105, 125, 70), hue=0.06) if fg == "meadow" else _jitter(rng, (45, 70, 45), hue=0.04)
        rows = h - fy
        n = _noise(rng, rows, w, 30, 3) * 0.15 + _noise(rng, rows, w, 2.5, 1, aspect=4.0) * 0.12
        img[fy:] = base[None, None, :] * (1 + n)[..., None]
        img = np.ascontiguousarray(img, dtype=np.float32)
        if fg == "forest":
            for _ in range(_ri(rng, 10, 30)):
                tx, tr = _u(rng, 0, w), h * _u(rng, 0.03, 0.08)
                ty = fy + _u(rng, -0.02, 0.05) * h
                c = _jitter(rng, (45, 80, 40), hue=0.05)
                _ellipse(img, (int(tx), int(ty - tr * 1.5)), (int(tr), int(tr * 2.2)), 0, 0, 360, _col(c), -1, _AA)
    # rocks
    img = np.ascontiguousarray(img, dtype=np.float32)
    for _ in range(_ri(rng, 0, 4)):
        rx, ry, rr = _u(rng, 0, w), _u(rng, fy, h), h * _u(rng, 0.02, 0.08)
        ang = np.linspace(0, 2 * math.pi, 10, endpoint=False)
        rad = rr * (1 + 0.3 * rng.standard_normal(10))
        pts = np.int32(np.stack([rx + rad * np.cos(ang), ry + 0.6 * rad * np.sin(ang)], 1)).reshape(-1, 1, 2)
        cv2.fillPoly(img, [pts], _col(_jitter(rng, (120, 115, 110), val=0.25)), _AA)
    img += (_noise(rng, h, w, 3, 1) * 5)[..., None]
    return img


def _indoor(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    vx, vy = w * _u(rng, 0.3, 0.7), h * _u(rng, 0.35, 0.6)
    bx0, bx1 = vx - w * _u(rng, 0.2, 0.35), vx + w * _u(rng, 0.2, 0.35)
    by0, by1 = vy - h * _u(rng, 0.2, 0.35), vy + h * _u(rng, 0.15, 0.3)
    wall = _jitter(rng, _pick(rng, [(230, 225, 210), (200, 210, 220), (225, 205, 180), (190, 200, 180), (240, 240, 240)]))
    img = np.empty((h, w, 3), np.float32)
    img[:] = _shade(wall, 0.9)
    # floor, ceiling, side walls as polygons
    floor = _jitter(rng, _pick(rng, [(150, 110, 70), (120, 80, 50), (170, 160, 150), (110, 110, 120)]))
    cv2.fillPoly(img, [np.int32([(bx0, by1), (bx1, by1), (w, h), (0, h)]).reshape(-1, 1, 2)], _col(floor))
    cv2.fillPoly(img, [np.int32([(0, 0), (w, 0), (bx1, by0), (bx0, by0)]).reshape(-1, 1, 2)], _col(_shade(wall, 1.08)))
    cv2.fillPoly(img, [np.int32([(0, 0), (bx0, by0), (bx0, by1), (0, h)]).reshape(-1, 1, 2)], _col(_shade(wall, 0.8)))
    cv2.fillPoly(img, [np.int32([(w, 0), (bx1, by0), (bx1, by1), (w, h)]).reshape(-1, 1, 2)], _col(_shade(wall, 0.85)))
    cv2.rectangle(img, (int(bx0), int(by0)), (int(bx1), int(by1)), _col(wall), -1)
    # floor planks converging to the vanishing point
    for t in np.linspace(-1.5, 2.5, _ri(rng, 16, 40)):
        xb = bx0 + (bx1 - bx0) * t
        xe = vx + (xb - vx) * (h - vy) / max(by1 - vy, 1)
        cv2.line(img, (int(xb), int(by1)), (int(xe), h), _col(_shade(floor, 0.75)), 1, _AA)
    # furniture and objects on the back wall
    for _ in range(_ri(rng, 3, 7)):
        kind = _pick(rng, ["shelf", "painting", "sofa", "lamp", "window", "box"])
        fx0 = _u(rng, bx0 - 0.1 * w, bx1 - 0.05 * w)
        fw = (bx1 - bx0) * _u(rng, 0.15, 0.4)
        if kind == "shelf":
            fy0, fy1 = by0 + (by1 - by0) * _u(rng, 0.05, 0.4), by1
            wood = _jitter(rng, (120, 85, 55))
            cv2.rectangle(img, (int(fx0), int(fy0)), (int(fx0 + fw), int(fy1)), _col(wood), -1)
            ns = _ri(rng, 3, 5)
            for s in range(ns):
                sy0 = fy0 + (fy1 - fy0) * s / ns + 3
                sy1 = fy0 + (fy1 - fy0) * (s + 1) / ns - 2
                xx = fx0 + 3
                while xx < fx0 + fw - 4:
                    bw = _u(rng, 2, 6)
                    bh = (sy1 - sy0) * _u(rng, 0.6, 0.95)
                    cv2.rectangle(img, (int(xx), int(sy1 - bh)), (int(xx + bw), int(sy1)),
                                  _col(_hsv(_u(rng, 0, 1), _u(rng, 0.3, 0.8), _u(rng, 0.3, 0.8))), -1)
                    xx += bw + 1
        elif kind == "painting":
            py0 = by0 + (by1 - by0) * _u(rng, 0.1, 0.3)
            ph = (by1 - by0) * _u(rng, 0.15, 0.35)
            cv2.rectangle(img, (int(fx0 - 3), int(py0 - 3)), (int(fx0 + fw + 3), int(py0 + ph + 3)), _col(_jitter(rng, (150, 120, 60))), -1)
            x0, x1, y0, y1 = max(0, int(fx0)), min(w, int(fx0 + fw)), max(0, int(py0)), min(h, int(py0 + ph))
            if x1 > x0 and y1 > y0:
                n1 = _noise(rng, y1 - y0, x1 - x0, max(2.0, (x1 - x0) / 3), 3)
                c1, c2 = _hsv(_u(rng, 0, 1), 0.6, 0.8), _hsv(_u(rng, 0, 1), 0.5, 0.4)
                tt = np.clip(n1 * 0.5 + 0.5, 0, 1)[..., None]
                img[y0:y1, x0:x1] = c1 * tt + c2 * (1 - tt)
        elif kind == "sofa":
            sy1 = by1 + (h - by1) * _u(rng, 0.1, 0.5)
            sh = (by1 - by0) * _u(rng, 0.2, 0.35)
            c = _hsv(_u(rng, 0, 1), _u(rng, 0.2, 0.7), _u(rng, 0.3, 0.8))
            cv2.rectangle(img, (int(fx0), int(sy1 - sh)), (int(fx0 + fw * 1.5), int(sy1)), _col(c), -1)
            cv2.rectangle(img, (int(fx0), int(sy1 - sh * 1.5)), (int(fx0 + fw * 1.5), int(sy1 - sh * 0.6)),
                          _col(_shade(c, 0.85)), -1)
            for cx in np.linspace(fx0 + fw * 0.25, fx0 + fw * 1.25, 3):
                _ellipse(img, (int(cx), int(sy1 - sh * 0.9)), (int(fw * 0.2), int(sh * 0.35)), 0, 0, 360,
                            _col(_shade(c, 1.1)), -1, _AA)
        elif kind == "lamp":
            lx, ly = fx0 + fw / 2, by1 + (h - by1) * _u(rng, 0.0, 0.4)
            lh = (by1 - by0) * _u(rng, 0.5, 0.9)
            cv2.line(img, (int(lx), int(ly)), (int(lx), int(ly - lh)), _col((40, 40, 40)), 2, _AA)
            sc = _jitter(rng, (240, 220, 170))
            cv2.fillPoly(img, [np.int32([(lx - lh * 0.12, ly - lh * 0.8), (lx + lh * 0.12, ly - lh * 0.8),
                                         (lx + lh * 0.07, ly - lh * 1.05), (lx - lh * 0.07, ly - lh * 1.05)]).reshape(-1, 1, 2)],
                         _col(sc), _AA)
        elif kind == "window":
            wy0 = by0 + (by1 - by0) * _u(rng, 0.1, 0.25)
            wh = (by1 - by0) * _u(rng, 0.35, 0.6)
            cv2.rectangle(img, (int(fx0), int(wy0)), (int(fx0 + fw), int(wy0 + wh)), _col((235, 240, 245)), -1)
            cv2.rectangle(img, (int(fx0), int(wy0)), (int(fx0 + fw), int(wy0 + wh)), _col((250, 250, 250)), 3)
            cv2.line(img, (int(fx0 + fw / 2), int(wy0)), (int(fx0 + fw / 2), int(wy0 + wh)), _col((250, 250, 250)), 2)
        else:
            c = _jitter(rng, _pick(rng, [(120, 90, 60), (200, 200, 200), (60, 60, 70), (160, 60, 50)]))
            bh = (by1 - by0) * _u(rng, 0.2, 0.45)
            y1 = by1 + (h - by1) * _u(rng, 0, 0.3)
            cv2.rectangle(img, (int(fx0), int(y1 - bh)), (int(fx0 + fw), int(y1)), _col(c), -1)
            cv2.fillPoly(img, [np.int32([(fx0, y1 - bh), (fx0 + fw, y1 - bh), (fx0 + fw * 1.1, y1 - bh * 1.15),
                                         (fx0 + fw * 0.1, y1 - bh * 1.15)]).reshape(-1, 1, 2)], _col(_shade(c, 1.2)), _AA)
    # warm light falloff + surface noise
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lx, ly = _u(rng, 0, w), _u(rng, 0, h * 0.5)
    fall = 0.95 - 0.45 * np.sqrt(((xx - lx) / w) ** 2 + ((yy - ly) / h) ** 2)
    img *= fall[..., None] * np.array([1.0, _u(rng, 0.95, 1.0), _u(rng, 0.85, 1.0)], np.float32)
    img += (_noise(rng, h, w, 25, 2) * 4 + _noise(rng, h, w, 2, 1) * 3)[..., None]
    return img


def _tabletop(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    if rng.random() < 0.6:  # wood grain
        base = _jitter(rng, _pick(rng, [(160, 115, 75), (120, 80, 50), (190, 160, 120)]))
        yy = np.arange(h, dtype=np.float32)[:, None]
        warp = _noise(rng, h, w, w / 3, 3) * _u(rng, 8, 20)
        grain = np.sin((yy + warp) * _u(rng, 0.3, 0.8)) * 0.08 + _noise(rng, h, w, 2, 1, aspect=0.05) * 0.05
        img = base[None, None, :] * (1 + grain)[..., None]
    else:  # cloth
        base = _hsv(_u(rng, 0, 1), _u(rng, 0.2, 0.7), _u(rng, 0.4, 0.85))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        weave = np.sin(xx * 1.9) * np.sin(yy * 1.9) * 0.05 + _noise(rng, h, w, 40, 2) * 0.08
        img = base[None, None, :] * (1 + weave)[..., None]
    img = np.ascontiguousarray(img, dtype=np.float32)
    for _ in range(_ri(rng, 3, 8)):
        kind = _pick(rng, ["mug", "plate", "fruit", "book", "pen", "phone"])
        cx, cy = _u(rng, 0.1, 0.9) * w, _u(rng, 0.15, 0.9) * h
        s = min(w, h) * _u(rng, 0.08, 0.2)
        col = _hsv(_u(rng, 0, 1), _u(rng, 0.2, 0.9), _u(rng, 0.3, 0.95))
        shadow = np.zeros((h, w), np.float32)
        _ellipse(shadow, (int(cx + s * 0.2), int(cy + s * 0.3)), (int(s * 0.9), int(s * 0.5)), 0, 0, 360, 1.0, -1)
        shadow = cv2.GaussianBlur(shadow, (0, 0), max(1.0, s / 6))
        img *= (1 - 0.35 * shadow)[..., None]
        if kind == "mug":
            cv2.rectangle(img, (int(cx - s * 0.4), int(cy - s * 0.5)), (int(cx + s * 0.4), int(cy + s * 0.4)), _col(col), -1)
            _ellipse(img, (int(cx), int(cy + s * 0.4)), (int(s * 0.4), int(s * 0.12)), 0, 0, 180, _col(col), -1, _AA)
            _ellipse(img, (int(cx), int(cy - s * 0.5)), (int(s * 0.4), int(s * 0.12)), 0, 0, 360, _col(_shade(col, 0.5)), -1, _AA)
            _ellipse(img, (int(cx + s * 0.45), int(cy)), (int(s * 0.18), int(s * 0.22)), 0, -90, 90, _col(col), max(2, int(s / 12)), _AA)
        elif kind == "plate":
            _ellipse(img, (int(cx), int(cy)), (int(s), int(s * 0.6)), 0, 0, 360, _col((235, 235, 230)), -1, _AA)
            _ellipse(img, (int(cx), int(cy)), (int(s * 0.7), int(s * 0.42)), 0, 0, 360, _col((215, 215, 210)), 1, _AA)
        elif kind == "fruit":
            fc = _jitter(rng, _pick(rng, [(200, 40, 30), (240, 180, 40), (120, 170, 50), (240, 130, 30)]))
            _circle(img, (int(cx), int(cy)), int(s * 0.4), _col(fc), -1, _AA)
            _circle(img, (int(cx - s * 0.12), int(cy - s * 0.12)), max(1, int(s * 0.1)), _col(_shade(fc, 1.4)), -1, _AA)
        elif kind == "book":
            ang = _u(rng, 0, 180)
            box = cv2.boxPoints(((cx, cy), (s * 1.6, s * 1.1), ang))
            cv2.fillPoly(img, [np.int32(box).reshape(-1, 1, 2)], _col(col), _AA)
            for j in range(3):
                c2 = box[0] + (box[1] - box[0]) * (0.3 + 0.15 * j) + (box[3] - box[0]) * 0.2
                c3 = c2 + (box[3] - box[0]) * 0.5
                cv2.line(img, (int(c2[0]), int(c2[1])), (int(c3[0]), int(c3[1])), _col(_shade(col, 0.5)), 1, _AA)
        elif kind == "pen":
            ang = _u(rng, 0, math.pi)
            dx, dy = math.cos(ang) * s, math.sin(ang) * s
            cv2.line(img, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), _col(col), max(2, int(s / 10)), _AA)
        else:
            ang = _u(rng, 0, 180)
            box = cv2.boxPoints(((cx, cy), (s * 0.7, s * 1.4), ang))
            cv2.fillPoly(img, [np.int32(box).reshape(-1, 1, 2)], _col((25, 25, 30)), _AA)
            inner = cv2.boxPoints(((cx, cy), (s * 0.6, s * 1.2), ang))
            cv2.fillPoly(img, [np.int32(inner).reshape(-1, 1, 2)], _col(_hsv(_u(rng, 0, 1), 0.4, 0.5)), _AA)
    return img


def _closeup(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    kind = _pick(rng, ["foliage", "gravel", "water", "bark"])
    if kind == "foliage":
        img = np.empty((h, w, 3), np.float32)
        img[:] = _jitter(rng, (30, 50, 25))
        base = _jitter(rng, (70, 120, 50), hue=0.06)
        for _ in range(_ri(rng, 250, 500)):
            c = _jitter(rng, base, hue=0.04, val=0.35)
            r = min(w, h) * _u(rng, 0.015, 0.05)
            _ellipse(img, (int(_u(rng, 0, w)), int(_u(rng, 0, h))), (int(r), int(r * 0.45)), _u(rng, 0, 180), 0, 360,
                        _col(c), -1, _AA)
    elif kind == "gravel":
        img = np.empty((h, w, 3), np.float32)
        img[:] = _jitter(rng, (90, 85, 80))
        for _ in range(_ri(rng, 300, 700)):
            c = _jitter(rng, _pick(rng, [(150, 145, 140), (170, 150, 120), (110, 105, 100), (190, 185, 175)]), val=0.2)
            r = min(w, h) * _u(rng, 0.008, 0.03)
            x, y = _u(rng, 0, w), _u(rng, 0, h)
            _ellipse(img, (int(x), int(y)), (int(r), int(r * _u(rng, 0.5, 0.9))), _u(rng, 0, 180), 0, 360, _col(c), -1, _AA)
            _ellipse(img, (int(x - r * 0.2), int(y - r * 0.2)), (max(1, int(r * 0.3)), max(1, int(r * 0.2))), 0, 0, 360,
                        _col(_shade(c, 1.2)), -1, _AA)
    elif kind == "water":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        warp = _noise(rng, h, w, w / 4, 3) * _u(rng, 5, 15)
        wave = np.sin((yy + warp) * _u(rng, 0.15, 0.5)) * 0.5 + 0.5
        c1, c2 = _jitter(rng, (30, 80, 110)), _jitter(rng, (170, 210, 225))
        t = wave ** 3
        img = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    else:
        base = _jitter(rng, (100, 75, 55))
        n = _noise(rng, h, w, 4, 2, aspect=40.0) * 0.25 + _noise(rng, h, w, 30, 2) * 0.1
        img = base[None, None, :] * (1 + n)[..., None]
        img *= (1 - 0.5 * (n < -0.3))[..., None]
    img = np.ascontiguousarray(img, dtype=np.float32)
    light = 1 + 0.15 * _noise(rng, h, w, max(w, h) / 2, 1)
    return img * light[..., None]


def make_distractor(rng: np.random.Generator, image_size: int = 384) -> np.ndarray:
    """A non-landmark photo (RGB uint8): landscape, indoor room, table top or texture close-up.

    Distractors never contain building facades or their textures; they go through the same
    camera pipeline (blur, exposure, colour, noise) as landmark views.
    """
    w, h = _photo_size(rng, int(image_size))
    kind = _pick(rng, ["nature", "indoor", "tabletop", "closeup"], p=[0.3, 0.3, 0.2, 0.2])
    img = {"nature": _nature, "indoor": _indoor, "tabletop": _tabletop, "closeup": _closeup}[kind](rng, w, h)
    img = cv2.GaussianBlur(np.ascontiguousarray(img, dtype=np.float32), (0, 0), 0.6)
    return _camera_pipeline(rng, img)


# --------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------


@dataclass
class DemoDataset:
    """A generated synthetic dataset in GLDv2 form."""

    root: Path
    images_dir: Path
    train_csv: Path
    holdout_csv: Path
    n_landmarks: int
    n_unseen_landmarks: int = 0
    n_train: int = 0
    n_holdout: int = 0
    n_distractor_refs: int = 0
    n_distractor_queries: int = 0
    one_shot_landmarks: tuple[int, ...] = ()
    unseen_landmarks: tuple[int, ...] = ()
    seed: int = 0
    image_size: int = 384
    params: dict = field(default_factory=dict)


def _stream(seed: int, *key) -> np.random.Generator:
    """Independent random stream for (seed, *key)."""
    digest = hashlib.sha256(repr((int(seed),) + tuple(key)).encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest[:16], "little")))


def _image_id(seed: int, *key) -> str:
    return hashlib.sha256(("synthetic-gldv2|" + repr((int(seed),) + tuple(key))).encode()).hexdigest()[:16]


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_output(path, keep_suffix=True) as tmp:
        tmp.write_bytes(data)


def _save_jpeg(path: Path, img: np.ndarray, quality: int) -> None:
    with atomic_output(path, keep_suffix=True) as tmp:
        Image.fromarray(img, "RGB").save(tmp, format="JPEG", quality=int(quality))


def _csv_bytes(rows: list[tuple[str, int | None]]) -> bytes:
    lines = ["id,landmark_id"] + [f"{i},{'' if lid is None else lid}" for i, lid in rows]
    return ("\n".join(lines) + "\n").encode()


def _read_ids(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [ln.split(",", 1)[0] for ln in lines[1:] if ln]


def _dataset_from_meta(root: Path, meta: dict) -> DemoDataset:
    p, c = meta["params"], meta["counts"]
    return DemoDataset(
        root=root, images_dir=root / "images", train_csv=root / "train.csv", holdout_csv=root / "holdout.csv",
        n_landmarks=int(p["n_landmarks"]), n_unseen_landmarks=int(p["n_unseen_landmarks"]),
        n_train=int(c["n_train"]), n_holdout=int(c["n_holdout"]),
        n_distractor_refs=int(p["n_distractor_refs"]), n_distractor_queries=int(p["n_distractor_queries"]),
        one_shot_landmarks=tuple(meta["one_shot_landmarks"]), unseen_landmarks=tuple(meta["unseen_landmarks"]),
        seed=int(p["seed"]), image_size=int(p["image_size"]), params=dict(p),
    )


def generate_demo_dataset(
    out_dir: Path | str,
    n_landmarks: int = 24,
    refs_per_landmark: tuple[int, int] = (1, 5),
    queries_per_landmark: int = 1,
    n_distractor_refs: int = 10,
    n_distractor_queries: int = 20,
    n_unseen_landmarks: int = 0,
    image_size: int = 384,
    seed: int = 0,
    overwrite: bool = False,
) -> DemoDataset:
    """Generate (or reuse) a synthetic GLDv2-style dataset in ``out_dir``.

    Writes ``images/<id>.jpg``, ``train.csv`` (references: landmark views and
    ``n_distractor_refs`` non-landmark photos), ``holdout.csv`` (queries:
    ``queries_per_landmark`` new views per landmark, views of
    ``n_unseen_landmarks`` landmarks absent from train.csv, and
    ``n_distractor_queries`` non-landmark photos) and, last, ``dataset.json``.
    Landmarks ``0..n_landmarks-1`` have references (each gets a count in the
    inclusive ``refs_per_landmark`` range; about a quarter get exactly one when
    the range allows it); unseen landmarks are numbered after them.

    A folder holding a complete dataset made with the same parameters is
    reused as is unless ``overwrite``; a folder made with other parameters (or
    holding other CSVs) raises ``ValueError`` unless ``overwrite``.
    """
    t0 = time.perf_counter()
    lo, hi = (int(v) for v in refs_per_landmark)
    if n_landmarks < 0 or n_unseen_landmarks < 0 or n_distractor_refs < 0 or n_distractor_queries < 0:
        raise ValueError("counts must be >= 0")
    if not 1 <= lo <= hi:
        raise ValueError(f"refs_per_landmark must satisfy 1 <= lo <= hi, got {refs_per_landmark}")
    if queries_per_landmark < 0:
        raise ValueError("queries_per_landmark must be >= 0")
    if image_size < 64:
        raise ValueError("image_size must be >= 64")
    root = Path(out_dir)
    params = {
        "n_landmarks": int(n_landmarks), "refs_per_landmark": [lo, hi],
        "queries_per_landmark": int(queries_per_landmark), "n_distractor_refs": int(n_distractor_refs),
        "n_distractor_queries": int(n_distractor_queries), "n_unseen_landmarks": int(n_unseen_landmarks),
        "image_size": int(image_size), "seed": int(seed),
    }
    meta_path = root / "dataset.json"
    images_dir = root / "images"
    if meta_path.exists() and not overwrite:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{root}: unreadable dataset.json ({exc}); pass overwrite=True to regenerate") from None
        if meta.get("params") != params:
            raise ValueError(
                f"{root} already holds a synthetic dataset made with different parameters "
                f"({meta.get('params')} != {params}); pass overwrite=True or use another folder")
        complete = (meta.get("version") == GENERATOR_VERSION and (root / "train.csv").exists()
                    and (root / "holdout.csv").exists())
        if complete:
            ids = _read_ids(root / "train.csv") + _read_ids(root / "holdout.csv")
            complete = all((images_dir / f"{i}.jpg").exists() for i in ids)
        if complete:
            logger.info("reusing synthetic dataset in %s (%d train, %d holdout)", root,
                        meta["counts"]["n_train"], meta["counts"]["n_holdout"])
            return _dataset_from_meta(root, meta)
        logger.info("synthetic dataset in %s is incomplete or stale; regenerating", root)
    elif not overwrite and ((root / "train.csv").exists() or (root / "holdout.csv").exists()):
        raise ValueError(f"{root} holds train.csv/holdout.csv not made by this generator (no dataset.json); "
                         "pass overwrite=True or use another folder")

    # --- (re)generate
    root.mkdir(parents=True, exist_ok=True)
    if meta_path.exists():
        meta_path.unlink()  # never leave a stale completeness marker behind
    if overwrite and images_dir.is_dir():
        for p in images_dir.iterdir():
            if _ID_RE.match(p.name):
                p.unlink()
    images_dir.mkdir(exist_ok=True)

    plan = _stream(seed, "plan")
    # one-shot landmarks: about a quarter (at least one) when the range allows 1
    n_one = 0
    if lo == 1 and n_landmarks > 0:
        n_one = n_landmarks if hi == 1 else max(1, int(round(n_landmarks / 4)))
    one_shot = sorted(int(i) for i in plan.choice(n_landmarks, n_one, replace=False)) if n_one else []
    n_refs = []
    for lid in range(n_landmarks):
        n_refs.append(1 if lid in one_shot else int(plan.integers(max(lo, 2), hi + 1)) if hi >= 2 else lo)
    unseen = list(range(n_landmarks, n_landmarks + n_unseen_landmarks))
    q_unseen = max(1, queries_per_landmark)

    facade_size = int(max(256, round(image_size * 4 / 3)))
    train_rows: list[tuple[str, int | None]] = []
    holdout_rows: list[tuple[str, int | None]] = []
    seen_ids: set[str] = set()

    def new_id(*key) -> str:
        salt = 0
        i = _image_id(seed, *key)
        while i in seen_ids:
            salt += 1
            i = _image_id(seed, *key, salt)
        seen_ids.add(i)
        return i

    def emit(img: np.ndarray, rng: np.random.Generator, iid: str) -> None:
        _save_jpeg(images_dir / f"{iid}.jpg", img, _ri(rng, 60, 95))

    max_tilt = 0.6  # ~34 degrees out of plane
    for lid in range(n_landmarks + n_unseen_landmarks):
        lm = _build_landmark(_stream(seed, "landmark", lid), facade_size)
        nr = n_refs[lid] if lid < n_landmarks else 0
        nq = queries_per_landmark if lid < n_landmarks else q_unseen
        for role, count, rows in (("ref", nr, train_rows), ("query", nq, holdout_rows)):
            for j in range(count):
                rng = _stream(seed, role, lid, j)
                img, _ = _render(lm.front, lm.side, rng, image_size, max_tilt, True)
                iid = new_id(role, lid, j)
                emit(img, rng, iid)
                rows.append((iid, lid))
    for role, count, rows in (("distractor-ref", n_distractor_refs, train_rows),
                              ("distractor-query", n_distractor_queries, holdout_rows)):
        for j in range(count):
            rng = _stream(seed, role, j)
            img = make_distractor(rng, image_size)
            iid = new_id(role, j)
            emit(img, rng, iid)
            rows.append((iid, None))

    order = _stream(seed, "order")
    train_rows = [train_rows[i] for i in order.permutation(len(train_rows))]
    holdout_rows = [holdout_rows[i] for i in order.permutation(len(holdout_rows))]
    _write_atomic(root / "train.csv", _csv_bytes(train_rows))
    _write_atomic(root / "holdout.csv", _csv_bytes(holdout_rows))
    meta = {
        "generator": "synthetic.photos", "version": GENERATOR_VERSION, "params": params,
        "counts": {"n_train": len(train_rows), "n_holdout": len(holdout_rows),
                   "n_images": len(train_rows) + len(holdout_rows),
                   "n_landmark_refs": int(sum(n_refs)),
                   "n_landmark_queries": len(holdout_rows) - n_distractor_queries,
                   "n_one_shot": len(one_shot)},
        "one_shot_landmarks": one_shot, "unseen_landmarks": unseen,
    }
    _write_atomic(meta_path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    dt = time.perf_counter() - t0
    logger.info("generated synthetic dataset in %s: %d landmarks (%d one-shot) + %d unseen, %d train, %d holdout "
                "images (%d+%d distractors) in %.1fs", root, n_landmarks, len(one_shot), n_unseen_landmarks,
                len(train_rows), len(holdout_rows), n_distractor_refs, n_distractor_queries, dt)
    return _dataset_from_meta(root, meta)
