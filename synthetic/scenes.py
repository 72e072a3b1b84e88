"""What surrounds the building in a photo: sky with clouds, distant skyline and trees, ground, and
an occluder in front (people, a tree, a car, a lamp post, a poster board or a plain blob).

Images are float32 RGB, 0..255; the drawing functions that take ``img`` change it in place.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .primitives import (cv_color, draw_circle, draw_ellipse, hsv_color, int_between, jitter_color, mix_colors,
                         pick, uniform, value_noise, value_noise_1d)
from .style import WALL_COLORS


def draw_sky(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Sky of size h x w: a clear, hazy, overcast or sunset gradient, usually with clouds."""
    kind = pick(rng, ["clear", "hazy", "overcast", "sunset"], p=[0.45, 0.2, 0.25, 0.1])
    if kind == "clear":
        top, bot = jitter_color(rng, (70, 120, 190)), jitter_color(rng, (175, 205, 230))
    elif kind == "hazy":
        top, bot = jitter_color(rng, (135, 165, 200)), jitter_color(rng, (215, 220, 225))
    elif kind == "overcast":
        g = uniform(rng, 150, 215)
        top, bot = np.array([g, g + 3, g + 8], np.float32), np.array([g + 20, g + 22, g + 24], np.float32)
    else:
        top, bot = jitter_color(rng, (80, 90, 150)), jitter_color(rng, (250, 170, 110))
    t = (np.arange(h, dtype=np.float32) / max(h - 1, 1)) ** uniform(rng, 0.6, 1.3)
    img = top[None, None, :] * (1 - t)[:, None, None] + bot[None, None, :] * t[:, None, None]
    img = np.broadcast_to(img, (h, w, 3)).astype(np.float32)
    if kind != "clear" or rng.random() < 0.7:
        n = value_noise(rng, h, w, w / uniform(rng, 2.0, 4.0), 5, aspect=0.4)
        thr = uniform(rng, -0.3, 1.2) if kind != "overcast" else uniform(rng, -1.0, 0.2)
        c = np.clip((n - thr) * uniform(rng, 0.5, 1.0), 0, 1) * uniform(rng, 0.5, 0.95)
        shade = 1.0 - 0.1 * np.clip(value_noise(rng, h, w, w / 6, 2), 0, None)
        cloud = (np.array([248, 248, 250], np.float32) if kind != "sunset" else jitter_color(rng, (255, 200, 170)))
        cloud_img = cloud[None, None, :] * shade[..., None]
        img = img * (1 - c[..., None]) + cloud_img * c[..., None]
    return np.ascontiguousarray(img, dtype=np.float32)


def draw_ground(rng: np.random.Generator, img: np.ndarray, y0: int) -> None:
    """Ground below row y0 (in place): perspective paving, grass or asphalt."""
    h, w = img.shape[:2]
    y0 = int(np.clip(y0, 0, h))
    if y0 >= h:
        return
    rows = h - y0
    kind = pick(rng, ["paving", "grass", "asphalt"], p=[0.5, 0.3, 0.2])
    yh = y0 - uniform(rng, 3, 25)  # true horizon slightly above ground top
    ys = np.arange(y0, h, dtype=np.float32)[:, None] - yh + 1.0
    xs = np.arange(w, dtype=np.float32)[None, :] - w / 2 + uniform(rng, -w / 3, w / 3)
    f = max(w, h) * 1.2
    zg = f * 1.6 / ys
    xg = xs * zg / f
    if kind == "paving":
        base = jitter_color(rng, pick(rng, [(170, 165, 155), (190, 175, 150), (140, 140, 145), (175, 130, 110)]))
        ts = uniform(rng, 0.35, 0.9)
        u, v = xg / ts, zg / ts
        chk = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
        lines = ((u % 1) < 0.06) | ((v % 1) < 0.06)
        tex = 1.0 + 0.05 * (chk - 0.5) - 0.25 * lines.astype(np.float32)
        tex = cv2.GaussianBlur(tex, (0, 0), 0.7)
        g = base[None, None, :] * tex[..., None]
    elif kind == "grass":
        base = jitter_color(rng, (95, 130, 60), hue=0.05)
        n = value_noise(rng, rows, w, 40, 3) * 0.12 + value_noise(rng, rows, w, 3, 1, aspect=3.0) * 0.08
        g = base[None, None, :] * (1 + n)[..., None]
    else:
        base = jitter_color(rng, (85, 85, 90), val=0.2)
        n = value_noise(rng, rows, w, 30, 2) * 0.06
        g = base[None, None, :] * (1 + n)[..., None]
        lane = np.abs(xg - uniform(rng, -2, 2)) < 0.08
        g[lane & ((zg % 3.0) < 1.6)] = (215, 210, 195)
    g = g + rng.normal(0, 4.0, (rows, w, 1)).astype(np.float32)
    # haze towards the horizon
    haze = np.clip(1.0 - (ys - (y0 - yh)) / (rows * 0.5 + 1), 0, 1)[..., None] * 0.35
    g = g * (1 - haze) + img[max(0, y0 - 1):y0].mean(axis=(0, 1)) * haze if y0 > 0 else g
    img[y0:] = g


def draw_far_clutter(rng: np.random.Generator, img: np.ndarray, y0: int) -> None:
    """Distant hazy skyline and trees standing on row y0 (in place)."""
    h, w = img.shape[:2]
    if y0 <= 2 or y0 > h + 20:
        return
    y0 = min(y0, h)
    haze_col = img[max(0, y0 - 3):y0].mean(axis=(0, 1))
    layer = img.copy()
    for _ in range(int_between(rng, 0, 8)):
        bw = w * uniform(rng, 0.04, 0.2)
        bh = h * uniform(rng, 0.02, 0.18)
        x = uniform(rng, -0.1, 1.0) * w
        c = mix_colors(jitter_color(rng, pick(rng, WALL_COLORS), val=0.2), haze_col, uniform(rng, 0.35, 0.7))
        cv2.rectangle(layer, (int(x), int(y0 - bh)), (int(x + bw), y0 + 2), cv_color(c), -1)
        if rng.random() < 0.4:
            cv2.rectangle(layer, (int(x + bw * 0.3), int(y0 - bh * 1.3)),
                          (int(x + bw * 0.5), int(y0 - bh)), cv_color(c), -1)
    for _ in range(int_between(rng, 0, 7)):
        tx = uniform(rng, 0, 1) * w
        tr = h * uniform(rng, 0.02, 0.07)
        c = mix_colors(jitter_color(rng, (55, 85, 45), hue=0.05), haze_col, uniform(rng, 0.2, 0.5))
        for _j in range(int_between(rng, 3, 7)):
            draw_circle(layer, (int(tx + uniform(rng, -1.5, 1.5) * tr), int(y0 - tr * uniform(rng, 0.5, 2.0))),
                        int(tr * uniform(rng, 0.6, 1.1)), cv_color(c), -1, cv2.LINE_AA)
    img[:] = layer


def draw_background(rng: np.random.Generator, w: int, h: int, ground_y: int) -> np.ndarray:
    """Background of a landmark photo (h x w): sky, distant clutter and ground from row ``ground_y``, softened."""
    img = draw_sky(rng, w, h)
    draw_far_clutter(rng, img, ground_y)
    draw_ground(rng, img, ground_y)
    return cv2.GaussianBlur(img, (0, 0), uniform(rng, 0.5, 1.3))


def draw_occluder(rng: np.random.Generator, img: np.ndarray, box: tuple[float, float, float, float],
                  ground_y: float) -> None:
    """Draw one object in front of the building (in place, float32 image)."""
    h, w = img.shape[:2]
    bx0, by0, bx1, by1 = box
    bw, bh = max(bx1 - bx0, 8.0), max(by1 - by0, 8.0)
    layer = np.zeros((h, w, 3), np.float32)
    mask = np.zeros((h, w), np.float32)
    kind = pick(rng, ["people", "tree", "car", "pole", "board", "blob"], p=[0.25, 0.2, 0.15, 0.12, 0.13, 0.15])
    base_y = min(float(h), max(ground_y, by1) + uniform(rng, 0, 0.15) * h)
    cx = uniform(rng, bx0 + 0.1 * bw, bx1 - 0.1 * bw)

    def fill(draw):
        """Draw a shape twice: in its colours on the layer, as 1.0 on the mask."""
        draw(layer, cv_color)
        draw(mask, lambda color: 1.0)

    if kind == "people":
        for _ in range(int_between(rng, 1, 3)):
            ph = bh * uniform(rng, 0.2, 0.55)
            px = cx + uniform(rng, -0.15, 0.15) * bw
            cloth = hsv_color(uniform(rng, 0, 1), uniform(rng, 0.2, 0.8), uniform(rng, 0.2, 0.8))
            legs = hsv_color(uniform(rng, 0, 1), uniform(rng, 0.1, 0.5), uniform(rng, 0.1, 0.5))
            skin = jitter_color(rng, pick(rng, [(230, 190, 160), (180, 130, 95), (120, 80, 55)]))
            hw = ph * 0.14

            def person(a, color_of, px=px, ph=ph, hw=hw, cloth=cloth, legs=legs, skin=skin):
                cv2.rectangle(a, (int(px - hw * 0.9), int(base_y - ph * 0.48)),
                              (int(px + hw * 0.9), int(base_y)), color_of(legs), -1)
                draw_ellipse(a, (int(px), int(base_y - ph * 0.66)), (int(hw * 1.25), int(ph * 0.22)), 0, 0, 360,
                             color_of(cloth), -1, cv2.LINE_AA)
                draw_circle(a, (int(px), int(base_y - ph * 0.92)), max(2, int(ph * 0.08)), color_of(skin), -1,
                            cv2.LINE_AA)

            fill(person)
    elif kind == "tree":
        th = bh * uniform(rng, 0.5, 1.0)
        trunk = jitter_color(rng, (80, 60, 45))
        leaf = jitter_color(rng, (60, 100, 45), hue=0.06)
        cr = min(th * uniform(rng, 0.2, 0.32), bw * uniform(rng, 0.15, 0.3))
        blobs = [(cx + uniform(rng, -1, 1) * cr * 0.8, base_y - th + cr + uniform(rng, -0.5, 0.6) * cr,
                  cr * uniform(rng, 0.5, 0.9))
                 for _ in range(int_between(rng, 4, 8))]

        def tree(a, color_of):
            cv2.rectangle(a, (int(cx - th * 0.03), int(base_y - th * 0.6)),
                          (int(cx + th * 0.03), int(base_y)), color_of(trunk), -1)
            for bx, by, br in blobs:
                draw_circle(a, (int(bx), int(by)), int(br), color_of(leaf), -1, cv2.LINE_AA)

        fill(tree)
        # leafy texture
        x0, x1 = max(0, int(cx - th)), min(w, int(cx + th))
        if x1 > x0:
            n = value_noise(rng, h, x1 - x0, max(2.0, th / 40), 2)
            layer[:, x0:x1] *= (1 + 0.3 * n)[..., None]
            mask[:, x0:x1] *= np.clip(1.4 + 0.8 * n, 0, 1)
    elif kind == "car":
        cw = bw * uniform(rng, 0.3, 0.6)
        chh = cw * uniform(rng, 0.32, 0.4)
        body = hsv_color(uniform(rng, 0, 1), uniform(rng, 0.0, 0.8), uniform(rng, 0.2, 0.9))
        x0 = cx - cw / 2
        pts = np.int32([(x0, base_y - chh * 0.25), (x0 + cw * 0.04, base_y - chh * 0.6),
                        (x0 + cw * 0.25, base_y - chh * 0.65),
                        (x0 + cw * 0.35, base_y - chh), (x0 + cw * 0.72, base_y - chh),
                        (x0 + cw * 0.85, base_y - chh * 0.62),
                        (x0 + cw, base_y - chh * 0.55), (x0 + cw, base_y - chh * 0.22)]).reshape(-1, 1, 2)
        win_pts = np.int32([(x0 + cw * 0.3, base_y - chh * 0.64), (x0 + cw * 0.37, base_y - chh * 0.93),
                            (x0 + cw * 0.7, base_y - chh * 0.93),
                            (x0 + cw * 0.8, base_y - chh * 0.64)]).reshape(-1, 1, 2)

        def car(a, color_of):
            cv2.fillPoly(a, [pts], color_of(body), cv2.LINE_AA)
            cv2.fillPoly(a, [win_pts], color_of((40, 50, 60)), cv2.LINE_AA)
            for wx in (x0 + cw * 0.2, x0 + cw * 0.8):
                draw_circle(a, (int(wx), int(base_y - chh * 0.2)), max(2, int(chh * 0.2)),
                            color_of((25, 25, 25)), -1, cv2.LINE_AA)

        fill(car)
    elif kind == "pole":
        ph = bh * uniform(rng, 0.6, 1.2)
        pc = jitter_color(rng, (50, 55, 50))
        sc = hsv_color(uniform(rng, 0, 1), uniform(rng, 0.5, 0.9), uniform(rng, 0.5, 0.9))
        pw = max(2.0, w * 0.008)
        sw, sh = bw * uniform(rng, 0.08, 0.18), bh * uniform(rng, 0.06, 0.14)

        def pole(a, color_of):
            cv2.rectangle(a, (int(cx - pw), int(base_y - ph)), (int(cx + pw), int(base_y)), color_of(pc), -1)
            cv2.rectangle(a, (int(cx - sw / 2), int(base_y - ph * 0.7)),
                          (int(cx + sw / 2), int(base_y - ph * 0.7 + sh)),
                          color_of(sc), -1)
            draw_ellipse(a, (int(cx), int(base_y - ph)), (int(pw * 4), int(pw * 2)), 0, 0, 360,
                         color_of(pc), -1, cv2.LINE_AA)

        fill(pole)
    elif kind == "board":
        bw2, bh2 = bw * uniform(rng, 0.15, 0.35), bh * uniform(rng, 0.2, 0.4)
        by = base_y - bh2 - uniform(rng, 0, 0.2) * bh
        frame = jitter_color(rng, (60, 60, 65))

        def board(a, color_of):
            cv2.rectangle(a, (int(cx - bw2 / 2), int(by)), (int(cx + bw2 / 2), int(by + bh2)), color_of(frame), -1)
            cv2.rectangle(a, (int(cx - 2), int(by + bh2)), (int(cx + 2), int(base_y)), color_of(frame), -1)

        fill(board)
        # poster content: coloured blotches
        x0, x1 = max(0, int(cx - bw2 / 2 + 3)), min(w, int(cx + bw2 / 2 - 3))
        y0, y1 = max(0, int(by + 3)), min(h, int(by + bh2 - 3))
        if x1 > x0 and y1 > y0:
            n = value_noise(rng, y1 - y0, x1 - x0, max(3.0, (x1 - x0) / 4), 2)
            c1 = hsv_color(uniform(rng, 0, 1), 0.7, 0.9)
            c2 = hsv_color(uniform(rng, 0, 1), 0.6, 0.5)
            t = np.clip(n * 0.8 + 0.5, 0, 1)[..., None]
            layer[y0:y1, x0:x1] = c1 * t + c2 * (1 - t)
    else:  # blob
        r = math.sqrt(bw * bh) * uniform(rng, 0.08, 0.17)
        by = uniform(rng, by0 + 0.3 * bh, min(float(h), by1))
        ang = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        rad = r * (1 + 0.35 * value_noise_1d(rng, 24, 5, 2))
        outline = np.stack([cx + rad * np.cos(ang), by + rad * np.sin(ang) * uniform(rng, 0.6, 1.4)], 1)
        pts = np.int32(outline).reshape(-1, 1, 2)
        col = hsv_color(uniform(rng, 0, 1), uniform(rng, 0.1, 0.8), uniform(rng, 0.15, 0.8))

        def blob(a, color_of):
            cv2.fillPoly(a, [pts], color_of(col), cv2.LINE_AA)

        fill(blob)
    # texture and shading on the occluder
    ys, xs = np.nonzero(mask > 0)
    if len(ys):
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        n = value_noise(rng, y1 - y0, x1 - x0, max(2.0, (x1 - x0) / 8), 3)
        grad = np.linspace(1.1, 0.8, y1 - y0, dtype=np.float32)[:, None]
        layer[y0:y1, x0:x1] *= ((1 + 0.08 * n) * grad)[..., None]
        layer[y0:y1, x0:x1] += rng.normal(0, 3.0, (y1 - y0, x1 - x0, 1)).astype(np.float32)
    m = mask[..., None]
    img[:] = img * (1 - m) + layer * m
