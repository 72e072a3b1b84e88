"""Landmark names: parsed from GLDv2's label_to_category.csv or a plain CSV or folder names, stored with the
index, shown by recognize and query (JSON gains landmark_name beside landmark_id)."""
from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from cli import app
from gldv2.names import name_from_category, read_names_csv, with_names
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


def test_build_index_stores_names_and_answers_show_them(demo_data, index_copy, tmp_path):
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
    result = runner.invoke(app, ["query", "--index", str(index_copy), photo, "--k", "3", "--json"])
    assert result.exit_code == 0, result.output
    for n in json.loads(result.output.strip().splitlines()[-1])["neighbours"]:
        assert n["landmark_name"] == (f'Place {n["landmark_id"]} "quoted" <x>' if n["landmark_id"] else None)


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
