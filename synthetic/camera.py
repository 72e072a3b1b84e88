"""The camera: photo frame sizes, a random pinhole pose with the facade-to-photo homography, planar
texture projection and the sensor pipeline (blur, exposure, colour, vignetting, noise).

A facade is a plane: for intrinsics K, rotation R = [r1 r2 r3] and translation t, facade pixel
(x, y) maps to the photo by ``H = K [r1 r2 t] T``, T moving the facade centre to the origin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .primitives import int_between, pick, uniform


def photo_size(rng: np.random.Generator, image_size: int, tall: bool = False) -> tuple[int, int]:
    """(width, height) of a photo whose longer side is image_size (portrait more likely when ``tall``)."""
    p = [0.2, 0.1, 0.1, 0.4, 0.2] if tall else [0.4, 0.2, 0.08, 0.22, 0.1]
    aspect = pick(rng, [4 / 3, 3 / 2, 1.0, 3 / 4, 2 / 3], p=p)
    if aspect >= 1:
        return int(image_size), int(round(image_size / aspect))
    return int(round(image_size * aspect)), int(image_size)


def camera_pipeline(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Blur, exposure, white balance, gamma, contrast, saturation, vignetting, noise -> uint8."""
    x = np.clip(img, 0, 255).astype(np.float32) / 255.0
    r = rng.random()
    if r < 0.45:
        x = cv2.GaussianBlur(x, (0, 0), uniform(rng, 0.3, 0.9))
    elif r < 0.53:
        n = int_between(rng, 3, 5)
        kern = np.zeros((n, n), np.float32)
        kern[n // 2, :] = 1.0 / n
        rot = cv2.getRotationMatrix2D((n / 2 - 0.5, n / 2 - 0.5), uniform(rng, 0, 180), 1.0)
        kern = cv2.warpAffine(kern, rot, (n, n))
        kern /= max(float(kern.sum()), 1e-6)
        x = cv2.filter2D(x, -1, kern)
    gain = math.exp(uniform(rng, -0.35, 0.3))
    wb = np.array([uniform(rng, 0.9, 1.1), 1.0, uniform(rng, 0.9, 1.1)], np.float32)
    x = np.clip(x * gain * wb, 0, 1) ** uniform(rng, 0.8, 1.2)
    mean = float(x.mean())
    x = (x - mean) * uniform(rng, 0.85, 1.2) + mean
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * uniform(rng, 0.7, 1.3)
    h, w = x.shape[:2]
    vig = uniform(rng, 0.0, 0.35)
    if vig > 0.02:
        yy = (np.arange(h, dtype=np.float32)[:, None] - h / 2) / (h / 2)
        xx = (np.arange(w, dtype=np.float32)[None, :] - w / 2) / (w / 2)
        x = x * (1 - vig * 0.5 * (xx ** 2 + yy ** 2))[..., None]
    sigma = uniform(rng, 0.004, 0.02)
    x = x + rng.standard_normal(x.shape, dtype=np.float32) * sigma * (0.4 + np.sqrt(np.clip(x, 0, 1)))
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


@dataclass
class CameraView:
    """Where the camera stands: the homographies from facade and side-wall pixels to photo pixels."""

    H: np.ndarray  # 3x3 float64, facade (x, y, 1) -> photo, normalised so that H[2, 2] == 1
    m: float  # about how many photo pixels one facade pixel covers
    side_H: np.ndarray | None  # side wall (x, y, 1) -> photo, None when the camera does not see a side
    side_normal: np.ndarray | None  # outward normal of the seen side wall, in facade coordinates


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation matrix Rz(roll) @ Rx(pitch) @ Ry(yaw)."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def random_camera(rng: np.random.Generator, Wf: int, Hf: int, ow: int, oh: int, max_tilt: float,
                  with_side: bool) -> CameraView:
    """A random view of a Wf x Hf facade in an ow x oh photo.

    Out-of-plane yaw up to ``max_tilt``, mostly upward-looking pitch, a little roll, a focal length
    between tele and mild wide angle, a scale change of 0.6-1.5 around a framing that fits the
    facade, and a shift that keeps the facade centre in view.  With ``with_side``, the view also
    maps the side wall (same height, at the facade edge) that the camera sees, if it stands beyond
    the left or right edge of the facade.
    """
    S = max(ow, oh)
    yaw = uniform(rng, -max_tilt, max_tilt)
    pitch = uniform(rng, -0.8, 0.15) * max_tilt
    roll = float(np.clip(rng.normal(0, 0.03), -0.08, 0.08))
    f = S * uniform(rng, 0.85, 1.7)
    scale = math.exp(uniform(rng, math.log(0.6), math.log(1.5)))
    m = min(ow / Wf, oh / Hf) * uniform(rng, 0.72, 0.85) * scale
    ox = uniform(rng, -0.45, 0.45) * abs(ow - m * Wf * math.cos(yaw))
    oy = uniform(rng, -0.45, 0.45) * abs(oh - m * Hf)
    tz = f / m
    t = np.array([ox * tz / f, oy * tz / f, tz])
    R = _rotation(yaw, pitch, roll)
    K = np.array([[f, 0, (ow - 1) / 2], [0, f, (oh - 1) / 2], [0, 0, 1.0]])
    T = np.array([[1, 0, -Wf / 2], [0, 1, -Hf / 2], [0, 0, 1.0]])
    H = K @ np.column_stack([R[:, 0], R[:, 1], t]) @ T
    H = H / H[2, 2]
    C = -R.T @ t  # camera centre in facade-plane coordinates
    side_H = None
    side_n = None
    if with_side:
        if C[0] > Wf / 2:
            side_H = K @ np.column_stack([R[:, 2], R[:, 1], R @ np.array([Wf / 2, -Hf / 2, 0]) + t])
            side_n = np.array([1.0, 0, 0])
        elif C[0] < -Wf / 2:
            side_H = K @ np.column_stack([R[:, 2], R[:, 1], R @ np.array([-Wf / 2, -Hf / 2, 0]) + t])
            side_n = np.array([-1.0, 0, 0])
    return CameraView(H=H, m=m, side_H=side_H, side_normal=side_n)


def _pyramid(tex: np.ndarray, levels: int) -> list[np.ndarray]:
    """Image pyramid of up to ``levels`` halvings (stops before a side gets below 16 pixels)."""
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


def _premultiply(rgba: np.ndarray, shade: np.ndarray | float) -> np.ndarray:
    """RGBA uint8 texture, its colour scaled by ``shade``, as premultiplied float32 RGBA."""
    f = rgba.astype(np.float32)
    a = f[..., 3:4] / 255.0
    rgb = f[..., :3] * shade
    return np.concatenate([rgb * a, a * 255.0], axis=2)


def draw_plane(img: np.ndarray, rgba: np.ndarray, shade: np.ndarray | float, H: np.ndarray, m: float) -> np.ndarray:
    """``img`` (float32 RGB) with the RGBA texture, shaded, projected by H over it along its alpha."""
    h, w = img.shape[:2]
    warped = _warp(_premultiply(rgba, shade), H, m, (w, h))
    a = warped[..., 3:4] / 255.0
    return img * (1 - a) + warped[..., :3]
