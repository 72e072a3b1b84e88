"""Image decoding: every odd file becomes an RGB array or a clear ImageError."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from retrieval.image_io import ImageError, load_image, resize_max_side


def _photo(w: int = 120, h: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    img[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    img[..., 2] = rng.integers(0, 255, (h, w), dtype=np.uint8)
    return img


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK", "P", "RGBA", "LA", "1", "I;16", "I", "F"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    im = Image.fromarray(_photo())
    if mode == "I;16":
        im = Image.fromarray((np.asarray(im.convert("L"), np.uint16) * 257))
    elif mode in ("I", "F"):
        im = im.convert("L").convert(mode)
    else:
        im = im.convert(mode)
    ext = "tif" if mode in ("I;16", "I", "F", "CMYK") else "png"
    path = tmp_path / f"x.{ext}"
    im.save(path)
    arr, orig = load_image(path)
    assert arr.dtype == np.uint8 and arr.shape == (80, 120, 3)
    assert orig == (120, 80)
    assert arr.flags.writeable


def test_alpha_composited_on_white(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    arr, _ = load_image(path)
    assert (arr == 255).all()


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "c.jpg"
    Image.fromarray(_photo()).convert("CMYK").save(path, quality=95)
    arr, _ = load_image(path)
    ref = np.asarray(Image.fromarray(_photo()).convert("CMYK").convert("RGB"), np.int16)
    assert np.abs(arr.astype(np.int16) - ref).mean() < 12


def test_exif_rotation_applied(tmp_path):
    img = _photo(120, 80)
    img[:10, :10] = [255, 0, 0]  # red marker at the stored top-left
    path = tmp_path / "r.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(img).save(path, exif=exif, quality=98)
    arr, orig = load_image(path)
    assert arr.shape == (120, 80, 3)
    assert orig == (80, 120)
    # after a 90 degree clockwise rotation the stored top-left ends at the top-right
    assert arr[:8, -8:, 0].mean() > 200 and arr[:8, -8:, 1].mean() < 60


def test_draft_and_max_side(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(_photo(2000, 1000)).save(path, quality=90)
    arr, orig = load_image(path, max_side=300)
    assert max(arr.shape[:2]) == 300 and orig == (2000, 1000)
    assert arr.shape[1] / arr.shape[0] == pytest.approx(2.0, rel=0.02)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "empty file"),
        (b"this is not an image at all" * 10, "not a readable image"),
    ],
)
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=match) as err:
        load_image(path)
    assert str(path) in str(err.value)


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "t.jpg"
    Image.fromarray(_photo(400, 300)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="truncated|corrupt") as err:
        load_image(path)
    assert "t.jpg" in str(err.value)


def test_missing_tiny_and_bomb(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    tiny = tmp_path / "tiny.png"
    Image.fromarray(_photo(8, 8)).save(tiny)
    with pytest.raises(ImageError, match="too small"):
        load_image(tiny)
    big = tmp_path / "bomb.png"
    Image.new("L", (3000, 3000)).save(big)
    with pytest.raises(ImageError, match="decompression-bomb"):
        load_image(big, max_pixels=1_000_000)


def test_resize_max_side_never_upscales():
    img = _photo(100, 50)
    assert resize_max_side(img, 200) is img
    out = resize_max_side(img, 50)
    assert out.shape == (25, 50, 3)


def test_long_strip_drafts_no_smaller_than_min_side(tmp_path):
    path = tmp_path / "strip.jpg"
    Image.fromarray(_photo(400, 40)).save(path, quality=90)
    arr, orig = load_image(path, max_side=64)
    assert orig == (400, 40) and arr.shape[1] == 64  # drafted and resized, not refused as "too small"
    wide = tmp_path / "wide.jpg"
    Image.fromarray(_photo(2000, 40)).save(wide, quality=90)
    with pytest.raises(ImageError, match="aspect ratio 50.0:1"):
        load_image(wide, max_side=64)


def test_pixel_budget_refuses_from_the_header(huge_png, monkeypatch):
    import resource
    import time

    from retrieval.image_io import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, ImageTooLarge

    assert huge_png.stat().st_size < 400_000 and DEFAULT_MAX_PIXELS == 40_000_000
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge, match=r"13000x13000 = 169 MP exceeds the pixel budget of 40 MP") as err:
        load_image(huge_png, max_side=384)
    assert str(huge_png) in str(err.value) and isinstance(err.value, ImageError)
    # nothing was decoded: no 169 MB of pixels, no seconds of CPU
    assert time.perf_counter() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 50_000  # kB
    # the budget is the caller's, else the environment's (what --max-pixels sets), else the default
    with pytest.raises(ImageTooLarge, match="budget of 0.002 MP"):
        load_image(huge_png, max_pixels=2000)
    small = huge_png.with_name("small.png")
    Image.fromarray(_photo(100, 50)).save(small)
    monkeypatch.setenv(MAX_PIXELS_ENV, "4999")
    with pytest.raises(ImageTooLarge, match="100x50"):
        load_image(small)
    assert load_image(small, max_pixels=5000)[0].shape == (50, 100, 3)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_PIXELS_ENV):
        load_image(small)


def test_16bit_png_decodes_exactly_without_a_float64_copy(tmp_path):
    import tracemalloc

    h, w = 2000, 3000
    lo, hi = 1000, 61000
    # a 16-bit ramp over [lo, hi] with a random part, the range stretched to 0..255 by exact integer arithmetic
    rng = np.random.default_rng(0)
    a = (lo + (np.arange(w)[None, :] * (hi - lo) // (w - 1)) + rng.integers(-500, 500, (h, w))).clip(lo, hi).astype(np.uint16)
    a[0, 0], a[-1, -1] = lo, hi
    path = tmp_path / "g16.png"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode == "I;16"
    expected = ((a.astype(np.int64) - lo) * 255 // (hi - lo)).astype(np.uint8)
    del a
    arr, orig = load_image(path)
    assert orig == (w, h) and arr.shape == (h, w, 3)
    np.testing.assert_array_equal(arr[..., 0], expected)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert arr[0, 0, 0] == 0 and arr[-1, -1, 0] == 255
    # reduced (what the global model gets): the same values, downscaled; numpy's memory (tracemalloc sees it)
    # is the 8-bit image and a strip of rows: a float64 copy alone would be 8 bytes a pixel
    tracemalloc.start()
    try:
        small, _ = load_image(path, max_side=300)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * h * w, peak / (h * w)
    assert small.shape == (200, 300, 3)
    ref = np.asarray(Image.fromarray(expected).resize((300, 200), Image.Resampling.BILINEAR, reducing_gap=2.0))
    np.testing.assert_array_equal(small[..., 0], ref)


def test_probe_image_finds_what_load_image_refuses_without_decoding(tmp_path):
    from retrieval.image_io import probe_image

    good = tmp_path / "good.jpg"
    Image.fromarray(_photo(400, 300)).save(good, quality=90)
    assert probe_image(good) == (400, 300)
    data = good.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3])  # header intact: only the missing end-of-image marker tells
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(data + b"\x00" * 100)  # trailing padding after the marker is fine
    assert probe_image(padded) == (400, 300)
    png = tmp_path / "cut.png"
    Image.fromarray(_photo(400, 300)).save(png)
    png.write_bytes(png.read_bytes()[:-200])
    strip = tmp_path / "strip.png"
    Image.fromarray(_photo(600, 20)).save(strip)
    for path, match in [(cut, "truncated"), (png, "truncated|corrupt"), (tmp_path / "nope.jpg", "not found"),
                        (strip, "aspect ratio")]:
        with pytest.raises(ImageError, match=match):
            probe_image(path)
        with pytest.raises(ImageError):
            load_image(path)  # the probe never refuses what loading accepts, nor the reverse, on these
