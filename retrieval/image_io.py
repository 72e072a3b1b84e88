"""Robust image decoding: every file either becomes an RGB uint8 array or raises ImageError.

Handles EXIF orientation, every PIL mode (CMYK, 16-bit, palette, alpha,
grayscale, bilevel), JPEG draft mode for fast downscaled decode, a
decompression-bomb limit that is checked before any pixel is decoded, and
zero-byte, truncated or non-image files.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# ~180 megapixels: twice PIL's own warning level; a GLDv2 photo is < 20 MP.
DEFAULT_MAX_PIXELS = 180_000_000
DEFAULT_MIN_SIDE = 16
MAX_ASPECT = 25  # wider panoramas exist, but not 25:1 strips


class ImageError(ValueError):
    """An image file that cannot be used; the message says why and names the file."""


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparent pixels are composited on white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit or float grayscale: stretch the actual range to 0..255.
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = np.clip((arr - lo) * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _file_size(path: Path) -> int:
    """The file's size in bytes; ImageError when it is missing, unreadable or empty."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc})") from exc
    if size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    return size


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: {width}x{height} = {width * height / 1e6:.0f} MP exceeds the limit of "
            f"{max_pixels / 1e6:.0f} MP (decompression-bomb guard)"
        )


def _check_geometry(path: Path, orig: tuple[int, int], min_side: int) -> None:
    """Refuse sizes the pipeline cannot use (``orig``: width, height as displayed)."""
    if min(orig) < min_side:
        raise ImageError(f"{path}: too small ({orig[0]}x{orig[1]}, shorter side must be >= {min_side} px)")
    if max(orig) > MAX_ASPECT * min(orig):
        # resized for the network, such a strip would be a few pixels high
        raise ImageError(f"{path}: aspect ratio {max(orig) / min(orig):.1f}:1 exceeds {MAX_ASPECT}:1 ({orig[0]}x{orig[1]})")


# A JPEG ends with the EOI marker; it cannot occur inside entropy-coded data (0xFF is stuffed there), so a
# file whose tail has none was cut short. Some writers append padding or trailers after it: look at a tail.
_JPEG_EOI = b"\xff\xd9"
_JPEG_TAIL = 4096


def probe_image(
    path: str | Path, min_side: int = DEFAULT_MIN_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Check an image file without decoding its pixels: what :func:`load_image` would refuse, from the header.

    Reads the header (format, size, EXIF orientation) and applies load_image's size checks. Truncation is
    found for JPEG (no end-of-image marker in the last 4 KiB) and for PNG (PIL's ``verify`` reads every
    chunk's CRC up to IEND); other formats are fully decoded, since nothing cheaper finds a cut file.

    Returns:
        (width, height) as displayed (after EXIF rotation).
    Raises:
        ImageError: as :func:`load_image` would, naming the file and the reason.
    """
    path = Path(path)
    size = _file_size(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                fmt = im.format
                orientation = im.getexif().get(0x0112, 1)
                _check_pixels(path, width, height, max_pixels)
                if fmt not in ("PNG", "JPEG"):
                    im.load()
            if fmt == "PNG":
                with Image.open(path) as im:  # verify must come first after open (getexif reads chunks)
                    im.verify()
            if fmt == "JPEG":
                with open(path, "rb") as f:
                    f.seek(max(0, size - _JPEG_TAIL))
                    if _JPEG_EOI not in f.read():
                        raise ImageError(f"{path}: corrupt or truncated image (JPEG without end-of-image marker)")
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated / corrupt data
        raise ImageError(f"{path}: corrupt or truncated image ({exc})") from exc
    orig = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    _check_geometry(path, orig, min_side)
    return orig


def load_image(
    path: str | Path,
    max_side: int | None = None,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image file to an RGB uint8 array, EXIF orientation applied.

    Args:
        path: image file.
        max_side: if given, downscale so that the longer side is at most this
            (JPEG draft mode decodes at a reduced size directly).
        min_side: images whose shorter side is below this are refused.
        max_pixels: decompression-bomb limit, checked from the header.
    Returns:
        (array (H, W, 3) uint8, original (width, height) after EXIF rotation).
    Raises:
        ImageError: the file is missing, empty, not an image, truncated, too
            small or too large. FileNotFoundError is also an ImageError here so
            that a long job can report and skip it.
    """
    path = Path(path)
    _file_size(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
            width, height = im.size
            orientation = im.getexif().get(0x0112, 1)
            _check_pixels(path, width, height, max_pixels)
            if im.format == "JPEG" and max_side is not None and im.mode in ("RGB", "L", "CMYK", "YCbCr"):
                # Decode at 1/2, 1/4 or 1/8 scale when that still covers max_side: much faster.
                # never draft the shorter side below min_side (a wide panorama must stay usable)
                scale = max(max_side / max(width, height), min_side / max(1, min(width, height)))
                if scale < 1:
                    im.draft(im.mode, (max(1, int(width * scale)), max(1, int(height * scale))))
            im.load()
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated / corrupt data
        raise ImageError(f"{path}: corrupt or truncated image ({exc})") from exc
    # Original size as the user sees the photo (after EXIF rotation, before any downscale).
    orig = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    if min(im.size) < min_side:
        raise ImageError(f"{path}: too small ({orig[0]}x{orig[1]}, shorter side must be >= {min_side} px)")
    _check_geometry(path, orig, min_side)
    if max_side is not None and max(im.size) > max_side:
        scale = max_side / max(im.size)
        new = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
        im = im.resize(new, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.array(im, dtype=np.uint8), orig  # a writable copy (torch.from_numpy needs one)


def resize_max_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale an RGB array so that its longer side is at most ``max_side`` (never upscales)."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    im = Image.fromarray(image).resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR, reducing_gap=2.0
    )
    return np.array(im)
