"""``landmarks serve`` through a real HTTP client (FastAPI's TestClient on httpx): every endpoint, bad input,
limits, concurrency, reload while build-index writes the same index."""
from __future__ import annotations

import io
import json
import os
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from cli import app as cli_app  # noqa: E402
from index.reader import IndexReader  # noqa: E402
from service.app import Limits, create_app  # noqa: E402
from service.engine import RecognitionService  # noqa: E402
from tests.conftest import FAST_BUILD, read_csv  # noqa: E402

runner = CliRunner()
LIMIT_MB = 1.0  # small, so that the oversize tests send little


@pytest.fixture(scope="module")
def engine(built_index):
    eng = RecognitionService(built_index, max_batch=8)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine=engine, limits=Limits(workers=4, max_upload_mb=LIMIT_MB))) as c:
        yield c


@pytest.fixture(scope="module")
def queries(demo_data):
    """(name, bytes, true landmark or "") of the holdout queries."""
    holdout = read_csv(demo_data.holdout_csv)
    return [(f"{r.id}.jpg", (demo_data.images_dir / f"{r.id}.jpg").read_bytes(), r.landmark_id) for r in holdout.itertuples()]


def post(client, url, name, data, **kw):
    return client.post(url, files={"image": (name, data, "image/jpeg")}, **kw)


def assert_one_line_error(resp, status):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


# ----------------------------------------------------------------------------- endpoints


def test_health(client, built_index):
    h = client.get("/health").json()
    manifest = json.loads((built_index / "manifest.json").read_text())
    assert h["status"] == "ok" and h["index_id"] == manifest["index_id"]
    assert h["images"] == manifest["counts"]["images"] and h["landmarks"] == manifest["counts"]["landmarks"]
    assert h["configs"]["global"] == manifest["config"]["global"] and h["configs"]["local"]["extractor"] == "rootsift"
    assert h["inlier_threshold"] == h["configs"]["recognition"]["inlier_threshold"]
    assert h["version"] and h["limits"]["max_upload_mb"] == LIMIT_MB


def test_recognize_matches_the_cli(client, built_index, demo_data, queries):
    name, data, _ = queries[1]
    resp = post(client, "/recognize", name, data)
    assert resp.status_code == 200, resp.text
    served = resp.json()
    cli = runner.invoke(cli_app, ["recognize", "--index", str(built_index), str(demo_data.images_dir / name), "--json"])
    assert cli.exit_code == 0, cli.output
    expected = json.loads(cli.stdout.strip().splitlines()[-1])
    assert list(served) == list(expected)  # the CLI's keys, in its order
    assert served == {**expected, "image": name}
    rid = resp.headers["X-Request-Id"]
    assert resp.headers["Link"] == f'</matches/{rid}.png>; rel="matches"'

    png = client.get(f"/matches/{rid}.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    sheet = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_COLOR)
    assert sheet is not None and sheet.shape[1] > 400
    one = cv2.imdecode(np.frombuffer(client.get(f"/matches/{rid}.png?candidates=1").content, np.uint8), cv2.IMREAD_COLOR)
    assert one.shape[0] < sheet.shape[0] or len(served["candidates"]) == 1
    assert_one_line_error(client.get("/matches/0123456789abcdef.png"), 404)

    res = client.get(f"/results/{rid}?k=5").json()
    assert res["recognition"] == served and len(res["neighbours"]) == 5
    assert set(res["neighbours"][0]) == {"rank", "id", "landmark_id", "score", "path", "channel"}


def test_batch(client, queries):
    (n1, d1, _), (n2, d2, _) = queries[:2]
    resp = client.post("/recognize/batch", files=[("image", (n1, d1)), ("image", ("bad.jpg", b"not an image")), ("image", (n2, d2))])
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert [o["image"] for o in out] == [n1, "bad.jpg", n2]
    assert "error" in out[1] and set(out[1]) == {"image", "error"}
    single = post(client, "/recognize", n2, d2).json()
    assert out[2] == single
    ids = resp.headers["X-Request-Ids"].split(",")
    assert len(ids) == 3 and ids[1] == "" and client.get(f"/matches/{ids[0]}.png").status_code == 200


def test_neighbours_match_query_json(client, built_index, demo_data, queries):
    name, data, _ = queries[0]
    resp = post(client, "/neighbours?k=4", name, data)
    assert resp.status_code == 200, resp.text
    cli = runner.invoke(cli_app, ["query", "--index", str(built_index), str(demo_data.images_dir / name), "--k", "4", "--json"])
    expected = json.loads(cli.stdout.strip().splitlines()[-1])
    assert resp.json() == {**expected, "image": name}
    assert len(post(client, "/neighbours", name, data).json()["neighbours"]) == min(10, client.get("/health").json()["images"])
    for bad in ("k=0", "k=abc", "k=100000"):
        assert_one_line_error(post(client, f"/neighbours?{bad}", name, data), 422)


def test_thumbnails_and_path_traversal(client, built_index, demo_data):
    meta = IndexReader.open(built_index).metadata
    ok = client.get(f"/thumbnails/{meta['id'].iloc[0]}")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
    thumb = cv2.imdecode(np.frombuffer(ok.content, np.uint8), cv2.IMREAD_COLOR)
    assert max(thumb.shape[:2]) <= 256
    for attempt in ("../../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd",
                    meta["path"].iloc[0].lstrip("/"), "%2E%2E/%2E%2E/etc/passwd", f"{meta['id'].iloc[0]}/../../x"):
        resp = client.get(f"/thumbnails/{attempt}")
        assert resp.status_code == 404, (attempt, resp.status_code)
        assert b"root:" not in resp.content


def test_page_and_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and "<input" in page.text and "recognize" in page.text
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static-offline-docs/swagger-ui-bundle.js" in docs.text  # no CDN needed
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/recognize", "/recognize/batch", "/neighbours", "/health", "/reload"} <= set(spec["paths"])


# ----------------------------------------------------------------------------- bad input


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_bad_uploads_get_one_line_4xx(client, queries):
    _, good, _ = queries[0]
    cases = {
        "not an image": (b"hello, this is text\n" * 20, 400, "not a readable image"),
        "truncated": (good[: len(good) // 3], 400, "truncated"),
        "zero bytes": (b"", 400, "empty"),
        "bomb": (_png_header_only(40000, 40000), 413, "pixel budget"),
    }
    for what, (data, status, word) in cases.items():
        msg = assert_one_line_error(post(client, "/recognize", "x.jpg", data), status)
        assert word in msg and "x.jpg" in msg, (what, msg)
        assert "/tmp" not in msg  # the server's temporary file is never named
        assert_one_line_error(post(client, "/neighbours", "x.jpg", data), status)


def test_pixel_budget(client, engine, huge_png, queries):
    """A 13,000 x 13,000 greyscale PNG (~160 kB, under the upload limit) is answered 413 from its header."""
    data = huge_png.read_bytes()
    assert len(data) < LIMIT_MB * 1024 * 1024 and engine.max_pixels == 40_000_000
    start = time.perf_counter()
    for url in ("/recognize", "/neighbours"):
        msg = assert_one_line_error(post(client, url, "huge.png", data), 413)
        assert "huge.png: 13000x13000 = 169 MP exceeds the pixel budget of 40 MP" in msg and "/tmp" not in msg
    assert time.perf_counter() - start < 5  # no decoding (a full decode took seconds)
    # in a batch: that image's error, the others answered
    name, good, _ = queries[0]
    resp = client.post("/recognize/batch", files=[("image", ("huge.png", data)), ("image", (name, good))])
    assert resp.status_code == 200, resp.text
    first, second = resp.json()
    assert "pixel budget" in first["error"] and "error" not in second
    assert client.get("/health").json()["limits"]["max_pixels"] == 40_000_000


def test_request_shape_errors(client, queries):
    name, data, _ = queries[0]
    too_big = b"\xff\xd8" + b"\0" * int(LIMIT_MB * 1024 * 1024 + 10)
    assert "upload limit" in assert_one_line_error(post(client, "/recognize", "big.jpg", too_big), 413)

    def chunks():  # no Content-Length: the limit is enforced while reading
        boundary = b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\n\r\n"
        yield boundary
        for _ in range(int(LIMIT_MB * 4)):
            yield b"\0" * 262144 + b"1"
    resp = client.post("/recognize", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert_one_line_error(resp, 413)
    assert "image" in assert_one_line_error(client.post("/recognize", files={"photo": (name, data)}), 422)
    assert "image" in assert_one_line_error(client.post("/recognize", data={"x": "1"}), 422)
    assert "'x'" in assert_one_line_error(post(client, "/recognize?x=1", name, data), 422)
    resp = client.post("/recognize", files=[("image", (name, data)), ("other", ("o.txt", b"1"))])
    assert "other" in assert_one_line_error(resp, 422)
    assert "batch" in assert_one_line_error(client.post("/recognize", files=[("image", (name, data))] * 2), 422)
    # a part without a file name (curl -F image=<photo.jpg) is a photo too
    unnamed = client.post("/recognize", files={"image": (None, data, "image/jpeg")})
    assert unnamed.status_code == 200 and unnamed.json() == {**post(client, "/recognize", name, data).json(), "image": "upload"}
    assert_one_line_error(client.get("/recognize"), 405)
    assert_one_line_error(client.get("/nowhere"), 404)
    assert_one_line_error(client.post("/recognize/batch", files=[("image", (name, data))] * 40), 422)


# ----------------------------------------------------------------------------- concurrency and limits


def test_concurrent_requests_answer_as_sequential_ones(client, engine, queries, monkeypatch):
    """The GPU path (global batching, max_batch=8): concurrent images share batches, answers are unchanged."""
    sequential = [post(client, "/recognize", n, d).json() for n, d, _ in queries]
    batcher = engine.batcher
    fx = engine.state.rec.fx
    original = fx.describe_global
    first = threading.Event()

    def describe_global(items):
        if not first.is_set():
            first.set()
            deadline = time.monotonic() + 20  # hold the first batch until two more images wait behind it
            while batcher._queue.qsize() < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        return original(items)

    monkeypatch.setattr(fx, "describe_global", describe_global)
    before_items, before_sizes = batcher.items, batcher.sizes.copy()
    with ThreadPoolExecutor(12) as ex:
        concurrent = list(ex.map(lambda q: post(client, "/recognize", q[0], q[1]).json(), queries))
    for got, want in zip(concurrent, sequential):
        # the global model may describe concurrent images in one batch: identical up to float rounding
        assert got["landmark_id"] == want["landmark_id"] and got["inliers"] == want["inliers"]
        assert [c["landmark_id"] for c in got["candidates"]] == [c["landmark_id"] for c in want["candidates"]]
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-4)
    sizes = batcher.sizes - before_sizes  # the batches of the concurrent round
    assert batcher.items - before_items == len(queries) == sum(n * count for n, count in sizes.items())
    assert max(sizes) > 1, sizes  # at least one batch held several images
    assert client.get("/health").json()["global_batches"]["largest"] >= max(sizes)


@pytest.fixture(scope="module")
def cpu_engine(built_index):
    """The CPU default: no global batching; the worker threads share one model."""
    eng = RecognitionService(built_index)
    yield eng
    eng.close()


def test_cpu_default_concurrent_answers_equal_sequential(cpu_engine, queries, monkeypatch):
    assert cpu_engine.batcher is None  # max_batch None on CPU: 1, each worker runs the model itself
    fx = cpu_engine.state.rec.fx
    original = fx.describe_global
    lock, threads, active, overlap = threading.Lock(), set(), [0], [0]
    two_inside = threading.Event()

    def describe_global(items):
        with lock:
            threads.add(threading.current_thread().name)
            active[0] += 1
            overlap[0] = max(overlap[0], active[0])
            if active[0] >= 2:
                two_inside.set()
        try:
            two_inside.wait(20)  # the first caller waits for a second one: the model runs in two threads at once
            return original(items)
        finally:
            with lock:
                active[0] -= 1

    with TestClient(create_app(engine=cpu_engine, limits=Limits(workers=4))) as c:
        sequential = [post(c, "/recognize", n, d).json() for n, d, _ in queries]
        monkeypatch.setattr(fx, "describe_global", describe_global)
        with ThreadPoolExecutor(8) as ex:
            concurrent = list(ex.map(lambda q: post(c, "/recognize", q[0], q[1]).json(), queries))
        health = c.get("/health").json()
    assert overlap[0] >= 2 and len(threads) >= 2, (overlap, threads)
    assert concurrent == sequential  # no batching: the same numbers, not just close ones
    g = health["global_batches"]
    assert g["max_batch"] == 1 and g["batches"] == g["images"] == 2 * len(queries) and g["largest"] == 1


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def test_replaced_snapshot_closes_when_its_last_request_ends(cpu_engine):
    with cpu_engine.snapshot() as held:
        cpu_engine.reload()
        assert cpu_engine.state is not held and not held.closed  # a request still uses it
        assert cpu_engine.open_snapshots() == 2
    assert held.closed and cpu_engine.open_snapshots() == 1
    assert cpu_engine.models_loaded == 1  # the unchanged configuration kept its models
    assert cpu_engine.state.rec.fx is held.rec.fx


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RSS read from /proc")
def test_reloads_under_traffic_keep_snapshots_and_memory_bounded(cpu_engine, queries):
    import weakref

    with TestClient(create_app(engine=cpu_engine, limits=Limits(workers=2))) as c:
        name, data, _ = queries[0]
        rid = post(c, "/recognize", name, data).headers["X-Request-Id"]
        c.post("/reload")
        stop, codes, rids = threading.Event(), [], []

        def traffic(i):
            while not stop.is_set():
                n, d, _ = queries[i % len(queries)]
                r = post(c, "/recognize", n, d)
                codes.append(r.status_code)
                rids.append(r.headers.get("X-Request-Id"))
                i += 1

        rss_start = _rss_mb()
        seen = []
        with ThreadPoolExecutor(2) as ex:
            futures = [ex.submit(traffic, i) for i in range(2)]
            for _ in range(20):
                seen.append(weakref.ref(cpu_engine.state))
                assert c.post("/reload").status_code == 200
                assert c.get("/health").status_code == 200
            stop.set()
            for f in futures:
                f.result()
        assert codes and set(codes) == {200}
        assert cpu_engine.live_snapshots() <= 2 and cpu_engine.open_snapshots() == 1
        assert sum(ref() is not None for ref in seen) <= 1  # the replaced snapshots were freed, not just closed
        assert cpu_engine.models_loaded == 1
        rss_growth = _rss_mb() - rss_start
        # a snapshot with its own model, FAISS index and caches each time would add far more than this
        assert rss_growth < 300, rss_growth
        # answers from before the reloads still draw their match picture (plain data + the current snapshot)
        assert c.get(f"/matches/{rid}.png").status_code == 200
        assert c.get(f"/results/{rids[-1]}").status_code == 200
        assert c.get("/health").json()["open_snapshots"] == 1


def test_global_batcher_batches_waiting_images():
    from service.engine import GlobalBatcher

    release = threading.Event()
    calls = []

    class FakeExtractor:
        def describe_global(self, items):
            calls.append(list(items))
            if len(calls) == 1:
                release.wait(5)  # the first batch is slow: the others queue up meanwhile
            return np.array([[float(i)] for i in items])

    fx, batcher = FakeExtractor(), GlobalBatcher(max_batch=3)
    with ThreadPoolExecutor(6) as ex:
        first = ex.submit(batcher.describe, fx, 0)
        time.sleep(0.2)
        rest = [ex.submit(batcher.describe, fx, i) for i in range(1, 6)]
        time.sleep(0.2)
        release.set()
        out = [first.result()[0][0]] + [f.result()[0][0] for f in rest]
    batcher.close()
    assert out == [0, 1, 2, 3, 4, 5]  # every caller gets its own descriptor
    assert [len(c) for c in calls] == [1, 3, 2]


@pytest.fixture
def slow_engine(engine, monkeypatch):
    """Recognition that takes 1.5 s per photo (the pool and the event loop are what is tested)."""
    original = engine.recognize

    def slow(*args):
        time.sleep(1.5)
        return original(*args)

    monkeypatch.setattr(engine, "recognize", slow)
    return engine


def test_slow_requests_never_stall_health_and_are_bounded(slow_engine, queries):
    name, data, _ = queries[0]
    limits = Limits(workers=1, max_queue=1, request_timeout_s=1.0, max_upload_mb=LIMIT_MB)
    with TestClient(create_app(engine=slow_engine, limits=limits)) as c, ThreadPoolExecutor(4) as ex:
        futures = [ex.submit(post, c, "/recognize", name, data) for _ in range(3)]
        time.sleep(0.3)
        start = time.perf_counter()
        assert c.get("/health").status_code == 200
        assert time.perf_counter() - start < 0.5
        codes = sorted(f.result().status_code for f in futures)
    # one running + one queued are admitted (and time out after 1 s), the third is refused at once
    assert codes == [503, 504, 504], codes


# ----------------------------------------------------------------------------- reload


def same_answer(a: dict, b: dict) -> bool:
    """Equal answers: ids and inlier counts exactly, confidences and votes within 1e-5."""
    def strip(x: dict) -> tuple:
        cands = [(c["landmark_id"], c["inliers"], c["best_match_id"]) for c in x["candidates"]]
        return x["landmark_id"], x["inliers"], cands
    close = abs(a["confidence"] - b["confidence"]) <= 1e-5 and all(
        abs(ca["vote"] - cb["vote"]) <= 1e-5 for ca, cb in zip(a["candidates"], b["candidates"]))
    return strip(a) == strip(b) and close


def test_build_index_while_serving_then_reload(index_copy, demo_data, queries, tmp_path):
    holdout = read_csv(demo_data.holdout_csv)
    new_refs = holdout[holdout["landmark_id"] != ""].head(2)
    train = read_csv(demo_data.train_csv)
    extended = tmp_path / "train_more.csv"
    pd.concat([train, new_refs[["id", "landmark_id"]]]).to_csv(extended, index=False)
    name, data, _ = next(q for q in queries if q[0] == f"{new_refs['id'].iloc[0]}.jpg")

    with TestClient(create_app(index_copy, limits=Limits(workers=2))) as c:
        before = c.get("/health").json()
        answer = post(c, "/recognize", name, data).json()
        build = {}

        def run_build():
            build["result"] = runner.invoke(cli_app, ["build-index", "--train", str(extended), "--images",
                                                      str(demo_data.images_dir), "--index", str(index_copy), "--local-conf", "rootsift",
                                                      *FAST_BUILD])

        t = threading.Thread(target=run_build)
        t.start()
        while t.is_alive():  # the service keeps answering from the index it opened while build-index rewrites it
            resp = post(c, "/recognize", name, data)
            # the same answer; scores may move in the 6th decimal while the build shares torch's thread pool
            assert resp.status_code == 200 and same_answer(resp.json(), answer)
        t.join()
        assert build["result"].exit_code == 0, build["result"].output
        assert c.get("/health").json()["images"] == before["images"]

        rid = post(c, "/recognize", name, data).headers["X-Request-Id"]
        reloaded = c.post("/reload")
        assert reloaded.status_code == 200, reloaded.text
        after = c.get("/health").json()
        assert after["images"] == before["images"] + 2 and after["reloads"] == 1
        assert after["index_id"] == before["index_id"]
        rid_now = post(c, "/recognize", name, data).headers["X-Request-Id"]
        nearest = c.get(f"/results/{rid_now}").json()["neighbours"][0]
        assert nearest["id"] == new_refs["id"].iloc[0] and nearest["score"] > 0.99  # the photo itself is a reference now
        assert c.get(f"/matches/{rid}.png").status_code == 200  # answers from before the reload keep their picture
        assert_one_line_error(c.post("/reload?now=1"), 422)


# ----------------------------------------------------------------------------- CLI


def test_serve_command(tmp_path, built_index, monkeypatch):
    result = runner.invoke(cli_app, ["serve", "--index", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "nope does not exist" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(cli_app, ["serve", "--index", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "not an index directory" in result.output
    calls = []
    import service.app

    monkeypatch.setattr(service.app, "serve", lambda index, **kw: calls.append((index, kw)))
    result = runner.invoke(cli_app, ["serve", "--index", str(built_index), "--port", "8123", "--workers", "3",
                                     "--max-upload-mb", "5", "--inlier-threshold", "30"])
    assert result.exit_code == 0, result.output
    (index, kw), = calls
    assert index == built_index and kw["host"] == "127.0.0.1" and kw["port"] == 8123
    assert kw["limits"].workers == 3 and kw["limits"].max_upload_mb == 5 and kw["overrides"]["inlier_threshold"] == 30
    from retrieval.image_io import DEFAULT_MAX_PIXELS

    assert kw["limits"].max_pixels == DEFAULT_MAX_PIXELS == Limits().max_pixels
    calls.clear()
    result = runner.invoke(cli_app, ["serve", "--index", str(built_index), "--max-pixels", "1000000"])
    assert result.exit_code == 0 and calls[0][1]["limits"].max_pixels == 1_000_000
    # demo --serve serves an existing demo index at once
    import shutil

    shutil.copytree(built_index, tmp_path / "demo" / "index")
    calls.clear()
    result = runner.invoke(cli_app, ["demo", "--work-dir", str(tmp_path / "demo"), "--serve", "--port", "8124"])
    assert result.exit_code == 0, result.output
    assert calls[0][0] == tmp_path / "demo" / "index" and calls[0][1]["port"] == 8124
    assert "http://127.0.0.1:8124/" in result.output
