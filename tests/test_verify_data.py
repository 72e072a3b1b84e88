"""verify-data: ids with no image, images with no row, unreadable images, duplicates; report CSV and exit codes."""
from __future__ import annotations

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from cli import app
from tests.conftest import read_csv


def _jpg(path, seed=0, w=64, h=48):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def test_verify_data_reports_every_kind(tmp_path):
    images = tmp_path / "images"
    _jpg(images / "aaa111.jpg")  # flat layout
    _jpg(images / "b" / "b" / "b" / "bbb222.jpg", 1)  # GLDv2 nested layout
    _jpg(images / "c" / "c" / "c" / "ccc333.jpg", 2)
    data = (images / "c" / "c" / "c" / "ccc333.jpg").read_bytes()
    (images / "c" / "c" / "c" / "ccc333.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (images / "ddd444.jpg").write_bytes(b"not a jpeg at all" * 20)
    _jpg(images / "x" / "y" / "z" / "eee555.jpg", 3)  # misplaced: build-index would not find it
    _jpg(images / "fff666.jpg", 4)  # no row
    csv = tmp_path / "train.csv"
    csv.write_text("id,url,landmark_id\naaa111,u,1\nbbb222,u,2\nccc333,u,2\nddd444,u,\neee555,u,3\n"
                   "ggg777,u,3\naaa111,u,1\nbad/id,u,1\n")
    out = tmp_path / "report" / "verify.csv"
    result = CliRunner().invoke(app, ["verify-data", "--train", str(csv), "--images", str(images), "--out", str(out)])
    assert result.exit_code == 1, result.output
    summary = result.output.strip().splitlines()[-1]
    assert "6 ids, 4 images checked" in summary and "2 missing, 2 unreadable, 1 duplicate ids" in summary
    assert "1 invalid rows, 2 images with no row" in summary and str(out) in summary
    rep = read_csv(out)
    assert list(rep.columns) == ["kind", "id", "line", "path", "reason"]
    got = {(k, i) for k, i in zip(rep["kind"], rep["id"])}
    assert got == {("missing_image", "eee555"), ("missing_image", "ggg777"), ("unreadable_image", "ccc333"),
                   ("unreadable_image", "ddd444"), ("duplicate_id", "aaa111"), ("invalid_row", "bad/id"),
                   ("unlisted_image", "fff666"), ("unlisted_image", "eee555")}
    row = lambda kind, i: rep[(rep["kind"] == kind) & (rep["id"] == i)].iloc[0]  # noqa: E731
    assert "truncated" in row("unreadable_image", "ccc333")["reason"]
    assert "not a readable image" in row("unreadable_image", "ddd444")["reason"]
    assert row("duplicate_id", "aaa111")["line"] == "8" and "line 2" in row("duplicate_id", "aaa111")["reason"]
    assert "x/y/z/eee555.jpg" in row("missing_image", "eee555")["reason"]  # where the misplaced file is

    # Fixed: clean run, exit 0, header-only report; an unlisted image alone is no error.
    csv.write_text("id,landmark_id\naaa111,1\nbbb222,2\n")
    result = CliRunner().invoke(app, ["verify-data", "--train", str(csv), "--images", str(images), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "OK: 2 ids, 2 images checked; 0 missing, 0 unreadable" in result.output
    assert set(read_csv(out)["kind"]) == {"unlisted_image"}


def test_verify_data_bad_arguments(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "noid.csv").write_text("name,landmark_id\na,1\n")
    for csv, images, match in [(tmp_path / "nope.csv", tmp_path / "images", "nope.csv: file not found"),
                               (tmp_path / "noid.csv", tmp_path / "images", "missing required column 'id'"),
                               (tmp_path / "noid.csv", tmp_path / "nothing", "image folder not found")]:
        result = CliRunner().invoke(app, ["verify-data", "--train", str(csv), "--images", str(images), "--out", str(tmp_path / "r.csv")])
        assert result.exit_code == 2 and match in result.output, result.output
