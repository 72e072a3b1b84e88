"""Shared fixtures: a small generated landmark collection and an index built over it (once per session)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

DEVSET = Path(__file__).resolve().parents[1].parent / "shared" / "devset"

# Small and fast, but real: lite0 ImageNet weights ship with the install, so recognition tests check
# real behaviour on CPU in seconds.
FAST_BUILD = ["--image-size", "224", "--workers", "0", "--batch-size", "8"]


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A generated GLDv2-style collection: 8 landmarks (some one-shot), distractors, holdout queries."""
    from retrieval.synthetic import generate_demo_dataset

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
