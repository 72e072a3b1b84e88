"""End to end through the CLI: build-index, query, resume after a crash, incremental add, refusals, bad input."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli import app
from retrieval.defaults import DEFAULT_GLOBAL
from index.reader import IndexReader
from index.writer import IndexWriter
from tests.conftest import FAST_BUILD, read_csv

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def build(train, images, index, *extra):
    return invoke("build-index", "--train", train, "--images", images, "--index", index, *FAST_BUILD, *extra)


def kill_extraction_after(monkeypatch, n_images: int):
    """Make feature extraction raise KeyboardInterrupt (a simulated kill) after n images; returns the original."""
    from retrieval import extract

    original = extract.FeatureExtractor.iter_paths

    def dying(self, *args, **kwargs):
        for n, item in enumerate(original(self, *args, **kwargs)):
            if n == n_images:
                raise KeyboardInterrupt("simulated kill")
            yield item

    monkeypatch.setattr(extract.FeatureExtractor, "iter_paths", dying)
    return original


def test_build_and_query_json(demo_data, built_index):
    db = IndexReader.open(built_index)
    train = read_csv(demo_data.train_csv)
    assert db.size == len(train)
    assert set(db.metadata["id"]) == set(train["id"])
    manifest = json.loads((built_index / "manifest.json").read_text())
    assert manifest["config"]["global"]["model"] == "tf_efficientnet_lite2"  # the default lite2-gem
    assert manifest["dim"] == 1280 and manifest["counts"]["images"] == len(train)

    ref = train.iloc[0]
    path = demo_data.images_dir / f"{ref['id']}.jpg"
    result = invoke("query", "--index", built_index, path, path, "--k", 5, "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(l) for l in result.stdout.strip().splitlines()]
    assert len(lines) == 2
    obj = lines[0]
    assert obj["image"] == str(path)
    neigh = obj["neighbours"]
    assert [n["rank"] for n in neigh] == [1, 2, 3, 4, 5]
    assert set(neigh[0]) == {"rank", "id", "landmark_id", "score", "path", "channel"}
    assert {n["channel"] for n in neigh} == {"global"}  # the channel that found each image
    assert neigh[0]["id"] == ref["id"] and neigh[0]["score"] > 0.99  # a reference finds itself
    scores = [n["score"] for n in neigh]
    assert scores == sorted(scores, reverse=True)
    assert neigh[0]["landmark_id"] == (ref["landmark_id"] or None)


def test_query_plain_text_and_bad_image(built_index, tmp_path, demo_data):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    good = next(demo_data.images_dir.glob("*.jpg"))
    result = invoke("query", "--index", built_index, good, bad, "--k", 3)
    assert result.exit_code == 1  # one query failed, the other was still answered
    assert "empty file" in result.output and str(good) in result.output


def test_query_bad_k_and_missing_index(built_index, tmp_path, demo_data):
    good = next(demo_data.images_dir.glob("*.jpg"))
    result = invoke("query", "--index", built_index, good, "--k", 0)
    assert result.exit_code == 2 and "--k must be >= 1" in result.output
    result = invoke("query", "--index", tmp_path / "nope", good)
    assert result.exit_code == 2 and "nope" in result.output


def test_resume_after_crash_matches_uninterrupted(demo_data, built_index, tmp_path, monkeypatch):
    """A build killed after some shards resumes and ends with the same content as one run."""
    from retrieval import extract

    index = tmp_path / "crashed"
    refs = pd.read_csv(demo_data.train_csv, dtype=str, keep_default_na=False)
    refs = refs.assign(path=[str(demo_data.images_dir / f"{i}.jpg") for i in refs["id"]])
    original = kill_extraction_after(monkeypatch, 9)
    with pytest.raises(KeyboardInterrupt):
        extract.main(refs, index, DEFAULT_GLOBAL, "rootsift", num_workers=0, shard_size=4, progress=False)
    monkeypatch.setattr(extract.FeatureExtractor, "iter_paths", original)
    assert len(list((index / "shards").glob("*.h5"))) == 2  # 8 images survived in two shards
    # the rerun through the CLI uses the same configuration as the crashed one: resize to 384 (the default)
    result = invoke("build-index", "--train", demo_data.train_csv, "--images", demo_data.images_dir,
                    "--index", index, "--local-conf", "rootsift", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "8 already stored" in result.output
    resumed = IndexReader.open(index)

    clean = tmp_path / "clean"
    result = invoke("build-index", "--train", demo_data.train_csv, "--images", demo_data.images_dir,
                    "--index", clean, "--local-conf", "rootsift", "--workers", "0")
    assert result.exit_code == 0, result.output
    ref = IndexReader.open(clean)
    assert resumed.size == ref.size
    a = dict(zip(resumed.metadata["id"], resumed.global_descriptors()))
    b = dict(zip(ref.metadata["id"], ref.global_descriptors()))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=2e-3)
    row_a = int(np.flatnonzero(resumed.metadata["id"] == ref.metadata["id"].iloc[3])[0])
    kp_a, d_a = resumed.local_features(row_a)
    kp_b, d_b = ref.local_features(3)
    np.testing.assert_allclose(kp_a, kp_b, atol=1e-3)
    np.testing.assert_allclose(d_a, d_b, atol=2e-3)


def test_incremental_add_and_config_mismatch(demo_data, tmp_path):
    train = read_csv(demo_data.train_csv)
    half = tmp_path / "half.csv"
    train.iloc[: len(train) // 2].to_csv(half, index=False)
    index = tmp_path / "inc"
    result = build(half, demo_data.images_dir, index)
    assert result.exit_code == 0, result.output
    assert IndexReader.open(index).size == len(train) // 2
    result = build(demo_data.train_csv, demo_data.images_dir, index)
    assert result.exit_code == 0, result.output
    db = IndexReader.open(index)
    assert db.size == len(train)
    assert f"{len(train) - len(train) // 2} added" in result.output
    # another configuration is refused, naming both
    result = invoke("build-index", "--train", demo_data.train_csv, "--images", demo_data.images_dir,
                    "--index", index, "--image-size", "160", "--workers", "0")
    assert result.exit_code == 2
    assert "image_size" in result.output and "224" in result.output and "160" in result.output
    # two commits made two segments: compact merges them, content unchanged
    before = IndexReader.open(index).metadata
    result = invoke("compact", "--index", index)
    assert result.exit_code == 0, result.output
    assert "2 segments -> 1" in result.output
    pd.testing.assert_frame_equal(IndexReader.open(index).metadata, before)
    # --rebuild retrains the FAISS index and says so
    result = build(demo_data.train_csv, demo_data.images_dir, index, "--rebuild")
    assert result.exit_code == 0, result.output
    assert "(re)trained: rebuild requested" in result.output
    # one writer at a time: while another writer holds the index, writers stop with its name
    with IndexWriter.open_for_write(index).writer_lock(what="another build"):
        result = invoke("compact", "--index", index)
        assert result.exit_code == 2 and f"pid {os.getpid()}" in result.output and "another build" in result.output
        result = build(demo_data.train_csv, demo_data.images_dir, index)
        assert result.exit_code == 2 and "being written by" in result.output
        assert IndexReader.open(index).size == len(train)  # readers are not blocked


def test_bad_images_are_skipped_and_listed(demo_data, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(demo_data.images_dir, images)
    train = read_csv(demo_data.train_csv).iloc[:6]
    (images / "zerobyte.jpg").write_bytes(b"")
    (images / "notimage.jpg").write_text("hello")
    good = next(images.glob("*.jpg")).read_bytes()
    (images / "truncated.jpg").write_bytes(good[: len(good) // 4])
    Image.new("RGB", (8, 8)).save(images / "tiny.jpg")
    extra = pd.DataFrame({"id": ["zerobyte", "notimage", "truncated", "tiny", "missing"], "landmark_id": ["1"] * 5})
    csv = tmp_path / "train.csv"
    pd.concat([train, extra]).to_csv(csv, index=False)
    index = tmp_path / "idx"
    result = build(csv, images, index)
    assert result.exit_code == 1, result.output  # done, but some inputs were unusable
    assert "5 skipped" in result.output
    skipped = read_csv(index / "skipped.csv").set_index("id")
    assert set(skipped.index) == {"zerobyte", "notimage", "truncated", "tiny", "missing"}
    assert "empty file" in skipped.loc["zerobyte", "reason"]
    assert "not found" in skipped.loc["missing", "reason"]
    assert "too small" in skipped.loc["tiny", "reason"]
    assert IndexReader.open(index).size == 6


@pytest.mark.parametrize(
    "content, expected",
    [
        ("id,landmark\na,1\n", "missing required column"),
        ("id,landmark_id\na,1\nb,2\na,3\n", "duplicate id 'a' on lines [2, 4]"),
        ("id,landmark_id\n../escape,1\n", "line 2"),
        ("id,landmark_id\n/etc/passwd,1\n", "invalid id"),
        ("", "empty"),
        ("id,landmark_id\na,1,\nb,2,\n", "line 2: 3 fields but the header has 2"),
        ("id,landmark_id\na,1\nb\n", "line 3: 1 fields but the header has 2"),
        ("id,landmark_id\na,Eiffel Tower\n", "contains a space"),
    ],
)
def test_malformed_csv_rejected(tmp_path, demo_data, content, expected):
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    result = build(csv, demo_data.images_dir, tmp_path / "idx")
    assert result.exit_code == 2
    assert expected in result.output and "bad.csv" in result.output
    assert not (tmp_path / "idx").exists() or not any((tmp_path / "idx").iterdir())


def test_folder_per_landmark_layout(demo_data, tmp_path):
    train = read_csv(demo_data.train_csv)
    root = tmp_path / "folders"
    for _, row in train.iloc[:8].iterrows():
        sub = root / (row["landmark_id"] or "") if row["landmark_id"] else root
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_data.images_dir / f"{row['id']}.jpg", sub / f"{row['id']}.jpg")
    index = tmp_path / "idx"
    result = invoke("build-index", "--images", root, "--index", index, *FAST_BUILD)
    assert result.exit_code == 0, result.output
    meta = IndexReader.open(index).metadata.set_index("id")
    assert len(meta) == 8
    for _, row in train.iloc[:8].iterrows():
        key = f"{row['landmark_id']}/{row['id']}" if row["landmark_id"] else row["id"]
        assert meta.loc[key, "landmark_id"] == row["landmark_id"]


def test_confs_lists_names():
    result = invoke("confs")
    assert result.exit_code == 0
    assert "lite0-gem" in result.output and "rootsift" in result.output and "delf" in result.output


def test_shards_flushed_by_time(demo_data, tmp_path, monkeypatch):
    """A slow build writes what it has every shard_seconds, so a kill loses little work."""
    from retrieval import extract
    from retrieval.global_model import resolve_global_conf

    refs = read_csv(demo_data.train_csv).head(6)
    refs = refs.assign(path=[str(demo_data.images_dir / f"{i}.jpg") for i in refs["id"]])
    kill_extraction_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        extract.main(refs, tmp_path / "idx", resolve_global_conf(DEFAULT_GLOBAL, image_size=128), None,
                     num_workers=0, shard_size=1000, shard_seconds=0.0, progress=False)
    assert len(list((tmp_path / "idx" / "shards").glob("*.h5"))) == 3
    # an uncommitted image keeps its label too: a rerun that relabels it is refused
    relabelled = refs.drop(columns="path")
    relabelled.loc[relabelled.index[0], "landmark_id"] = "777"
    relabelled.to_csv(tmp_path / "r.csv", index=False)
    result = invoke("build-index", "--train", tmp_path / "r.csv", "--images", demo_data.images_dir,
                    "--index", tmp_path / "idx", "--image-size", "128", "--local-conf", "none", "--workers", "0")
    assert result.exit_code == 2 and "777" in result.output, result.output


def test_paths_absolute_and_relabel_refused(demo_data, tmp_path, monkeypatch):
    """An index built from relative paths works from any directory; a changed label is refused."""
    import os

    monkeypatch.chdir(demo_data.root)
    train = read_csv("train.csv").head(5)
    train.to_csv(tmp_path / "t.csv", index=False)
    result = invoke("build-index", "--train", tmp_path / "t.csv", "--images", "images", "--index", tmp_path / "idx", *FAST_BUILD)
    assert result.exit_code == 0, result.output
    assert all(os.path.isabs(p) for p in IndexReader.open(tmp_path / "idx").metadata["path"])
    relabelled = train.copy()
    relabelled.loc[relabelled.index[0], "landmark_id"] = "999"
    relabelled.to_csv(tmp_path / "t2.csv", index=False)
    result = invoke("build-index", "--train", tmp_path / "t2.csv", "--images", "images", "--index", tmp_path / "idx", *FAST_BUILD)
    assert result.exit_code == 2 and "999" in result.output and "cannot change" in result.output


def test_nothing_indexable_is_a_clean_error(tmp_path, demo_data):
    csv = tmp_path / "t.csv"
    csv.write_text("id,landmark_id\nmissing1,1\nmissing2,2\n")
    result = build(csv, demo_data.images_dir, tmp_path / "idx")
    assert result.exit_code == 2 and "no image could be indexed" in result.output
    assert "missing1" in (tmp_path / "idx" / "skipped.csv").read_text()
