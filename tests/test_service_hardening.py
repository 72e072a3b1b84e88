"""The service in long runs and shared deployments: the answer cache's byte bound, tiny uploads, the operator
token on POST /reload, and the upload limits under load."""
from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from service.app import Limits, create_app  # noqa: E402
from service.auth import TOKEN_ENV, OperatorAuth  # noqa: E402
from service.engine import RecognitionService, answer_bytes  # noqa: E402
from tests.conftest import read_csv  # noqa: E402

TOKEN = "a-long-enough-operator-token"


@pytest.fixture(scope="module")
def small_cache_engine(built_index):
    eng = RecognitionService(built_index, answer_cache_mb=1.0)  # a few answers only: the bound is what is tested
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def photos(demo_data):
    holdout = read_csv(demo_data.holdout_csv)
    return [(f"{i}.jpg", (demo_data.images_dir / f"{i}.jpg").read_bytes()) for i in holdout["id"]]


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_answer_cache_is_bounded_in_bytes_and_keeps_no_decoded_photo(small_cache_engine, photos):
    eng = small_cache_engine
    rids = [eng.recognize(data, name)[0] for name, data in photos[:5]]
    bound = 1.0 * 2**20
    assert 0 < eng.answers.bytes <= bound and len(eng.answers) < 5  # older answers went
    assert eng.answers.bytes == sum(answer_bytes(eng.answers.get(r)) for r in rids if r in eng.answers)
    newest = eng.answer(rids[-1])
    assert newest.features.local_image is None and newest.features.local is not None
    assert len(newest.query_jpeg) < 100_000  # a small JPEG, not the decoded photo
    png = eng.matches_png(rids[-1], 2)  # drawn from the kept features and the stored reference features
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(png)).width > 400
    assert eng.answers.bytes <= bound  # the picture is counted too
    with TestClient(create_app(engine=eng)) as c:
        h = c.get("/health").json()
    assert h["limits"]["answer_cache_mb"] == 1.0 and h["caches"]["answers"] == len(eng.answers)
    assert h["caches"]["answers_mb"] <= 1.0 and h["limits"]["thumbnail_cache_mb"] > 0


def test_tiny_upload_is_answered_enlarged(small_cache_engine):
    with TestClient(create_app(engine=small_cache_engine)) as c:
        for url in ("/recognize", "/neighbours"):
            resp = c.post(url, files={"image": ("dot.png", _png(1, 1), "image/png")})
            assert resp.status_code == 200, resp.text
            assert resp.json()["enlarged_from"] == [1, 1]
        resp = c.post("/recognize", files={"image": ("dot.png", _png(3, 40), "image/png")})
        assert resp.status_code == 200 and resp.json()["enlarged_from"] == [3, 40]
        assert "enlarged_from" not in c.post("/recognize", files={"image": ("ok.png", _png(64, 48))}).json()


def test_batch_of_too_many_or_empty_photos_is_an_invalid_request(small_cache_engine):
    with TestClient(create_app(engine=small_cache_engine, limits=Limits(max_batch_files=3))) as c:
        resp = c.post("/recognize/batch", files=[("image", ("a.png", _png(32, 32)))] * 4)
        assert resp.status_code == 422 and "at most 3" in resp.json()["error"]
        resp = c.post("/recognize/batch", files=[("image", ("a.png", _png(32, 32))), ("image", ("b.png", b""))])
        assert resp.status_code == 422 and "part 2 of 2 is empty" in resp.json()["error"]
        resp = c.post("/recognize/batch", files=[("image", (None, b"{}"))])
        assert resp.status_code == 422 and "text field" in resp.json()["error"]
        resp = c.post("/recognize/batch", files=[("image", ("t.jpg", b"not a photo")), ("image", ("a.png", _png(32, 32)))])
        assert resp.status_code == 200 and "error" in resp.json()[0] and "error" not in resp.json()[1]


def test_operator_token(small_cache_engine, monkeypatch):
    photo = {"image": ("a.png", _png(32, 32))}
    # localhost without a token: open
    with TestClient(create_app(engine=small_cache_engine)) as c:
        assert c.post("/reload").status_code == 200
        assert c.get("/health").json()["limits"]["operator_routes"] == "open (localhost)"
    # beyond localhost without a token: refused, recognition still open
    auth = OperatorAuth.for_bind("0.0.0.0")
    with TestClient(create_app(engine=small_cache_engine, operator_auth=auth)) as c:
        resp = c.post("/reload")
        assert resp.status_code == 403 and "--operator-token" in resp.json()["error"]
        assert c.post("/recognize", files=photo).status_code == 200
    # a token (from the environment): 401 without it, 403 with another, 200 with it
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    auth = OperatorAuth.for_bind("192.0.2.7")
    assert auth.required and OperatorAuth.for_bind("::1").open and not OperatorAuth.for_bind("example.org").open
    with TestClient(create_app(engine=small_cache_engine, operator_auth=auth)) as c:
        resp = c.post("/reload")
        assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        assert c.post("/reload", headers={"Authorization": "Bearer not-the-token-at-all"}).status_code == 403
        before = small_cache_engine.reloads
        assert c.post("/reload", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert small_cache_engine.reloads == before + 1
        assert c.post("/recognize", files=photo).status_code == 200  # no token needed
        assert c.get("/health").json()["limits"]["operator_routes"] == "token"
    with pytest.raises(ValueError, match="at least 16"):
        OperatorAuth.for_bind("0.0.0.0", "short")


def test_upload_limits_hold_under_load(small_cache_engine, photos, monkeypatch):
    """16 clients against 1 worker + a queue of 2: at most 3 requests inside at any time, the rest 503 with
    Retry-After at once, every admitted one answered, /health answering throughout (its limits say so)."""
    eng = small_cache_engine
    inside, most = [0], [0]
    lock = threading.Lock()
    original = eng.recognize

    def counted(*args):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            time.sleep(0.05)  # hold the worker, so that the queue fills
            return original(*args)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(eng, "recognize", counted)
    limits = Limits(workers=1, max_queue=2, request_timeout_s=30)
    name, data = photos[0]
    with TestClient(create_app(engine=eng, limits=limits)) as c, ThreadPoolExecutor(16) as ex:
        assert c.get("/health").json()["limits"]["max_in_progress"] == 3
        futures = [ex.submit(c.post, "/recognize", files={"image": (name, data)}) for _ in range(48)]
        health = [c.get("/health").status_code for _ in range(5)]
        answers = [f.result() for f in futures]
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503} and codes.count(200) >= 3 and codes.count(503) >= 1, codes
    assert all(r.headers.get("Retry-After") == "1" for r in answers if r.status_code == 503)
    assert most[0] == 1 and health == [200] * 5  # one recognition at a time; the rest queued or refused
