"""The default configuration on real photos (../shared/devset; skipped where it is absent, e.g. a user's clone).

Far too small to be a benchmark: this only checks that real photos of a landmark are recognised and
photos without a landmark are not, with the defaults a user gets.
"""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import app
from tests.conftest import DEVSET, read_csv

pytestmark = [
    pytest.mark.devset,
    pytest.mark.skipif(not (DEVSET / "train.csv").is_file(), reason="../shared/devset not present"),
]


def test_default_pipeline_on_real_photos(tmp_path):
    runner = CliRunner()
    index = tmp_path / "index"
    result = runner.invoke(app, ["build-index", "--train", str(DEVSET / "train.csv"), "--images", str(DEVSET / "images"),
                                 "--index", str(index), "--workers", "0"])  # the shipped defaults
    assert result.exit_code == 0, result.output
    holdout = read_csv(DEVSET / "holdout.csv")
    images = [str(DEVSET / "images" / f"{i}.jpg") for i in holdout["id"]]
    result = runner.invoke(app, ["recognize", "--index", str(index), "--json", *images])
    assert result.exit_code == 0, result.output
    preds = [json.loads(line) for line in result.stdout.strip().splitlines()]
    truth = list(holdout["landmark_id"])
    landmark = [(p, t) for p, t in zip(preds, truth) if t]
    nonlandmark = [p for p, t in zip(preds, truth) if not t]
    correct = sum(p["landmark_id"] == t for p, t in landmark)
    wrong = sum(p["landmark_id"] not in (None, t) for p, t in landmark)
    # real photos, default models and calibrated threshold: most landmarks verified, no false landmark
    assert correct >= len(landmark) // 2, preds
    assert wrong == 0, preds
    assert all(p["landmark_id"] is None for p in nonlandmark), nonlandmark
    # the shipped defaults are never worse than their own first stage (global 1-NN) on real photos
    out = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", "--index", str(index), "--queries", str(DEVSET / "holdout.csv"),
                                 "--images", str(DEVSET / "images"), "--out", str(out), "--bootstrap", "50", "--workers", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["gap"] >= report["global_1nn"]["gap"], report
