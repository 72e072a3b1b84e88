"""Landmark buildings: the front facade of each kind, the side wall and weathering.

:func:`build_landmark` draws a :class:`~synthetic.style.Style`, the facade's proportions, the front
(palace, tower, church, temple, triumphal gate or modern building) and a plain side wall, both RGBA
with alpha as the silhouette against the sky.  Weathering (stains, grime streaks) and fine grain
give the high-frequency texture on which local features find repeatable keypoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .elements import (Canvas, draw_band, draw_column, draw_floors, draw_niche, draw_portal, draw_roof,
                       draw_rose_window, draw_window)
from .primitives import (cv_color, draw_circle, draw_ellipse, draw_fitted_text, draw_glyph, int_between,
                         jitter_color, luminance, mix_colors, pick, shade_color, uniform, value_noise)
from .style import Style, make_style, wall_texture


def _weather(rng: np.random.Generator, img: np.ndarray, k: float) -> np.ndarray:
    """Stains, vertical grime streaks and fine grain on a facade texture."""
    h, w = img.shape[:2]
    f = img.astype(np.float32)
    stain = (1.0 + 0.07 * value_noise(rng, h, w, 70 * k, 3)) * (1.0 + 0.05 * value_noise(rng, h, w, 2.5 * k, 1))
    streak = 1.0 - 0.07 * np.clip(value_noise(rng, h, w, 14 * k, 2, aspect=30.0), 0, None)
    f *= (stain * streak)[..., None]
    f += rng.normal(0, 4.0, (h, w, 1)).astype(np.float32) + rng.normal(0, 1.5, (h, w, 3)).astype(np.float32)
    return np.clip(f, 0, 255).astype(np.uint8)


@dataclass
class Landmark:
    """One generated landmark building."""

    front: np.ndarray  # RGBA uint8
    side: np.ndarray   # RGBA uint8 (same height as front)
    kind: str


def _palace_front(cv: Canvas, rng: np.random.Generator, st: Style) -> tuple[int, int]:
    """Palace: floors of windows, optional risalit, dentil cornice and a roof (dome over a balustrade)."""
    H, W, k = cv.h, cv.w, st.k
    roof_kind = pick(rng, ["balustrade", "dome", "pediment", "mansard", "crenel"])
    top_frac = {"dome": uniform(rng, 0.3, 0.42), "pediment": uniform(rng, 0.14, 0.22),
                "mansard": uniform(rng, 0.12, 0.18)}.get(roof_kind, uniform(rng, 0.05, 0.08))
    yb = int(H * top_frac)
    cv.texture(0, yb, W, H, wall_texture(rng, H - yb, W, st))
    nf, nb = int_between(rng, 2, 4), int_between(rng, 5, 11)
    if rng.random() < 0.5:  # risalit: projecting, lighter central section
        c0, c1 = W * (0.5 - 1.5 / nb), W * (0.5 + 1.5 / nb)
        cv.scale_region(c0, yb, c1, H, 1.1)
        cv.scale_region(c0 - 3 * k, yb, c0, H, 0.6)
    draw_floors(cv, rng, st, 0, W, yb, H, nf, nb)
    draw_band(cv, rng, st, 0, W, yb, max(6.0, 12 * k), "dentil")
    if roof_kind == "dome":
        draw_roof(cv, rng, st, W * 0.25, W * 0.75, yb, 0, "dome")
        draw_roof(cv, rng, st, 0, W, yb, yb - 12 * k, "balustrade")
    else:
        draw_roof(cv, rng, st, 0, W, yb, 0, roof_kind)
    return yb, nf


def _tower_front(cv: Canvas, rng: np.random.Generator, st: Style) -> tuple[int, int]:
    """Tower: tall narrow floors with a clock, crowned by a spire, dome, pyramid or battlements."""
    H, W, k = cv.h, cv.w, st.k
    roof_kind = pick(rng, ["spire", "dome", "crenel", "pyramid"])
    top_frac = {"spire": uniform(rng, 0.25, 0.4), "dome": uniform(rng, 0.22, 0.32),
                "pyramid": uniform(rng, 0.15, 0.25)}.get(roof_kind, 0.04)
    yb = int(H * top_frac)
    cv.texture(0, yb, W, H, wall_texture(rng, H - yb, W, st))
    nf = int_between(rng, 4, 8)
    draw_floors(cv, rng, st, 0, W, yb + 10 * k, H, nf, int_between(rng, 1, 3), clock_floor=int_between(rng, 0, 1))
    draw_band(cv, rng, st, 0, W, yb, max(5.0, 10 * k))
    if roof_kind == "dome":
        draw_roof(cv, rng, st, W * 0.05, W * 0.95, yb, 0, "dome")
    else:
        draw_roof(cv, rng, st, 0, W, yb, 0, roof_kind)
    return yb, nf


def _church_front(cv: Canvas, rng: np.random.Generator, st: Style) -> tuple[int, int]:
    """Church: gable, rose window, three portals, blind arcade and, often, twin towers."""
    H, W, k = cv.h, cv.w, st.k
    towers = rng.random() < 0.55
    tw = W * uniform(rng, 0.2, 0.26) if towers else 0.0
    yb = int(H * uniform(rng, 0.36, 0.48))
    tower_top = int(H * uniform(rng, 0.16, 0.26))
    wall = wall_texture(rng, H, W, st)
    cv.texture(0, yb, W, H, wall[yb:])
    # gable between the towers
    cv.poly([(tw, yb + 1), (W / 2, yb - (W - 2 * tw) * uniform(rng, 0.28, 0.45)), (W - tw, yb + 1)], st.wall)
    gmask = cv.alpha[:yb].copy()
    cv.img[:yb][gmask > 0] = wall[:yb][gmask > 0].astype(np.uint8)
    draw_band(cv, rng, st, tw, W - tw, yb, max(5.0, 9 * k))
    draw_rose_window(cv, rng, st, W / 2, yb + (H - yb) * 0.22, min(W - 2 * tw, H - yb) * 0.17)
    draw_portal(cv, rng, st, W / 2, H, (W - 2 * tw) * 0.3, (H - yb) * 0.5)
    for s in (-1, 1):
        draw_portal(cv, rng, st, W / 2 + s * (W - 2 * tw) * 0.3, H, (W - 2 * tw) * 0.13, (H - yb) * 0.3, False)
    if towers:
        for tx0 in (0.0, W - tw):
            cv.texture(tx0, tower_top, tx0 + tw, yb, wall[tower_top:yb, int(tx0):int(tx0 + tw)])
            draw_band(cv, rng, st, tx0, tx0 + tw, tower_top, max(4.0, 8 * k))
            nfl = 2
            fh = (H - tower_top) / (nfl + 2)
            for j in range(nfl + 1):
                draw_window(cv, rng, st, tx0 + tw / 2, tower_top + fh * (j + 0.3), tw * 0.35, fh * 0.6, "lancet")
            draw_roof(cv, rng, st, tx0, tx0 + tw, tower_top, 0, pick(rng, ["spire", "pyramid", "crenel"]))
    # blind arcade under the gable
    na = int_between(rng, 5, 9)
    for i in range(na):
        xx = tw + (W - 2 * tw) * (i + 0.5) / na
        if abs(xx - W / 2) > (W - 2 * tw) * 0.18:
            draw_niche(cv, rng, st, xx, yb + (H - yb) * 0.1, (W - 2 * tw) / na * 0.55, (H - yb) * 0.22)
    return yb, 2


def _temple_front(cv: Canvas, rng: np.random.Generator, st: Style) -> tuple[int, int]:
    """Temple: steps, colonnade in a shadowed portico, entablature (inscription or triglyphs), pediment."""
    H, W, k = cv.h, cv.w, st.k
    yb = int(H * uniform(rng, 0.2, 0.3))
    wall = wall_texture(rng, H - yb, W, st)
    cv.texture(0, yb, W, H, wall)
    steps_h = (H - yb) * 0.12
    ent_h = (H - yb) * 0.2
    cv.scale_region(0, yb + ent_h, W, H - steps_h, 0.68)  # shadowed portico
    stone = st.trim if luminance(st.trim) >= luminance(st.wall) else mix_colors(st.wall, (240, 236, 225), 0.5)
    draw_portal(cv, rng, st, W / 2, H - steps_h, W * 0.12, (H - yb - ent_h - steps_h) * 0.7, False)
    for i in range(4):
        sy = H - steps_h + steps_h * i / 4
        cv.rect(0, sy, W, sy + steps_h / 4, shade_color(stone, 1.0 - 0.08 * i))
        cv2.line(cv.img, (0, int(sy)), (W, int(sy)), cv_color(shade_color(stone, 0.6)), 1)
    nc = int_between(rng, 6, 10)
    colw = W / nc * uniform(rng, 0.32, 0.45)
    for i in range(nc):
        draw_column(cv, st, W * (i + 0.5) / nc, yb + ent_h + colw * 0.5, H - steps_h, colw, stone)
    draw_band(cv, rng, st, 0, W, yb, ent_h * 0.35, "dentil")
    cv.rect(0, yb + ent_h * 0.35, W, yb + ent_h, shade_color(st.trim, 0.95))
    if rng.random() < 0.5:
        draw_fitted_text(cv.img, st.text, int(W * 0.05), int(yb + ent_h * 0.4), int(W * 0.95), int(yb + ent_h * 0.95),
                         shade_color(st.trim, 0.35), st.font, max(1, int(2 * k)))
    else:  # triglyphs and metopes
        nt = int_between(rng, 12, 20)
        for i in range(nt):
            xx = W * (i + 0.5) / nt
            for d in (-1, 0, 1):
                cv2.line(cv.img, (int(xx + d * 3 * k), int(yb + ent_h * 0.45)),
                         (int(xx + d * 3 * k), int(yb + ent_h * 0.9)),
                         cv_color(shade_color(st.trim, 0.55)), 1)
            draw_glyph(cv.img, rng, xx + W / nt * 0.25, yb + ent_h * 0.45, W / nt * 0.4, ent_h * 0.4,
                       shade_color(st.trim, 0.6), 1)
    draw_roof(cv, rng, st, 0, W, yb + 1, 0, "pediment")
    return yb, 1


def _gate_front(cv: Canvas, rng: np.random.Generator, st: Style) -> tuple[int, int]:
    """Triumphal gate: attic with inscription and reliefs, coffered central arch, side portals, statues."""
    H, W, k = cv.h, cv.w, st.k
    yb = int(H * uniform(rng, 0.05, 0.12))
    cv.texture(0, yb, W, H, wall_texture(rng, H - yb, W, st))
    att = (H - yb) * uniform(rng, 0.2, 0.28)
    draw_band(cv, rng, st, 0, W, yb + att, max(6.0, 10 * k), "dentil")
    ink = (30, 28, 26) if luminance(st.wall) > 120 else (215, 180, 70)
    draw_fitted_text(cv.img, st.text, int(W * 0.29), int(yb + att * 0.1), int(W * 0.71), int(yb + att * 0.9),
                     ink, st.font, max(1, int(2 * k)))
    mw = W * uniform(rng, 0.26, 0.34)
    body_h = H - yb - att
    # central arch (dark passage with coffering)
    r = mw / 2
    ytop = H - body_h * 0.72 + r
    dark = shade_color(st.wall, 0.28)
    draw_ellipse(cv.img, (int(W / 2), int(ytop)), (int(r + 8 * k), int(r + 8 * k)), 0, 180, 360,
                 cv_color(st.trim), -1, cv2.LINE_AA)
    draw_ellipse(cv.img, (int(W / 2), int(ytop)), (int(r), int(r)), 0, 180, 360, cv_color(dark), -1, cv2.LINE_AA)
    cv.rect(W / 2 - r, ytop, W / 2 + r, H, dark)
    cs = uniform(rng, 7, 14) * k
    for gx in np.arange(W / 2 - r + cs * 0.6, W / 2 + r - cs * 0.4, cs):
        for gy in np.arange(ytop - r * 0.7, ytop + r * uniform(rng, 0.2, 0.5), cs):
            cv2.rectangle(cv.img, (int(gx), int(gy)), (int(gx + cs * 0.6), int(gy + cs * 0.6)),
                          cv_color(shade_color(dark, 1.6)), 1)
    for s in (-1, 1):
        sx = W / 2 + s * W * 0.33
        draw_portal(cv, rng, st, sx, H, W * 0.13, body_h * 0.45, True)
        draw_niche(cv, rng, st, sx, H - body_h * 0.92, W * 0.08, body_h * 0.3)
        for cxx in (W / 2 + s * (r + W * 0.05), W / 2 + s * W * 0.46):
            draw_column(cv, st, cxx, yb + att + 12 * k, H - 6 * k, W * 0.04, shade_color(st.trim, 0.97))
    # reliefs
    for s in (-1, 1):
        rx = W / 2 + s * W * 0.33
        cv.rect(rx - W * 0.11, yb + att * 0.15, rx + W * 0.11, yb + att * 0.85, shade_color(st.trim, 0.85))
        for _ in range(int_between(rng, 5, 9)):
            draw_glyph(cv.img, rng, rx + uniform(rng, -0.1, 0.06) * W, yb + att * uniform(rng, 0.2, 0.5),
                       W * 0.04, att * 0.3,
                       shade_color(st.trim, 0.45), 2)
    # statue group on top
    for s in np.linspace(-0.3, 0.3, int_between(rng, 1, 3)):
        gx = W / 2 + s * W
        bronze = jitter_color(rng, (70, 110, 95))
        cv.poly([(gx - W * 0.05, yb), (gx - W * 0.03, yb * 0.3), (gx + W * 0.03, yb * 0.3), (gx + W * 0.05, yb)],
                bronze)
        draw_circle(cv.img, (int(gx), int(yb * 0.25)), max(2, int(yb * 0.15)), cv_color(bronze), -1, cv2.LINE_AA)
        draw_circle(cv.alpha, (int(gx), int(yb * 0.25)), max(2, int(yb * 0.15)), 255, -1, cv2.LINE_AA)
    return yb, 1


def _modern_front(cv: Canvas, rng: np.random.Generator, st: Style) -> tuple[int, int]:
    """Modern building: glass panels, spandrels and fins, lobby, sign with logo."""
    H, W, k = cv.h, cv.w, st.k
    yb = int(H * uniform(rng, 0.02, 0.05))
    cv.texture(0, yb, W, H, wall_texture(rng, H - yb, W, st))
    # spandrel bands and fins
    nb = int_between(rng, 4, 12)
    for i in range(nb):
        yy = yb + (H - yb) * (i + 1) / (nb + 1)
        if rng.random() < 0.5:
            cv.rect(0, yy, W, yy + 4 * k, shade_color(st.trim, 0.9))
    for xx in np.linspace(0, W, int_between(rng, 3, 8)):
        cv.rect(xx - 2 * k, yb, xx + 2 * k, H, shade_color(st.trim, 0.8))
    # lobby
    lh = (H - yb) * 0.12
    cv.rect(0, H - lh, W, H, shade_color(st.glass, 1.4))
    for xx in np.arange(0, W, 18 * k):
        cv2.line(cv.img, (int(xx), int(H - lh)), (int(xx), H), cv_color(st.trim), 1)
    cv.rect(W * 0.3, H - lh - 6 * k, W * 0.7, H - lh, st.trim)
    # sign with logo
    sy = yb + (H - yb) * uniform(rng, 0.05, 0.2)
    sh = max(10.0, (H - yb) * 0.06)
    sign_col = shade_color(st.accent2, 0.6) if rng.random() < 0.5 else np.array([245, 245, 245], np.float32)
    cv.rect(W * 0.08, sy, W * 0.92, sy + sh, sign_col)
    txt_col = (245, 245, 245) if luminance(sign_col) < 128 else shade_color(st.accent, 0.6)
    draw_fitted_text(cv.img, st.text.split(" ")[0], int(W * 0.2), int(sy), int(W * 0.9), int(sy + sh), txt_col, st.font,
                     max(1, int(2 * k)))
    lcx, lcy = W * 0.14, sy + sh / 2
    draw_circle(cv.img, (int(lcx), int(lcy)), max(2, int(sh * 0.42)), cv_color(st.accent2), -1, cv2.LINE_AA)
    cv.poly([(lcx - sh * 0.3, lcy + sh * 0.2), (lcx, lcy - sh * 0.35), (lcx + sh * 0.3, lcy + sh * 0.2)],
            (250, 250, 250), opaque=False)
    return yb, max(1, nb)


#: Front facade builders by landmark kind.  Each draws on a canvas of the facade's size and returns
#: ``(yb, side_floors)``: the row where the wall body starts below the roof, and how many floors of
#: windows the side wall repeats.
_FRONT_BUILDERS = {"palace": _palace_front, "tower": _tower_front, "church": _church_front,
                   "temple": _temple_front, "gate": _gate_front, "modern": _modern_front}


def _facade_shape(rng: np.random.Generator, kind: str, size: int) -> tuple[int, int]:
    """(height, width) of the front facade: the longer side is ``size``, the proportions suit the kind."""
    if kind == "tower":
        H, W = size, int(size * uniform(rng, 0.36, 0.52))
    elif kind == "church":
        H, W = size, int(size * uniform(rng, 0.68, 0.92))
    elif kind in ("palace", "temple"):
        W, H = size, int(size * uniform(rng, 0.56, 0.78))
    elif kind == "gate":
        W, H = size, int(size * uniform(rng, 0.68, 0.9))
    else:  # modern
        if rng.random() < 0.5:
            H, W = size, int(size * uniform(rng, 0.5, 0.8))
        else:
            W, H = size, int(size * uniform(rng, 0.6, 0.85))
    return H, W


def _side_wall(rng: np.random.Generator, st: Style, H: int, W: int, yb: int, side_floors: int) -> np.ndarray:
    """Side wall (RGBA) of a front facade H x W: same material, simpler composition, body height only."""
    k = st.k
    depth = int(W * (uniform(rng, 0.75, 1.0) if st.kind == "tower" else uniform(rng, 0.35, 0.7)))
    depth = max(depth, 16)
    sc = Canvas(H, depth)
    sc.texture(0, yb, depth, H, wall_texture(rng, H - yb, depth, st))
    nb = max(1, int(round(depth / max(W / 6, 24 * k))))
    if st.kind != "modern":
        nf = max(1, min(side_floors, 6))
        draw_floors(sc, rng, st, 0, depth, yb + 6 * k, H, nf, nb, door=False)
    draw_band(sc, rng, st, 0, depth, yb, max(4.0, 8 * k), "plain")
    return np.dstack([_weather(rng, sc.img, k), sc.alpha])


def build_landmark(rng: np.random.Generator, size: int = 512) -> Landmark:
    """Build one landmark: front facade (RGBA) and side wall (RGBA)."""
    # The steps draw from rng in this order; reordering them changes every landmark (tests pin the bytes).
    st = make_style(rng, size)
    H, W = _facade_shape(rng, st.kind, size)
    cv = Canvas(H, W)
    yb, side_floors = _FRONT_BUILDERS[st.kind](cv, rng, st)
    front = np.dstack([_weather(rng, cv.img, st.k), cv.alpha])
    side = _side_wall(rng, st, H, W, yb, side_floors)
    return Landmark(front=front, side=side, kind=st.kind)


def make_landmark(rng: np.random.Generator, size: int = 512, with_alpha: bool = False) -> np.ndarray:
    """Frontal texture of one procedurally generated landmark facade.

    Returns an RGB uint8 image (H x W x 3) whose longer side is ``size``;
    pixels outside the building silhouette (sky around roofs, domes, spires)
    are filled with a neutral light sky colour.  With ``with_alpha=True`` the
    result is RGBA, alpha being the silhouette; :func:`render_view` accepts
    both forms (an RGBA facade is composited onto the photo background along
    its silhouette, an RGB one is an opaque rectangle).
    """
    lm = build_landmark(rng, size)
    if with_alpha:
        return lm.front.copy()
    a = lm.front[..., 3:4].astype(np.float32) / 255.0
    sky = np.array([200, 214, 228], np.float32)
    rgb = lm.front[..., :3].astype(np.float32) * a + sky * (1 - a)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
