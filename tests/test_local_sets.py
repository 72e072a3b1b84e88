"""Several local feature sets in one index: build through the CLI, add a set to an existing index, resume after a
crash, refuse a conf mismatch, survive compact (secondary sets: index/local_sets.py, retrieval.extract.add_local_sets)."""
from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli import app
from index import ConfigMismatchError, ShardBatch
from index.reader import IndexReader
from index.writer import IndexWriter
from retrieval import extract
from retrieval.local_features import (
    XFeatExtractor,
    local_confs,
    make_local_extractor,
    split_local_conf,
)
from tests.conftest import FAST_BUILD, read_csv

runner = CliRunner()
SMALL_XFEAT = {**local_confs["xfeat"], "resize_max": 128, "max_keypoints": 128}  # fast on a shared CPU


SMALL_XFEAT_CONF = {"extractor": "xfeat", **XFeatExtractor.default_conf, **SMALL_XFEAT}  # its resolved conf


def small_xfeat():
    return make_local_extractor(SMALL_XFEAT, device="cpu")


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def set_features(db, name):
    return [db.local_features(r, name) for r in range(db.size)]


def test_split_local_conf_names_and_errors():
    assert split_local_conf("rootsift+xfeat") == ("rootsift", ["xfeat"])
    assert split_local_conf("rootsift+aliked") == ("rootsift", ["aliked"])
    assert split_local_conf("aliked+rootsift+xfeat") == ("aliked", ["rootsift", "xfeat"])
    assert split_local_conf("rootsift") == ("rootsift", []) and split_local_conf("none") == (None, [])
    with pytest.raises(ValueError, match="unknown local configuration 'sift\\+xfeat'; choose one of: none, .*rootsift\\+xfeat"):
        split_local_conf("sift+xfeat")
    with pytest.raises(ValueError, match="delf needs a PCA"):
        split_local_conf("rootsift+delf")
    with pytest.raises(ValueError, match="twice"):
        split_local_conf("xfeat+xfeat")


def test_confs_lists_the_combined_names():
    result = runner.invoke(app, ["confs"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert "XFeat" in lines["rootsift+xfeat"] and "ALIKED" in lines["rootsift+aliked"]


def test_build_index_with_two_sets_through_the_cli(demo_data, tmp_path):
    """A fresh rootsift+xfeat build stores both sets per row (right dims and detection sizes); reopened with the
    primary alone it is accepted and new rows get xfeat too; another primary is refused."""
    train = read_csv(demo_data.train_csv)
    csv = tmp_path / "train.csv"
    train.head(3).to_csv(csv, index=False)
    index = tmp_path / "index"
    args = ["build-index", "--train", str(csv), "--images", str(demo_data.images_dir), "--index", str(index),
            *FAST_BUILD]
    result = runner.invoke(app, [*args, "--local-conf", "rootsift+xfeat"])
    assert result.exit_code == 0, result.output
    assert "local set xfeat: 3 images extracted (0 unreadable)" in result.output
    db = IndexReader.open(index)
    assert db.size == 3 and db.manifest["config"]["local"]["extractor"] == "rootsift"  # a normal rootsift index
    assert db.local_sets() == {"xfeat": make_local_extractor("xfeat", device="cpu").conf}
    assert db.missing_local_rows("xfeat").tolist() == []
    for row in range(db.size):
        w, h = Image.open(db.column("path")[row]).size  # 320 px photos: detected at their own size
        kp, desc = db.local_features(row)
        xkp, xdesc = db.local_features(row, "xfeat")
        assert desc.shape[1] == 128 and xdesc.shape[1] == 64 and len(xkp) == len(xdesc) > 0
        assert db.local_image_size(row) == db.local_image_size(row, "xfeat") == (w, h)
        assert xkp[:, 0].max() < w and xkp[:, 1].max() < h and xkp.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(xdesc, axis=1), 1.0, atol=1e-2)

    train.head(4).to_csv(csv, index=False)  # one more image, primary conf alone
    result = runner.invoke(app, [*args, "--local-conf", "rootsift"])  # the log goes to the captured stderr
    assert result.exit_code == 0, result.output
    assert "also holds local set(s) xfeat" in result.output and "local set xfeat: 1 images extracted" in result.output
    db = IndexReader.open(index)
    assert db.size == 4 and db.missing_local_rows("xfeat").tolist() == []
    assert db.local_features(3, "xfeat")[1].shape[1] == 64

    result = runner.invoke(app, [*args, "--local-conf", "xfeat+rootsift"])
    assert result.exit_code == 2 and "different configuration" in result.output


def test_add_set_to_existing_index_leaves_the_rest_untouched(index_copy, caplog):
    manifest = json.loads((index_copy / "manifest.json").read_text())
    files = {e["file"]: digest(index_copy / e["file"]) for e in manifest["segments"]}
    files[manifest["faiss"]["file"]] = digest(index_copy / manifest["faiss"]["file"])
    db = IndexReader.open(index_copy)
    xb, primary = db.global_descriptors(), set_features(db, None)
    with caplog.at_level(logging.INFO, logger="retrieval.extract"):
        stats = extract.add_local_sets(index_copy, ["xfeat"], part_size=8, progress=False,
                                       extractors={"xfeat": small_xfeat()})
    assert f"adding local set xfeat to {index_copy}" in caplog.text
    s = stats["xfeat"]
    assert s["rows_extracted"] == db.size and s["failed"] == 0 and s["parts"] == -(-db.size // 8)
    assert s["bytes_per_image"] > 0 and s["seconds_per_image"] > 0
    after = json.loads((index_copy / "manifest.json").read_text())
    assert after["config"] == manifest["config"] and after["segments"] == manifest["segments"]
    assert {f: digest(index_copy / f) for f in files} == files  # segments and faiss file not rewritten
    db = IndexReader.open(index_copy)
    np.testing.assert_array_equal(db.global_descriptors(), xb)
    for (kp, d), (kp0, d0) in zip(set_features(db, None), primary):
        np.testing.assert_array_equal(kp, kp0)
        np.testing.assert_array_equal(d, d0)
    feats = set_features(db, "xfeat")
    assert all(f is not None and f[1].shape[1] == 64 and len(f[0]) <= 128 for f in feats)
    # detection size: the photo shrunk to resize_max=128 (as the extractor detects), keypoints inside it
    w, h = Image.open(db.column("path")[0]).size
    dw, dh = db.local_image_size(0, "xfeat")
    assert max(dw, dh) == 128 and abs(dw / dh - w / h) < 0.02
    assert extract.add_local_sets(index_copy, ["xfeat"], progress=False,
                                  extractors={"xfeat": small_xfeat()})["xfeat"]["rows_extracted"] == 0
    # the plain primary configuration still opens it as before; the set's extractor comes from its stored conf
    fx = extract.FeatureExtractor.for_index(db, device="cpu", need_local=True)
    assert fx.local_conf["extractor"] == "rootsift"
    lex = extract.local_set_extractors(db, device="cpu")["xfeat"]
    assert lex.conf == SMALL_XFEAT_CONF
    query = lex.extract(fx.decode(db.column("path")[0]).local_image)  # decoded as the stored rows were
    assert query.image_size == (dw, dh) and len(query) == len(db.local_features(0, "xfeat")[0])


def test_resume_after_a_crash_extracts_each_row_once(index_copy, monkeypatch):
    calls: list[int] = []
    original = XFeatExtractor.extract

    def counting(self, image):
        calls.append(1)
        if crash[0] and len(calls) == 6:
            raise RuntimeError("simulated crash")
        return original(self, image)

    crash = [True]
    monkeypatch.setattr(XFeatExtractor, "extract", counting)
    # one unreadable image: reported, stored without features, not retried by the rerun
    bad = str(IndexReader.open(index_copy).column("path")[2])
    real_load = extract.load_image

    def load(path, *args, **kwargs):
        if str(path) == bad:
            raise extract.ImageError(f"{path}: simulated unreadable file")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(extract, "load_image", load)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract.add_local_sets(index_copy, ["xfeat"], part_size=4, progress=False,
                               extractors={"xfeat": small_xfeat()})
    db = IndexReader.open(index_copy)
    n = db.size
    assert db.missing_local_rows("xfeat").tolist() == list(range(4, n))  # the first part survived
    assert db.local_image_size(2, "xfeat") is None and len(db.local_features(2, "xfeat")[0]) == 0
    assert db.local_features(4, "xfeat") is None  # not extracted yet
    assert db.manifest["local_sets"]["xfeat"]["parts"][0]["failed"] == 1
    crash[0] = False
    calls.clear()
    stats = extract.add_local_sets(index_copy, ["xfeat"], part_size=4, progress=False,
                                   extractors={"xfeat": small_xfeat()})["xfeat"]
    assert stats["rows_extracted"] == n - 4 and len(calls) == n - 4  # no row extracted twice
    db = IndexReader.open(index_copy)
    assert db.missing_local_rows("xfeat").tolist() == []
    parts = db.manifest["local_sets"]["xfeat"]["parts"]
    assert [p["start"] for p in parts] == list(range(0, n, 4)) and sum(p["rows"] for p in parts) == n
    assert all(db.local_features(r, "xfeat")[1].shape[1] == 64 for r in range(n))


def publish_fake_part(db, conf, start=0, rows=1, dim=64):
    """A part of ``rows`` rows with 3 made-up features each (no extraction: cheap)."""
    rng = np.random.default_rng(start)
    return db.write_local_part("xfeat", conf, start, [rng.uniform(0, 50, (3, 4)) for _ in range(rows)],
                               [rng.normal(size=(3, dim)) for _ in range(rows)], np.full((rows, 2), 64))


def test_conf_mismatch_for_an_existing_set_is_refused(index_copy, monkeypatch):
    assert small_xfeat().conf == SMALL_XFEAT_CONF
    db = IndexWriter.open_for_write(index_copy)
    publish_fake_part(db, SMALL_XFEAT_CONF, rows=2)
    other = make_local_extractor({**SMALL_XFEAT, "max_keypoints": 64}, device="cpu")
    monkeypatch.setattr(XFeatExtractor, "extract", lambda *a: pytest.fail("extracted before the conf check"))
    with pytest.raises(ConfigMismatchError, match="local set 'xfeat'.*max_keypoints.*128.*max_keypoints.*64"):
        extract.add_local_sets(index_copy, ["xfeat"], progress=False, extractors={"xfeat": other})
    with pytest.raises(ConfigMismatchError, match="differing keys: max_keypoints"):
        publish_fake_part(db, other.conf, start=2)
    with pytest.raises(ConfigMismatchError, match="is 64-d, got 32-d"):
        publish_fake_part(db, SMALL_XFEAT_CONF, start=2, dim=32)
    with pytest.raises(ValueError, match="already"):
        publish_fake_part(db, SMALL_XFEAT_CONF, start=1)
    with pytest.raises(ValueError, match="no local set 'aliked'"):
        db.local_features(0, "aliked")
    assert IndexReader.open(index_copy).missing_local_rows("xfeat").tolist() == list(range(2, db.size))


def test_compact_keeps_secondary_features_by_row(index_copy):
    """New rows in a second segment, xfeat parts over both; compact merges segments and parts, rows unchanged."""
    db = IndexWriter.open_for_write(index_copy)
    n0 = db.size
    rng = np.random.default_rng(0)
    kp = [np.c_[rng.uniform(0, 100, (5, 2)), np.ones((5, 2))].astype(np.float32) for _ in range(3)]
    db.write_shard(ShardBatch([f"new{i}" for i in range(3)], ["x"] * 3, [str(db.column("path")[i]) for i in range(3)],
                              rng.normal(size=(3, db.dim)), kp, [rng.normal(size=(5, 128)) for _ in range(3)],
                              np.full((3, 2), 100)))
    db.commit()
    assert len(db.manifest["segments"]) == 2
    extract.add_local_sets(index_copy, ["xfeat"], part_size=5, progress=False, extractors={"xfeat": small_xfeat()})
    reader = IndexReader.open(index_copy)  # a reader that opened before the compaction
    before = set_features(reader, "xfeat")
    sizes = [reader.local_image_size(r, "xfeat") for r in range(reader.size)]
    reader.close()
    reader = IndexReader.open(index_copy)
    old_parts = [p["file"] for p in reader.manifest["local_sets"]["xfeat"]["parts"]]
    assert len(old_parts) > 1
    assert set(old_parts) <= reader._held_files()  # its lease names the parts (index/lease.py) ...
    reader._lease.release()  # ... but here it is a reader that could not write one (a read-only filesystem)
    stats = IndexWriter.open_for_write(index_copy).compact()
    assert stats["segments_after"] == 1 and stats["local_set_parts_before"] == len(old_parts)
    assert stats["local_set_parts_after"] == 1
    assert not any((index_copy / f).exists() for f in old_parts)
    # the old reader finds its part files gone, takes the new manifest's parts, and reads the same rows
    for r in range(n0 + 3):
        kp_r, d_r = reader.local_features(r, "xfeat")
        np.testing.assert_array_equal(kp_r, before[r][0])
        np.testing.assert_array_equal(d_r, before[r][1])
    db = IndexReader.open(index_copy)
    assert [db.local_image_size(r, "xfeat") for r in range(db.size)] == sizes
    assert db.missing_local_rows("xfeat").tolist() == []


def test_unpublished_part_files_are_garbage(index_copy):
    publish_fake_part(IndexWriter.open_for_write(index_copy), SMALL_XFEAT_CONF)
    stray = index_copy / "local_sets" / "xfeat" / "part-000000001-deadbeef.h5"
    stray.write_bytes(b"left by a killed writer")
    IndexWriter.open_for_write(index_copy)
    assert not stray.exists()
    assert IndexReader.open(index_copy).local_features(0, "xfeat")[1].shape == (3, 64)


def test_a_set_extracted_with_other_settings_keeps_them_and_says_so(index_copy, demo_data, caplog):
    """An index whose xfeat set predates the shipped settings (here 128 keypoints at 128 px): queries and a rerun of
    build-index with the shipped name extract with the stored settings (both sides of a pair must match), and
    both say which settings differ; the shipped conf itself is not flagged."""
    from retrieval.recognize import Recognizer
    from retrieval.registry import outdated_set

    extract.add_local_sets(index_copy, ["xfeat"], progress=False, extractors={"xfeat": small_xfeat()})
    stored = IndexReader.open(index_copy).local_sets()["xfeat"]
    message = outdated_set("xfeat", stored)
    assert "max_keypoints 128 (shipped 1024)" in message and "'feats-xfeat-n1024-r1024'" in message
    assert "resize_max 128 (shipped 1024)" in message
    assert outdated_set("xfeat", make_local_extractor("xfeat", device="cpu").conf) is None
    assert outdated_set("nope", stored) is None

    with caplog.at_level(logging.WARNING):
        rec = Recognizer.from_index(index_copy, device="cpu", cascade="auto")
    assert rec.second_name == "xfeat" and rec.second.conf == stored  # queries extract as the stored rows were
    assert "local set 'xfeat' was extracted with max_keypoints 128" in caplog.text
    caplog.clear()
    result = runner.invoke(app, ["build-index", "--train", str(demo_data.train_csv), "--images",  # the shipped name
                                 str(demo_data.images_dir), "--index", str(index_copy), "--local-conf", "rootsift+xfeat",
                                 *FAST_BUILD])
    assert result.exit_code == 0, result.output
    assert "new rows are extracted with the stored settings" in result.output
    assert IndexReader.open(index_copy).local_sets()["xfeat"] == stored
