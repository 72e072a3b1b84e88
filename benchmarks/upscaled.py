"""Copies of a GLDv2-style folder with every photo enlarged to a given longer side, for timing at full size.

devset-large's photos are at most 800 px on their longer side, while users' photos (and the product's working
size, ``local_image_size`` 1024) are larger: ALIKED's extraction and LightGlue's pairs grow with pixels and
keypoints, so the benchmarks time recognition on these copies too. The copies add no detail (bilinear
enlargement): they measure cost, never quality.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image


def upscale_photo(src: Path, dst: Path, side: int, quality: int = 90) -> tuple[int, int]:
    """Write ``src`` enlarged (never shrunk) so that its longer side is ``side`` px, as a JPEG; returns its size."""
    with Image.open(src) as im:
        im = im.convert("RGB")
        w, h = im.size
        f = side / max(w, h)
        if f > 1:
            im = im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, "JPEG", quality=quality)
        return im.size


def upscaled_folder(data: Path, out: Path, side: int) -> Path:
    """``out``: ``data``'s train.csv and holdout.csv with every photo of ``data/images`` enlarged to ``side`` px
    (made once; an existing copy is reused). Returns ``out``."""
    done = out / ".complete"
    if done.exists():
        return out
    (out / "images").mkdir(parents=True, exist_ok=True)
    for name in ("train.csv", "holdout.csv"):
        shutil.copy(data / name, out / name)
    for src in sorted((data / "images").glob("*.jpg")):
        upscale_photo(src, out / "images" / src.name, side)
    done.write_text("")
    return out
