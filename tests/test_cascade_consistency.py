"""One consistent cascade: the resolve rule and the decision never contradict each other, per
extractor; tune-threshold decides stored evidence as it was made (its cascade, its budget), never with a stored
fitted confidence, and never scores values on evidence where the second matcher did not run; --cascade auto
takes the set the index was built with; --cascade delf is refused when parsed; captions and match pictures
quote the matcher that decided.

The tuning tests write evidence files by hand against a real (small) index: what they test is the decision and
the sweep over that evidence, not the matchers.
"""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from cli import app
from eval import evaluate
from eval.evidence import EVIDENCE_KEYS, EVIDENCE_VERSION
from index.reader import IndexReader
from index.writer import IndexWriter
from index.local_sets import CASCADE_SET_KEY
from retrieval.decision import Candidate, ConfidenceModel, Evidence, decide, explain
from retrieval.local_features import local_confs
from retrieval.recognize import cascade_set, index_decision_conf, resolve_recognition_conf, resolved
from retrieval.registry import check_cascade, local_registry

runner = CliRunner()


# ----------------------------------------------------------------------------- the resolve rule


def test_resolve_values_are_those_of_the_matcher_that_verifies_first():
    """RootSIFT's 20 inliers would settle queries on ALIKED's or XFeat's scale, where wrong pairs reach 40."""
    assert resolve_recognition_conf(extractor="rootsift", second="aliked")["cascade_resolve_inliers"] == 20
    assert resolve_recognition_conf(extractor="aliked", second="xfeat")["cascade_resolve_inliers"] == 80
    assert resolve_recognition_conf(extractor="xfeat", second="aliked")["cascade_resolve_inliers"] == 64


def test_the_resolve_rule_is_never_looser_than_the_decision():
    """A query resolved at 25 RootSIFT inliers never reaches the second matcher, so with a threshold of 30 it
    would be "no landmark": the resolve rule follows the threshold (and the margin) up instead."""
    cands = [Candidate("a", 0.9, 0.9, inliers=25, verified_refs=1), Candidate("b", 0.8, 0.8, inliers=3, verified_refs=1)]
    default = resolve_recognition_conf(extractor="rootsift", second="aliked")
    assert resolved(cands, default) and decide(Evidence([], cands), **_decision(default)).verified
    tuned = resolve_recognition_conf(None, {"inlier_threshold": 30, "min_margin": 2.5}, "rootsift", "aliked")
    assert tuned["cascade_resolve_inliers"] == 30 and tuned["cascade_resolve_margin"] == 2.5
    assert not resolved(cands, tuned)  # the second matcher gets its chance
    # every query the first matcher resolves is a verified answer, whatever the thresholds
    for threshold in (5, 12, 20, 25, 30, 45):
        for margin in (1.0, 1.5, 3.0):
            conf = resolve_recognition_conf({"inlier_threshold": threshold, "min_margin": margin}, None, "rootsift", "aliked")
            for top in (20, 25, 30, 44, 60):
                ev = [Candidate("a", 0.9, 0.9, inliers=top, verified_refs=1), Candidate("b", 0.8, 0.8, inliers=14, verified_refs=1)]
                if resolved(ev, conf):
                    pred = decide(Evidence([], ev), **_decision(conf))
                    assert pred.verified and pred.landmark_id == "a", (threshold, margin, top)
    # without a second matcher there is nothing to resolve: the values stay (evidence files stay comparable)
    assert resolve_recognition_conf(None, {"inlier_threshold": 30}, "rootsift")["cascade_resolve_inliers"] == 20


def _decision(conf: dict) -> dict:
    return {k: conf[k] for k in ("inlier_threshold", "inlier_cap", "vote_weight", "min_margin", "cascade_threshold",
                                 "confidence_model")}


# ----------------------------------------------------------------------------- choosing the second matcher


def _with_sets(index, cascade=None):
    """The index with two (empty) secondary sets declared in its manifest, and optionally its cascade set."""
    path = index / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["local_sets"] = {"aliked": {"conf": local_confs["aliked"], "dim": 128, "parts": []},
                              "xfeat": {"conf": local_confs["xfeat"], "dim": 64, "parts": []}}
    manifest.pop(CASCADE_SET_KEY, None)
    if cascade:
        manifest[CASCADE_SET_KEY] = cascade
    path.write_text(json.dumps(manifest))
    return IndexReader.open(index)


def test_cascade_auto_takes_the_set_the_index_was_built_with(index_copy, caplog):
    db = _with_sets(index_copy, cascade="xfeat")
    with caplog.at_level("WARNING"):
        name, conf = cascade_set(db, "auto")
    assert name == "xfeat" and conf["extractor"] == "xfeat"  # not "aliked", the first name alphabetically
    assert f"covers 0 of its {db.size} images" in caplog.text and "--local-conf rootsift+xfeat" in caplog.text
    assert index_decision_conf(db)["cascade_threshold"] == 40  # XFeat's scale, not ALIKED's 30
    caplog.clear()
    db = _with_sets(index_copy)  # an index that does not record it: said, and how to choose
    with caplog.at_level("WARNING"):
        assert cascade_set(db, "auto")[0] == "aliked"
    assert "does not record which one" in caplog.text and "--cascade NAME" in caplog.text


def test_cascade_delf_is_refused_when_the_options_are_parsed(tmp_path):
    with pytest.raises(ValueError, match="PCA fitted on an index's own features"):
        check_cascade("delf")
    with pytest.raises(ValueError, match="PCA fitted"):
        resolve_recognition_conf({"cascade": "delf"})
    assert check_cascade("xfeat") == "xfeat" and check_cascade("auto") == "auto"
    missing = tmp_path / "no-index"  # nothing is opened: the option is refused first
    for command in (["recognize", str(tmp_path / "x.jpg")], ["predict", "--queries", "q.csv", "--images", ".", "--out", "s.csv"]):
        result = runner.invoke(app, [*command, "--index", str(missing), "--cascade", "delf"])
        assert result.exit_code == 2 and "PCA fitted" in result.output, result.output
    result = runner.invoke(app, ["recognize", str(tmp_path / "x.jpg"), "--index", str(missing), "--cascade", "sift"])
    assert result.exit_code == 2 and "unknown cascade 'sift'" in result.output


# ----------------------------------------------------------------------------- quoting the matcher that decided


PARAMS = {"inlier_threshold": 12, "cascade_threshold": 30, "min_margin": 1.5, "vote_weight": 0.5, "inlier_cap": 100,
          "confidence_model": None}
MATCHERS = {1: "rootsift", 2: "aliked"}


def test_captions_quote_the_matcher_that_decided():
    # ALIKED verified the answer: its count, not RootSIFT's 13
    ev = Evidence([], [Candidate("7", 0.9, 0.9, inliers=13, verified_refs=1, best_match_id="r1",
                                 inliers2=116, verified_refs2=1, best_match_id2="r2"),
                       Candidate("8", 0.8, 0.8, inliers=4, verified_refs=1, inliers2=20, verified_refs2=1)])
    pred = decide(ev, **PARAMS)
    assert pred.verified and pred.matcher == 2 and pred.inliers == 116
    assert explain(pred, PARAMS, MATCHERS) == "116 aliked inliers"
    # RootSIFT's 30 (2.5x its 12) decided over ALIKED's 40 (1.33x its 30): quoted on RootSIFT's scale
    ev = Evidence([], [Candidate("7", 0.9, 0.9, inliers=30, verified_refs=1, inliers2=40, verified_refs2=1)])
    pred = decide(ev, **PARAMS)
    assert pred.matcher == 1 and pred.inliers == 30 and explain(pred, PARAMS, MATCHERS) == "30 rootsift inliers"
    # no landmark: ALIKED's 25 is under ALIKED's threshold 30, though above RootSIFT's 12
    ev = Evidence([], [Candidate("7", 0.9, 0.9, inliers=5, verified_refs=1, inliers2=25, verified_refs2=1)])
    pred = decide(ev, **PARAMS)
    assert not pred.verified and pred.inliers == 25
    assert explain(pred, PARAMS, MATCHERS) == "best guess 7, 25 aliked inliers < threshold 30"
    ev = Evidence([], [Candidate("7", 0.9, 0.9, inliers=9, verified_refs=1)])
    assert explain(decide(ev, **PARAMS), PARAMS, MATCHERS) == "best guess 7, 9 rootsift inliers < threshold 12"
    # a threshold reached, the margin not
    ev = Evidence([], [Candidate("7", 0.9, 0.9, inliers2=45, verified_refs2=1), Candidate("8", 0.5, 0.5, inliers2=40, verified_refs2=1)])
    assert explain(decide(ev, **PARAMS), PARAMS, MATCHERS) == ("best guess 7; 7 has 45 aliked inliers, under 1.5x the "
                                                                "runner-up's score")


def test_the_match_picture_draws_the_pair_of_the_matcher_that_decided():
    from retrieval.visualize import sheet_rows

    rec = SimpleNamespace(conf=PARAMS, second=object())
    ev = Evidence([("r0", "9", 0.95), ("r1", "7", 0.9), ("r3", "8", 0.5)],
                  [Candidate("9", 0.95, 0.95, inliers=2, verified_refs=1, best_match_id="r0"),
                   Candidate("7", 0.9, 0.9, inliers=13, verified_refs=1, best_match_id="r1", inliers2=116,
                             verified_refs2=1, best_match_id2="r2"),
                   Candidate("8", 0.5, 0.5, inliers=30, verified_refs=1, best_match_id="r3", inliers2=10, verified_refs2=1)])
    rows = [(c.landmark_id, matcher, ref) for c, matcher, ref in sheet_rows(rec, ev)]
    # the answer first (116 / 30 > 30 / 12): ALIKED's pair with ALIKED's reference; then RootSIFT's
    assert rows == [("7", 2, "r2"), ("8", 1, "r3"), ("9", 1, "r0")]
    rec.second = None  # drawn by a recognizer without the cascade: its own matcher
    assert sheet_rows(rec, ev)[0][1:] == (1, "r1")


# ----------------------------------------------------------------------------- tune-threshold


def _write_evidence(index, path, queries: dict[str, list[Candidate]], cascade: str | None, **params) -> None:
    """An evidence file of ``queries`` against ``index``, as evaluate would write it with the cascade ``cascade``."""
    db = IndexReader.open(index)
    conf = index_decision_conf(db, {"cascade": cascade or "none", **params})
    header = {"evidence_version": EVIDENCE_VERSION, "index": str(index), "index_id": db.manifest.get("index_id"),
              "index_created": db.manifest.get("created"), "index_images": int(db.size),
              "params": {k: conf[k] for k in EVIDENCE_KEYS}, "match_conf": {}, "second_set": cascade,
              "second_match_conf": {}, "verify": True, "early_exit": True, "confirm_inliers": None}
    lines = [json.dumps(header)] + [
        json.dumps({"id": q, "path": f"/q/{q}.jpg", "evidence": Evidence([], cands).to_json(), "error": None, "timings": {}})
        for q, cands in queries.items()]
    path.write_text("\n".join(lines) + "\n")


def _case(tmp_path):
    """Landmark queries that RootSIFT resolved (25 to 60 inliers, one at 25), and non-landmark queries with a wrong
    candidate at 26 to 29 RootSIFT inliers and a high similarity: on this evidence alone, GAP prefers a threshold
    of about 30, which would make the query resolved at 25 "no landmark"."""
    queries, truth = {}, {}
    for i, top in enumerate((25, 32, 35, 40, 45, 50, 55, 60, 70, 80)):
        queries[f"q{i:02d}"] = [Candidate(f"L{i}", 0.6, 0.5, inliers=top, verified_refs=1),
                                Candidate(f"M{i}", 0.5, 0.4, inliers=2, verified_refs=1)]
        truth[f"q{i:02d}"] = f"L{i}"
    for i, top in enumerate((26, 27, 28, 29, 26, 27, 28, 29)):
        queries[f"n{i:02d}"] = [Candidate(f"W{i}", 0.9, 0.9, inliers=top, verified_refs=1),
                                Candidate(f"X{i}", 0.5, 0.4, inliers=1, verified_refs=1)]
        truth[f"n{i:02d}"] = ""
    csv = tmp_path / "queries.csv"
    csv.write_text("id,landmark_id\n" + "".join(f"{q},{lm}\n" for q, lm in truth.items()))
    return queries, csv


def test_tuning_never_scores_thresholds_where_the_second_matcher_did_not_run(index_copy, tmp_path):
    queries, csv = _case(tmp_path)
    evidence = tmp_path / "evidence.jsonl"
    _write_evidence(index_copy, evidence, queries, "aliked")
    res = evaluate.tune(index_copy, csv, None, tmp_path / "out", evidence_path=evidence, write=False, n_folds=3,
                        confidence="bands")
    assert res["limit"] == 20 and res["chosen"] <= 20, res["chosen"]
    assert res["tuned_for"] == {"cascade": "aliked", "cascade_pairs": local_registry["aliked"].as_second["cascade_pairs"]}
    conf = {**PARAMS, "cascade_threshold": 30, "inlier_threshold": res["chosen"]}
    assert decide(Evidence([], queries["q00"]), **conf).verified  # resolved at 25, still a verified answer
    # without a cascade nothing was resolved: every threshold is scored, and GAP takes one above 29
    _write_evidence(index_copy, evidence, queries, None)
    res = evaluate.tune(index_copy, csv, None, tmp_path / "out2", evidence_path=evidence, write=False, n_folds=3,
                        confidence="bands")
    assert res["limit"] is None and 29 < res["chosen"] <= 32


def test_tuning_decides_with_the_cascade_the_evidence_was_made_with(index_copy, tmp_path):
    queries, csv = _case(tmp_path)
    evidence = tmp_path / "evidence.jsonl"
    _write_evidence(index_copy, evidence, queries, "xfeat", cascade_pairs=3)  # evaluate --cascade xfeat --cascade-pairs 3
    res = evaluate.tune(index_copy, csv, None, tmp_path / "out", evidence_path=evidence, write=False, n_folds=3,
                        param="min_margin", confidence="bands")
    assert res["previous"] == 1.5  # XFeat's margin as the second matcher, not the RootSIFT index's 1
    assert res["tuned_for"] == {"cascade": "xfeat", "cascade_pairs": 3} and res["limit"] == 2.0
    assert res["n_values"] == len([v for v in evaluate.TUNABLE["min_margin"] if v <= 2.0])


def test_a_stored_confidence_model_is_not_used_to_tune_and_bands_remove_it(index_copy, tmp_path):
    queries, csv = _case(tmp_path)
    evidence = tmp_path / "evidence.jsonl"
    _write_evidence(index_copy, evidence, queries, None)
    kwargs = dict(evidence_path=evidence, write=False, n_folds=3, confidence="bands")
    before = evaluate.tune(index_copy, csv, None, tmp_path / "a", **kwargs)
    # a model that ranks by similarity alone: with it, the wrong high-similarity answers would rank first
    model = ConfidenceModel([0.0, 0.0, 8.0], -4.0).to_json()
    with IndexWriter.open_for_write(index_copy) as writer:
        writer.update_manifest(thresholds={"confidence_model": model})
    after = evaluate.tune(index_copy, csv, None, tmp_path / "b", **kwargs)
    for key in ("chosen", "in_sample_gap", "cv_gap", "folds"):
        assert after[key] == before[key], key
    # every threshold's GAP, not only the chosen one's (where the model happens to rank these answers alike)
    assert (tmp_path / "b" / "threshold_sweep.csv").read_text() == (tmp_path / "a" / "threshold_sweep.csv").read_text()
    evaluate.tune(index_copy, csv, None, tmp_path / "c", **{**kwargs, "write": True})
    assert IndexReader.open(index_copy).manifest["thresholds"].get("confidence_model") is None


def test_tune_json_never_holds_nan(index_copy, tmp_path, monkeypatch):
    queries, csv = _case(tmp_path)
    evidence = tmp_path / "evidence.jsonl"
    _write_evidence(index_copy, evidence, queries, None)
    real = evaluate.fit_confidence
    # a figure that is undefined (e.g. a fold without an answer) reaches the report as NaN
    monkeypatch.setattr(evaluate, "fit_confidence", lambda *a, **k: {**real(*a, **k), "cv_gap_fitted": math.nan})
    evaluate.tune(index_copy, csv, None, tmp_path / "out", evidence_path=evidence, write=False, n_folds=3)
    text = (tmp_path / "out" / "tune.json").read_text()
    tuned = json.loads(text, parse_constant=lambda c: pytest.fail(f"tune.json holds {c}"))
    assert tuned["confidence"]["cv_gap_fitted"] is None and tuned["confidence"]["used"] is False
