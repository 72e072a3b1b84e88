"""Landmark names: parsed from GLDv2's label_to_category.csv or a plain CSV or folder names, stored with the
index, shown by recognize and query (JSON gains landmark_name beside landmark_id)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from index.names import name_from_category, read_names_csv, with_names
from tests.conftest import FAST_BUILD, read_csv

runner = CliRunner()


def test_names_from_gldv2_categories_and_plain_csv(tmp_path):
    assert name_from_category("http://commons.wikimedia.org/wiki/Category:St_Pancras_railway_station") == "St Pancras railway station"
    assert name_from_category("https://commons.wikimedia.org/wiki/Category:Caf%C3%A9_de_Flore") == "Café de Flore"
    assert name_from_category("Tower\x1b[31m of\nLondon") == "Tower [31m of London"  # no escape, no newline
    plain = tmp_path / "names.csv"
    plain.write_text('landmark_id,name\n1,"Big Ben, London"\n2,<b>bold</b>\n')
    assert read_names_csv(plain) == {"1": "Big Ben, London", "2": "<b>bold</b>"}
    bad = tmp_path / "bad.csv"
    bad.write_text("landmark_id,url\n1,x\n")
    train = tmp_path / "train.csv"
    train.write_text("id,landmark_id\nabc,1\n")
    result = runner.invoke(app, ["build-index", "--train", str(train), "--images", str(tmp_path), "--index",
                                 str(tmp_path / "i"), "--landmark-names", str(bad)])
    assert result.exit_code == 2 and "bad.csv: expected columns landmark_id and category" in result.output
    assert with_names({"landmark_id": "1", "candidates": [{"landmark_id": "9"}, {"landmark_id": None}]}, {"1": "A"}) == \
        {"landmark_id": "1", "landmark_name": "A", "candidates": [{"landmark_id": "9", "landmark_name": None},
                                                                 {"landmark_id": None, "landmark_name": None}]}


def test_build_index_stores_names_and_answers_show_them(demo_data, index_copy, tmp_path, monkeypatch):
    train = read_csv(demo_data.train_csv)
    landmarks = sorted(set(train["landmark_id"]) - {""})
    cats = tmp_path / "train_label_to_category.csv"
    cats.write_text("landmark_id,category\n" + "".join(
        f"{lm},http://commons.wikimedia.org/wiki/Category:Place_{lm}_%22quoted%22_%3Cx%3E\n" for lm in landmarks))
    # rerunning build-index on a built index adds nothing and stores the names
    result = runner.invoke(app, ["build-index", "--train", str(demo_data.train_csv), "--images", str(demo_data.images_dir),
                                 "--index", str(index_copy), "--landmark-names", str(cats), *FAST_BUILD])
    assert result.exit_code == 0, result.output
    assert f"landmark names: {len(landmarks)} stored with the index" in result.output
    holdout = read_csv(demo_data.holdout_csv)
    query = holdout[holdout["landmark_id"] != ""].iloc[0]
    photo = str(demo_data.images_dir / f"{query['id']}.jpg")
    result = runner.invoke(app, ["recognize", "--index", str(index_copy), photo, "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output.strip().splitlines()[-1])
    keys = list(answer)
    assert keys[keys.index("landmark_id") + 1] == "landmark_name"  # beside it; the other keys unchanged
    assert set(keys) - {"landmark_name"} == {"image", "landmark_id", "confidence", "inliers", "candidates"}
    for c in answer["candidates"]:
        assert c["landmark_name"] == f'Place {c["landmark_id"]} "quoted" <x>'
    if answer["landmark_id"] is not None:
        assert answer["landmark_name"] == f'Place {answer["landmark_id"]} "quoted" <x>'
    text = runner.invoke(app, ["recognize", "--index", str(index_copy), photo])
    assert text.exit_code == 0 and '"quoted" <x>)' in text.output, text.output
    from index.reader import IndexReader

    opened = []
    real_open = IndexReader.open.__func__
    monkeypatch.setattr(IndexReader, "open", classmethod(lambda cls, *a, **kw: opened.append(a) or real_open(cls, *a, **kw)))
    result = runner.invoke(app, ["query", "--index", str(index_copy), photo, "--k", "3", "--json"])
    assert result.exit_code == 0, result.output
    for n in json.loads(result.output.strip().splitlines()[-1])["neighbours"]:
        assert n["landmark_name"] == (f'Place {n["landmark_id"]} "quoted" <x>' if n["landmark_id"] else None)
    assert len(opened) == 1  # query reads the names through the index it searches: one open, not two
    from index.names import load_names

    by_path = load_names(index_copy)  # a path reads the names file alone: no index opened
    assert len(opened) == 1 and by_path == load_names(IndexReader.open(index_copy)) and len(by_path) == len(landmarks)


def test_folder_layout_names_landmarks_by_folder(demo_data, tmp_path):
    train = read_csv(demo_data.train_csv)
    folders = tmp_path / "photos"
    for lm, name in ((train[train["landmark_id"] != ""]["landmark_id"].iloc[0], "Tower_Bridge"),):
        ids = train[train["landmark_id"] == lm]["id"]
        (folders / name).mkdir(parents=True)
        for i in ids:
            shutil.copy(demo_data.images_dir / f"{i}.jpg", folders / name / f"{i}.jpg")
    index = tmp_path / "idx"
    result = runner.invoke(app, ["build-index", "--images", str(folders), "--index", str(index), "--local-conf", "none",
                                 *FAST_BUILD])
    assert result.exit_code == 0, result.output
    photo = str(next((folders / "Tower_Bridge").iterdir()))
    result = runner.invoke(app, ["query", "--index", str(index), photo, "--k", "1", "--json"])
    assert json.loads(result.output.strip().splitlines()[-1])["neighbours"][0]["landmark_name"] == "Tower Bridge"


# ----------------------------------------------------------------------------- the service, the page, the pictures

EVIL = '<script>alert("x")</script> & Café 東京 ☃'  # markup, an accent, CJK and a symbol cv2 cannot draw


@pytest.fixture(scope="module")
def named_service(demo_data, built_index, tmp_path_factory):
    """The service over an index copy whose landmarks have hostile names, and its answer for one landmark photo."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import shutil

    from fastapi.testclient import TestClient

    from index.names import store_names
    from service.app import create_app
    from service.engine import RecognitionService

    index = tmp_path_factory.mktemp("named") / "index"
    shutil.copytree(built_index, index)
    landmarks = sorted(set(read_csv(demo_data.train_csv)["landmark_id"]) - {""})
    names = {lm: f"{EVIL} {lm}" for lm in landmarks}
    store_names(index, names)
    holdout = read_csv(demo_data.holdout_csv)
    photo = demo_data.images_dir / f"{holdout[holdout['landmark_id'] != '']['id'].iloc[0]}.jpg"
    engine = RecognitionService(index, max_batch=1)
    try:
        with TestClient(create_app(engine=engine)) as client:
            resp = client.post("/recognize", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
            assert resp.status_code == 200, resp.text
            yield {"client": client, "index": index, "names": names, "photo": photo, "served": resp.json(),
                   "rid": resp.headers["X-Request-Id"]}
    finally:
        engine.close()


def test_service_json_is_the_cli_json_with_names(named_service):
    served, photo = named_service["served"], named_service["photo"]
    cli = runner.invoke(app, ["recognize", "--index", str(named_service["index"]), str(photo), "--json"])
    assert cli.exit_code == 0, cli.output
    expected = json.loads(cli.stdout.strip().splitlines()[-1])
    assert list(served) == list(expected) and served == {**expected, "image": photo.name}
    keys = list(served)
    assert keys[keys.index("landmark_id") + 1] == "landmark_name"
    names = named_service["names"]
    assert served["candidates"] and all(c["landmark_name"] == names[c["landmark_id"]] for c in served["candidates"])


def test_service_returns_names_as_raw_data(named_service):
    # the raw text, not escaped or stripped: escaping is each output medium's job
    assert all(c["landmark_name"].startswith('<script>alert("x")</script>') for c in named_service["served"]["candidates"])


def test_batch_results_and_neighbours_carry_the_same_names(named_service):
    client, photo, served, names = (named_service[k] for k in ("client", "photo", "served", "names"))
    batch = client.post("/recognize/batch", files=[("image", (photo.name, photo.read_bytes()))]).json()
    assert batch == [served]
    res = client.get(f"/results/{named_service['rid']}?k=4").json()
    assert res["recognition"] == served
    for rows in (res["neighbours"], client.post("/neighbours?k=4", files={"image": (photo.name, photo.read_bytes())}).json()["neighbours"]):
        assert rows and all(list(n)[list(n).index("landmark_id") + 1] == "landmark_name" for n in rows)
        assert all(n["landmark_name"] == (names[n["landmark_id"]] if n["landmark_id"] else None) for n in rows)


def test_the_match_picture_draws_names_ascii_safe(named_service, monkeypatch):
    from retrieval import visualize

    drawn: list[str] = []
    monkeypatch.setattr(visualize.cv2, "putText", lambda img, text, *a, **k: drawn.append(text))
    png = named_service["client"].get(f"/matches/{named_service['rid']}.png")
    c0 = named_service["served"]["candidates"][0]["landmark_id"]
    assert any(f"landmark {c0} (<script>alert(\"x\")</script> & Cafe ?? ? {c0})" in t for t in drawn), drawn
    assert all(t.isascii() for t in drawn)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_COLOR) is not None


def test_openapi_declares_the_name_fields(named_service):
    spec = named_service["client"].get("/openapi.json").json()["components"]["schemas"]
    assert "landmark_name" in spec["Recognition"]["properties"] and "landmark_name" in spec["NeighbourRow"]["properties"]


def test_page_sets_names_as_text_only():
    """A static check of the page: names reach the DOM through textContent (label/fillText), never as HTML."""
    page = (Path(__file__).resolve().parents[1] / "service" / "static" / "index.html").read_text()
    script = page[page.index("<script>"):]
    assert "landmark_name" in script
    for line in script.splitlines():
        if "landmark_name" in line or "label(" in line:
            assert not re.search(r"innerHTML|insertAdjacentHTML|outerHTML|document\.write", line), line
            if "${label(" in line:  # spliced into a template string: only one that is set as text
                assert re.match(r"\s*[\w.$()\"', ]*\.textContent = `", line), line
    # the results of label() go to text only
    uses = re.findall(r"(\w+(?:\.\w+)*)\s*=\s*[^;\n]*label\(", script)
    assert uses and all(u.endswith(("textContent", "title", "lms", "label")) for u in uses), uses


def test_match_caption_is_ascii_safe():
    from retrieval.visualize import _text, ascii_text, landmark_label

    assert ascii_text("Café de Flore") == "Cafe de Flore"
    assert ascii_text("東京 ☃\x1b") == "?? ??"
    assert landmark_label("7", {"7": "Eiffel Tower"}) == "7 (Eiffel Tower)"
    assert landmark_label("8", {"7": "Eiffel Tower"}) == "8" and landmark_label(None, {}) == "None"
    assert len(landmark_label("7", {"7": "x" * 500})) < 80
    canvas = np.full((40, 400, 3), 255, np.uint8)
    _text(canvas, f"landmark {landmark_label('7', {'7': EVIL})}", (4, 20))
    assert (canvas < 255).any()


def test_demo_names_are_stored_and_printed(index_copy):
    from eval import demo
    from index.names import load_names, store_names

    names = demo.landmark_names(demo.DEMO_PHOTOS)
    assert names["7"] == "cyprus_arch_ruin" and len(names) == 7  # eval/demo_photos/sources.csv
    store_names(index_copy, names)
    assert load_names(index_copy) == names
    lm, name = next(iter(sorted(names.items())))
    summary = {"data": "d", "synthetic": False, "n_references": 1, "build_seconds": 1.0, "landmark_names": names,
               "retrieval": {"precision@1": 1.0}, "index": "i", "report": "r", "seconds": 1.0,
               "tuning": {"chosen_inlier_threshold": 10, "in_sample_gap": 1.0, "cv_gap": 1.0},
               "evaluation": {"n_queries": 1, "n_landmark_queries": 1, "n_nonlandmark_queries": 0, "gap": 1.0,
                              "gap_ci95": [1.0, 1.0], "thresholds": {"inlier_threshold": 10},
                              "global_1nn": {"gap": 1.0, "gap_ci95": [1.0, 1.0]},
                              "global_only": {"nonlandmark_prediction_rate": None},
                              "strict": {"nonlandmark_prediction_rate": None}}}
    assert f"{lm} ({name})" in demo.format_summary(summary)
