"""``download gldv2``: fetch Google Landmarks v2 (metadata CSVs and image shards) into the layout build-index reads.

Below the base URL (the dataset's own, a mirror, or a local folder) the paths are the dataset's:
``metadata/<name>.csv``, ``<split>/images_NNN.tar`` and ``md5sum/<split>/md5.images_NNN.txt``.

The result under ``--out DIR``::

    DIR/metadata/train.csv, index.csv, test.csv, *_label_to_category.csv, *_solution_v2.1.csv
    DIR/<split>/a/b/c/<id>.jpg       (GLDv2's nested layout: build-index --images DIR/<split>)
    DIR/.gldv2/<split>/              (work files: images_NNN.tar.part while downloading, images_NNN.done)

Per shard: the TAR is downloaded to ``.part`` (a rerun continues it with an HTTP Range request), its md5 is
checked against the dataset's md5 file (a mismatch is downloaded again once, then reported), then the TAR is
read as a stream and each image written to its place (through a temporary name: never half an image), and
the TAR is deleted. The ``.done`` marker (with the md5 and the image count) makes a rerun skip the shard.
Disk use beyond the images: one TAR (about 1 GB for train) per shard in flight.

Every failure is a :class:`ShardError` whose message names the shard and says what happened; the other
shards go on and finished shards are kept. That holds for any error of one shard, not only the expected ones:
a garbage status line (``http.client`` errors are not ``OSError``), a malformed ``Content-Range``, a bug: the
shard is reported at the end with what was raised, and the run goes on.

Order of the last steps: the ``.done`` marker is written (atomically) before the TAR is removed, so a kill
between the two costs no download again; a rerun that finds a marker beside a leftover TAR (or part file)
removes it, so no ~1 GB file outlives the run that should have removed it.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import logging
import os
import re
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm
from zlib import error as zlib_error

from index.choices import lookup

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://s3.amazonaws.com/google-landmark"
SHARDS = {"train": 500, "index": 100, "test": 20}
METADATA = {
    "train": ("train.csv", "train_clean.csv", "train_label_to_category.csv"),
    # index.csv has only ids; index_image_to_landmark.csv labels the index images (GLDv2.1)
    "index": ("index.csv", "index_image_to_landmark.csv", "index_label_to_category.csv"),
    "test": ("test.csv", "recognition_solution_v2.1.csv", "retrieval_solution_v2.1.csv"),
}
CHUNK = 1 << 20
WORK_DIR = ".gldv2"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class ShardError(Exception):
    """A file that could not be fetched, checked or extracted; the message names it (one line)."""


@dataclass
class DownloadResult:
    metadata: list[Path] = field(default_factory=list)
    done: list[int] = field(default_factory=list)  # shards downloaded, checked and extracted now
    skipped: list[int] = field(default_factory=list)  # shards already verified by an earlier run
    images: int = 0  # images extracted now
    errors: list[str] = field(default_factory=list)  # one line per failed file
    bytes: int = 0  # bytes transferred now


def parse_shards(spec: str | None, split: str) -> list[int]:
    """``"0-9"``, ``"3"``, ``"0,5,10-12"`` (None: every shard of the split) -> sorted shard numbers."""
    n = lookup(SHARDS, split, "split")
    if spec is None:
        return list(range(n))
    out: set[int] = set()
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise ValueError(f"--shards {spec!r}: expected numbers and ranges such as 0-9 or 0,5,10-12")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi or hi >= n:
            raise ValueError(f"--shards {spec!r}: the {split} split has shards 0-{n - 1}")
        out.update(range(lo, hi + 1))
    return sorted(out)


def shard_name(shard: int) -> str:
    return f"images_{shard:03d}.tar"


# ----------------------------------------------------------------------------- transfer


class _Source:
    """Opens ``<base>/<path>`` from byte ``offset``: HTTP(S) with a Range header, or a local folder / file:// URL."""

    def __init__(self, base_url: str, timeout: float = 60.0):
        self.base = base_url.rstrip("/")
        parsed = urllib.parse.urlparse(self.base)
        self.local = Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme == "file" else (
            Path(self.base) if parsed.scheme == "" else None)
        self.timeout = timeout

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"

    def open(self, path: str, offset: int = 0):
        """(stream, total size or None, start offset actually served)."""
        if self.local is not None:
            file = self.local / path
            try:
                f = open(file, "rb")
            except FileNotFoundError:
                raise ShardError(f"{path}: not found at {file}") from None
            size = os.fstat(f.fileno()).st_size
            f.seek(min(offset, size))
            return f, size, min(offset, size)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            resp = urllib.request.urlopen(urllib.request.Request(self.url(path), headers=headers), timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # the part file already holds every byte (or more)
                total = _content_range_total(exc.headers.get("Content-Range"))
                exc.close()
                return _Empty(), total, offset
            raise ShardError(f"{path}: HTTP {exc.code} {exc.reason} from {self.url(path)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ShardError(f"{path}: cannot connect to {self.url(path)} ({reason})") from None
        except http.client.HTTPException as exc:  # BadStatusLine, LineTooLong, ...: not OSError
            raise ShardError(f"{path}: bad HTTP answer from {self.url(path)} ({type(exc).__name__}: "
                             f"{str(exc)[:80]!r})") from None
        if resp.status == 206:
            value = resp.headers.get("Content-Range") or ""
            m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value)
            if not m or int(m.group(1)) > int(m.group(2)) or int(m.group(1)) > offset:
                resp.close()
                raise ShardError(f"{path}: malformed Content-Range {value[:80]!r} in a 206 answer from "
                                 f"{self.url(path)} (asked for bytes {offset}-)")
            total = None if m.group(3) == "*" else int(m.group(3))
            return resp, total, int(m.group(1))
        length = resp.headers.get("Content-Length")
        return resp, int(length) if length is not None else None, 0  # 200: the whole file (Range ignored)


class _Empty:
    def read(self, n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _content_range_total(value: str | None) -> int | None:
    m = re.search(r"/(\d+)\s*$", value or "")
    return int(m.group(1)) if m else None


def _fetch(source: _Source, path: str, part: Path, stop: threading.Event, progress: Callable[[int], None] | None,
           on_total: Callable[[int], None] | None, retries: int) -> int:
    """Download ``path`` into ``part``, continuing what it holds; returns the bytes transferred.

    A connection that drops is continued from where it stopped, ``retries`` times; then ShardError (the
    part file is kept for the next run).
    """
    transferred = 0
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        stream, total, start = source.open(path, have)
        try:
            if attempt == 0 and on_total is not None and total is not None:
                on_total(total - have)
            if total is not None and have > total:  # larger than the file: not ours, start again
                part.unlink()
                stream.close()
                continue
            mode = "ab" if start == have and have else "wb"
            if mode == "wb" and start:  # a range that starts elsewhere than asked: refuse rather than misplace bytes
                raise ShardError(f"{path}: the server sent bytes from {start}, asked for {have}")
            got = 0
            with open(part, mode) as f:
                while True:
                    if stop.is_set():
                        raise KeyboardInterrupt
                    try:
                        chunk = stream.read(CHUNK)
                    except (OSError, ValueError, http.client.HTTPException) as exc:  # IncompleteRead, reset, timeout
                        logger.debug("%s: connection dropped (%s)", path, exc)
                        break
                    if not chunk:
                        break
                    f.write(chunk)
                    got += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
            transferred += got
        finally:
            stream.close()
        size = part.stat().st_size
        if total is None or size == total:
            return transferred
        logger.info("%s: connection dropped at %d of %d bytes; continuing (%d of %d)", path, size, total, attempt + 1, retries)
    raise ShardError(f"{path}: truncated download ({part.stat().st_size} of {total} bytes after {retries + 1} "
                     f"attempts); the part file is kept, rerun to continue")


def _md5(path: Path, stop: threading.Event) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            if stop.is_set():
                raise KeyboardInterrupt
            h.update(chunk)
    return h.hexdigest()


def _expected_md5(source: _Source, split: str, shard: int) -> str:
    path = f"md5sum/{split}/md5.{shard_name(shard).removesuffix('.tar')}.txt"
    stream, _, _ = source.open(path)
    try:
        text = stream.read(1 << 16).decode("ascii", "replace")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise ShardError(f"{path}: cannot read ({exc})") from None
    finally:
        stream.close()
    m = re.search(r"\b([0-9a-fA-F]{32})\b", text)
    if not m:
        raise ShardError(f"{path}: no md5 sum in it ({text[:60]!r})")
    return m.group(1).lower()


# ----------------------------------------------------------------------------- extraction


def _member_target(dest: Path, name: str) -> Path | None:
    """Where a TAR member goes: GLDv2's a/b/c/<id>.jpg under ``dest`` (a flat <id>.jpg is nested the same way)."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts or name.startswith("/"):
        raise ShardError(f"unsafe member name {name!r}")
    file = parts[-1]
    stem, suffix = os.path.splitext(file)
    if suffix.lower() not in IMAGE_SUFFIXES:
        return None
    if len(stem) < 3:
        return dest / file
    return dest / stem[0] / stem[1] / stem[2] / file


def extract_stream(tar_path: Path, dest: Path, stop: threading.Event) -> int:
    """Write the TAR's images into ``dest`` (nested layout), reading it once as a stream; returns the count.

    Each image goes through a temporary name and a rename, so an interruption never leaves half an image.
    Links, devices and names leaving ``dest`` are refused (ShardError); other non-image members are skipped.
    """
    count = 0
    tmp: Path | None = None
    try:
        with tarfile.open(tar_path, mode="r|*") as tar:
            for member in tar:
                if stop.is_set():
                    raise KeyboardInterrupt
                if member.isdir():
                    continue
                if not member.isfile():
                    raise ShardError(f"member {member.name!r} is not a regular file (links are refused)")
                target = _member_target(dest, member.name)
                if target is None:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".tmp")
                src = tar.extractfile(member)
                with open(tmp, "wb") as f:
                    while chunk := src.read(CHUNK):
                        f.write(chunk)
                if tmp.stat().st_size != member.size:
                    raise tarfile.ReadError(f"member {member.name!r} is cut short")
                os.replace(tmp, target)
                tmp = None
                count += 1
    except (tarfile.TarError, EOFError, zlib_error) as exc:  # disk errors (OSError) go to the caller
        raise ShardError(f"corrupt TAR ({exc})") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return count


# ----------------------------------------------------------------------------- the command


def _disk_message(exc: OSError, where: Path) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing under {where} (free some space and rerun: finished shards are kept)"
    return f"cannot write under {where} ({exc.strerror or exc})"


def download_shard(source: _Source, out: Path, split: str, shard: int, stop: threading.Event,
                   progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None,
                   retries: int = 2) -> tuple[int, int]:
    """Fetch, check and extract one shard; returns (images, bytes transferred). Raises ShardError naming it."""
    name = f"{split}/{shard_name(shard)}"
    work = out / WORK_DIR / split
    work.mkdir(parents=True, exist_ok=True)
    part, tar = work / (shard_name(shard) + ".part"), work / shard_name(shard)
    transferred = 0
    try:
        expected = _expected_md5(source, split, shard)
        if not tar.exists():
            for attempt in (1, 2):
                transferred += _fetch(source, name, part, stop, progress, on_total if attempt == 1 else None, retries)
                got = _md5(part, stop)
                if got == expected:
                    os.replace(part, tar)
                    break
                part.unlink()
                if attempt == 2:
                    raise ShardError(f"md5 mismatch (expected {expected}, got {got}) on two downloads")
                logger.warning("%s: md5 mismatch (expected %s, got %s); downloading it again", name, expected, got)
        elif _md5(tar, stop) != expected:  # a checked TAR whose extraction was interrupted: check it again
            tar.unlink()
            return download_shard(source, out, split, shard, stop, progress, on_total, retries)
        try:
            images = extract_stream(tar, out / split, stop)
        except ShardError:
            tar.unlink()  # its md5 was right: the source itself is broken, and a TAR is large
            raise
        marker = work / shard_name(shard).replace(".tar", ".done")
        tmp_marker = marker.with_name(marker.name + ".tmp")
        tmp_marker.write_text(f"{expected} {images}\n")
        os.replace(tmp_marker, marker)  # a marker is whole or absent
        tar.unlink()  # a kill before this leaves the TAR beside its marker: the next run removes it (clean_done)
        return images, transferred
    except ShardError as exc:
        raise ShardError(f"{name}: {str(exc).removeprefix(name + ': ')}") from None
    except OSError as exc:
        raise ShardError(f"{name}: {_disk_message(exc, out)}") from None


def is_done(out: Path, split: str, shard: int) -> bool:
    return (out / WORK_DIR / split / shard_name(shard).replace(".tar", ".done")).is_file()


def clean_done(out: Path, split: str, shard: int) -> int:
    """Remove what a finished shard left in the work folder (its TAR or part file, when a kill came between
    the marker and the removal); returns the bytes freed."""
    freed = 0
    work = out / WORK_DIR / split
    for leftover in (work / shard_name(shard), work / (shard_name(shard) + ".part")):
        with contextlib.suppress(FileNotFoundError):
            size = leftover.stat().st_size
            leftover.unlink()
            freed += size
            logger.info("%s/%s is done: removed the leftover %s (%d bytes)", split, shard_name(shard), leftover.name, size)
    return freed


def download_metadata(source: _Source, out: Path, names: Sequence[str], stop: threading.Event,
                      retries: int = 2) -> tuple[list[Path], list[str], int]:
    """The metadata CSVs (continued like shards; no md5 published for them). (paths, error lines, bytes)."""
    paths, errors, transferred = [], [], 0
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    for name in names:
        dest = out / "metadata" / name
        if dest.is_file():
            paths.append(dest)
            continue
        part = dest.with_name(name + ".part")
        try:
            transferred += _fetch(source, f"metadata/{name}", part, stop, None, None, retries)
            os.replace(part, dest)
            paths.append(dest)
        except ShardError as exc:
            errors.append(str(exc))
        except OSError as exc:
            errors.append(f"metadata/{name}: {_disk_message(exc, out)}")
        except Exception as exc:  # noqa: BLE001 - one file's failure, whatever it is, is reported; the rest goes on
            logger.debug("metadata/%s", name, exc_info=True)
            errors.append(f"metadata/{name}: unexpected {type(exc).__name__}: {str(exc)[:200]}")
    return paths, errors, transferred


def main(
    split: str, out: str | Path, shards: str | None = None, metadata_only: bool = False,
    base_url: str = DEFAULT_BASE_URL, jobs: int = 4, retries: int = 2, progress: bool = True,
    timeout: float = 60.0,
) -> DownloadResult:
    """Download ``split``'s metadata and (unless ``metadata_only``) its shards ``shards`` into ``out``."""
    numbers = parse_shards(shards, split)
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = _Source(base_url, timeout=timeout)
    stop = threading.Event()
    result = DownloadResult()
    result.metadata, errors, result.bytes = download_metadata(source, out, METADATA[split], stop, retries)
    result.errors += errors
    if metadata_only:
        return result
    result.skipped = [s for s in numbers if is_done(out, split, s)]
    for s in result.skipped:
        clean_done(out, split, s)
    todo = [s for s in numbers if s not in set(result.skipped)]
    if result.skipped:
        logger.info("%s: %d of %d shards already downloaded and checked", split, len(result.skipped), len(numbers))
    lock = threading.Lock()
    bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc=f"{split} shards",
               disable=not progress or bool(os.environ.get("TQDM_DISABLE")))

    def add_total(n: int) -> None:
        with lock:
            bar.total = (bar.total or 0) + max(0, n)
            bar.refresh()

    def advance(n: int) -> None:
        with lock:
            bar.update(n)

    def one(shard: int) -> tuple[int, int]:
        return download_shard(source, out, split, shard, stop, advance, add_total, retries)

    pool = ThreadPoolExecutor(max_workers=min(jobs, max(1, len(todo))), thread_name_prefix="gldv2")
    try:
        futures = {s: pool.submit(one, s) for s in todo}
        for shard, future in futures.items():
            try:
                images, transferred = future.result()
            except ShardError as exc:
                logger.error("%s", exc)
                result.errors.append(str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - whatever one shard raised is that shard's failure
                logger.debug("%s/%s", split, shard_name(shard), exc_info=True)
                message = f"{split}/{shard_name(shard)}: unexpected {type(exc).__name__}: {str(exc)[:200]}"
                logger.error("%s", message)
                result.errors.append(message)
                continue
            result.done.append(shard)
            result.images += images
            result.bytes += transferred
    except KeyboardInterrupt:
        stop.set()  # the workers stop at their next chunk; part files and finished shards stay
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return result
