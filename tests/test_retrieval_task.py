"""The retrieval task: `query --queries` writes Kaggle's retrieval submission (resumable), `evaluate --task
retrieval` scores it with mAP@100, with and without re-ranking."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import app
from eval.metrics import map_at_k
from eval.retrieve import partial_path_for
from tests.conftest import read_csv

runner = CliRunner()


def _ranking(csv_path) -> dict[str, list[str]]:
    df = read_csv(csv_path)
    return {q: v.split() for q, v in zip(df["id"], df["images"])}


def test_query_writes_a_resumable_retrieval_submission(demo_data, built_index, tmp_path):
    holdout = read_csv(demo_data.holdout_csv)
    index_ids = set(read_csv(demo_data.train_csv)["id"])
    queries = tmp_path / "test.csv"
    ids = list(holdout["id"][:5]) + ["no_such_image"]
    queries.write_text("id\n" + "\n".join(ids) + "\n")
    out = tmp_path / "retrieval.csv"
    args = ["query", "--index", str(built_index), "--queries", str(queries), "--images", str(demo_data.images_dir),
            "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # one unreadable image: empty row, exit 1
    assert "6 queries" in result.output and "1 unreadable" in result.output
    ranking = _ranking(out)
    assert list(ranking) == ids and ranking["no_such_image"] == []
    for q in ids[:5]:  # every index image (fewer than 100), best first, no repeats
        assert set(ranking[q]) == index_ids and len(ranking[q]) == len(index_ids)
    # the same order as the photo mode of query
    photo = runner.invoke(app, ["query", "--index", str(built_index), str(demo_data.images_dir / f"{ids[0]}.jpg"),
                                "--k", "5", "--json"])
    assert photo.exit_code == 0, photo.output
    assert [n["id"] for n in json.loads(photo.output.splitlines()[-1])["neighbours"]] == ranking[ids[0]][:5]

    # Resume: finished rows are taken from the partial file (a marked row stays), a cut last line is dropped,
    # failed queries are retried.
    partial = partial_path_for(out)
    lines = partial.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["images"] = ["marker"]
    lines[1] = json.dumps(rec)
    partial.write_text("\n".join(lines) + "\n" + lines[2][: len(lines[2]) // 2])
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    again = _ranking(out)
    assert again[rec["id"]] == ["marker"] and again[ids[4]] == ranking[ids[4]]
    # Other settings on the same partial file are refused, in one line.
    result = runner.invoke(app, args + ["--qe", "2"])
    assert result.exit_code == 2 and "other settings" in result.output
    # Bad combinations
    assert runner.invoke(app, args + ["--k", "101"]).exit_code == 2
    assert runner.invoke(app, ["query", "--index", str(built_index), "--queries", str(queries)]).exit_code == 2


def test_evaluate_retrieval_map_at_100(demo_data, built_index, tmp_path):
    out = tmp_path / "report"
    base = ["evaluate", "--task", "retrieval", "--index", str(built_index), "--queries", str(demo_data.holdout_csv),
            "--images", str(demo_data.images_dir)]
    result = runner.invoke(app, base + ["--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    # relevant = the index images of the query's landmark; distractor and unseen queries are left out
    holdout, train = read_csv(demo_data.holdout_csv), read_csv(demo_data.train_csv)
    by_lm = train[train["landmark_id"] != ""].groupby("landmark_id")["id"].apply(set).to_dict()
    relevant = {q: by_lm.get(lm, set()) for q, lm in zip(holdout["id"], holdout["landmark_id"])}
    scored = {q for q, s in relevant.items() if s}
    assert report["n_queries_scored"] == len(scored) and report["n_queries_left_out"] == len(holdout) - len(scored)
    ranking = _ranking(out / "retrieval.csv")
    assert set(ranking) == scored
    assert report["map_at_100"] == pytest.approx(map_at_k(ranking, relevant), abs=1e-6)
    assert 0.3 < report["map_at_100"] <= 1.0  # the synthetic landmarks are easy for the global descriptor

    # A retrieval_solution-style file: relevant = the 1st-ranked image (AP 1) or the 2nd only (AP 1/2);
    # an Ignored row and a None row are left out.
    q = sorted(scored)
    solution = tmp_path / "retrieval_solution.csv"
    solution.write_text("id,images,Usage\n" + f"{q[0]},{ranking[q[0]][0]},Public\n{q[1]},{ranking[q[1]][1]},Private\n"
                        f"{q[2]},{ranking[q[2]][0]},Ignored\n{q[3]},None,Ignored\n")
    result = runner.invoke(app, base + ["--out", str(tmp_path / "sol"), "--solution", str(solution)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "sol" / "report.json").read_text())
    assert report["map_at_100"] == pytest.approx(0.75) and report["n_queries_scored"] == 2

    # Re-ranking: query expansion and local verification of the shortlist run through the same report.
    # (on 4 landmark queries: verification is the slow part)
    few = tmp_path / "few.csv"
    few.write_text("id,landmark_id\n" + "".join(f"{x},{holdout.set_index('id').loc[x, 'landmark_id']}\n" for x in q[:4]))
    rr = [a if a != str(demo_data.holdout_csv) else str(few) for a in base]
    result = runner.invoke(app, rr + ["--out", str(tmp_path / "rr"), "--qe", "2", "--verify-top", "5"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "rr" / "report.json").read_text())
    assert report["ranking"]["qe"] == 2 and report["ranking"]["verify_top"] == 5 and 0 < report["map_at_100"] <= 1
    thr = report["ranking"]["inlier_threshold"]
    lines = (tmp_path / "rr" / "retrieval.csv.partial.jsonl").read_text().splitlines()[1:]
    n_moved = 0
    for rec in map(json.loads, lines):
        inl = rec["inliers"]
        head = [x for x in inl if x >= thr]
        assert inl[: len(head)] == sorted(head, reverse=True)  # verified images first, most inliers first
        assert all(x == -1 for x in inl[5:])  # only the shortlist is verified
        n_moved += bool(head)
    assert n_moved > 0
    bad = runner.invoke(app, base + ["--out", str(tmp_path / "x"), "--candidates", "3"])
    assert bad.exit_code == 2 and "--task recognition" in bad.output
