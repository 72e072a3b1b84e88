"""A landmark's style: kind, palette, window and ornament choices, and the wall material.

One :class:`Style` is drawn per landmark and shared by its front facade and side wall, so both
read as one building.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .primitives import (HERSHEY_FONTS, hsv_color, int_between, jitter_color, luminance, mix_colors, pick,
                         pseudo_words, shade_color, uniform, value_noise)

WALL_COLORS = [(214, 186, 140), (196, 112, 78), (232, 228, 218), (152, 152, 158), (158, 72, 52),
               (216, 164, 82), (166, 192, 212), (222, 168, 164), (176, 200, 164), (236, 214, 128),
               (112, 56, 44), (242, 238, 228), (182, 176, 164), (120, 110, 100), (205, 133, 63)]
TRIM_COLORS = [(245, 242, 232), (228, 218, 192), (70, 70, 76), (200, 178, 130), (40, 40, 44),
               (160, 150, 138), (250, 250, 250), (120, 90, 60)]
ROOF_COLORS = [(70, 76, 88), (86, 156, 138), (168, 72, 52), (212, 172, 66), (118, 120, 126),
               (44, 46, 52), (120, 60, 50), (60, 110, 150)]
GLASS_COLORS = [(38, 48, 62), (30, 34, 40), (52, 78, 92), (44, 66, 60), (60, 70, 90), (90, 110, 130)]
LANDMARK_KINDS = ["palace", "tower", "church", "temple", "gate", "modern"]


@dataclass
class Style:
    """Everything that makes one landmark look like itself (colours are float32 RGB, 0..255)."""

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


def make_style(rng: np.random.Generator, size: int) -> Style:
    """Draw the style of a landmark whose facade's longer side is ``size`` pixels."""
    k = size / 512.0
    kind = pick(rng, LANDMARK_KINDS, p=[0.22, 0.18, 0.18, 0.14, 0.12, 0.16])
    wall = jitter_color(rng, pick(rng, WALL_COLORS))
    trim = jitter_color(rng, pick(rng, TRIM_COLORS), val=0.05)
    for _ in range(6):
        if abs(luminance(wall) - luminance(trim)) >= 45:
            break
        trim = jitter_color(rng, pick(rng, TRIM_COLORS), val=0.05)
    if abs(luminance(wall) - luminance(trim)) < 45:
        trim = shade_color(wall, 1.5 if luminance(wall) < 128 else 0.5)
    accent = hsv_color(uniform(rng, 0, 1), uniform(rng, 0.45, 0.9), uniform(rng, 0.35, 0.8))
    accent2 = hsv_color(uniform(rng, 0, 1), uniform(rng, 0.5, 0.95), uniform(rng, 0.5, 0.95))
    wall_kind = pick(rng, ["brick", "ashlar", "bands", "lozenge", "plaster"],
                     p=[0.28, 0.26, 0.14, 0.1, 0.22])
    if kind == "modern":
        wall_kind = "panels"
    wall2 = jitter_color(rng, pick(rng, WALL_COLORS)) if wall_kind in ("bands", "lozenge") else shade_color(wall, 0.85)
    if wall_kind in ("bands", "lozenge") and abs(luminance(wall) - luminance(wall2)) < 35:
        wall2 = shade_color(wall, 0.62 if luminance(wall) > 110 else 1.45)
    bh = {"brick": int_between(rng, 6, 9), "ashlar": int_between(rng, 14, 24), "bands": int_between(rng, 10, 22),
          "lozenge": int_between(rng, 12, 22), "plaster": 10, "panels": int_between(rng, 28, 44)}[wall_kind]
    bw = {"brick": int(bh * uniform(rng, 2.2, 2.9)), "ashlar": int(bh * uniform(rng, 1.5, 3.0))}.get(wall_kind, bh)
    win = pick(rng, [["rect"], ["arch"], ["rect", "arch"], ["grid"], ["arch", "grid"], ["lancet"],
                     ["rect", "grid", "round"]])
    return Style(
        kind=kind, wall_kind=wall_kind, wall=wall, wall2=wall2, trim=trim, accent=accent, accent2=accent2,
        glass=jitter_color(rng, pick(rng, GLASS_COLORS)), roof=jitter_color(rng, pick(rng, ROOF_COLORS)),
        mortar=(shade_color(wall, uniform(rng, 0.55, 0.75)) if rng.random() < 0.6
                else mix_colors(wall, (235, 230, 220), 0.6)),
        block_h=max(3, int(round(bh * k))), block_w=max(4, int(round(bw * k))), window_kinds=win,
        shutters=bool(rng.random() < 0.3), pediments=bool(rng.random() < 0.45),
        pilasters=bool(rng.random() < 0.5),
        cornice=pick(rng, ["dentil", "zigzag", "circles", "glyphs", "key", "plain"]),
        font=pick(rng, HERSHEY_FONTS[:5]), text=pseudo_words(rng, int_between(rng, 1, 3)), k=k,
    )


def wall_texture(rng: np.random.Generator, h: int, w: int, st: Style) -> np.ndarray:
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
        jit = (rng.normal(0, jit_sd, (nr, nc, 1)).astype(np.float32)
               + rng.normal(0, jit_sd / 3, (nr, nc, 3)).astype(np.float32))
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
        img += (value_noise(rng, h, w, 24 * st.k, 3) * 8 + value_noise(rng, h, w, 2.5 * st.k, 1) * 6)[..., None]
        # rusticated courses: faint horizontal joints every other block
        img *= np.where(ys % (st.block_h * 3) == 0, 0.88, 1.0)[..., None].astype(np.float32)
    elif kind == "panels":
        pw, ph = st.block_w, st.block_h
        row, col = ys // ph, xs // int(pw * 1.4)
        nr, nc = int(row.max()) + 1, int(col.max()) + 1
        refl = value_noise(rng, h, w, w / 2.5, 3)[..., None]
        sky = mix_colors(st.glass, jitter_color(rng, (170, 195, 220)), uniform(rng, 0.35, 0.6))
        glass = sky[None, None, :] * (1.0 + 0.18 * refl) + 35 * np.clip(refl, 0, None)
        accent_cells = rng.random((nr, nc)) < 0.12
        tint = (rng.random((nr, nc, 1)) * 0.35 + 0.8).astype(np.float32)
        cell_tint = tint[np.broadcast_to(row, (h, w)), np.broadcast_to(col, (h, w))]
        img = glass * cell_tint
        img = np.where(accent_cells[np.broadcast_to(row, (h, w)), np.broadcast_to(col, (h, w))][..., None],
                       st.accent[None, None, :] * 0.8 + 0.2 * glass, img).astype(np.float32)
        frame = (ys % ph < max(2, ph // 9)) | (xs % int(pw * 1.4) < max(2, pw // 10))
        img[np.broadcast_to(frame, (h, w))] = st.trim
    img += rng.normal(0, 5.0, (h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255)
