"""One decision for evaluate and predict: for every local configuration (the registry, each with its default
matcher, and a matcher cascade), predict's submission equals evaluate's predictions on the same index, queries
and parameters, so the GAP evaluate reports and tune-threshold optimises is the GAP of what predict ships."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import app
from eval.metrics import gap
from eval.csv_io import read_solution, read_submission, solution_dict
from retrieval.local_features import local_confs
from tests.conftest import FAST_BUILD, read_csv

runner = CliRunner()

# (local conf built into the index, extra recognition options): every registered local configuration, and
# RootSIFT with the XFeat + LighterGlue cascade (reference features of the second matcher on demand).
CASES = [(name, []) for name in sorted(local_confs)] + [("rootsift", ["--cascade", "xfeat"]), ("rootsift+xfeat", [])]


@pytest.mark.parametrize("local, extra", CASES, ids=[c[0] + ("+cascade" if c[1] else "") for c in CASES])
def test_predict_ships_what_evaluate_scores(demo_data, tmp_path, monkeypatch, local, extra):
    index = tmp_path / "index"
    built = runner.invoke(app, ["build-index", "--train", str(demo_data.train_csv), "--images", str(demo_data.images_dir),
                                "--index", str(index), "--local-conf", local, *FAST_BUILD])
    assert built.exit_code == 0, built.output
    if "+" in local:  # what --cascade auto takes: the set the index was built with
        assert json.loads((index / "manifest.json").read_text())["cascade_set"] == local.split("+")[1]
    # a few landmark and non-landmark queries: what matters is that the two commands agree, query by query
    holdout = read_csv(demo_data.holdout_csv)
    queries = tmp_path / "queries.csv"
    pd.concat([holdout[holdout["landmark_id"] != ""].head(4), holdout[holdout["landmark_id"] == ""].head(3)]).to_csv(queries, index=False)
    params = ["--candidates", "3", "--inlier-threshold", "8", *extra]
    report_dir = tmp_path / "report"
    ev = runner.invoke(app, ["evaluate", "--index", str(index), "--queries", str(queries),
                             "--images", str(demo_data.images_dir), "--out", str(report_dir), *params])
    assert ev.exit_code == 0, ev.output
    sub = tmp_path / "submission.csv"
    pr = runner.invoke(app, ["predict", "--index", str(index), "--queries", str(queries),
                             "--images", str(demo_data.images_dir), "--out", str(sub), *params])
    assert pr.exit_code == 0, pr.output
    assert sub.read_text() == (report_dir / "predictions.csv").read_text()
    report = json.loads((report_dir / "report.json").read_text())
    solution = solution_dict(read_solution(queries))
    assert round(gap(read_submission(sub), solution), 3) == round(report["gap"], 3)
    if "+" in local or extra:  # the cascade ran where RootSIFT left a query unresolved, and its inliers are in the evidence
        records = [json.loads(line) for line in (report_dir / "evidence.jsonl").read_text().splitlines()[1:]]
        assert any(c["verified_refs2"] for r in records if r["evidence"] for c in r["evidence"]["candidates"])
    if "+" in local:  # the match picture draws the second matcher's pair where its inliers decided
        from retrieval import visualize
        from retrieval.recognize import Evidence, Recognizer

        rec = Recognizer.from_index(index, num_candidates=3, inlier_threshold=8)
        record = next(r for r in records if r["evidence"] and any(c["verified_refs2"] for c in r["evidence"]["candidates"]))
        evidence = Evidence.from_json(record["evidence"])
        for c in evidence.candidates:
            c.verified_refs = 0 if c.verified_refs2 else c.verified_refs  # only the second matcher's inliers count
        drawn = []
        monkeypatch.setattr(visualize, "_text", lambda canvas, text, *a, **k: drawn.append(text))
        path = record["path"]
        sheet = visualize.render(rec, "q", visualize.load_image(path, max_side=1024)[0], rec.fx.describe_image(path), evidence,
                                 rec.decide(evidence))
        assert sheet.shape[0] > 100 and any(" xfeat inliers " in t for t in drawn), drawn
