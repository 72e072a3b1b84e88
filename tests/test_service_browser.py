"""``landmarks serve`` as a user meets it: a real server process (uvicorn), a real browser (Chromium via Selenium).

The browser test skips when no Chromium and chromedriver are installed (``.ci/run`` installs Debian's).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import read_csv

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(index: Path, log: Path, *args: str) -> Iterator[tuple[str, int]]:
    """``landmarks serve`` on ``index`` in a subprocess on a free 127.0.0.1 port; yields (base URL, pid)."""
    port = _free_port()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), "serve", "--index", str(index), "--host", "127.0.0.1",
             "--port", str(port), *args],
            cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "2"},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(built_index, tmp_path_factory):
    """``landmarks serve`` in a subprocess on a free localhost port; yields (base URL, pid)."""
    with serving(built_index, tmp_path_factory.mktemp("serve") / "server.log", "--workers", "2") as running:
        yield running


@pytest.fixture(scope="module")
def recognised_query(server, demo_data):
    """A holdout photo of a landmark that the service recognises correctly: (path, landmark id)."""
    server, _ = server
    holdout = read_csv(demo_data.holdout_csv)
    for row in holdout[holdout["landmark_id"] != ""].itertuples():
        path = demo_data.images_dir / f"{row.id}.jpg"
        with open(path, "rb") as fh:
            answer = httpx.post(f"{server}/recognize", files={"image": (path.name, fh)}, timeout=60).json()
        if answer["landmark_id"] == row.landmark_id:
            return path, row.landmark_id
    pytest.fail("no holdout query is recognised: recognition is broken")


def test_real_server_and_sighup_reload(server, recognised_query):
    server, pid = server
    path, landmark = recognised_query
    health = httpx.get(f"{server}/health").json()
    assert health["reloads"] == 0
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 60
    while httpx.get(f"{server}/health").json()["reloads"] < 1:
        assert time.monotonic() < deadline, "SIGHUP did not reload the index"
        time.sleep(0.3)
    with open(path, "rb") as fh:
        assert httpx.post(f"{server}/recognize", files={"image": (path.name, fh)}, timeout=60).json()["landmark_id"] == landmark


@pytest.mark.browser
@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="no Chromium + chromedriver installed (apt-get install chromium chromium-driver)")
def test_page_in_chromium(server, recognised_query, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server, _ = server
    path, landmark = recognised_query
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=390,900", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(f"{server}/")
        WebDriverWait(driver, 20).until(lambda d: "reference photos" in d.find_element(By.ID, "info").text)
        bad = tmp_path / "notes.jpg"
        bad.write_text("not a photo")
        driver.find_element(By.ID, "file").send_keys(f"{path.resolve()}\n{bad}")
        wait = WebDriverWait(driver, 60)
        verdict = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".verdict.ok"))
        assert verdict.text == f"Landmark {landmark}"
        # the match picture loaded (a real PNG with pixels) and the nearest references are shown as thumbnails
        wait.until(lambda d: d.execute_script(
            "const i = document.querySelector('img.matches'); return i && i.complete && i.naturalWidth > 0"))
        wait.until(lambda d: d.execute_script(
            "const t = document.querySelectorAll('.thumbs img'); return t.length > 0 && [...t].every(i => i.complete && i.naturalWidth > 0)"))
        # the bad upload got a clear message, not a crash
        error = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".verdict.err"))
        assert "not a readable image" in error.text
        # no horizontal scrolling of the page at phone width
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        # the OpenAPI docs render offline
        driver.get(f"{server}/docs")
        title = WebDriverWait(driver, 20).until(lambda d: d.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title"))
        assert "landmarks" in title.text
    finally:
        driver.quit()
