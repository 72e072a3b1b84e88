"""download gldv2 against a local HTTP server (127.0.0.1 only) serving a small generated copy of GLDv2's layout:
resume with Range, md5 checks, a corrupted shard, a corrupt TAR, a 404, a dropped connection, a full disk, a
garbage status line, a malformed Content-Range, unsafe TAR members, a kill between the marker and the TAR removal."""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.root`` with single-range Range support; ``server.drop_once`` / ``server.drop_always``:
    paths whose body stops halfway (the connection closes after Content-Length promised more)."""

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        srv = self.server
        path = self.path.lstrip("/")
        srv.log.append((path, self.headers.get("Range")))
        if path in srv.bad_status:  # not HTTP at all: http.client raises BadStatusLine (not an OSError)
            self.wfile.write(b"GARBAGE 99 what\r\n\r\n")
            self.close_connection = True
            return
        if path in srv.bad_range and self.headers.get("Range"):
            self.send_response(206)
            self.send_header("Content-Range", "bytes soon/never")
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"abcd")
            return
        file = srv.root / path
        if not file.is_file():
            self.send_error(404, "Not Found")
            return
        data = file.read_bytes()
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if path in srv.drop_always or (path in srv.drop_once and path not in srv.dropped):
            srv.dropped.add(path)
            self.wfile.write(body[: max(1, len(body) // 2)])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "remote"
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.root, srv.log, srv.drop_once, srv.drop_always, srv.dropped = root, [], set(), set(), set()
    srv.bad_status, srv.bad_range = set(), set()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _shard(root: Path, split: str, shard: int, images: dict[str, bytes], md5_of: bytes | None = None) -> bytes:
    """Write <split>/images_NNN.tar (members a/b/c/<id>.jpg) and its md5 file; returns the TAR bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for image_id, data in images.items():
            info = tarfile.TarInfo(f"{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / split / f"images_{shard:03d}.tar").write_bytes(data)
    (root / "md5sum" / split).mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5(md5_of if md5_of is not None else data).hexdigest()
    (root / "md5sum" / split / f"md5.images_{shard:03d}.txt").write_text(f"{digest}  images_{shard:03d}.tar\n")
    return data


def _layout(root: Path) -> dict[int, dict[str, bytes]]:
    (root / "metadata").mkdir(parents=True)
    for name in ("test.csv", "recognition_solution_v2.1.csv", "retrieval_solution_v2.1.csv"):
        (root / "metadata" / name).write_text(f"id,{name}\n")
    shards = {s: {f"{s:x}{j:x}{'ab'[j % 2]}{s * 7 + j:013x}": _jpeg(10 * s + j) for j in range(6)} for s in range(6)}
    for s in (0, 1, 5):
        _shard(root, "test", s, shards[s])
    good = _shard(root, "test", 2, shards[2])
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    (root / "test" / "images_002.tar").write_bytes(bytes(bad))  # corrupted: md5 mismatch on every download
    (root / "test" / "images_003.tar").write_bytes(b"this is no tar file" * 100)  # md5 right, TAR corrupt
    _shard(root, "test", 3, {}, md5_of=b"this is no tar file" * 100)
    (root / "test" / "images_003.tar").write_bytes(b"this is no tar file" * 100)
    # shard 4: no files at all (404)
    return shards


def test_download_resumes_checks_and_extracts(server, tmp_path):
    shards = _layout(server.root)
    out = tmp_path / "gldv2"
    # an earlier run left the first part of shard 0: it is continued with a Range request
    work = out / ".gldv2" / "test"
    work.mkdir(parents=True)
    tar0 = (server.root / "test" / "images_000.tar").read_bytes()
    (work / "images_000.tar.part").write_bytes(tar0[:1000])
    server.drop_once.add("test/images_001.tar")  # dropped halfway once: continued in the same run
    server.drop_always.add("test/images_005.tar")  # dropped every time: reported, part file kept
    base = f"http://127.0.0.1:{server.server_address[1]}"
    args = ["download", "gldv2", "--split", "test", "--shards", "0-5", "--out", str(out), "--base-url", base,
            "--jobs", "3", "--retries", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    errors = sorted(line for line in result.output.splitlines() if line.startswith("error: "))
    assert len(errors) == 4, result.output
    assert errors[0].startswith("error: test/images_002.tar: md5 mismatch") and "two downloads" in errors[0]
    assert errors[1].startswith("error: test/images_003.tar: corrupt TAR")
    assert errors[2].startswith("error: test/images_004.tar: ") and "HTTP 404" in errors[2]
    assert errors[3].startswith("error: test/images_005.tar: truncated download")
    assert "3 metadata files; test: 2 shards downloaded (12 images" in result.output
    # the nested layout build-index reads, byte-identical images, no TAR left behind
    for s in (0, 1):
        for image_id, data in shards[s].items():
            assert (out / "test" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg").read_bytes() == data
    assert not list(work.glob("images_00[01].tar*")) and not list(work.glob("images_002*"))
    assert (work / "images_005.tar.part").is_file()
    assert sorted(p.name for p in (out / "metadata").iterdir()) == ["recognition_solution_v2.1.csv",
                                                                    "retrieval_solution_v2.1.csv", "test.csv"]
    log = server.log
    assert ("test/images_000.tar", "bytes=1000-") in log  # the part file was continued, not restarted
    assert [r for p, r in log if p == "test/images_001.tar"][1] is not None  # the drop continued with a Range
    assert [p for p, _ in log].count("test/images_002.tar") == 2  # a mismatch is downloaded again once
    # Rerun: verified shards are skipped without a request; a fixed source completes the rest.
    server.log.clear()
    server.drop_always.clear()
    result = runner.invoke(app, args[:4] + ["--shards", "0-1,5"] + args[6:])
    assert result.exit_code == 0, result.output
    assert "1 shards downloaded (6 images" in result.output and "2 already done" in result.output
    assert {p for p, _ in server.log if p.endswith(".tar")} == {"test/images_005.tar"}
    assert all(r is not None for p, r in server.log if p == "test/images_005.tar")  # continued from the part


def test_download_full_disk_and_bad_arguments(server, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    _layout(server.root)
    out = tmp_path / "gldv2"
    work = out / ".gldv2" / "test"
    work.mkdir(parents=True)
    (work / "images_000.tar.part").symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    base = f"http://127.0.0.1:{server.server_address[1]}"
    result = runner.invoke(app, ["download", "gldv2", "--split", "test", "--shards", "0,1", "--out", str(out),
                                 "--base-url", base])
    assert result.exit_code == 1, result.output
    assert "error: test/images_000.tar: disk full while writing" in result.output
    assert "1 shards downloaded" in result.output  # shard 1 went on
    for bad, match in [(["--shards", "0-20"], "shards 0-19"), (["--split", "val"], "unknown split"),
                       (["--shards", "x"], "expected numbers")]:
        result = runner.invoke(app, ["download", "gldv2", "--split", "test", "--out", str(out), "--base-url", base, *bad])
        assert result.exit_code == 2 and match in result.output, result.output
    assert runner.invoke(app, ["download", "imagenet", "--out", str(out)]).exit_code == 2
    # --metadata-only: the CSVs, no shard requested; a local folder works as the base URL
    server.log.clear()
    result = runner.invoke(app, ["download", "gldv2", "--split", "test", "--metadata-only", "--out", str(tmp_path / "m"),
                                 "--base-url", str(server.root)])
    assert result.exit_code == 0 and (tmp_path / "m" / "metadata" / "test.csv").is_file(), result.output
    assert not list((tmp_path / "m").glob("test/*"))


def _tar_with(root: Path, shard: int, add) -> None:
    """test/images_NNN.tar holding one good image and what ``add(tar)`` adds, with its md5 file."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = _jpeg(99)
        info = tarfile.TarInfo(f"a/b/c/abc{shard:013x}.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        add(tar)
    (root / "test" / f"images_{shard:03d}.tar").write_bytes(buf.getvalue())
    (root / "md5sum" / "test" / f"md5.images_{shard:03d}.txt").write_text(hashlib.md5(buf.getvalue()).hexdigest() + "\n")


def _link(kind: bytes, name: str, target: str):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        tar.addfile(info)
    return add


def _member(name: str):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    return add


def test_every_failure_of_a_shard_is_reported_and_the_run_goes_on(server, tmp_path):
    _layout(server.root)  # shards 0, 1, 5 good; 2 md5 mismatch; 3 corrupt TAR; 4 missing
    _tar_with(server.root, 6, _link(tarfile.SYMTYPE, "a/b/c/abclink.jpg", "/etc/passwd"))
    _tar_with(server.root, 7, _link(tarfile.LNKTYPE, "a/b/c/abchard.jpg", "a/b/c/abc0000000000007.jpg"))
    _tar_with(server.root, 8, _member("../../escape.jpg"))
    _tar_with(server.root, 9, _member("/abs/olute.jpg"))
    server.bad_status.add("test/images_000.tar")  # garbage status line
    server.bad_range.add("test/images_001.tar")  # a 206 whose Content-Range does not parse
    server.drop_always.add("test/images_005.tar")  # cut mid-body every time
    out = tmp_path / "gldv2"
    work = out / ".gldv2" / "test"
    work.mkdir(parents=True)
    (work / "images_001.tar.part").write_bytes((server.root / "test" / "images_001.tar").read_bytes()[:500])
    base = f"http://127.0.0.1:{server.server_address[1]}"
    args = ["download", "gldv2", "--split", "test", "--shards", "0-9", "--out", str(out), "--base-url", base,
            "--jobs", "2", "--retries", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = {line.split(":")[1].strip(): line for line in result.output.splitlines() if line.startswith("error: ")}
    assert sorted(errors) == [f"test/images_{s:03d}.tar" for s in range(10)], result.output  # every shard tried
    assert "bad HTTP answer" in errors["test/images_000.tar"] and "BadStatusLine" in errors["test/images_000.tar"]
    assert "malformed Content-Range 'bytes soon/never'" in errors["test/images_001.tar"]
    assert "truncated download" in errors["test/images_005.tar"]
    assert "not a regular file" in errors["test/images_006.tar"] and "not a regular file" in errors["test/images_007.tar"]
    assert "unsafe member name '../../escape.jpg'" in errors["test/images_008.tar"]
    assert "unsafe member name '/abs/olute.jpg'" in errors["test/images_009.tar"]
    assert not (tmp_path / "escape.jpg").exists() and not (out / "escape.jpg").exists()
    assert not list((out / "test").rglob("abclink.jpg")) and not list((out / "test").rglob("abchard.jpg"))
    assert (work / "images_001.tar.part").read_bytes() == (server.root / "test" / "images_001.tar").read_bytes()[:500]
    # a fixed server: the rerun completes the transfer shards
    server.bad_status.clear(), server.bad_range.clear(), server.drop_always.clear()
    result = runner.invoke(app, args[:4] + ["--shards", "0,1,5"] + args[6:])
    assert result.exit_code == 0 and "3 shards downloaded" in result.output, result.output


def test_a_kill_between_marker_and_tar_removal_leaves_nothing_behind(server, tmp_path, monkeypatch):
    _layout(server.root)
    out = tmp_path / "gldv2"
    base = f"http://127.0.0.1:{server.server_address[1]}"
    args = ["download", "gldv2", "--split", "test", "--shards", "0", "--out", str(out), "--base-url", base]
    real_unlink = Path.unlink

    def killed(self, *a, **kw):  # the kill comes right after the marker, before the TAR goes
        if self.name == "images_000.tar":
            raise KeyboardInterrupt
        return real_unlink(self, *a, **kw)

    monkeypatch.setattr(Path, "unlink", killed)
    runner.invoke(app, args)
    monkeypatch.setattr(Path, "unlink", real_unlink)
    work = out / ".gldv2" / "test"
    assert (work / "images_000.done").is_file() and (work / "images_000.tar").is_file()
    server.log.clear()
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "1 already done" in result.output, result.output
    assert not (work / "images_000.tar").exists() and not server.log  # removed, nothing downloaded again
