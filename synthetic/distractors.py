"""Non-landmark photos: landscapes, indoor rooms, table tops and close-ups of natural textures.

They share the sky and the sensor pipeline with landmark photos but never use building textures.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .camera import camera_pipeline, photo_size
from .primitives import (cv_color, draw_circle, draw_ellipse, hsv_color, int_between, jitter_color, mix_colors,
                         pick, shade_color, uniform, value_noise, value_noise_1d)
from .scenes import draw_sky


def _nature(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Landscape: sky, hazy mountain layers, then a meadow, forest or lake, and rocks."""
    img = draw_sky(rng, w, h)
    horizon = int(h * uniform(rng, 0.35, 0.65))
    sky_col = img[max(0, horizon - 5):horizon].mean(axis=(0, 1))
    n_layers = int_between(rng, 1, 3)
    for i in range(n_layers):
        depth = (n_layers - i) / n_layers  # 1 = far
        amp = h * uniform(rng, 0.08, 0.25) * (0.5 + depth)
        cell = w / uniform(rng, 1.5, 5)
        prof = horizon - amp * (0.6 + 0.5 * value_noise_1d(rng, w, cell, 5)) + h * 0.05 * (1 - depth)
        col = mix_colors(jitter_color(rng,
                                      pick(rng, [(70, 90, 70), (100, 95, 90), (80, 100, 60), (120, 110, 100)]),
                                      hue=0.05),
                         sky_col, 0.55 * depth)
        tex = 1 + 0.07 * value_noise(rng, h, w, uniform(rng, 12, 40), 4)
        mask = (np.arange(h)[:, None] >= prof[None, :]).astype(np.float32)
        mask = cv2.GaussianBlur(mask, (0, 0), 0.8)[..., None]
        img = np.ascontiguousarray(img * (1 - mask) + (col[None, None, :] * tex[..., None]) * mask, dtype=np.float32)
    fg = pick(rng, ["meadow", "lake", "forest"])
    fy = int(horizon + h * uniform(rng, 0.02, 0.12))
    if fg == "lake":
        refl = img[max(0, 2 * fy - h):fy][::-1]
        rows = h - fy
        refl = cv2.resize(refl, (w, rows)) if refl.shape[0] != rows else refl
        ripple = value_noise(rng, rows, w, 6, 2, aspect=0.1)
        water = refl * 0.75 + jitter_color(rng, (40, 70, 90)) * 0.25
        img[fy:] = water * (1 + 0.08 * ripple)[..., None]
    else:
        if fg == "meadow":
            base = jitter_color(rng, (105, 125, 70), hue=0.06)
        else:
            base = jitter_color(rng, (45, 70, 45), hue=0.04)
        rows = h - fy
        n = value_noise(rng, rows, w, 30, 3) * 0.15 + value_noise(rng, rows, w, 2.5, 1, aspect=4.0) * 0.12
        img[fy:] = base[None, None, :] * (1 + n)[..., None]
        img = np.ascontiguousarray(img, dtype=np.float32)
        if fg == "forest":
            for _ in range(int_between(rng, 10, 30)):
                tx, tr = uniform(rng, 0, w), h * uniform(rng, 0.03, 0.08)
                ty = fy + uniform(rng, -0.02, 0.05) * h
                c = jitter_color(rng, (45, 80, 40), hue=0.05)
                draw_ellipse(img, (int(tx), int(ty - tr * 1.5)), (int(tr), int(tr * 2.2)), 0, 0, 360,
                             cv_color(c), -1, cv2.LINE_AA)
    # rocks
    img = np.ascontiguousarray(img, dtype=np.float32)
    for _ in range(int_between(rng, 0, 4)):
        rx, ry, rr = uniform(rng, 0, w), uniform(rng, fy, h), h * uniform(rng, 0.02, 0.08)
        ang = np.linspace(0, 2 * math.pi, 10, endpoint=False)
        rad = rr * (1 + 0.3 * rng.standard_normal(10))
        pts = np.int32(np.stack([rx + rad * np.cos(ang), ry + 0.6 * rad * np.sin(ang)], 1)).reshape(-1, 1, 2)
        cv2.fillPoly(img, [pts], cv_color(jitter_color(rng, (120, 115, 110), val=0.25)), cv2.LINE_AA)
    img += (value_noise(rng, h, w, 3, 1) * 5)[..., None]
    return img


def _indoor(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Room in one-point perspective: floor planks, shelves of books, paintings, sofa, lamp, window."""
    vx, vy = w * uniform(rng, 0.3, 0.7), h * uniform(rng, 0.35, 0.6)
    bx0, bx1 = vx - w * uniform(rng, 0.2, 0.35), vx + w * uniform(rng, 0.2, 0.35)
    by0, by1 = vy - h * uniform(rng, 0.2, 0.35), vy + h * uniform(rng, 0.15, 0.3)
    wall = jitter_color(rng, pick(rng, [(230, 225, 210), (200, 210, 220), (225, 205, 180), (190, 200, 180),
                                        (240, 240, 240)]))
    img = np.empty((h, w, 3), np.float32)
    img[:] = shade_color(wall, 0.9)
    # floor, ceiling, side walls as polygons
    floor = jitter_color(rng, pick(rng, [(150, 110, 70), (120, 80, 50), (170, 160, 150), (110, 110, 120)]))
    cv2.fillPoly(img, [np.int32([(bx0, by1), (bx1, by1), (w, h), (0, h)]).reshape(-1, 1, 2)], cv_color(floor))
    cv2.fillPoly(img, [np.int32([(0, 0), (w, 0), (bx1, by0), (bx0, by0)]).reshape(-1, 1, 2)],
                 cv_color(shade_color(wall, 1.08)))
    cv2.fillPoly(img, [np.int32([(0, 0), (bx0, by0), (bx0, by1), (0, h)]).reshape(-1, 1, 2)],
                 cv_color(shade_color(wall, 0.8)))
    cv2.fillPoly(img, [np.int32([(w, 0), (bx1, by0), (bx1, by1), (w, h)]).reshape(-1, 1, 2)],
                 cv_color(shade_color(wall, 0.85)))
    cv2.rectangle(img, (int(bx0), int(by0)), (int(bx1), int(by1)), cv_color(wall), -1)
    # floor planks converging to the vanishing point
    for t in np.linspace(-1.5, 2.5, int_between(rng, 16, 40)):
        xb = bx0 + (bx1 - bx0) * t
        xe = vx + (xb - vx) * (h - vy) / max(by1 - vy, 1)
        cv2.line(img, (int(xb), int(by1)), (int(xe), h), cv_color(shade_color(floor, 0.75)), 1, cv2.LINE_AA)
    # furniture and objects on the back wall
    for _ in range(int_between(rng, 3, 7)):
        kind = pick(rng, ["shelf", "painting", "sofa", "lamp", "window", "box"])
        fx0 = uniform(rng, bx0 - 0.1 * w, bx1 - 0.05 * w)
        fw = (bx1 - bx0) * uniform(rng, 0.15, 0.4)
        if kind == "shelf":
            fy0, fy1 = by0 + (by1 - by0) * uniform(rng, 0.05, 0.4), by1
            wood = jitter_color(rng, (120, 85, 55))
            cv2.rectangle(img, (int(fx0), int(fy0)), (int(fx0 + fw), int(fy1)), cv_color(wood), -1)
            ns = int_between(rng, 3, 5)
            for s in range(ns):
                sy0 = fy0 + (fy1 - fy0) * s / ns + 3
                sy1 = fy0 + (fy1 - fy0) * (s + 1) / ns - 2
                xx = fx0 + 3
                while xx < fx0 + fw - 4:
                    bw = uniform(rng, 2, 6)
                    bh = (sy1 - sy0) * uniform(rng, 0.6, 0.95)
                    cv2.rectangle(img, (int(xx), int(sy1 - bh)), (int(xx + bw), int(sy1)),
                                  cv_color(hsv_color(uniform(rng, 0, 1), uniform(rng, 0.3, 0.8),
                                                     uniform(rng, 0.3, 0.8))), -1)
                    xx += bw + 1
        elif kind == "painting":
            py0 = by0 + (by1 - by0) * uniform(rng, 0.1, 0.3)
            ph = (by1 - by0) * uniform(rng, 0.15, 0.35)
            cv2.rectangle(img, (int(fx0 - 3), int(py0 - 3)), (int(fx0 + fw + 3), int(py0 + ph + 3)),
                          cv_color(jitter_color(rng, (150, 120, 60))), -1)
            x0, x1, y0, y1 = max(0, int(fx0)), min(w, int(fx0 + fw)), max(0, int(py0)), min(h, int(py0 + ph))
            if x1 > x0 and y1 > y0:
                n1 = value_noise(rng, y1 - y0, x1 - x0, max(2.0, (x1 - x0) / 3), 3)
                c1, c2 = hsv_color(uniform(rng, 0, 1), 0.6, 0.8), hsv_color(uniform(rng, 0, 1), 0.5, 0.4)
                tt = np.clip(n1 * 0.5 + 0.5, 0, 1)[..., None]
                img[y0:y1, x0:x1] = c1 * tt + c2 * (1 - tt)
        elif kind == "sofa":
            sy1 = by1 + (h - by1) * uniform(rng, 0.1, 0.5)
            sh = (by1 - by0) * uniform(rng, 0.2, 0.35)
            c = hsv_color(uniform(rng, 0, 1), uniform(rng, 0.2, 0.7), uniform(rng, 0.3, 0.8))
            cv2.rectangle(img, (int(fx0), int(sy1 - sh)), (int(fx0 + fw * 1.5), int(sy1)), cv_color(c), -1)
            cv2.rectangle(img, (int(fx0), int(sy1 - sh * 1.5)), (int(fx0 + fw * 1.5), int(sy1 - sh * 0.6)),
                          cv_color(shade_color(c, 0.85)), -1)
            for cx in np.linspace(fx0 + fw * 0.25, fx0 + fw * 1.25, 3):
                draw_ellipse(img, (int(cx), int(sy1 - sh * 0.9)), (int(fw * 0.2), int(sh * 0.35)), 0, 0, 360,
                             cv_color(shade_color(c, 1.1)), -1, cv2.LINE_AA)
        elif kind == "lamp":
            lx, ly = fx0 + fw / 2, by1 + (h - by1) * uniform(rng, 0.0, 0.4)
            lh = (by1 - by0) * uniform(rng, 0.5, 0.9)
            cv2.line(img, (int(lx), int(ly)), (int(lx), int(ly - lh)), cv_color((40, 40, 40)), 2, cv2.LINE_AA)
            sc = jitter_color(rng, (240, 220, 170))
            cv2.fillPoly(img, [np.int32([(lx - lh * 0.12, ly - lh * 0.8), (lx + lh * 0.12, ly - lh * 0.8),
                                         (lx + lh * 0.07, ly - lh * 1.05),
                                         (lx - lh * 0.07, ly - lh * 1.05)]).reshape(-1, 1, 2)],
                         cv_color(sc), cv2.LINE_AA)
        elif kind == "window":
            wy0 = by0 + (by1 - by0) * uniform(rng, 0.1, 0.25)
            wh = (by1 - by0) * uniform(rng, 0.35, 0.6)
            cv2.rectangle(img, (int(fx0), int(wy0)), (int(fx0 + fw), int(wy0 + wh)), cv_color((235, 240, 245)), -1)
            cv2.rectangle(img, (int(fx0), int(wy0)), (int(fx0 + fw), int(wy0 + wh)), cv_color((250, 250, 250)), 3)
            cv2.line(img, (int(fx0 + fw / 2), int(wy0)), (int(fx0 + fw / 2), int(wy0 + wh)),
                     cv_color((250, 250, 250)), 2)
        else:
            c = jitter_color(rng, pick(rng, [(120, 90, 60), (200, 200, 200), (60, 60, 70), (160, 60, 50)]))
            bh = (by1 - by0) * uniform(rng, 0.2, 0.45)
            y1 = by1 + (h - by1) * uniform(rng, 0, 0.3)
            cv2.rectangle(img, (int(fx0), int(y1 - bh)), (int(fx0 + fw), int(y1)), cv_color(c), -1)
            cv2.fillPoly(img, [np.int32([(fx0, y1 - bh), (fx0 + fw, y1 - bh), (fx0 + fw * 1.1, y1 - bh * 1.15),
                                         (fx0 + fw * 0.1, y1 - bh * 1.15)]).reshape(-1, 1, 2)],
                         cv_color(shade_color(c, 1.2)), cv2.LINE_AA)
    # warm light falloff + surface noise
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lx, ly = uniform(rng, 0, w), uniform(rng, 0, h * 0.5)
    fall = 0.95 - 0.45 * np.sqrt(((xx - lx) / w) ** 2 + ((yy - ly) / h) ** 2)
    img *= fall[..., None] * np.array([1.0, uniform(rng, 0.95, 1.0), uniform(rng, 0.85, 1.0)], np.float32)
    img += (value_noise(rng, h, w, 25, 2) * 4 + value_noise(rng, h, w, 2, 1) * 3)[..., None]
    return img


def _tabletop(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Wood or cloth table top with everyday objects (mug, plate, fruit, book, pen, phone)."""
    if rng.random() < 0.6:  # wood grain
        base = jitter_color(rng, pick(rng, [(160, 115, 75), (120, 80, 50), (190, 160, 120)]))
        yy = np.arange(h, dtype=np.float32)[:, None]
        warp = value_noise(rng, h, w, w / 3, 3) * uniform(rng, 8, 20)
        grain = np.sin((yy + warp) * uniform(rng, 0.3, 0.8)) * 0.08 + value_noise(rng, h, w, 2, 1, aspect=0.05) * 0.05
        img = base[None, None, :] * (1 + grain)[..., None]
    else:  # cloth
        base = hsv_color(uniform(rng, 0, 1), uniform(rng, 0.2, 0.7), uniform(rng, 0.4, 0.85))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        weave = np.sin(xx * 1.9) * np.sin(yy * 1.9) * 0.05 + value_noise(rng, h, w, 40, 2) * 0.08
        img = base[None, None, :] * (1 + weave)[..., None]
    img = np.ascontiguousarray(img, dtype=np.float32)
    for _ in range(int_between(rng, 3, 8)):
        kind = pick(rng, ["mug", "plate", "fruit", "book", "pen", "phone"])
        cx, cy = uniform(rng, 0.1, 0.9) * w, uniform(rng, 0.15, 0.9) * h
        s = min(w, h) * uniform(rng, 0.08, 0.2)
        col = hsv_color(uniform(rng, 0, 1), uniform(rng, 0.2, 0.9), uniform(rng, 0.3, 0.95))
        shadow = np.zeros((h, w), np.float32)
        draw_ellipse(shadow, (int(cx + s * 0.2), int(cy + s * 0.3)), (int(s * 0.9), int(s * 0.5)), 0, 0, 360, 1.0, -1)
        shadow = cv2.GaussianBlur(shadow, (0, 0), max(1.0, s / 6))
        img *= (1 - 0.35 * shadow)[..., None]
        if kind == "mug":
            cv2.rectangle(img, (int(cx - s * 0.4), int(cy - s * 0.5)),
                          (int(cx + s * 0.4), int(cy + s * 0.4)), cv_color(col), -1)
            draw_ellipse(img, (int(cx), int(cy + s * 0.4)), (int(s * 0.4), int(s * 0.12)), 0, 0, 180,
                         cv_color(col), -1, cv2.LINE_AA)
            draw_ellipse(img, (int(cx), int(cy - s * 0.5)), (int(s * 0.4), int(s * 0.12)), 0, 0, 360,
                         cv_color(shade_color(col, 0.5)), -1, cv2.LINE_AA)
            draw_ellipse(img, (int(cx + s * 0.45), int(cy)), (int(s * 0.18), int(s * 0.22)), 0, -90, 90, cv_color(col),
                         max(2, int(s / 12)), cv2.LINE_AA)
        elif kind == "plate":
            draw_ellipse(img, (int(cx), int(cy)), (int(s), int(s * 0.6)), 0, 0, 360,
                         cv_color((235, 235, 230)), -1, cv2.LINE_AA)
            draw_ellipse(img, (int(cx), int(cy)), (int(s * 0.7), int(s * 0.42)), 0, 0, 360,
                         cv_color((215, 215, 210)), 1, cv2.LINE_AA)
        elif kind == "fruit":
            fc = jitter_color(rng, pick(rng, [(200, 40, 30), (240, 180, 40), (120, 170, 50), (240, 130, 30)]))
            draw_circle(img, (int(cx), int(cy)), int(s * 0.4), cv_color(fc), -1, cv2.LINE_AA)
            draw_circle(img, (int(cx - s * 0.12), int(cy - s * 0.12)), max(1, int(s * 0.1)),
                        cv_color(shade_color(fc, 1.4)), -1, cv2.LINE_AA)
        elif kind == "book":
            ang = uniform(rng, 0, 180)
            box = cv2.boxPoints(((cx, cy), (s * 1.6, s * 1.1), ang))
            cv2.fillPoly(img, [np.int32(box).reshape(-1, 1, 2)], cv_color(col), cv2.LINE_AA)
            for j in range(3):
                c2 = box[0] + (box[1] - box[0]) * (0.3 + 0.15 * j) + (box[3] - box[0]) * 0.2
                c3 = c2 + (box[3] - box[0]) * 0.5
                cv2.line(img, (int(c2[0]), int(c2[1])), (int(c3[0]), int(c3[1])),
                         cv_color(shade_color(col, 0.5)), 1, cv2.LINE_AA)
        elif kind == "pen":
            ang = uniform(rng, 0, math.pi)
            dx, dy = math.cos(ang) * s, math.sin(ang) * s
            cv2.line(img, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), cv_color(col),
                     max(2, int(s / 10)), cv2.LINE_AA)
        else:
            ang = uniform(rng, 0, 180)
            box = cv2.boxPoints(((cx, cy), (s * 0.7, s * 1.4), ang))
            cv2.fillPoly(img, [np.int32(box).reshape(-1, 1, 2)], cv_color((25, 25, 30)), cv2.LINE_AA)
            inner = cv2.boxPoints(((cx, cy), (s * 0.6, s * 1.2), ang))
            cv2.fillPoly(img, [np.int32(inner).reshape(-1, 1, 2)],
                         cv_color(hsv_color(uniform(rng, 0, 1), 0.4, 0.5)), cv2.LINE_AA)
    return img


def _closeup(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Close-up of a natural texture: foliage, gravel, water or bark."""
    kind = pick(rng, ["foliage", "gravel", "water", "bark"])
    if kind == "foliage":
        img = np.empty((h, w, 3), np.float32)
        img[:] = jitter_color(rng, (30, 50, 25))
        base = jitter_color(rng, (70, 120, 50), hue=0.06)
        for _ in range(int_between(rng, 250, 500)):
            c = jitter_color(rng, base, hue=0.04, val=0.35)
            r = min(w, h) * uniform(rng, 0.015, 0.05)
            draw_ellipse(img, (int(uniform(rng, 0, w)), int(uniform(rng, 0, h))), (int(r), int(r * 0.45)),
                         uniform(rng, 0, 180), 0, 360,
                         cv_color(c), -1, cv2.LINE_AA)
    elif kind == "gravel":
        img = np.empty((h, w, 3), np.float32)
        img[:] = jitter_color(rng, (90, 85, 80))
        for _ in range(int_between(rng, 300, 700)):
            c = jitter_color(rng,
                             pick(rng, [(150, 145, 140), (170, 150, 120), (110, 105, 100), (190, 185, 175)]), val=0.2)
            r = min(w, h) * uniform(rng, 0.008, 0.03)
            x, y = uniform(rng, 0, w), uniform(rng, 0, h)
            draw_ellipse(img, (int(x), int(y)), (int(r), int(r * uniform(rng, 0.5, 0.9))), uniform(rng, 0, 180), 0, 360,
                         cv_color(c), -1, cv2.LINE_AA)
            draw_ellipse(img, (int(x - r * 0.2), int(y - r * 0.2)),
                         (max(1, int(r * 0.3)), max(1, int(r * 0.2))), 0, 0, 360,
                         cv_color(shade_color(c, 1.2)), -1, cv2.LINE_AA)
    elif kind == "water":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        warp = value_noise(rng, h, w, w / 4, 3) * uniform(rng, 5, 15)
        wave = np.sin((yy + warp) * uniform(rng, 0.15, 0.5)) * 0.5 + 0.5
        c1, c2 = jitter_color(rng, (30, 80, 110)), jitter_color(rng, (170, 210, 225))
        t = wave ** 3
        img = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    else:
        base = jitter_color(rng, (100, 75, 55))
        n = value_noise(rng, h, w, 4, 2, aspect=40.0) * 0.25 + value_noise(rng, h, w, 30, 2) * 0.1
        img = base[None, None, :] * (1 + n)[..., None]
        img *= (1 - 0.5 * (n < -0.3))[..., None]
    img = np.ascontiguousarray(img, dtype=np.float32)
    light = 1 + 0.15 * value_noise(rng, h, w, max(w, h) / 2, 1)
    return img * light[..., None]


_SCENES = {"nature": _nature, "indoor": _indoor, "tabletop": _tabletop, "closeup": _closeup}


def make_distractor(rng: np.random.Generator, image_size: int = 384) -> np.ndarray:
    """A non-landmark photo (RGB uint8): landscape, indoor room, table top or texture close-up.

    Distractors never contain building facades or their textures; they go through the same
    camera pipeline (blur, exposure, colour, noise) as landmark views.
    """
    w, h = photo_size(rng, int(image_size))
    kind = pick(rng, ["nature", "indoor", "tabletop", "closeup"], p=[0.3, 0.3, 0.2, 0.2])
    img = _SCENES[kind](rng, w, h)
    img = cv2.GaussianBlur(np.ascontiguousarray(img, dtype=np.float32), (0, 0), 0.6)
    return camera_pipeline(rng, img)
