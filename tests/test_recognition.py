"""Recognition end to end: voting, verification, "no landmark", recognize / predict / show-matches / evaluate / tune."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli import app
from eval.csv_io import read_submission
from index import ShardBatch
from index.reader import IndexReader
from index.writer import IndexWriter
from retrieval.recognize import Candidate, Evidence, Recognizer, decide, resolve_recognition_conf, vote
from tests.conftest import read_csv

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# ----------------------------------------------------------------------------- pure parts


def test_vote_by_hand():
    sims = np.array([0.9, 0.8, 0.7, 0.6])
    cands = vote(sims, ["a", "b", "a", ""], score="sum", alpha=1.0)
    assert [c.landmark_id for c in cands] == ["a", "b"]
    assert cands[0].vote == pytest.approx(1.6) and cands[0].sim == pytest.approx(0.9)
    # a discount is subtracted from every similarity (non-landmark references never vote)
    cands = vote(sims, ["a", "b", "a", ""], score="sum", alpha=1.0, discount=0.6)
    assert cands[0].vote == pytest.approx(0.3 + 0.1) and cands[1].vote == pytest.approx(0.2)
    assert cands[0].raw_sim == pytest.approx(0.9) and cands[0].sim == pytest.approx(0.3)
    assert vote(np.array([]), []) == []
    # "best": the landmark's best similarity; "top2": mean of its two best (a missing one counts 0)
    assert [(c.landmark_id, round(c.vote, 3)) for c in vote(sims, ["a", "b", "a", ""])] == [("a", 0.9), ("b", 0.8)]
    assert [(c.landmark_id, round(c.vote, 3)) for c in vote(sims, ["a", "b", "a", ""], score="top2")] == [("a", 0.8), ("b", 0.4)]
    # when the discount zeroes every score, the most similar landmark still comes first
    cands = vote(np.array([0.85, 0.40, 0.39]), ["zz", "aa", "ab"], score="sum", alpha=3.0, discount=0.9)
    assert [c.landmark_id for c in cands] == ["zz", "aa", "ab"] and cands[0].vote == 0.0
    with pytest.raises(ValueError, match="unknown candidate score"):
        vote(sims, ["a", "b", "a", ""], score="mean")


def _vector_index(path, rows, dim=16):
    """An index of hand-made unit vectors: rows = [(id, landmark_id, vector)]."""
    db = IndexWriter.create_or_open(path, {"global": {"name": "test-vectors"}, "local": None}, dim)
    xb = np.stack([v / np.linalg.norm(v) for _, _, v in rows]).astype(np.float32)
    db.write_shard(ShardBatch([r[0] for r in rows], [r[1] for r in rows], [f"/nonexistent/{r[0]}.jpg" for r in rows], xb))
    db.commit()
    return IndexReader.open(path)


def _recognizer(db, **conf):
    """A Recognizer over a vector-only index; these tests pass descriptors and never verify."""
    from types import SimpleNamespace

    from retrieval.local_features import make_local_extractor

    return Recognizer(db, SimpleNamespace(local_extractor=make_local_extractor("rootsift"), local_image_size=1024), conf)


def test_candidates_are_fair_to_class_size(tmp_path):
    """A landmark with 40 references near the query must not outrank a one-shot landmark that matches it better."""
    from retrieval.extract import Features

    rng = np.random.default_rng(0)
    dim = 16
    query = np.zeros(dim, np.float32)
    query[0] = 1.0
    single = query + 0.25 * np.eye(dim, dtype=np.float32)[1]  # cosine ~0.97 with the query
    rows = [("one", "single", single)]
    for i in range(40):  # cosines ~0.85-0.9 with the query
        v = query + 0.55 * np.eye(dim, dtype=np.float32)[2 + i % 10] + 0.05 * rng.standard_normal(dim).astype(np.float32)
        rows.append((f"big{i:02d}", "big", v))
    db = _vector_index(tmp_path / "idx", rows, dim)
    features = Features(query, None)
    best = _recognizer(db, k=41).evidence(features, verify=False)[0]
    assert [c.landmark_id for c in best.candidates] == ["single", "big"]
    assert decide(best, inlier_threshold=20).guess == "single"  # the unverified guess follows the best evidence
    summed = _recognizer(db, k=41, candidate_score="sum").evidence(features, verify=False)[0]
    assert summed.candidates[0].landmark_id == "big"  # the old rule: a size prior


def test_distractor_discount_uses_all_non_landmark_references(tmp_path):
    """The discount comes from the nearest non-landmark references wherever they rank, so it is continuous."""
    from retrieval.extract import Features

    dim = 16
    e = np.eye(dim, dtype=np.float32)
    query = e[0]
    rows = [(f"lm{i}", "a", e[0] + 0.2 * e[1 + i]) for i in range(5)]  # the 5 nearest: all landmark images
    rows += [(f"bg{i}", "", e[0] + (0.8 + 0.1 * i) * e[6 + i]) for i in range(3)]  # beyond k = 5
    db = _vector_index(tmp_path / "idx", rows, dim)
    rec = _recognizer(db, k=5, num_candidates=1, distractor_discount=True, distractor_k=3)
    ev = rec.evidence(Features(query, None), verify=False)[0]
    bg = db.global_descriptors(np.array([5, 6, 7]))
    assert ev.discount == pytest.approx(float((bg @ query).mean()), abs=1e-5)
    assert all(n[1] == "a" for n in ev.neighbours)  # none of them was among the k neighbours
    assert ev.candidates[0].sim == pytest.approx(ev.candidates[0].raw_sim - ev.discount, abs=1e-6)


def test_on_demand_cache_is_bounded_in_bytes():
    from retrieval.cache import LRU
    from retrieval.local_features import LocalFeatures
    from retrieval.recognize import feature_bytes

    feats = LocalFeatures(np.zeros((100, 2)), np.zeros(100), np.zeros(100), np.zeros((100, 128)))
    size = feature_bytes(feats)
    cache = LRU(max_bytes=3 * size, sizeof=feature_bytes)
    calls = []
    for key in [1, 2, 3, 1, 4, 5]:
        cache.get_or_make(key, lambda key=key: calls.append(key) or feats)
    assert calls == [1, 2, 3, 4, 5]  # 1 was a hit
    assert len(cache) == 3 and 1 in cache and 2 not in cache and cache.bytes == 3 * size  # least recently used evicted


def test_margin_rejects_an_ambiguous_winner():
    ev = Evidence([], [Candidate("a", 0.9, 0.9, inliers=100, verified_refs=1), Candidate("b", 0.8, 0.8, inliers=80, verified_refs=1)])
    assert decide(ev, inlier_threshold=20).landmark_id == "a"
    pred = decide(ev, inlier_threshold=20, min_margin=1.5)
    assert pred.landmark_id is None and pred.guess == "a"
    ev.candidates[1].inliers = 60
    assert decide(ev, inlier_threshold=20, min_margin=1.5).landmark_id == "a"


def test_decide_bands():
    ev = Evidence([], [Candidate("a", 1.0, 0.8, inliers=50, verified_refs=1), Candidate("b", 0.5, 0.7, inliers=5, verified_refs=1)])
    pred = decide(ev, inlier_threshold=20, inlier_cap=100, vote_weight=0.5)
    assert pred.landmark_id == "a" and pred.verified
    assert pred.confidence == pytest.approx(0.5 + 0.5 * (0.5 * 0.5 + 0.5 * 0.8))
    pred = decide(ev, inlier_threshold=60)
    assert pred.landmark_id is None and pred.guess == "a" and pred.confidence < 0.5
    assert decide(Evidence([], [])).landmark_id is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"k": 0}, "k = 0 must be >= 1"),
        ({"k": 5, "num_candidates": 6}, "num_candidates = 6 must be <= k"),
        ({"inlier_threshold": -1}, "inlier_threshold = -1"),
        ({"vote_weight": 2}, "vote_weight"),
        ({"min_margin": 0.5}, "min_margin"),
        ({"candidate_score": "mean"}, "candidate_score"),
        ({"on_demand_local": "delf"}, "needs no fitted PCA"),
        ({"on_demand_local": "sift2"}, "on_demand_local"),
        ({"bogus": 1}, "unknown recognition parameter"),
    ],
)
def test_bad_parameters_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve_recognition_conf(overrides)


def test_small_k_limits_candidates():
    assert resolve_recognition_conf({"k": 5})["num_candidates"] == 5
    with pytest.raises(ValueError, match="must be <= k"):
        resolve_recognition_conf({"k": 5, "num_candidates": 8})


def test_bad_parameters_through_cli(built_index, demo_data):
    image = next(demo_data.images_dir.glob("*.jpg"))
    for args, message in [(["--k", "0"], "k = 0"), (["--k", "3", "--candidates", "5"], "must be <= k"),
                          (["--inlier-threshold", "-3"], "inlier_threshold = -3")]:
        result = invoke("recognize", "--index", built_index, image, *args)
        assert result.exit_code == 2, result.output
        assert message in result.output


# ----------------------------------------------------------------------------- recognition on generated photos


@pytest.fixture(scope="module")
def holdout(demo_data):
    df = read_csv(demo_data.holdout_csv)
    train = read_csv(demo_data.train_csv)
    counts = train[train["landmark_id"] != ""]["landmark_id"].value_counts()
    return df, counts


def test_recognize_json_one_shot_and_distractor(built_index, demo_data, holdout):
    df, counts = holdout
    one_shot = df[df["landmark_id"].isin(counts[counts == 1].index)]
    assert len(one_shot), "the generated data must contain a one-shot landmark with a query"
    distractors = df[df["landmark_id"] == ""]
    q1 = one_shot.iloc[0]
    images = [demo_data.images_dir / f"{q1['id']}.jpg"] + [demo_data.images_dir / f"{i}.jpg" for i in distractors["id"][:3]]
    result = invoke("recognize", "--index", built_index, *images, "--json")
    assert result.exit_code == 0, result.output
    objs = [json.loads(l) for l in result.stdout.strip().splitlines()]
    assert set(objs[0]) == {"image", "landmark_id", "confidence", "inliers", "candidates"}
    assert set(objs[0]["candidates"][0]) == {"landmark_id", "vote", "inliers", "best_match_id", "channels"}
    assert objs[0]["candidates"][0]["channels"] == ["global"]
    assert objs[0]["landmark_id"] == q1["landmark_id"], objs[0]
    assert objs[0]["inliers"] >= 20
    # non-landmark photos: no landmark
    for obj in objs[1:]:
        assert obj["landmark_id"] is None, obj


def test_recognizer_python_api_and_timings(built_index, demo_data, holdout):
    df, _ = holdout
    rec = Recognizer.from_index(built_index)
    seen = df[df["landmark_id"] != ""].iloc[0]
    pred = rec.recognize(demo_data.images_dir / f"{seen['id']}.jpg")
    assert pred.landmark_id == seen["landmark_id"]
    assert {"decode", "global", "local", "search", "verify"} <= set(pred.timings)
    assert 0.5 <= pred.confidence <= 1.0


@pytest.mark.parametrize("rerank", ["qe", "superglobal"])
def test_global_rerank_reorders_the_neighbours_from_stored_descriptors(built_index, demo_data, holdout, rerank):
    df, _ = holdout
    seen = df[df["landmark_id"] != ""].iloc[0]
    plain = Recognizer.from_index(built_index)
    rec = Recognizer.from_index(built_index, global_rerank=rerank, global_rerank_k=2)
    features = rec.fx.describe_image(demo_data.images_dir / f"{seen['id']}.jpg")
    ev0, _ = plain.evidence(features, verify=False)
    ev, timings = rec.evidence(features, verify=False)
    assert "rerank" in timings and "rerank" not in _
    scores = [n[2] for n in ev.neighbours]
    assert scores == sorted(scores, reverse=True) and len(ev.neighbours) == len(ev0.neighbours)
    assert scores != [n[2] for n in ev0.neighbours]  # re-scored, not the plain cosines
    assert ev.candidates[0].landmark_id == seen["landmark_id"]
    with pytest.raises(ValueError, match="global_rerank"):
        Recognizer.from_index(built_index, global_rerank="dba")


def test_on_demand_local_features(demo_data, tmp_path, holdout):
    """An index built without local features still verifies (features extracted on demand, cached)."""
    df, _ = holdout
    index = tmp_path / "noloc"
    result = invoke("build-index", "--train", demo_data.train_csv, "--images", demo_data.images_dir, "--index", index,
                    "--local-conf", "none", "--image-size", "224", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert not IndexReader.open(index).has_local()
    seen = df[df["landmark_id"] != ""].iloc[1]
    rec = Recognizer.from_index(index)
    pred = rec.recognize(demo_data.images_dir / f"{seen['id']}.jpg")
    assert pred.landmark_id == seen["landmark_id"] and pred.inliers >= 20
    assert len(rec._cache) >= 1


def test_predict_submission_bad_image_and_resume(built_index, demo_data, tmp_path, holdout):
    df, _ = holdout
    images = tmp_path / "q"
    images.mkdir()
    ids = list(df["id"][:6])
    for i in ids:
        (images / f"{i}.jpg").write_bytes((demo_data.images_dir / f"{i}.jpg").read_bytes())
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    queries = tmp_path / "queries.csv"
    queries.write_text("id\n" + "\n".join(ids[:3] + ["corrupt"] + ids[3:]) + "\n")
    out = tmp_path / "submission.csv"
    result = invoke("predict", "--index", built_index, "--queries", queries, "--images", images, "--out", out, "--workers", "0")
    assert result.exit_code == 1, result.output  # written, but one query image was unreadable
    assert "1 unreadable" in result.output
    sub = read_csv(out)
    assert list(sub.columns) == ["id", "landmarks"]
    assert list(sub["id"]) == ids[:3] + ["corrupt"] + ids[3:]
    parsed = read_submission(out)
    assert parsed["corrupt"] is None
    for qid, pred in parsed.items():
        if pred is not None:
            assert 0.0 <= pred[1] <= 1.0
    truth = dict(zip(df["id"], df["landmark_id"]))
    verified = [(q, p) for q, p in parsed.items() if p is not None and p[1] >= 0.5]
    assert verified and all(truth[q] == p[0] for q, p in verified)

    # resume: drop the last two records (as if killed), rerun: only those are recomputed, same output
    evidence = out.with_name(out.name + ".evidence.jsonl")
    lines = evidence.read_text().splitlines()
    kept = "\n".join(lines[:-2]) + "\n"
    evidence.write_text(kept + lines[-2][: len(lines[-2]) // 2])
    inode = evidence.stat().st_ino
    before = out.read_text()
    out.unlink()
    result = invoke("predict", "--index", built_index, "--queries", queries, "--images", images, "--out", out, "--workers", "0")
    assert result.exit_code == 1, result.output
    assert out.read_text() == before
    assert "ignoring a truncated last line" in result.output
    # the cut line was truncated in place and the new records appended: the file was not rewritten
    assert evidence.stat().st_ino == inode and evidence.read_text().startswith(kept)
    records = [json.loads(l) for l in evidence.read_text().splitlines()[1:]]
    assert {r["id"] for r in records} == set(ids) | {"corrupt"}
    assert len(records) == len(lines)  # the 2 lost records recomputed, the unreadable one retried (+1)
    # the failed query is retried on the next run: once the file is fixed, it gets an answer
    (images / "corrupt.jpg").write_bytes((demo_data.images_dir / f"{ids[0]}.jpg").read_bytes())
    result = invoke("predict", "--index", built_index, "--queries", queries, "--images", images, "--out", out, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert read_submission(out)["corrupt"] == read_submission(out)[ids[0]]


def test_show_matches_draws_png(built_index, demo_data, holdout, tmp_path):
    df, _ = holdout
    seen = df[df["landmark_id"] != ""].iloc[0]
    out = tmp_path / "m.png"
    result = invoke("show-matches", "--index", built_index, demo_data.images_dir / f"{seen['id']}.jpg", "--out", out)
    assert result.exit_code == 0, result.output
    im = Image.open(out)
    assert im.size[0] > 400 and im.size[1] > 200
    arr = np.asarray(im)
    assert arr.std() > 10  # real content, not a blank page


@pytest.fixture(scope="module")
def evaluated(built_index, demo_data, tmp_path_factory):
    """An index copy evaluated on the holdout (report in ``out``), then tuned: what the specifications below read."""
    import shutil

    root = tmp_path_factory.mktemp("evaluated")
    index, out = root / "index", root / "report"
    shutil.copytree(built_index, index)
    result = invoke("evaluate", "--index", index, "--queries", demo_data.holdout_csv, "--images", demo_data.images_dir,
                    "--out", out, "--bootstrap", 200, "--workers", "0")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    result = invoke("tune-threshold", "--index", index, "--queries", demo_data.holdout_csv, "--out", out, "--folds", 3)
    assert result.exit_code == 0, result.output
    return {"index": index, "out": out, "report": report, "tuned": json.loads((out / "tune.json").read_text())}


def test_evaluate_reports_gap_with_its_interval_and_writes_its_files(evaluated):
    report, out = evaluated["report"], evaluated["out"]
    for key in ("gap", "gap_ci95", "top1_accuracy", "nonlandmark_prediction_rate", "gap_landmark_queries_only",
                "n_queries", "n_landmark_queries", "n_nonlandmark_queries", "global_only", "strict", "latency_ms",
                "global_1nn", "gap_minus_global_1nn"):
        assert key in report, key
    lo, hi = report["gap_ci95"]
    assert 0.5 < report["gap"] <= 1.0 and lo <= report["gap"] <= hi
    assert report["gap"] >= report["global_only"]["gap"] - 0.05  # verification must not hurt
    assert report["in_sample"] is False  # nothing was tuned on these queries yet
    assert (out / "predictions.csv").is_file() and (out / "evidence.jsonl").is_file()
    assert (out / "precision_vs_rank.png").stat().st_size > 0


def test_evaluate_reports_where_the_true_landmark_ranks(evaluated):
    report = evaluated["report"]
    short = report["shortlist"]
    assert short["n_landmark_queries"] == report["n_landmark_queries"] == len(short["ranks"])
    assert short["n_first"] <= short["n_among_candidates"] <= short["n_landmark_queries"]
    assert short["recall"]["1"] <= short["recall"]["5"] <= short["recall"]["10"]
    assert short["recall"]["1"] == pytest.approx(short["n_first"] / short["n_landmark_queries"], abs=1e-4)
    assert short["recall"]["1"] >= 0.5 and short["channel_ms"]["global"] > 0


def test_tune_threshold_writes_its_choice_to_the_manifest(evaluated):
    manifest = json.loads((evaluated["index"] / "manifest.json").read_text())
    assert manifest["thresholds"]["inlier_threshold"] == int(evaluated["tuned"]["chosen_inlier_threshold"])
    assert (evaluated["out"] / "gap_vs_threshold.png").is_file()


def test_evaluating_the_queries_a_threshold_was_tuned_on_is_in_sample(evaluated, demo_data, tmp_path):
    result = invoke("evaluate", "--index", evaluated["index"], "--queries", demo_data.holdout_csv, "--images",
                    demo_data.images_dir, "--out", tmp_path / "again", "--bootstrap", 50, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "again" / "report.json").read_text())["in_sample"] is True
    assert "in-sample" in result.output


def test_tune_threshold_tunes_another_parameter_and_dry_run_leaves_the_manifest(evaluated, demo_data):
    index, out = evaluated["index"], evaluated["out"]
    before = json.loads((index / "manifest.json").read_text())["thresholds"]
    result = invoke("tune-threshold", "--index", index, "--queries", demo_data.holdout_csv, "--out", out,
                    "--folds", 3, "--param", "vote_weight", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "vote weight" in result.output and (out / "gap_vs_vote_weight.png").is_file()
    assert json.loads((index / "manifest.json").read_text())["thresholds"] == before
    result = invoke("tune-threshold", "--index", index, "--queries", demo_data.holdout_csv, "--out", out, "--param", "k")
    assert result.exit_code == 2 and "unknown tunable parameter" in result.output


def test_evidence_of_one_index_is_never_reused_for_another(evaluated, demo_data, tmp_path):
    # another build (same data, same settings even) is another index
    other = tmp_path / "other"
    result = invoke("build-index", "--train", demo_data.train_csv, "--images", demo_data.images_dir, "--index", other,
                    "--local-conf", "rootsift", "--image-size", "224", "--workers", "0")
    assert result.exit_code == 0, result.output
    out = evaluated["out"]
    result = invoke("evaluate", "--index", other, "--queries", demo_data.holdout_csv, "--images", demo_data.images_dir,
                    "--out", out, "--bootstrap", 50, "--workers", "0")
    assert result.exit_code == 2 and "index_id" in result.output, result.output
    result = invoke("tune-threshold", "--index", other, "--queries", demo_data.holdout_csv, "--out", out)
    assert result.exit_code == 2 and "another index" in result.output, result.output


def test_a_manifest_threshold_changes_later_predictions(index_copy, demo_data):
    # an impossible threshold turns every answer into a guess
    with IndexWriter.open_for_write(index_copy) as writer:
        writer.update_manifest(thresholds={"inlier_threshold": 100000})
    rec = Recognizer.from_index(index_copy)
    assert rec.conf["inlier_threshold"] == 100000
    seen = read_csv(demo_data.holdout_csv)
    seen = seen[seen["landmark_id"] != ""].iloc[0]
    assert rec.recognize(demo_data.images_dir / f"{seen['id']}.jpg").landmark_id is None
