"""The OpenAPI contract of ``landmarks serve``, fuzzed by Schemathesis against a live server (uvicorn on 127.0.0.1).

Every operation, ``/reload`` included (it reopens the same read-only index while requests run; the server has
an operator token, which Schemathesis sends, and its ``ignored_auth`` check calls ``/reload`` without it), every
check on with Schemathesis' default expected statuses: no server error, every response documented and matching
its schema, every request valid by the schema accepted and every invalid one refused. Bounded (a fixed number
of examples per operation and a time limit) and seeded, so a run is reproducible.

The hooks (``tests/schemathesis_hooks.py``) say what an ``image/jpeg`` or ``image/png`` part is (a picture of
that format); without them Schemathesis fills ``format: binary`` with arbitrary bytes, which no JSON Schema
can tell from a photo, and the service refuses those (400) as it must.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import read_csv

pytest.importorskip("schemathesis")
from tests.test_service_browser import serving  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAX_EXAMPLES = 8  # per operation and phase
MAX_SECONDS = 20  # Schemathesis' time budget (the stateful phase repeats until it is spent); the subprocess gets more
TOKEN = "schema-test-operator-token"


def test_openapi_documents_every_answer_and_constraint():
    from service.app import Limits, create_app

    spec = create_app(engine=object(), limits=Limits(max_batch_files=7)).openapi()
    ops = {(m, p): op for p, item in spec["paths"].items() for m, op in item.items()}
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for (method, path), op in ops.items():
        statuses = set(op["responses"])
        assert {"200", "422", "500"} <= statuses, (method, path)
        for status in statuses - {"200"}:
            assert op["responses"][status]["content"]["application/json"]["schema"] == error_ref, (method, path, status)
    for path in ("/recognize", "/recognize/batch", "/neighbours"):
        op = ops[("post", path)]
        assert {"400", "413", "503", "504"} <= set(op["responses"]), path
        body = op["requestBody"]["content"]["multipart/form-data"]
        assert op["requestBody"]["required"] and body["schema"]["required"] == ["image"]
        assert body["schema"]["additionalProperties"] is False and "image/jpeg" in body["encoding"]["image"]["contentType"]
        image = body["schema"]["properties"]["image"]
        photo = image["items"] if path == "/recognize/batch" else image
        assert photo["format"] == "binary" and photo["minLength"] == 1
    batch = ops[("post", "/recognize/batch")]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["image"]
    assert (batch["minItems"], batch["maxItems"]) == (1, 7)  # from the limits the app serves with
    for path in ("/matches/{rid}.png", "/results/{rid}", "/thumbnails/{ref_id}"):
        assert "404" in ops[("get", path)]["responses"]
    assert {"401", "403", "503"} <= set(ops[("post", "/reload")]["responses"])
    assert "security" not in ops[("post", "/reload")]  # no token required (localhost, no token): none declared
    from service.auth import OperatorAuth

    guarded = create_app(engine=object(), operator_auth=OperatorAuth(token="x" * 16)).openapi()
    assert guarded["paths"]["/reload"]["post"]["security"] == [{"operatorToken": []}]
    assert guarded["components"]["securitySchemes"]["operatorToken"]["scheme"] == "bearer"
    assert "security" not in guarded["paths"]["/recognize"]["post"]  # recognition stays open
    k = next(p for p in ops[("post", "/neighbours")]["parameters"] if p["name"] == "k")["schema"]
    assert (k["minimum"], k["maximum"]) == (1, 1000)
    schemas = spec["components"]["schemas"]
    assert schemas["Recognition"]["required"] == ["image", "landmark_id", "confidence", "inliers", "candidates"]


def test_schemathesis_finds_no_failure(built_index, demo_data, tmp_path):
    holdout = read_csv(demo_data.holdout_csv)
    photos = [str(demo_data.images_dir / f"{i}.jpg") for i in holdout["id"].head(3)]
    with serving(built_index, tmp_path / "server.log", "--workers", "2", "--operator-token", TOKEN) as (url, _):
        cmd = [
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(ROOT / "tests" / "schemathesis.toml"),
            "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
            "--generation-deterministic",  # derandomised: the same requests in the same order each run
            "--max-time", str(MAX_SECONDS), "--request-timeout", "30", "--workers", "1", "--no-color",
            "--header", f"Authorization: Bearer {TOKEN}",
        ]
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "LANDMARKS_ST_PHOTOS": os.pathsep.join(photos),
               "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
        # cwd: schemathesis keeps its cache (.schemathesis/) in the working directory; not in the checkout
        run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=MAX_SECONDS + 60)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert "No issues found" in out, out[-3000:]
    assert "Selected: 8/8" in out and "Tested: 8" in out, out[-3000:]  # every operation, /reload included
    assert "3 covered / 3 selected" in out, out[-3000:]  # the stateful phase followed every link (ids from real answers)
    log = (tmp_path / "server.log").read_text()
    assert '"POST /reload HTTP/1.1" 200' in log and '"POST /recognize HTTP/1.1" 200' in log
    assert '"POST /reload HTTP/1.1" 401' in log  # ignored_auth: without the token it is refused
    for route in ("GET /matches/", "GET /results/", "GET /thumbnails/"):  # reached through the links
        assert re.search(re.escape(route) + r'\S+ HTTP/1.1" 200', log), route
