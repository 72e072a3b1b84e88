"""Tests for the synthetic package: seeded synthetic landmark photos in GLDv2 form."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from synthetic import dataset as synthetic_dataset
from synthetic import DemoDataset, generate_demo_dataset, make_distractor, make_landmark, render_view
from synthetic.facades import build_landmark
from synthetic.style import LANDMARK_KINDS

SMALL = dict(n_landmarks=8, refs_per_landmark=(1, 3), queries_per_landmark=1, n_distractor_refs=3,
             n_distractor_queries=4, n_unseen_landmarks=2, image_size=160)
TINY = dict(n_landmarks=4, refs_per_landmark=(1, 2), queries_per_landmark=1, n_distractor_refs=2,
            n_distractor_queries=2, n_unseen_landmarks=1, image_size=128)
HEX16 = re.compile(r"^[0-9a-f]{16}$")


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def labels(path: Path) -> dict[str, str]:
    return {r[0]: r[1] for r in read_rows(path)[1:]}


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory) -> DemoDataset:
    return generate_demo_dataset(tmp_path_factory.mktemp("synth") / "ds", seed=3, **SMALL)


# ---------------------------------------------------------------- dataset files


def test_csv_format_and_files(small_ds: DemoDataset) -> None:
    assert small_ds.images_dir == small_ds.root / "images"
    assert small_ds.train_csv == small_ds.root / "train.csv"
    assert small_ds.holdout_csv == small_ds.root / "holdout.csv"
    all_ids: list[str] = []
    for path in (small_ds.train_csv, small_ds.holdout_csv):
        text = path.read_text()
        assert text.startswith("id,landmark_id\n")
        rows = read_rows(path)
        assert rows[0] == ["id", "landmark_id"]
        for iid, lid in rows[1:]:
            assert HEX16.match(iid), iid
            assert lid == "" or re.fullmatch(r"\d+", lid), lid
            if lid == "":
                assert f"\n{iid},\n" in text  # empty field, not NaN/None
        all_ids += [r[0] for r in rows[1:]]
    assert len(all_ids) == len(set(all_ids)) == small_ds.n_train + small_ds.n_holdout
    on_disk = sorted(p.name for p in small_ds.images_dir.iterdir())
    assert on_disk == sorted(f"{i}.jpg" for i in all_ids)
    for iid in all_ids:
        with Image.open(small_ds.images_dir / f"{iid}.jpg") as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert max(im.size) == SMALL["image_size"]
            im.load()
    assert not list(small_ds.root.glob(".*tmp*")) and not list(small_ds.images_dir.glob(".*"))


def test_landmark_structure(small_ds: DemoDataset) -> None:
    train, holdout = labels(small_ds.train_csv), labels(small_ds.holdout_csv)
    assert small_ds.n_landmarks == SMALL["n_landmarks"]
    assert sum(v == "" for v in train.values()) == SMALL["n_distractor_refs"]
    assert sum(v == "" for v in holdout.values()) == SMALL["n_distractor_queries"]
    ref_counts = Counter(int(v) for v in train.values() if v)
    assert set(ref_counts) == set(range(SMALL["n_landmarks"]))
    lo, hi = SMALL["refs_per_landmark"]
    assert all(lo <= c <= hi for c in ref_counts.values())
    one_shot = {lid for lid, c in ref_counts.items() if c == 1}
    assert one_shot and one_shot == set(small_ds.one_shot_landmarks)
    assert len(one_shot) == round(SMALL["n_landmarks"] / 4)
    query_lids = Counter(int(v) for v in holdout.values() if v)
    unseen = set(small_ds.unseen_landmarks)
    assert unseen == {8, 9} and small_ds.n_unseen_landmarks == 2
    assert unseen <= set(query_lids) and not unseen & set(ref_counts)
    for lid in set(query_lids) - unseen:
        assert ref_counts[lid] >= 1
    assert all(query_lids[lid] == SMALL["queries_per_landmark"] for lid in range(SMALL["n_landmarks"]))
    # rows are shuffled, not grouped by landmark
    seq = [int(v) for v in train.values() if v]
    assert seq != sorted(seq)
    meta = json.loads((small_ds.root / "dataset.json").read_text())
    assert meta["params"]["seed"] == 3 and meta["params"]["refs_per_landmark"] == [1, 3]
    assert meta["counts"]["n_train"] == small_ds.n_train == len(train)
    assert meta["counts"]["n_holdout"] == small_ds.n_holdout == len(holdout)


def test_determinism(tmp_path: Path) -> None:
    a = generate_demo_dataset(tmp_path / "a", seed=11, **TINY)
    b = generate_demo_dataset(tmp_path / "b", seed=11, **TINY)
    c = generate_demo_dataset(tmp_path / "c", seed=12, **TINY)
    for name in ("train.csv", "holdout.csv"):
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes()
        assert (a.root / name).read_bytes() != (c.root / name).read_bytes()
    files = sorted(p.name for p in a.images_dir.iterdir())
    assert files == sorted(p.name for p in b.images_dir.iterdir())
    for name in files:
        assert (a.images_dir / name).read_bytes() == (b.images_dir / name).read_bytes()
    assert not set(files) & {p.name for p in c.images_dir.iterdir()}


# ---------------------------------------------------------------- pinned output
# The generator is pinned so that a refactor keeps every random draw in the same order.  Its pixels are
# drawn by OpenCV (anti-aliased lines, fonts, warps) and saved by Pillow's libjpeg, whose exact bytes
# change between releases (4.14, 5.0 and 5.1 all differ) without any change to the generator.  So the
# pin holds, exactly, what the generator computes itself (ids, CSVs, dataset.json, shapes, landmark
# kinds, homographies) and, within a stated tolerance, what OpenCV renders: a 16 x 16 thumbnail of every
# image (cell means, computed with NumPy).  Between OpenCV 4.14 and 5.1 at most 4 % of thumbnail values
# move by more than 2 grey levels (a changed glyph or anti-aliased edge); a changed draw or colour moves
# most of them.  ``python tests/test_synthetic.py --repin`` rewrites the pin after an intended change.

PINNED = dict(n_landmarks=3, refs_per_landmark=(1, 2), queries_per_landmark=1, n_distractor_refs=1,
              n_distractor_queries=1, n_unseen_landmarks=1, image_size=96, seed=7)
PIN_FILE = Path(__file__).parent / "data" / "synthetic_pinned.json"
THUMB = 16
#: The tolerance on rendered content: at most this share of thumbnail values may differ by more than
#: ``THUMB_LEVELS`` grey levels from the pin.
THUMB_SHARE, THUMB_LEVELS = 0.10, 2.0


def thumbnail(img: np.ndarray, n: int = THUMB) -> np.ndarray:
    """n x n x channels cell means of an image (NumPy only: no library's resampling in the measure)."""
    a = img.astype(np.float64).reshape(img.shape[0], img.shape[1], -1)
    ys = np.linspace(0, a.shape[0], n + 1).astype(int)
    xs = np.linspace(0, a.shape[1], n + 1).astype(int)
    return np.array([[a[ys[i]:ys[i + 1], xs[j]:xs[j + 1]].reshape(-1, a.shape[2]).mean(axis=0)
                      for j in range(n)] for i in range(n)])


def thumbnail_hex(img: np.ndarray) -> str:
    return np.rint(thumbnail(img)).astype(np.uint8).tobytes().hex()


def thumbnail_mismatch(img: np.ndarray, pinned_hex: str) -> float:
    """Share of thumbnail values more than THUMB_LEVELS grey levels away from the pinned thumbnail."""
    got = thumbnail(img)
    want = np.frombuffer(bytes.fromhex(pinned_hex), np.uint8).reshape(got.shape).astype(np.float64)
    return float((np.abs(got - want) > THUMB_LEVELS).mean())


def pinned_pieces() -> dict:
    """Every landmark kind (front and side), photographed with and without an occluder, and every
    distractor kind: shapes, kinds, homographies and thumbnails."""
    pieces: dict = {"kinds": [], "arrays": {}, "homographies": {}}

    def put(name: str, a: np.ndarray) -> None:
        pieces["arrays"][name] = {"shape": list(a.shape), "dtype": str(a.dtype), "thumb": thumbnail_hex(a)}

    for seed in range(6):
        lm = build_landmark(np.random.default_rng(seed), 128)
        pieces["kinds"].append(lm.kind)
        put(f"landmark{seed}.front", lm.front)
        put(f"landmark{seed}.side", lm.side)
        for occlusion in (False, True):
            photo, H = render_view(lm.front, np.random.default_rng(100 + seed), 96, 0.6, occlusion, side=lm.side)
            put(f"view{seed}.occlusion={occlusion}", photo)
            pieces["homographies"][f"view{seed}.occlusion={occlusion}"] = H.tolist()
    for seed in (0, 1, 4, 18):  # nature, close-up, indoor, table top
        put(f"distractor{seed}", make_distractor(np.random.default_rng(seed), 80))
    return pieces


def pinned_dataset(root: Path) -> dict:
    """The small pinned data set: exact digests of the files the generator writes as text, the image
    names, and each image's decoded thumbnail."""
    ds = generate_demo_dataset(root, **PINNED)
    text = {name: hashlib.sha256((ds.root / name).read_bytes()).hexdigest()
            for name in ("dataset.json", "train.csv", "holdout.csv")}
    images = {}
    for p in sorted(ds.images_dir.iterdir()):
        with Image.open(p) as im:
            images[p.name] = thumbnail_hex(np.asarray(im.convert("RGB")))
    return {"text_sha256": text, "images": images}


@pytest.fixture(scope="module")
def pin() -> dict:
    return json.loads(PIN_FILE.read_text())


def assert_matches_pin(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), what
    for name, g in got.items():
        w = want[name]
        assert g["shape"] == w["shape"] and g["dtype"] == w["dtype"], (what, name)
        share = thumbnail_mismatch_hex(g["thumb"], w["thumb"], g["shape"])
        assert share <= THUMB_SHARE, f"{what} {name}: {share:.0%} of its thumbnail moved"


def thumbnail_mismatch_hex(got_hex: str, want_hex: str, shape: list[int]) -> float:
    channels = shape[2] if len(shape) == 3 else 1
    got = np.frombuffer(bytes.fromhex(got_hex), np.uint8).astype(np.float64)
    want = np.frombuffer(bytes.fromhex(want_hex), np.uint8).astype(np.float64)
    assert got.size == want.size == THUMB * THUMB * channels
    return float((np.abs(got - want) > THUMB_LEVELS).mean())


def test_pinned_dataset(tmp_path: Path, pin: dict) -> None:
    got = pinned_dataset(tmp_path / "ds")
    assert got["text_sha256"] == pin["dataset"]["text_sha256"]
    assert sorted(got["images"]) == sorted(pin["dataset"]["images"])
    for name, thumb in got["images"].items():
        share = thumbnail_mismatch_hex(thumb, pin["dataset"]["images"][name], [THUMB, THUMB, 3])
        assert share <= THUMB_SHARE, f"{name}: {share:.0%} of its thumbnail moved"


def test_pinned_landmarks_views_and_distractors(pin: dict) -> None:
    got = pinned_pieces()
    want = pin["pieces"]
    assert got["kinds"] == want["kinds"] and sorted(got["kinds"]) == sorted(LANDMARK_KINDS)
    assert got["homographies"].keys() == want["homographies"].keys()
    for name, H in got["homographies"].items():
        np.testing.assert_allclose(H, want["homographies"][name], rtol=1e-9, atol=1e-9, err_msg=name)
    assert_matches_pin(got["arrays"], want["arrays"], "piece")


def test_pin_tolerance_catches_a_changed_generator(pin: dict) -> None:
    """The tolerance that lets OpenCV's anti-aliasing move is far tighter than a real change: a view
    drawn with the next random stream, or a facade 6 grey levels brighter, is refused."""
    lm = build_landmark(np.random.default_rng(0), 128)
    pinned = pin["pieces"]["arrays"]["view0.occlusion=False"]["thumb"]
    same, _ = render_view(lm.front, np.random.default_rng(100), 96, 0.6, False, side=lm.side)
    assert thumbnail_mismatch(same, pinned) <= THUMB_SHARE
    other_draw, _ = render_view(lm.front, np.random.default_rng(101), 96, 0.6, False, side=lm.side)
    assert thumbnail_mismatch(other_draw, pinned) > THUMB_SHARE
    brighter = np.clip(lm.front.astype(np.int16) + 6, 0, 255).astype(np.uint8)
    brighter_view, _ = render_view(brighter, np.random.default_rng(100), 96, 0.6, False, side=lm.side)
    assert thumbnail_mismatch(brighter_view, pinned) > THUMB_SHARE


def test_reuse_mismatch_and_overwrite(tmp_path: Path, monkeypatch, caplog) -> None:
    out = tmp_path / "ds"
    with caplog.at_level(logging.INFO, logger="synthetic.dataset"):
        first = generate_demo_dataset(out, seed=5, **TINY)
    assert any("generated synthetic dataset" in r.getMessage() for r in caplog.records)
    csv_bytes = first.train_csv.read_bytes()

    def boom(*args, **kwargs):
        raise AssertionError("dataset should have been reused, not regenerated")

    with monkeypatch.context() as m:
        m.setattr(synthetic_dataset, "build_landmark", boom)
        m.setattr(synthetic_dataset, "make_distractor", boom)
        again = generate_demo_dataset(out, seed=5, **TINY)
    assert again == first and again.train_csv.read_bytes() == csv_bytes

    with pytest.raises(ValueError, match=re.escape(str(out))):
        generate_demo_dataset(out, seed=6, **TINY)
    with pytest.raises(ValueError, match=re.escape(str(out))):
        generate_demo_dataset(out, seed=5, **{**TINY, "image_size": 96})

    other = generate_demo_dataset(out, seed=6, overwrite=True, **{**TINY, "n_landmarks": 3})
    assert other.seed == 6 and other.n_landmarks == 3
    ids = set(labels(other.train_csv)) | set(labels(other.holdout_csv))
    assert {p.name for p in other.images_dir.iterdir()} == {f"{i}.jpg" for i in ids}  # no stale files
    assert json.loads((out / "dataset.json").read_text())["params"]["seed"] == 6


def test_incomplete_dataset_is_regenerated(tmp_path: Path) -> None:
    ds = generate_demo_dataset(tmp_path / "ds", seed=2, **TINY)
    victim = sorted(ds.images_dir.iterdir())[0]
    content = victim.read_bytes()
    victim.unlink()
    generate_demo_dataset(tmp_path / "ds", seed=2, **TINY)
    assert victim.read_bytes() == content


def test_foreign_folder_and_bad_args(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "train.csv").write_text("id,landmark_id\nabc,1\n")
    with pytest.raises(ValueError, match=re.escape(str(foreign))):
        generate_demo_dataset(foreign, **TINY)
    assert (foreign / "train.csv").read_text() == "id,landmark_id\nabc,1\n"
    with pytest.raises(ValueError):
        generate_demo_dataset(tmp_path / "x", **{**TINY, "refs_per_landmark": (0, 2)})
    with pytest.raises(ValueError):
        generate_demo_dataset(tmp_path / "x", **{**TINY, "refs_per_landmark": (3, 2)})


# ---------------------------------------------------------------- low-level pieces


def test_make_landmark_and_distractor_basics() -> None:
    fac = make_landmark(np.random.default_rng(0), size=256)
    assert fac.dtype == np.uint8 and fac.ndim == 3 and fac.shape[2] == 3 and max(fac.shape[:2]) == 256
    assert np.array_equal(fac, make_landmark(np.random.default_rng(0), size=256))
    assert fac.shape != make_landmark(np.random.default_rng(1), size=256).shape or not np.array_equal(
        fac, make_landmark(np.random.default_rng(1), size=256))
    rgba = make_landmark(np.random.default_rng(0), size=256, with_alpha=True)
    assert rgba.shape == fac.shape[:2] + (4,)
    assert (rgba[..., 3] == 0).any() and (rgba[..., 3] == 255).any()  # silhouette against the sky
    d = make_distractor(np.random.default_rng(0), image_size=200)
    assert d.dtype == np.uint8 and d.ndim == 3 and d.shape[2] == 3 and max(d.shape[:2]) == 200
    assert np.array_equal(d, make_distractor(np.random.default_rng(0), image_size=200))
    assert d.std() > 10  # not a flat image


def _project(H: np.ndarray, x: float, y: float) -> np.ndarray:
    p = H @ np.array([x, y, 1.0])
    return p[:2] / p[2]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_render_view_homography_maps_marker(seed: int) -> None:
    facade = make_landmark(np.random.default_rng(seed))
    h, w = facade.shape[:2]
    plain, H = render_view(facade, np.random.default_rng(100 + seed), image_size=384, occlusion=False)
    assert plain.dtype == np.uint8 and plain.ndim == 3 and max(plain.shape[:2]) == 384
    assert H.shape == (3, 3) and H.dtype == np.float64
    ph, pw = plain.shape[:2]
    checked = 0
    for fx, fy in ((0.5, 0.5), (0.3, 0.35), (0.7, 0.7), (0.25, 0.8)):
        x, y = int(w * fx), int(h * fy)
        expected = _project(H, x, y)
        if not (8 <= expected[0] < pw - 8 and 8 <= expected[1] < ph - 8):
            continue
        marked = facade.copy()
        marked[y - 5:y + 6, x - 5:x + 6] = 255 - marked[y - 5:y + 6, x - 5:x + 6]  # contrasting marker
        marked[y - 5:y + 6, x - 5:x + 6, 0] = np.where(marked[y - 5:y + 6, x - 5:x + 6, 0] > 127, 255, 0)
        photo, H2 = render_view(marked, np.random.default_rng(100 + seed), image_size=384, occlusion=False)
        assert np.array_equal(H, H2)
        diff = np.abs(photo.astype(np.int32) - plain.astype(np.int32)).sum(axis=2).astype(np.float64)
        diff[diff < 0.3 * diff.max()] = 0
        assert diff.max() > 40
        ys, xs = np.nonzero(diff)
        found = np.array([np.average(xs, weights=diff[ys, xs]), np.average(ys, weights=diff[ys, xs])])
        assert np.linalg.norm(found - expected) < 2.5, (found, expected)
        checked += 1
    assert checked >= 1  # the facade centre is always in view


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_render_view_has_many_sift_keypoints(seed: int) -> None:
    facade = make_landmark(np.random.default_rng(seed))
    photo, _ = render_view(facade, np.random.default_rng(7 + seed), image_size=384, occlusion=False)
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    kps = cv2.SIFT_create().detect(gray, None)
    assert len(kps) > 150


def test_two_views_match_with_ground_truth_homography() -> None:
    """SIFT + RANSAC between two views recovers H2 @ inv(H1) (the synthetic ground truth)."""
    facade = make_landmark(np.random.default_rng(42))
    a, Ha = render_view(facade, np.random.default_rng(1), image_size=384, occlusion=False)
    b, Hb = render_view(facade, np.random.default_rng(2), image_size=384, occlusion=False)
    sift = cv2.SIFT_create()
    ka, da = sift.detectAndCompute(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), None)
    kb, db = sift.detectAndCompute(cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None)
    matches = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
    good = [m for m, n in (p for p in matches if len(p) == 2) if m.distance < 0.8 * n.distance]
    pa = np.float32([ka[m.queryIdx].pt for m in good])
    pb = np.float32([kb[m.trainIdx].pt for m in good])
    H_est, mask = cv2.findHomography(pa, pb, cv2.RANSAC, 4.0)
    assert H_est is not None and int(mask.sum()) >= 30
    H_true = Hb @ np.linalg.inv(Ha)
    inl = pa[mask.ravel() > 0].astype(np.float64)
    ones = np.ones((len(inl), 1))
    pt = (H_true @ np.hstack([inl, ones]).T).T
    pe = (H_est @ np.hstack([inl, ones]).T).T
    err = np.linalg.norm(pt[:, :2] / pt[:, 2:] - pe[:, :2] / pe[:, 2:], axis=1)
    assert np.median(err) < 3.0


if __name__ == "__main__":  # python tests/test_synthetic.py --repin: rewrite the pin after an intended change
    import sys
    import tempfile

    if sys.argv[1:] != ["--repin"]:
        sys.exit("usage: python tests/test_synthetic.py --repin")
    with tempfile.TemporaryDirectory() as tmp:
        data = {"pieces": pinned_pieces(), "dataset": pinned_dataset(Path(tmp) / "ds"),
                "made_with": {"opencv": cv2.__version__, "numpy": np.__version__,
                              "pillow": Image.__version__}}
    PIN_FILE.parent.mkdir(exist_ok=True)
    PIN_FILE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {PIN_FILE}")
