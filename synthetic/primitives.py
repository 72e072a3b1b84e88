"""Drawing primitives of the generator: random draws, colours, value noise, shapes and text.

Every random draw goes through the generator passed in, so an image depends only on its seed.
"""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np


def uniform(rng: np.random.Generator, a: float, b: float) -> float:
    """Random float in [a, b)."""
    return float(rng.uniform(a, b))


def int_between(rng: np.random.Generator, a: int, b: int) -> int:
    """Random integer in the inclusive range [a, b]."""
    return int(rng.integers(a, b + 1))


def pick(rng: np.random.Generator, seq, p=None):
    """One element of ``seq``, drawn with probabilities ``p`` (uniform when None)."""
    return seq[int(rng.choice(len(seq), p=p))]


def cv_color(c) -> tuple[float, float, float]:
    """Colour as a tuple for OpenCV drawing calls (clipped to 0..255)."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


def shade_color(c, k: float) -> np.ndarray:
    """Colour scaled by ``k`` (darker below 1, lighter above), clipped to 0..255."""
    return np.clip(np.asarray(c, dtype=np.float32) * k, 0, 255)


def mix_colors(a, b, t: float) -> np.ndarray:
    """Linear blend from colour ``a`` (t = 0) to colour ``b`` (t = 1)."""
    return np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t


def jitter_color(rng: np.random.Generator, c, hue: float = 0.03, sat: float = 0.12, val: float = 0.10) -> np.ndarray:
    """Jitter an RGB colour in HSV space."""
    r, g, b = (float(v) / 255.0 for v in c)
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    h = (h + uniform(rng, -hue, hue)) % 1.0
    s = min(1.0, max(0.0, s * (1 + uniform(rng, -sat, sat)) + uniform(rng, -0.02, 0.02)))
    v = min(1.0, max(0.0, v * (1 + uniform(rng, -val, val))))
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255


def hsv_color(h: float, s: float, v: float) -> np.ndarray:
    """RGB colour (float32, 0..255) from hue, saturation and value in 0..1."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255


def luminance(c) -> float:
    """Perceived brightness (ITU-R 601 luma) of an RGB colour, 0..255."""
    c = np.asarray(c, np.float32)
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def value_noise(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 1,
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


def value_noise_1d(rng: np.random.Generator, n: int, cell: float, octaves: int = 3) -> np.ndarray:
    """A smooth random profile of length n: one row of :func:`value_noise`."""
    return value_noise(rng, 1, n, cell, octaves)[0]


def pseudo_words(rng: np.random.Generator, n_words: int) -> str:
    """Pseudo-Latin capitalised words for inscriptions and signs."""
    cons = "BCDFGLMNPRSTVZ"
    vows = "AEIOU"
    words = []
    for _ in range(n_words):
        syl = int_between(rng, 2, 4)
        w = "".join(cons[int_between(rng, 0, len(cons) - 1)] + vows[int_between(rng, 0, len(vows) - 1)]
                    for _ in range(syl))
        if rng.random() < 0.4:
            w += cons[int_between(rng, 0, len(cons) - 1)]
        words.append(w)
    return " ".join(words)


def draw_ellipse(img, center, axes, angle, a0, a1, color, thickness=1, line_type=cv2.LINE_8) -> None:
    """cv2.ellipse that tolerates degenerate (negative) axes."""
    axes = (max(0, int(axes[0])), max(0, int(axes[1])))
    cv2.ellipse(img, (int(center[0]), int(center[1])), axes, float(angle), float(a0), float(a1), color,
                thickness, line_type)


def draw_circle(img, center, radius, color, thickness=1, line_type=cv2.LINE_8) -> None:
    """cv2.circle that tolerates negative radii."""
    cv2.circle(img, (int(center[0]), int(center[1])), max(0, int(radius)), color, thickness, line_type)


HERSHEY_FONTS = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
                 cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL, cv2.FONT_HERSHEY_SCRIPT_COMPLEX]


def draw_fitted_text(img: np.ndarray, text: str, x0: int, y0: int, x1: int, y1: int, color, font: int,
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
    cv2.putText(img, text, org, font, scale, cv_color(color), thick, cv2.LINE_AA)


def draw_glyph(img: np.ndarray, rng: np.random.Generator, x: float, y: float, w: float, h: float, color,
               thick: int = 1) -> None:
    """A random 'script' glyph: strokes between points of a 3x3 lattice."""
    lat = [(x + w * i / 2, y + h * j / 2) for j in range(3) for i in range(3)]
    n = int_between(rng, 2, 4)
    for _ in range(n):
        a, b = rng.choice(9, 2, replace=False)
        p, q = lat[int(a)], lat[int(b)]
        cv2.line(img, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), cv_color(color), thick, cv2.LINE_AA)
    if rng.random() < 0.3:
        p = lat[int_between(rng, 0, 8)]
        draw_circle(img, (int(p[0]), int(p[1])), max(1, int(w / 5)), cv_color(color), thick, cv2.LINE_AA)
