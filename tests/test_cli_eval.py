"""The evaluation commands through the CLI: split, and the demo (the README's main job) end to end."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from cli import app
from tests.conftest import read_csv

runner = CliRunner()


def test_split_command(demo_data, tmp_path):
    out = tmp_path / "splits"
    result = runner.invoke(app, ["split", "--train", str(demo_data.train_csv), "--out", str(out),
                                 "--query-fraction", "0.3", "--unseen-fraction", "0.15", "--seed", "3"])
    assert result.exit_code == 0, result.output
    index, holdout = read_csv(out / "index.csv"), read_csv(out / "holdout.csv")
    assert not set(index["id"]) & set(holdout["id"])
    seen = holdout[holdout["query_type"] == "seen"]
    assert len(seen) and set(seen["landmark_id"]) <= set(index["landmark_id"])
    unseen = holdout[holdout["query_type"] == "unseen"]
    assert len(unseen) and (unseen["landmark_id"] == "").all()
    assert not set(unseen["true_landmark_id"]) & set(index["landmark_id"])
    info = json.loads((out / "split.json").read_text())
    assert info["counts"]["n_queries"] == len(holdout)
    # half of the collection's non-landmark images stay in the index as distractor references
    assert (index["landmark_id"] == "").sum() >= (read_csv(demo_data.train_csv)["landmark_id"] == "").sum() // 2
    # deterministic for a seed
    again = tmp_path / "again"
    runner.invoke(app, ["split", "--train", str(demo_data.train_csv), "--out", str(again),
                        "--query-fraction", "0.3", "--unseen-fraction", "0.15", "--seed", "3"])
    assert (again / "holdout.csv").read_bytes() == (out / "holdout.csv").read_bytes()
    bad = runner.invoke(app, ["split", "--train", str(demo_data.train_csv), "--out", str(tmp_path / "b"),
                              "--query-fraction", "1.5"])
    assert bad.exit_code == 2 and "1.5" in bad.output


def test_demo_end_to_end_on_the_shipped_real_photos(tmp_path):
    result = runner.invoke(app, ["demo", "--work-dir", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "real photos" in result.output and "GAP global 1-NN only" in result.output and "GAP full pipeline" in result.output
    assert "tuned inlier threshold" in result.output and "cyprus_arch_ruin" in result.output
    report = json.loads((tmp_path / "demo" / "report" / "report.json").read_text())
    assert report["n_queries"] == 21 and report["n_landmark_queries"] == 11
    # on real photos the full pipeline is not worse than its own first stage, and answers no distractor as verified
    assert report["gap"] >= report["global_1nn"]["gap"] and report["strict"]["nonlandmark_prediction_rate"] == 0
    manifest = json.loads((tmp_path / "demo" / "index" / "manifest.json").read_text())
    assert "inlier_threshold" in manifest["thresholds"]
    picture = tmp_path / "demo" / "report" / "matches.png"
    assert "match picture" in result.output and picture.stat().st_size > 10_000


def test_demo_synthetic_and_rerun(tmp_path):
    args = ["demo", "--synthetic", "--work-dir", str(tmp_path / "demo"), "--landmarks", "5", "--seed", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "generated photos" in result.output and "GAP full pipeline" in result.output
    report = json.loads((tmp_path / "demo" / "report" / "report.json").read_text())
    assert report["n_queries"] > 0 and 0 <= report["gap"] <= 1
    # rerunning the demo reuses the generated data and the index (resume), and still works
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
