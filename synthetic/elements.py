"""Architectural elements drawn on a facade canvas: windows, cornice bands, rose windows, clocks,
portals, columns, niches, floors of windows and roofs.

Coordinates are facade pixels (x right, y down); sizes scale with the style's drawing scale ``k``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .primitives import (cv_color, draw_circle, draw_ellipse, draw_glyph, hsv_color, int_between, jitter_color,
                         luminance, mix_colors, pick, shade_color, uniform)
from .style import Style


class Canvas:
    """RGB uint8 image + alpha silhouette, with drawing helpers."""

    def __init__(self, h: int, w: int):
        self.img = np.zeros((h, w, 3), np.uint8)
        self.alpha = np.zeros((h, w), np.uint8)
        self.h, self.w = h, w

    def poly(self, pts, color, opaque: bool = True) -> None:
        p = np.round(np.asarray(pts, np.float64)).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(self.img, [p], cv_color(color), cv2.LINE_AA)
        if opaque:
            cv2.fillPoly(self.alpha, [p], 255, cv2.LINE_AA)

    def rect(self, x0, y0, x1, y1, color, opaque: bool = False) -> None:
        x0, y0, x1, y1 = int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))
        cv2.rectangle(self.img, (x0, y0), (x1, y1), cv_color(color), -1)
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


def fill_glass(cv: Canvas, rng: np.random.Generator, st: Style, x0, y0, x1, y1) -> None:
    """Window glass with a vertical reflection gradient and random interior."""
    x0, y0, x1, y1 = int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(cv.w, x1), min(cv.h, y1)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return
    hh = y1 - y0
    t = np.linspace(0, 1, hh, dtype=np.float32)[:, None, None]
    base = st.glass * uniform(rng, 0.7, 1.3)
    top = mix_colors(base, (200, 215, 230), uniform(rng, 0.1, 0.45))
    grad = top * (1 - t) + base * t
    r = rng.random()
    if r < 0.15:  # lit interior
        grad = mix_colors(grad, (250, 220, 150), 0.6)
    elif r < 0.35:  # curtain
        grad = np.broadcast_to(grad, (hh, 1, 3)).copy()
        grad[: max(1, int(hh * uniform(rng, 0.3, 0.8)))] = jitter_color(rng, (225, 215, 190))
    cv.img[y0:y1, x0:x1] = np.clip(np.broadcast_to(grad, (hh, x1 - x0, 3)), 0, 255).astype(np.uint8)


def draw_window(cv: Canvas, rng: np.random.Generator, st: Style, cx: float, y0: float, ww: float, wh: float,
                kind: str, pediment: str | None = None) -> None:
    """A window (rect, grid, arch, lancet or round) centred at cx below y0: trim, sill, shutters, pediment."""
    k = st.k
    ft = max(1, int(round(uniform(rng, 1.5, 3.5) * k)))
    # keep proportions plausible whatever the bay size
    ww = min(ww, wh * {"lancet": 0.38, "arch": 0.7, "round": 1.0}.get(kind, 1.4))
    x0, x1, y1 = cx - ww / 2, cx + ww / 2, y0 + wh
    trim = st.trim
    # recess shadow
    cv.rect(x0 - ft, y0 - ft, x1 + ft, y1 + ft, shade_color(st.wall, 0.55))
    if kind in ("arch", "lancet"):
        r = ww / 2
        ytop = y0 + r if kind == "arch" else y0 + ww * 0.9
        cv.rect(x0 - ft, ytop, x1 + ft, y1 + ft, trim)
        if kind == "arch":
            draw_ellipse(cv.img, (int(cx), int(ytop)), (int(r + ft), int(r + ft)), 0, 180, 360,
                         cv_color(trim), -1, cv2.LINE_AA)
        else:
            cv.poly([(x0 - ft, ytop), (cx, y0 - ft * 2), (x1 + ft, ytop)], trim, opaque=False)
        fill_glass(cv, rng, st, x0, ytop, x1, y1)
        gl = cv_color(st.glass * 1.2)
        if kind == "arch":
            draw_ellipse(cv.img, (int(cx), int(ytop)), (int(r), int(r)), 0, 180, 360, gl, -1, cv2.LINE_AA)
            # keystone
            cv.poly([(cx - ft * 1.5, y0 - ft * 2), (cx + ft * 1.5, y0 - ft * 2), (cx + ft, y0 + ft),
                     (cx - ft, y0 + ft)],
                    shade_color(trim, 0.9), opaque=False)
        else:
            cv.poly([(x0, ytop), (cx, y0), (x1, ytop)], gl, opaque=False)
        cv2.line(cv.img, (int(cx), int(y0 + ft)), (int(cx), int(y1)), cv_color(trim), max(1, ft // 2), cv2.LINE_AA)
    elif kind == "round":
        r = min(ww, wh) / 2
        cy = y0 + wh / 2
        draw_circle(cv.img, (int(cx), int(cy)), int(r + ft), cv_color(trim), -1, cv2.LINE_AA)
        draw_circle(cv.img, (int(cx), int(cy)), int(r), cv_color(st.glass * uniform(rng, 0.8, 1.4)), -1, cv2.LINE_AA)
        for a in range(0, 180, 45):
            dx, dy = r * math.cos(math.radians(a)), r * math.sin(math.radians(a))
            cv2.line(cv.img, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), cv_color(trim), 1, cv2.LINE_AA)
        return
    else:
        cv.rect(x0 - ft, y0 - ft, x1 + ft, y1 + ft, trim)
        fill_glass(cv, rng, st, x0, y0, x1, y1)
        # mullions / muntins
        nx = 1 if kind == "rect" else 2
        ny = 1 if kind == "rect" else 3
        for i in range(1, nx + 1):
            xx = int(x0 + ww * i / (nx + 1))
            cv2.line(cv.img, (xx, int(y0)), (xx, int(y1)), cv_color(trim), max(1, ft // 2))
        for j in range(1, ny + 1):
            yy = int(y0 + wh * j / (ny + 1) * (0.7 if kind == "rect" else 1.0))
            cv2.line(cv.img, (int(x0), yy), (int(x1), yy), cv_color(trim), max(1, ft // 2))
    # sill with shadow
    cv.rect(x0 - ft * 2, y1 + ft, x1 + ft * 2, y1 + ft * 2.5, shade_color(trim, 1.05))
    cv.scale_region(x0 - ft * 2, y1 + ft * 2.5, x1 + ft * 2, y1 + ft * 4, 0.72)
    if st.shutters and kind in ("rect", "grid", "arch"):
        sw = ww * 0.45
        for sx in (x0 - ft - sw, x1 + ft):
            cv.rect(sx, y0 + (ww / 2 if kind == "arch" else 0), sx + sw, y1, st.accent)
            yy = y0 + (ww / 2 if kind == "arch" else 0) + 2
            while yy < y1 - 1:
                cv2.line(cv.img, (int(sx), int(yy)), (int(sx + sw), int(yy)), cv_color(shade_color(st.accent, 0.7)), 1)
                yy += max(2.0, 3 * k)
    if pediment == "tri":
        py = y0 - ft * 3
        cv.poly([(x0 - ft * 3, py), (cx, py - ww * 0.35), (x1 + ft * 3, py)], trim, opaque=False)
        cv.poly([(x0, py - 1), (cx, py - ww * 0.35 + ft * 2), (x1, py - 1)], shade_color(st.wall, 0.8), opaque=False)
    elif pediment == "seg":
        py = y0 - ft * 3
        draw_ellipse(cv.img, (int(cx), int(py)), (int(ww / 2 + ft * 3), int(ww * 0.25)), 0, 180, 360,
                     cv_color(trim), -1, cv2.LINE_AA)
        draw_ellipse(cv.img, (int(cx), int(py)), (int(ww / 2), int(ww * 0.25 - ft * 2)), 0, 180, 360,
                     cv_color(shade_color(st.wall, 0.8)), -1, cv2.LINE_AA)
    elif pediment == "lintel":
        cv.rect(x0 - ft * 3, y0 - ft * 4, x1 + ft * 3, y0 - ft, trim)


def draw_band(cv: Canvas, rng: np.random.Generator, st: Style, x0: float, x1: float, y: float, h: float,
              pattern: str | None = None) -> None:
    """Cornice / frieze band with an ornament pattern and a drop shadow."""
    pattern = pattern or st.cornice
    h = max(2.0, h)
    y0, y1 = y, y + h
    trim = st.trim
    dark = shade_color(trim, 0.62)
    cv.rect(x0, y0, x1, y1, trim)
    cv.rect(x0, y0, x1, y0 + max(1, h * 0.12), shade_color(trim, 1.12))
    cv.scale_region(x0, y1, x1, y1 + max(2, h * 0.45), 0.62)
    p = max(4.0, h * uniform(rng, 0.8, 1.4))
    xs = np.arange(x0 + p / 2, x1 - p / 4, p)
    if pattern == "dentil":
        for x in xs:
            cv.rect(x - p * 0.22, y0 + h * 0.45, x + p * 0.22, y1 - 1, dark)
    elif pattern == "zigzag":
        pts = [(x, y0 + 2 if i % 2 else y1 - 2) for i, x in enumerate(np.arange(x0, x1 + p / 2, p / 2))]
        cv2.polylines(cv.img, [np.int32(pts).reshape(-1, 1, 2)], False, cv_color(dark), max(1, int(h / 6)), cv2.LINE_AA)
    elif pattern == "circles":
        for i, x in enumerate(xs):
            draw_circle(cv.img, (int(x), int(y0 + h / 2)), max(1, int(h / 3)),
                        cv_color(dark if i % 2 else st.accent), -1 if i % 3 == 0 else 1, cv2.LINE_AA)
    elif pattern == "glyphs":
        for x in xs:
            draw_glyph(cv.img, rng, x - p * 0.35, y0 + h * 0.15, p * 0.7, h * 0.7, dark, 1)
    elif pattern == "key":
        a = h * 0.2
        b = h - a
        for x in xs:
            pts = [(x - p / 2, y0 + b), (x - p / 2, y0 + a), (x + p / 4, y0 + a), (x + p / 4, y0 + b * 0.7),
                   (x - p / 6, y0 + b * 0.7)]
            cv2.polylines(cv.img, [np.int32(pts).reshape(-1, 1, 2)], False, cv_color(dark), 1, cv2.LINE_AA)


def draw_rose_window(cv: Canvas, rng: np.random.Generator, st: Style, cx: float, cy: float, r: float) -> None:
    """Rose window: stained-glass petals, rings, spokes."""
    c = (int(cx), int(cy))
    draw_circle(cv.img, c, int(r * 1.12), cv_color(st.trim), -1, cv2.LINE_AA)
    draw_circle(cv.img, c, int(r), cv_color(st.glass * 0.8), -1, cv2.LINE_AA)
    n = int_between(rng, 8, 16)
    cols = [hsv_color(uniform(rng, 0, 1), uniform(rng, 0.5, 0.9), uniform(rng, 0.4, 0.85)) for _ in range(3)]
    for i in range(n):
        a = 2 * math.pi * (i + 0.5) / n
        px, py = cx + r * 0.62 * math.cos(a), cy + r * 0.62 * math.sin(a)
        draw_circle(cv.img, (int(px), int(py)), max(2, int(r * 0.22)), cv_color(cols[i % 3]), -1, cv2.LINE_AA)
        draw_circle(cv.img, (int(px), int(py)), max(2, int(r * 0.22)), cv_color(st.trim), 1, cv2.LINE_AA)
        a2 = 2 * math.pi * i / n
        cv2.line(cv.img, (int(cx + r * 0.3 * math.cos(a2)), int(cy + r * 0.3 * math.sin(a2))),
                 (int(cx + r * math.cos(a2)), int(cy + r * math.sin(a2))), cv_color(st.trim),
                 max(1, int(r / 25)), cv2.LINE_AA)
    draw_circle(cv.img, c, int(r * 0.3), cv_color(st.trim), max(1, int(r / 20)), cv2.LINE_AA)
    draw_circle(cv.img, c, int(r * 0.16), cv_color(cols[0]), -1, cv2.LINE_AA)
    draw_circle(cv.img, c, int(r), cv_color(st.trim), max(1, int(r / 18)), cv2.LINE_AA)


def draw_clock(cv: Canvas, rng: np.random.Generator, st: Style, cx: float, cy: float, r: float) -> None:
    """Clock face with ring, hour marks and two hands."""
    c = (int(cx), int(cy))
    ring = pick(rng, [(212, 175, 55), (40, 40, 40), tuple(st.trim)])
    draw_circle(cv.img, c, int(r * 1.15), cv_color(ring), -1, cv2.LINE_AA)
    face = pick(rng, [(245, 243, 235), (30, 40, 70), (20, 20, 20)])
    ink = (20, 20, 20) if luminance(face) > 128 else (220, 190, 90)
    draw_circle(cv.img, c, int(r), cv_color(face), -1, cv2.LINE_AA)
    for i in range(12):
        a = 2 * math.pi * i / 12
        r0 = r * (0.75 if i % 3 == 0 else 0.85)
        cv2.line(cv.img, (int(cx + r0 * math.cos(a)), int(cy + r0 * math.sin(a))),
                 (int(cx + r * 0.95 * math.cos(a)), int(cy + r * 0.95 * math.sin(a))), cv_color(ink),
                 2 if i % 3 == 0 else 1, cv2.LINE_AA)
    for length, wdt in ((0.55, 2), (0.8, 1)):
        a = uniform(rng, 0, 2 * math.pi)
        cv2.line(cv.img, c, (int(cx + r * length * math.cos(a)), int(cy + r * length * math.sin(a))),
                 cv_color(ink), wdt, cv2.LINE_AA)


def draw_portal(cv: Canvas, rng: np.random.Generator, st: Style, cx: float, y1: float, w: float, h: float,
                voussoirs: bool = True) -> None:
    """Arched doorway with voussoirs and a panelled wooden door."""
    r = w / 2
    ytop = y1 - h + r
    ring = max(3.0, w * 0.14)
    if voussoirs:
        n = int_between(rng, 9, 15)
        c2 = st.accent if rng.random() < 0.4 else shade_color(st.trim, 0.8)
        for i in range(n):
            a0, a1 = 180 + 180 * i / n, 180 + 180 * (i + 1) / n
            draw_ellipse(cv.img, (int(cx), int(ytop)), (int(r + ring), int(r + ring)), 0, a0, a1,
                         cv_color(st.trim if i % 2 else c2), -1, cv2.LINE_AA)
    else:
        draw_ellipse(cv.img, (int(cx), int(ytop)), (int(r + ring), int(r + ring)), 0, 180, 360,
                     cv_color(st.trim), -1, cv2.LINE_AA)
    cv.rect(cx - r - ring, ytop, cx + r + ring, y1, st.trim)
    wood = jitter_color(rng, pick(rng, [(92, 58, 36), (60, 40, 30), (110, 40, 30), (40, 60, 50), (50, 50, 60)]))
    draw_ellipse(cv.img, (int(cx), int(ytop)), (int(r), int(r)), 0, 180, 360,
                 cv_color(shade_color(wood, 0.6)), -1, cv2.LINE_AA)
    cv.rect(cx - r, ytop, cx + r, y1, wood)
    # door panels
    for side in (-1, 1):
        px0 = cx + (0 if side > 0 else -r) + r * 0.12
        px1 = px0 + r * 0.76
        for j in range(3):
            py0 = ytop + (y1 - ytop) * (0.06 + j * 0.31)
            cv2.rectangle(cv.img, (int(px0), int(py0)), (int(px1), int(py0 + (y1 - ytop) * 0.25)),
                          cv_color(shade_color(wood, 0.7)), 1)
    cv2.line(cv.img, (int(cx), int(ytop - r)), (int(cx), int(y1)), cv_color(shade_color(wood, 0.5)), 1)
    # fan light
    draw_ellipse(cv.img, (int(cx), int(ytop)), (int(r * 0.8), int(r * 0.8)), 0, 180, 360,
                 cv_color(st.glass), -1, cv2.LINE_AA)
    for a in range(180, 361, 30):
        cv2.line(cv.img, (int(cx), int(ytop)),
                 (int(cx + r * 0.8 * math.cos(math.radians(a))), int(ytop + r * 0.8 * math.sin(math.radians(a)))),
                 cv_color(st.trim), 1, cv2.LINE_AA)


def draw_column(cv: Canvas, st: Style, cx: float, y0: float, y1: float, w: float, color, flutes: bool = True) -> None:
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
        patch = np.broadcast_to(body[:, x0c - x0:x1c - x0], (y1c - y0c, x1c - x0c, 3))
        cv.img[y0c:y1c, x0c:x1c] = np.clip(patch, 0, 255)
    if flutes:
        nfl = max(2, int(w / 4))
        for i in range(1, nfl):
            xx = int(x0 + (x1 - x0) * i / nfl)
            cv2.line(cv.img, (xx, y0i), (xx, y1i), cv_color(shade_color(color, 0.7)), 1)
    cw = w * 0.35
    cv.rect(cx - w / 2 - cw, y0 - w * 0.35, cx + w / 2 + cw, y0, shade_color(color, 1.08))
    cv.rect(cx - w / 2 - cw * 0.6, y0 - w * 0.5, cx + w / 2 + cw * 0.6, y0 - w * 0.35, shade_color(color, 0.9))
    cv.rect(cx - w / 2 - cw * 0.6, y1 - w * 0.3, cx + w / 2 + cw * 0.6, y1, shade_color(color, 0.95))


def draw_niche(cv: Canvas, rng: np.random.Generator, st: Style, cx: float, y0: float, w: float, h: float) -> None:
    """Arched niche with a statue."""
    r = w / 2
    draw_ellipse(cv.img, (int(cx), int(y0 + r)), (int(r), int(r)), 0, 180, 360,
                 cv_color(shade_color(st.wall, 0.45)), -1, cv2.LINE_AA)
    cv.rect(cx - r, y0 + r, cx + r, y0 + h, shade_color(st.wall, 0.45))
    stone = jitter_color(rng, pick(rng, [(225, 222, 212), (200, 190, 170), (80, 110, 90), (150, 110, 60)]))
    hr = w * 0.14
    draw_circle(cv.img, (int(cx), int(y0 + h * 0.2)), max(1, int(hr)), cv_color(stone), -1, cv2.LINE_AA)
    cv.poly([(cx - w * 0.28, y0 + h * 0.3), (cx + w * 0.28, y0 + h * 0.3), (cx + w * 0.34, y0 + h * 0.95),
             (cx - w * 0.34, y0 + h * 0.95)], shade_color(stone, 0.9), opaque=False)
    cv2.line(cv.img, (int(cx + w * 0.05), int(y0 + h * 0.35)), (int(cx - w * 0.05), int(y0 + h * 0.9)),
             cv_color(shade_color(stone, 0.7)), 1, cv2.LINE_AA)
    cv.rect(cx - w * 0.42, y0 + h * 0.95, cx + w * 0.42, y0 + h, shade_color(stone, 1.05))


def draw_floors(cv: Canvas, rng: np.random.Generator, st: Style, x0: float, x1: float, y0: float, y1: float,
                n_floors: int, n_bays: int, door: bool = True, clock_floor: int | None = None) -> list[float]:
    """Floors of windows between x0..x1 and y0..y1 (top to bottom); returns cornice y positions."""
    fh = (y1 - y0) / n_floors
    bw = (x1 - x0) / n_bays
    ww_frac = uniform(rng, 0.35, 0.6)
    wh_frac = uniform(rng, 0.45, 0.68)
    floor_kinds = [pick(rng, st.window_kinds) for _ in range(n_floors)]
    floor_peds = [(pick(rng, ["tri", "seg", "lintel", None]) if st.pediments else None) for _ in range(n_floors)]
    alt = bool(rng.random() < 0.5)
    bands = []
    if st.pilasters and n_bays >= 3:
        pw = max(4.0, bw * 0.12)
        pc = shade_color(st.trim, 0.95) if rng.random() < 0.5 else shade_color(st.wall, 1.12)
        for b in range(n_bays + 1):
            draw_column(cv, st, x0 + b * bw, y0 + pw * 0.6, y1, pw, pc, flutes=bool(b % 2 == 0))
    for f in range(n_floors):
        fy = y0 + f * fh
        ch = max(3.0, fh * uniform(rng, 0.07, 0.12) * (1.6 if f == 0 else 1.0))
        if f > 0 or rng.random() < 0.7:
            draw_band(cv, rng, st, x0, x1, fy, ch, None if f % 2 == 0 else "plain")
            bands.append(fy)
        ground = f == n_floors - 1
        for b in range(n_bays):
            cx = x0 + (b + 0.5) * bw
            if door and ground and (b == n_bays // 2):
                dw = min(bw * 0.7, fh * 0.55)
                draw_portal(cv, rng, st, cx, y1, dw, fh * 0.85, voussoirs=bool(rng.random() < 0.6))
                continue
            if clock_floor is not None and f == clock_floor and b == n_bays // 2:
                draw_clock(cv, rng, st, cx, fy + fh * 0.55, min(bw, fh) * 0.36)
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
            draw_window(cv, rng, st, cx, fy + ch + (fh - ch - wh) * 0.55, ww, wh, kind, ped)
    return bands


def draw_roof(cv: Canvas, rng: np.random.Generator, st: Style, x0: float, x1: float, ybase: float, top: float,
              kind: str) -> None:
    """Roof / crowning element between x0..x1 standing on ybase, rising up to y=top."""
    w = x1 - x0
    cx = (x0 + x1) / 2
    roof = st.roof
    hgt = ybase - top
    if kind == "pediment":
        ph = min(hgt, w * uniform(rng, 0.18, 0.3))
        cv.poly([(x0 - 2, ybase), (cx, ybase - ph), (x1 + 2, ybase)], st.trim)
        inset = max(3.0, ph * 0.15)
        cv.poly([(x0 + inset * 2.5, ybase - inset * 0.6), (cx, ybase - ph + inset),
                 (x1 - inset * 2.5, ybase - inset * 0.6)],
                shade_color(st.wall, 0.92), opaque=False)
        r = ph * 0.28
        if rng.random() < 0.5:
            draw_clock(cv, rng, st, cx, ybase - ph * 0.4, r)
        else:
            draw_circle(cv.img, (int(cx), int(ybase - ph * 0.4)), max(2, int(r)), cv_color(st.accent), -1, cv2.LINE_AA)
            for i in range(int_between(rng, 6, 10)):
                draw_glyph(cv.img, rng, cx - ph * 1.2 + i * ph * 0.25, ybase - ph * 0.3, ph * 0.18, ph * 0.22,
                           shade_color(st.trim, 0.6), 1)
        # acroteria
        for px in (x0, cx, x1):
            py = ybase - ph if px == cx else ybase
            cv.poly([(px - 4 * st.k, py), (px, py - 10 * st.k), (px + 4 * st.k, py)], st.trim)
    elif kind == "dome":
        dw = w * uniform(rng, 0.35, 0.6)
        drum_h = hgt * uniform(rng, 0.18, 0.28)
        dh = hgt * uniform(rng, 0.4, 0.55)
        cv.rect(cx - dw / 2, ybase - drum_h, cx + dw / 2, ybase, st.trim, opaque=True)
        nw = int_between(rng, 5, 9)
        for i in range(nw):
            xx = cx - dw / 2 + dw * (i + 0.5) / nw
            draw_window(cv, rng, st, xx, ybase - drum_h * 0.85, dw / nw * 0.45, drum_h * 0.6, "arch")
        cv.rect(cx - dw / 2 - 3, ybase - drum_h - 4 * st.k, cx + dw / 2 + 3, ybase - drum_h,
                shade_color(st.trim, 0.85), True)
        dyb = ybase - drum_h - 4 * st.k
        p = np.array([[cx + dw / 2 * math.cos(a), dyb - dh * math.sin(a)] for a in np.linspace(0, math.pi, 40)])
        cv.poly(p, roof)
        # ribs
        for i in range(1, 8):
            fx = -1 + 2 * i / 8
            pts = [(cx + fx * dw / 2 * math.cos(a), dyb - dh * math.sin(a)) for a in np.linspace(0, math.pi / 2, 12)]
            cv2.polylines(cv.img, [np.int32(pts).reshape(-1, 1, 2)], False,
                          cv_color(shade_color(roof, 0.7)), 1, cv2.LINE_AA)
        # highlight
        draw_ellipse(cv.img, (int(cx - dw * 0.15), int(dyb - dh * 0.6)),
                     (max(1, int(dw * 0.07)), max(1, int(dh * 0.2))),
                     20, 0, 360, cv_color(shade_color(roof, 1.35)), -1, cv2.LINE_AA)
        lw, lh = dw * 0.14, min(dh * 0.45, max(4.0, dyb - dh - top))
        cv.rect(cx - lw / 2, dyb - dh - lh, cx + lw / 2, dyb - dh + 2, st.trim, True)
        cv.poly([(cx - lw / 2, dyb - dh - lh), (cx, dyb - dh - lh * 1.6), (cx + lw / 2, dyb - dh - lh)], roof)
        cv.poly([(cx - 1.2, dyb - dh - lh * 1.5), (cx, max(top, dyb - dh - lh * 2.2)), (cx + 1.2, dyb - dh - lh * 1.5)],
                (212, 175, 55))
    elif kind == "spire":
        sw = w * uniform(rng, 0.5, 0.9)
        cv.poly([(cx - sw / 2, ybase), (cx, top + hgt * 0.04), (cx + sw / 2, ybase)], roof)
        n = int_between(rng, 6, 14)
        for i in range(1, n):
            t = i / n
            yy = ybase - (ybase - top) * 0.96 * t
            half = sw / 2 * (1 - t)
            cv2.line(cv.img, (int(cx - half), int(yy)), (int(cx + half), int(yy)),
                     cv_color(shade_color(roof, 0.65)), 1, cv2.LINE_AA)
        cv2.line(cv.img, (int(cx), int(ybase)), (int(cx), int(top + hgt * 0.04)),
                 cv_color(shade_color(roof, 1.25)), 1, cv2.LINE_AA)
        cv.rect(cx - 1, top, cx + 1, top + hgt * 0.06, (200, 170, 60), True)
        cv.rect(cx - 4 * st.k, top + hgt * 0.015, cx + 4 * st.k, top + hgt * 0.025, (200, 170, 60), True)
    elif kind == "crenel":
        mh = min(hgt, max(6.0, w * 0.06))
        n = max(3, int(w / (mh * 1.6)))
        mw = w / (2 * n - 1)
        for i in range(n):
            cv.rect(x0 + 2 * i * mw, ybase - mh, x0 + (2 * i + 1) * mw, ybase, shade_color(st.wall, 0.97), True)
        cv.rect(x0 - 2, ybase - 3, x1 + 2, ybase + 3, shade_color(st.trim, 0.9), True)
    elif kind == "balustrade":
        bh = min(hgt, max(8.0, w * 0.035))
        cv.rect(x0, ybase - bh, x1, ybase, st.trim, True)
        cv.rect(x0, ybase - bh + 2, x1, ybase - 2, shade_color(st.wall, 0.5), True)
        step = max(3.0, bh * 0.45)
        for xx in np.arange(x0 + step, x1 - 1, step):
            draw_ellipse(cv.img, (int(xx), int(ybase - bh / 2)),
                         (max(1, int(step * 0.28)), max(1, int(bh / 2 - 2))), 0, 0, 360,
                         cv_color(st.trim), -1, cv2.LINE_AA)
        for xx in np.linspace(x0 + 3, x1 - 3, int_between(rng, 3, 7)):
            draw_circle(cv.img, (int(xx), int(ybase - bh - bh * 0.4)), max(2, int(bh * 0.4)),
                        cv_color(st.trim), -1, cv2.LINE_AA)
            draw_circle(cv.alpha, (int(xx), int(ybase - bh - bh * 0.4)), max(2, int(bh * 0.4)), 255, -1, cv2.LINE_AA)
    elif kind == "mansard":
        mh = min(hgt, w * uniform(rng, 0.12, 0.2))
        inset = mh * 0.5
        cv.poly([(x0, ybase), (x0 + inset, ybase - mh), (x1 - inset, ybase - mh), (x1, ybase)], roof)
        for yy in np.arange(ybase - mh + 3, ybase, max(2.0, 3 * st.k)):
            cv2.line(cv.img, (int(x0), int(yy)), (int(x1), int(yy)), cv_color(shade_color(roof, 0.75)), 1)
        nd = max(2, int(w / (mh * 1.6)))
        for i in range(nd):
            dx = x0 + inset + (w - 2 * inset) * (i + 0.5) / nd
            dw = mh * 0.45
            cv.rect(dx - dw / 2, ybase - mh * 0.75, dx + dw / 2, ybase - mh * 0.15, st.trim)
            fill_glass(cv, rng, st, dx - dw / 2 + 2, ybase - mh * 0.7, dx + dw / 2 - 2, ybase - mh * 0.2)
            cv.poly([(dx - dw / 2 - 2, ybase - mh * 0.75), (dx, ybase - mh * 0.98),
                     (dx + dw / 2 + 2, ybase - mh * 0.75)],
                    st.trim)
    elif kind == "pyramid":
        cv.poly([(x0 - 3, ybase), (cx, top + hgt * 0.1), (x1 + 3, ybase)], roof)
        for i in range(1, 7):
            t = i / 7
            cv2.line(cv.img, (int(x0 + (cx - x0) * t), int(ybase - (ybase - top - hgt * 0.1) * t)),
                     (int(x1 - (x1 - cx) * t), int(ybase - (ybase - top - hgt * 0.1) * t)),
                     cv_color(shade_color(roof, 0.7)), 1)
        cv.rect(cx - 1, top, cx + 1, top + hgt * 0.12, (200, 170, 60), True)
