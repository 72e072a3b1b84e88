"""Robust image decoding: every file either becomes an RGB uint8 array or raises ImageError.

Handles EXIF orientation, every PIL mode (CMYK, 16-bit, palette, alpha,
grayscale, bilevel), JPEG draft mode for fast downscaled decode, a pixel
budget that is checked from the header before any pixel is decoded, and
zero-byte, truncated or non-image files.

Decoding memory stays near one copy of the decoded file plus the reduced
image: JPEGs are decoded reduced (draft), other greyscale and RGB images are
reduced before they are converted or rotated, and 16-bit or float images are
stretched to 8 bits in strips (never a float64 copy of the whole image).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The pixel budget: larger images are refused from their header, before decoding. A GLDv2 photo is < 20 MP;
# a PNG has no reduced decoding, so each pixel of the budget costs 1-4 bytes of memory while it is decoded.
# `landmarks serve --max-pixels` sets it for uploads; the other commands' --max-pixels (or this variable,
# read at each decode, so that decoding worker processes see it too) for files.
DEFAULT_MAX_PIXELS = 40_000_000
MAX_PIXELS_ENV = "LANDMARKS_MAX_PIXELS"
DEFAULT_MIN_SIDE = 16
MAX_ASPECT = 25  # wider panoramas exist, but not 25:1 strips
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # 16/32-bit integer or float greyscale
_STRIP_PIXELS = 1 << 18  # pixels per strip when a wide-mode image is stretched to 8 bits


class ImageError(ValueError):
    """An image file that cannot be used; the message says why and names the file."""


class ImageTooLarge(ImageError):
    """An image with more pixels than the budget (refused from its header, nothing decoded)."""


def max_pixels_budget() -> int:
    """The pixel budget: ``$LANDMARKS_MAX_PIXELS`` when set, else :data:`DEFAULT_MAX_PIXELS`."""
    value = os.environ.get(MAX_PIXELS_ENV)
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        budget = int(float(value))
    except ValueError:
        budget = 0
    if budget < 1:
        raise ValueError(f"{MAX_PIXELS_ENV} must be a positive number of pixels, got {value!r}")
    return budget


def _stretch_to_l(im: Image.Image) -> Image.Image:
    """A 16/32-bit or float greyscale image as 8-bit L, its actual range stretched to 0..255.

    Works in strips of rows so that no full-size float64 (or int64) copy is made: the only full-size
    array besides the decoded image is the 8-bit result.
    """
    w, h = im.size
    rows = max(1, _STRIP_PIXELS // max(1, w))
    strips = [(y, min(h, y + rows)) for y in range(0, h, rows)]
    strip = lambda y0, y1: np.asarray(im.crop((0, y0, w, y1)))  # noqa: E731
    lo, hi = np.inf, -np.inf
    for y0, y1 in strips:
        a = strip(y0, y1)
        if a.dtype.kind == "f" and np.isnan(a).all():
            continue
        lo, hi = min(lo, float(np.nanmin(a))), max(hi, float(np.nanmax(a)))
    out = np.zeros((h, w), np.uint8)
    if not hi > lo:
        return Image.fromarray(out, mode="L")
    for y0, y1 in strips:
        a = strip(y0, y1)
        if a.dtype.kind in "iu":  # exact integer arithmetic: floor((v - lo) * 255 / (hi - lo))
            out[y0:y1] = (a.astype(np.int64) - int(lo)) * 255 // (int(hi) - int(lo))
        else:
            out[y0:y1] = np.nan_to_num(np.clip((a.astype(np.float64) - lo) * (255.0 / (hi - lo)), 0, 255))
    return Image.fromarray(out, mode="L")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparent pixels are composited on white."""
    if im.mode == "RGB":
        return im
    if im.mode in _WIDE_MODES:
        return _stretch_to_l(im).convert("RGB")
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


def _check_pixels(path: Path, width: int, height: int, budget: int) -> None:
    """Refuse an image over the pixel budget from its header size (call it before anything that decodes:
    for a PNG even ``getexif()`` does)."""
    if width * height > budget:
        raise ImageTooLarge(
            f"{path}: {width}x{height} = {width * height / 1e6:.0f} MP exceeds the pixel budget of "
            f"{budget / 1e6:g} MP (decompression-bomb guard; --max-pixels raises it)"
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
    path: str | Path, min_side: int = DEFAULT_MIN_SIDE, max_pixels: int | None = None,
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
                _check_pixels(path, width, height, max_pixels_budget() if max_pixels is None else int(max_pixels))
                orientation = im.getexif().get(0x0112, 1)
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
    max_pixels: int | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image file to an RGB uint8 array, EXIF orientation applied.

    Args:
        path: image file.
        max_side: if given, downscale so that the longer side is at most this
            (JPEG draft mode decodes at a reduced size directly).
        min_side: images whose shorter side is below this are refused.
        max_pixels: the pixel budget, checked from the header (None: :func:`max_pixels_budget`).
    Returns:
        (array (H, W, 3) uint8, original (width, height) after EXIF rotation).
    Raises:
        ImageError: the file is missing, empty, not an image, truncated, too
            small or too large (:class:`ImageTooLarge`: over the pixel budget).
            FileNotFoundError is also an ImageError here so that a long job can
            report and skip it.
    """
    path = Path(path)
    budget = max_pixels_budget() if max_pixels is None else int(max_pixels)
    _file_size(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
            width, height = im.size
            _check_pixels(path, width, height, budget)  # before getexif(): for a PNG that decodes the whole image
            orientation = im.getexif().get(0x0112, 1)
            if im.format == "JPEG" and max_side is not None and im.mode in ("RGB", "L", "CMYK", "YCbCr"):
                # Decode at 1/2, 1/4 or 1/8 scale when that still covers max_side: much faster.
                # never draft the shorter side below min_side (a wide panorama must stay usable)
                scale = max(max_side / max(width, height), min_side / max(1, min(width, height)))
                if scale < 1:
                    im.draft(im.mode, (max(1, int(width * scale)), max(1, int(height * scale))))
            im.load()
            if im.mode in _WIDE_MODES:
                im = _stretch_to_l(im)  # 8 bits first: PIL cannot reduce 16-bit images
            elif im.mode not in ("L", "RGB"):
                im = _to_rgb(im)  # alpha is composited (and CMYK converted) at full size, as before
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own limit (~179 MP), checked when the file is opened
        raise ImageTooLarge(f"{path}: {str(exc).rstrip('.')}; the pixel budget is {budget / 1e6:g} MP") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated / corrupt data
        raise ImageError(f"{path}: corrupt or truncated image ({exc})") from exc
    # Original size as the user sees the photo (after EXIF rotation, before any downscale).
    rotated = orientation in (5, 6, 7, 8)
    orig = (height, width) if rotated else (width, height)
    if min(im.size) < min_side:
        raise ImageError(f"{path}: too small ({orig[0]}x{orig[1]}, shorter side must be >= {min_side} px)")
    _check_geometry(path, orig, min_side)
    if rotated:
        # A quarter turn before resizing, as the pixels were always computed: PIL resamples one axis, then
        # the other, so resizing first would change a pixel here and there by one level (and descriptors
        # stored in an index with them). JPEG photos, the usual rotated ones, are drafted small already.
        im = ImageOps.exif_transpose(im)
    if max_side is not None and max(im.size) > max_side:
        # Downscale before converting to RGB (and before a flip), so that those copies are of the small image
        # (PIL's resize reduces by an integer factor first, then resamples the rest).
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))),
                       Image.Resampling.BILINEAR, reducing_gap=2.0)
    if orientation in (2, 3, 4):
        im = ImageOps.exif_transpose(im)
    im = _to_rgb(im)
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
