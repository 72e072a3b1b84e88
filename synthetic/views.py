"""A landmark photographed: :func:`render_view` chains the camera pose, sun and shadows, the
background, the building's planes, an occluder and the sensor pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .camera import camera_pipeline, draw_plane, photo_size, random_camera
from .primitives import uniform
from .scenes import draw_background, draw_occluder


@dataclass
class _Light:
    """Ambient level plus a directional sun (a zero vector under an overcast sky)."""

    ambient: float
    sun: np.ndarray

    def shade(self, normal: np.ndarray) -> float:
        """Brightness factor of a plane facing ``normal``."""
        return self.ambient + (1.0 - self.ambient) * max(0.0, float(np.dot(normal, self.sun))) * 1.25


def _random_light(rng: np.random.Generator) -> _Light:
    if rng.random() < 0.3:  # overcast
        return _Light(uniform(rng, 0.8, 0.95), np.zeros(3))
    ambient = uniform(rng, 0.5, 0.7)
    sun = np.array([uniform(rng, -1, 1), uniform(rng, -1, -0.2), uniform(rng, -1.0, -0.15)])
    sun /= np.linalg.norm(sun)
    return _Light(ambient, sun)


def _facade_shading(rng: np.random.Generator, light: _Light, Wf: int, Hf: int) -> np.ndarray:
    """Per-pixel brightness (Hf x Wf) of the front facade: sun, a soft gradient and maybe a cast shadow."""
    front_shade = light.shade(np.array([0, 0, -1.0]))
    gy = np.linspace(1.0 + uniform(rng, 0, 0.08), 1.0 - uniform(rng, 0, 0.08), Hf, dtype=np.float32)[:, None]
    gx = np.linspace(1.0 - uniform(rng, -0.06, 0.06), 1.0 + uniform(rng, -0.06, 0.06), Wf, dtype=np.float32)[None, :]
    fshade = gy * gx * front_shade
    if rng.random() < 0.3 and light.sun.any():
        mask = np.zeros((Hf, Wf), np.float32)
        x_edge = uniform(rng, 0.1, 0.6) * Wf
        slope = uniform(rng, -0.8, 0.8)
        if rng.random() < 0.5:
            pts = [(0, 0), (x_edge, 0), (x_edge + slope * Hf, Hf), (0, Hf)]
        else:
            pts = [(Wf, 0), (Wf - x_edge, 0), (Wf - x_edge + slope * Hf, Hf), (Wf, Hf)]
        cv2.fillPoly(mask, [np.int32(pts).reshape(-1, 1, 2)], 1.0)
        mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, Wf / 120))
        fshade = fshade * (1 - mask * (1 - light.ambient / max(front_shade, 1e-3)))
    return fshade


def _ground_row(rng: np.random.Generator, H: np.ndarray, Wf: int, Hf: int, oh: int) -> int:
    """Photo row where the ground starts: at (or a little above) the projected foot of the facade."""
    bottoms = [H @ np.array([0, Hf, 1.0]), H @ np.array([Wf, Hf, 1.0]), H @ np.array([Wf / 2, Hf, 1.0])]
    base_y = min(float(p[1] / p[2]) for p in bottoms)
    return int(np.clip(base_y - uniform(rng, 0.0, 0.08) * oh, 0.25 * oh, oh + 5))


def _facade_box(H: np.ndarray, Wf: int, Hf: int, ow: int, oh: int) -> tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1) of the projected facade, clipped to the photo."""
    corners = np.array([H @ np.array([x, y, 1.0]) for x, y in ((0, 0), (Wf, 0), (Wf, Hf), (0, Hf))])
    corners = corners[:, :2] / corners[:, 2:]
    bx0, by0 = np.clip(corners.min(axis=0), 0, [ow, oh])
    bx1, by1 = np.clip(corners.max(axis=0), 0, [ow, oh])
    return float(bx0), float(by0), float(bx1), float(by1)


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
    front = np.asarray(facade)
    if front.ndim != 3 or front.shape[2] not in (3, 4):
        raise ValueError(f"facade must be HxWx3 or HxWx4, got shape {front.shape}")
    if front.shape[2] == 3:
        front = np.dstack([front, np.full(front.shape[:2], 255, np.uint8)])
    image_size, max_tilt = int(image_size), float(max_tilt)
    # The steps draw from rng in this order; reordering them changes every photo (tests pin the bytes).
    Hf, Wf = front.shape[:2]
    ow, oh = photo_size(rng, image_size, tall=Hf > 1.3 * Wf)
    view = random_camera(rng, Wf, Hf, ow, oh, max_tilt, with_side=side is not None)
    light = _random_light(rng)
    front_shade = _facade_shading(rng, light, Wf, Hf)
    ground_y = _ground_row(rng, view.H, Wf, Hf, oh)
    img = draw_background(rng, ow, oh, ground_y)
    if view.side_H is not None:
        side_shade = light.shade(view.side_normal) * uniform(rng, 0.85, 1.0)
        img = draw_plane(img, side, side_shade, view.side_H, view.m * 0.7)
    img = draw_plane(img, front, front_shade[..., None], view.H, view.m)
    if occlusion and rng.random() < 0.65:
        box = _facade_box(view.H, Wf, Hf, ow, oh)
        if box[2] - box[0] > 10 and box[3] - box[1] > 10:
            draw_occluder(rng, img, box, float(ground_y))
    return camera_pipeline(rng, img), view.H
