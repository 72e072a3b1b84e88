"""Shared fixtures: a small generated landmark collection and an index built over it (once per session)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

DEVSET = Path(__file__).resolve().parents[1].parent / "shared" / "devset"

# Small and fast, but real: lite0 ImageNet weights ship with the install, so recognition tests check
# real behaviour on CPU in seconds.
FAST_BUILD = ["--image-size", "224", "--workers", "0", "--batch-size", "8"]


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def retire_grace_zero():
    """Replaced index files are deleted at once in tests (LANDMARKS_RETIRE_GRACE_S=0), so tests that count an
    index's files see no retired ones; tests of retirement set their own grace period."""
    from index.writer import RETIRE_GRACE_ENV

    old = os.environ.get(RETIRE_GRACE_ENV)
    os.environ[RETIRE_GRACE_ENV] = "0"
    yield
    if old is None:
        os.environ.pop(RETIRE_GRACE_ENV, None)
    else:
        os.environ[RETIRE_GRACE_ENV] = old


@pytest.fixture(scope="session", autouse=True)
def runtime_cache(tmp_path_factory):
    """Models exported for ONNX Runtime (retrieval.fast_runtime) go to a folder of this session, not ~/.cache."""
    from retrieval.fast_runtime import CACHE_ENV

    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("landmarks-cache"))
    yield
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A generated GLDv2-style collection: 8 landmarks (some one-shot), distractors, holdout queries."""
    from synthetic import generate_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "data"
    return generate_demo_dataset(root, n_landmarks=8, refs_per_landmark=(1, 3), queries_per_landmark=1,
                                 n_distractor_refs=4, n_distractor_queries=6, image_size=320, seed=1)


@pytest.fixture(scope="session")
def built_index(demo_data, tmp_path_factory):
    """An index over demo_data's train.csv with stored RootSIFT features (read-only: copy before changing)."""
    from typer.testing import CliRunner

    from cli import app

    index = tmp_path_factory.mktemp("idx") / "index"
    result = CliRunner().invoke(app, [
        "build-index", "--train", str(demo_data.train_csv), "--images", str(demo_data.images_dir),
        "--index", str(index), "--local-conf", "rootsift", *FAST_BUILD,
    ])
    assert result.exit_code == 0, result.output
    return index


@pytest.fixture
def index_copy(built_index, tmp_path):
    """A private copy of the built index, for tests that change it."""
    dst = tmp_path / "index"
    shutil.copytree(built_index, dst)
    return dst


def read_csv(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def textured_image(size: int = 384, seed: int = 0) -> np.ndarray:
    """A planar scene with random rectangles, circles and lines plus noise, RGB uint8."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 128, np.uint8)
    for _ in range(150):
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        if kind == 0:
            p1 = rng.integers(0, size, 2)
            p2 = p1 + rng.integers(5, 60, 2)
            cv2.rectangle(img, tuple(int(v) for v in p1), tuple(int(v) for v in p2), color, -1)
        elif kind == 1:
            center = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.circle(img, center, int(rng.integers(3, 30)), color, -1)
        else:
            p1, p2 = (tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2))
            cv2.line(img, p1, p2, color, int(rng.integers(1, 4)))
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


@pytest.fixture
def seeded():
    """Seed torch and OpenCV's RNG (kornia's habit: every random generator seeded)."""
    torch.manual_seed(0)
    cv2.setRNGSeed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: small convolutions gain little from more, and OpenMP threads that
    spin-wait make them many times slower when the CPUs are shared with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def huge_grey_png(path, side: int = 13_000) -> int:
    """Write a valid side x side 8-bit greyscale PNG of zeros, streamed (a few hundred kB on disk, never the
    pixels in memory): what an upload that costs a gigabyte to decode looks like. Returns its size in bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    z = zlib.compressobj(6)
    rows = b"\x00" * ((side + 1) * 100)  # 100 rows: filter byte + pixels each
    idat = b"".join(z.compress(rows[: (side + 1) * min(100, side - y)]) for y in range(0, side, 100)) + z.flush()
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    Path(path).write_bytes(data)
    return len(data)


@pytest.fixture(scope="session")
def huge_png(tmp_path_factory):
    """A 13,000 x 13,000 greyscale PNG of about 160 kB (169 MP: over the default pixel budget)."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    huge_grey_png(path)
    return path
