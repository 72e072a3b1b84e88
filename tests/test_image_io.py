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
