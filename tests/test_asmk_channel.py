"""ASMK as a retrieval channel of the index (build-index --asmk), end to end on generated images.

A random-weight resnet18 at 64 px is the global channel here, so it ranks these textured scenes almost by
chance, while RootSIFT (rotation and scale invariant) + ASMK finds a rotated crop of a reference: the case the
channel exists for.
"""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from index.reader import IndexReader
from index.writer import IndexWriter
from tests.conftest import textured_image

runner = CliRunner()
BUILD = ["--conf", "resnet18-gem", "--weights", "random", "--image-size", "64", "--local-conf", "rootsift",
         "--workers", "0", "--batch-size", "8"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_refs(root, seeds):
    """One reference image per landmark L<seed>; returns the train.csv path."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        cv2.imwrite(str(images / f"r{s}.jpg"), textured_image(320, seed=s)[:, :, ::-1])
    csv = root / f"train-{len(seeds)}.csv"
    csv.write_text("id,landmark_id\n" + "".join(f"r{s},L{s}\n" for s in seeds))
    return csv


def rotated_view(seed, path):
    """The scene of landmark L<seed> turned by 90 degrees and zoomed in (a crop): same local features,
    another global appearance."""
    img = np.rot90(textured_image(320, seed=seed))[40:280, 40:280]
    cv2.imwrite(str(path), np.ascontiguousarray(cv2.resize(img, (300, 300))[:, :, ::-1]))
    return path


@pytest.fixture(scope="module")
def asmk_index(tmp_path_factory):
    """An index of 8 one-image landmarks, built without ASMK, then given it by a second run with --asmk."""
    root = tmp_path_factory.mktemp("asmk")
    csv = write_refs(root, range(8))
    index = root / "index"
    result = invoke("build-index", "--train", csv, "--images", root / "images", "--index", index, *BUILD)
    assert result.exit_code == 0, result.output
    manifest = json.loads((index / "manifest.json").read_text())
    assert "asmk" not in manifest and not (index / "asmk").exists()  # off by default: nothing new
    assert IndexReader.open(index).asmk() is None
    result = invoke("build-index", "--train", csv, "--images", root / "images", "--index", index, *BUILD,
                    "--asmk", "--asmk-words", 64)
    assert result.exit_code == 0, result.output
    assert "ASMK: 64 visual words" in result.output
    return root, index


def test_asmk_proposes_the_landmark_the_global_channel_misses(asmk_index):
    root, index = asmk_index
    manifest = json.loads((index / "manifest.json").read_text())
    a = manifest["asmk"]
    assert a["n_words"] == 64 and a["local_set"] == "primary" and a["local_conf"] == "rootsift"
    assert [(p["start"], p["rows"]) for p in a["parts"]] == [(0, 8)] and a["parts"][0]["entries"] > 8 * 20
    query = rotated_view(5, root / "q5.jpg")
    result = invoke("recognize", "--index", index, query, "--json", "--k", 1, "--candidates", 1)
    assert result.exit_code == 0, result.output
    cands = json.loads(result.stdout.strip().splitlines()[-1])["candidates"]
    by_lm = {c["landmark_id"]: c["channels"] for c in cands}
    glob = [c["landmark_id"] for c in cands if "global" in c["channels"]]
    assert len(glob) == 1 and glob != ["L5"]  # the global channel's one candidate is another landmark
    assert by_lm["L5"] == ["asmk"]  # ... and ASMK appended the true one, after the global candidate
    assert [c["landmark_id"] for c in cands].index("L5") >= 1
    assert len(cands) <= 1 + 3  # at most asmk_candidates (3) appended
    found = [c for c in cands if c["landmark_id"] == "L5"][0]
    assert found["best_match_id"] == "r5" and found["inliers"] > 0  # and verification checked its image
    # query --json: the global rows, then the images only ASMK found
    result = invoke("query", "--index", index, query, "--json", "--k", 2)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout.strip().splitlines()[-1])["neighbours"]
    channel = {r["id"]: r["channel"] for r in rows}
    assert channel.get("r5") in ("asmk", "global+asmk") and rows[0]["channel"] in ("global", "global+asmk")
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))


def test_added_images_extend_the_inverted_file_and_rebuild_retrains(asmk_index, tmp_path):
    root, built = asmk_index
    index = tmp_path / "index"
    shutil.copytree(built, index)
    before = json.loads((index / "manifest.json").read_text())["asmk"]
    csv = write_refs(root, range(10))  # two more landmarks, added without --asmk: the index keeps it
    result = invoke("build-index", "--train", csv, "--images", root / "images", "--index", index, *BUILD)
    assert result.exit_code == 0, result.output
    after = json.loads((index / "manifest.json").read_text())["asmk"]
    assert after["codebook"] == before["codebook"]  # new images are assigned to the existing codebook
    assert after["parts"][0] == before["parts"][0] and [(p["start"], p["rows"]) for p in after["parts"]] == [(0, 8), (8, 2)]
    result = invoke("compact", "--index", index)  # segments merged: row numbers, hence the parts, stay valid
    assert result.exit_code == 0, result.output
    assert json.loads((index / "manifest.json").read_text())["asmk"] == after
    db = IndexReader.open(index)
    q = db.local_features(int(db.find_rows(["r9"])[0]))[1]
    lms = db.column("landmark_id")
    scores, rows = db.asmk().search(q[::2], 3)
    assert lms[rows[:1]][0] == "L9"  # the added image is found by its own features
    db.close()
    result = invoke("build-index", "--train", csv, "--images", root / "images", "--index", index, *BUILD,
                    "--rebuild", "--asmk-words", 32)
    assert result.exit_code == 0, result.output
    rebuilt = json.loads((index / "manifest.json").read_text())["asmk"]
    assert rebuilt["codebook"] != before["codebook"] and rebuilt["n_words"] == 32
    assert [(p["start"], p["rows"]) for p in rebuilt["parts"]] == [(0, 10)]
    assert sorted(p.name for p in (index / "asmk").iterdir()) == sorted(  # replaced files gone (grace 0)
        f.split("/")[1] for f in [rebuilt["codebook"]] + [p["file"] for p in rebuilt["parts"]])


def test_a_crash_while_writing_the_inverted_file_leaves_the_index_intact(asmk_index, tmp_path, monkeypatch):
    from index import asmk_store

    root, built = asmk_index
    index = tmp_path / "index"
    shutil.copytree(built, index)
    before = json.loads((index / "manifest.json").read_text())
    csv = write_refs(root, range(10))
    original = asmk_store._write_part

    def dying(index_path, codebook, segments, a, b):
        original(index_path, codebook, segments, a, b)  # the part file is whole, the manifest not yet written
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(asmk_store, "_write_part", dying)
    result = invoke("build-index", "--train", csv, "--images", root / "images", "--index", index, *BUILD)
    assert result.exit_code != 0
    assert json.loads((index / "manifest.json").read_text()) == before  # nothing published
    db = IndexReader.open(index)  # and the previous index answers as before
    assert db.size == 8 and db.asmk().size == 8
    db.close()
    monkeypatch.setattr(asmk_store, "_write_part", original)
    result = invoke("build-index", "--train", csv, "--images", root / "images", "--index", index, *BUILD)
    assert result.exit_code == 0, result.output
    after = json.loads((index / "manifest.json").read_text())
    assert after["counts"]["images"] == 10 and sum(p["rows"] for p in after["asmk"]["parts"]) == 10
    named = {after["asmk"]["codebook"]} | {p["file"] for p in after["asmk"]["parts"]}
    assert {f"asmk/{p.name}" for p in (index / "asmk").iterdir()} == named  # the dead writer's part: deleted


def test_asmk_needs_stored_local_features(tmp_path):
    csv = write_refs(tmp_path, range(2))
    result = invoke("build-index", "--train", csv, "--images", tmp_path / "images", "--index", tmp_path / "idx",
                    *BUILD[:-6], "--local-conf", "none", "--workers", "0", "--asmk")
    assert result.exit_code != 0 and "--asmk needs local features" in result.output


def test_a_large_codebook_is_searched_through_its_stored_graph(tmp_path, monkeypatch):
    """Codebooks over HNSW_FROM_WORDS words assign through an HNSW graph stored beside them (lowered here)."""
    from index import asmk
    from index.shards import ShardBatch
    from index.asmk_store import asmk_request

    monkeypatch.setattr(asmk, "HNSW_FROM_WORDS", 16)
    rng = np.random.default_rng(0)
    scenes = [rng.standard_normal((60, 32)).astype(np.float32) for _ in range(6)]
    db = IndexWriter.create_or_open(tmp_path / "idx", {"global": {"model": "x"}}, 8)
    db.write_shard(ShardBatch([f"i{i}" for i in range(6)], [f"L{i}" for i in range(6)], [""] * 6,
                              rng.standard_normal((6, 8)).astype(np.float32),
                              [np.zeros((60, 4), np.float32)] * 6, scenes))
    db.commit(asmk=asmk_request(32))
    entry = db.manifest["asmk"]
    assert entry["graph"].endswith(".hnsw") and (tmp_path / "idx" / entry["graph"]).is_file()
    db.close()
    reader = IndexReader.open(tmp_path / "idx")
    index = reader.asmk()
    assert index.codebook.hnsw
    built = asmk.Codebook(index.codebook.centroids)  # built again: the same graph, the same words
    x = scenes[2] + 0.1 * rng.standard_normal((60, 32)).astype(np.float32)
    for a, b in zip(built.aggregate(x, 3), index.codebook.aggregate(x, 3)):
        np.testing.assert_array_equal(a, b)
    assert index.search(x, 1)[1][0] == 2
    reader.close()
