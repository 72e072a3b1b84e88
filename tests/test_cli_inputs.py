"""Through the CLI: what the index and the folders already say.

An existing index's configuration is used when no --conf/--local-conf/--weights is given (only an explicit
option that differs is refused), and a folder argument to recognize/query means its image files.
"""
from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from cli import app
from index.reader import IndexReader
from tests.conftest import read_csv

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_build_index_takes_the_index_configuration(demo_data, tmp_path):
    train = read_csv(demo_data.train_csv)
    half = tmp_path / "half.csv"
    train.iloc[: len(train) // 2].to_csv(half, index=False)
    index = tmp_path / "idx"
    base = ("build-index", "--images", demo_data.images_dir, "--index", index, "--workers", "0", "--batch-size", "8")
    # a non-default configuration (and a cheap one): lite0 at 128 px, no stored local features
    result = invoke(*base, "--train", half, "--conf", "lite0-gem", "--image-size", "128", "--local-conf", "none")
    assert result.exit_code == 0, result.output
    stored = json.loads((index / "manifest.json").read_text())["config"]
    assert stored["global"]["image_size"] == 128 and stored["local"] is None

    # more rows, no configuration option: the index's own configuration extends it, and the log says so
    result = invoke(*base, "--train", demo_data.train_csv)
    assert result.exit_code == 0, result.output
    assert f"using {index}'s configuration: global lite0-gem, local none" in result.output
    assert f"{len(train) - len(train) // 2} added" in result.output
    db = IndexReader.open(index)
    assert db.size == len(train) and db.manifest["config"] == stored and db.dim == 1280

    # --rebuild without options: the same
    result = invoke(*base, "--train", demo_data.train_csv, "--rebuild")
    assert result.exit_code == 0, result.output
    assert "'s configuration: global lite0-gem" in result.output and "FAISS index (re)trained" in result.output
    # an explicit option that differs is refused (exit 2), naming the key; the index is unchanged
    result = invoke(*base, "--train", demo_data.train_csv, "--local-conf", "rootsift")
    assert result.exit_code == 2
    assert "different configuration" in result.output and "local: index=None" in result.output
    result = invoke(*base, "--train", demo_data.train_csv, "--conf", "lite2-gem")
    assert result.exit_code == 2 and "global.model" in result.output
    assert json.loads((index / "manifest.json").read_text())["config"] == stored


def _photo_folder(demo_data, tmp_path):
    """photos/ with two images, a note, and a nested folder with one more image."""
    images = sorted(demo_data.images_dir.glob("*.jpg"))[:3]
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    shutil.copy(images[0], photos / "b.jpg")
    shutil.copy(images[1], photos / "A.JPG")
    shutil.copy(images[2], photos / "nested" / "c.jpg")
    (photos / "notes.txt").write_text("not a photo")
    return photos


def test_recognize_and_query_a_folder(built_index, demo_data, tmp_path):
    photos = _photo_folder(demo_data, tmp_path)
    flat = [str(photos / "A.JPG"), str(photos / "b.jpg")]  # sorted, any-case extensions, the .txt skipped
    result = invoke("recognize", "--index", built_index, photos, "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(l) for l in result.stdout.strip().splitlines()]
    assert [l["image"] for l in lines] == flat
    assert all("error" not in l for l in lines)
    assert "2 images, 1 non-image files skipped; 1 subfolders not searched" in result.output

    # query: the same expansion (with --recursive, the nested folder too), mixed with a file argument; a path
    # that does not exist stays "file not found"
    single = sorted(demo_data.images_dir.glob("*.jpg"))[5]
    missing = tmp_path / "nope.jpg"
    result = invoke("query", "--index", built_index, photos, single, missing, "--recursive", "--k", 2, "--json")
    assert result.exit_code == 1  # the missing file failed, the others were answered
    lines = [json.loads(l) for l in result.stdout.strip().splitlines()]
    assert [l["image"] for l in lines] == flat + [str(photos / "nested" / "c.jpg"), str(single), str(missing)]
    assert all(len(l["neighbours"]) == 2 for l in lines[:4])
    assert "file not found" in lines[4]["error"]

    # a folder without images is one clear error
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    result = invoke("query", "--index", built_index, empty)
    assert result.exit_code == 2 and "no image files" in result.output


def test_pixel_budget_through_the_cli(built_index, demo_data, huge_png, monkeypatch):
    """An image over the pixel budget is reported and skipped; --max-pixels sets the budget for one command."""
    import os

    from retrieval.image_io import MAX_PIXELS_ENV

    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    good = sorted(demo_data.images_dir.glob("*.jpg"))[0]
    result = invoke("recognize", "--index", built_index, huge_png, good, "--json")
    assert result.exit_code == 1  # one image failed, the other was answered
    first, second = (json.loads(l) for l in result.stdout.strip().splitlines())
    assert first["image"] == str(huge_png) and "13000x13000 = 169 MP exceeds the pixel budget of 40 MP" in first["error"]
    assert second["image"] == str(good) and "error" not in second

    # a tiny budget refuses an ordinary photo; the next command has the default again
    result = invoke("query", "--index", built_index, good, "--max-pixels", 10_000, "--json")
    assert result.exit_code == 1 and "pixel budget of 0.01 MP" in json.loads(result.stdout)["error"]
    assert MAX_PIXELS_ENV not in os.environ
    result = invoke("query", "--index", built_index, good, "--json")
    assert result.exit_code == 0, result.output
