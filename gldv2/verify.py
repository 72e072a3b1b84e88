"""``verify-data``: what a build would meet in a CSV of image ids and an image folder, before it runs.

Findings (one row each in the report CSV, columns ``kind,id,line,path,reason``):

* ``missing_image``: an id of the CSV with no image file where build-index looks for it;
* ``unreadable_image``: a file that exists but that image loading refuses (empty, not an image,
  truncated, too small, a decompression bomb ...), with the reason;
* ``duplicate_id``: an id on more than one line (every line after the first);
* ``invalid_row``: an id that cannot be a file name, a landmark id the submission format cannot hold, or a
  row with the wrong number of fields;
* ``unlisted_image``: an image file in the folder that no CSV row refers to.

Images are checked from their headers (:func:`retrieval.image_io.probe_image`: size checks, truncated
JPEG/PNG), not decoded, unless ``decode=True``. Unlisted images are reported but are no error: one folder
often serves several CSVs (GLDv2's ``train.csv`` and ``train_clean.csv``).
"""
from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from index.manifest import atomic_output
from retrieval.data import IMAGE_EXTENSIONS, check_landmark_id, image_path_candidates, unsafe_id_reason
from retrieval.image_io import ImageError, load_image, probe_image

logger = logging.getLogger(__name__)

REPORT_COLUMNS = ("kind", "id", "line", "path", "reason")
KINDS = ("missing_image", "unreadable_image", "duplicate_id", "invalid_row", "unlisted_image")
# Findings that a build would fail on (exit code 1); unlisted images are only reported.
ERROR_KINDS = ("missing_image", "unreadable_image", "duplicate_id", "invalid_row")


@dataclass
class Finding:
    kind: str
    id: str
    line: int | None
    path: str
    reason: str


@dataclass
class VerifyResult:
    ids: int = 0  # distinct ids in the CSV
    images_checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    report: Path | None = None

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(f.kind for f in self.findings)
        return {k: c.get(k, 0) for k in KINDS}

    @property
    def ok(self) -> bool:
        return not any(f.kind in ERROR_KINDS for f in self.findings)

    def summary(self, csv_path: str | Path) -> str:
        c = self.counts
        state = "OK" if self.ok else "PROBLEMS"
        return (f"{csv_path}: {state}: {self.ids} ids, {self.images_checked} images checked; "
                f"{c['missing_image']} missing, {c['unreadable_image']} unreadable, {c['duplicate_id']} duplicate ids, "
                f"{c['invalid_row']} invalid rows, {c['unlisted_image']} images with no row"
                + (f"; details in {self.report}" if self.report else ""))


def _rows(csv_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(file line, row) of a CSV with an ``id`` column; tolerant of what verify-data reports (bad rows)."""
    if not csv_path.is_file():
        raise ValueError(f"{csv_path}: file not found")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if "id" not in header:
                raise ValueError(f"{csv_path}: missing required column 'id'; found {header or 'an empty file'}")
            for row in reader:
                if not row or not any(v.strip() for v in row):
                    continue
                line = reader.line_num
                if len(row) != len(header):
                    yield line, {"_bad": f"{len(row)} fields but the header has {len(header)} ({', '.join(header)})",
                                 "id": row[0].strip() if header[0] == "id" and row else ""}
                    continue
                yield line, {h: v for h, v in zip(header, row)}
    except UnicodeDecodeError as exc:
        raise ValueError(f"{csv_path}: not a UTF-8 text file ({exc})") from exc
    except csv.Error as exc:
        raise ValueError(f"{csv_path}: cannot parse CSV: {exc}") from exc


def _image_files(images_dir: Path) -> Iterator[Path]:
    """Every image file below ``images_dir`` (scandir: no per-file stat on the large GLDv2 tree)."""
    stack = [images_dir]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(Path(entry.path))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    yield Path(entry.path)


def _check(path: Path, decode: bool) -> str | None:
    try:
        if decode:
            load_image(path)
        else:
            probe_image(path)
    except ImageError as exc:
        return str(exc).removeprefix(f"{path}: ")
    return None


def main(
    csv_path: str | Path,
    images_dir: str | Path,
    out_csv: str | Path | None,
    decode: bool = False,
    threads: int = 8,
    progress: bool = True,
) -> VerifyResult:
    """Check ``csv_path`` (column ``id``; ``landmark_id`` checked when present) against ``images_dir``.

    Paths are resolved as build-index resolves them (``<dir>/<id>.jpg`` or GLDv2's ``<dir>/a/b/c/<id>.jpg``).
    Writes the findings to ``out_csv`` (atomically; only the header when there are none).
    """
    csv_path, images_dir = Path(csv_path), Path(images_dir)
    if not images_dir.is_dir():
        raise ValueError(f"image folder not found: {images_dir}")
    result = VerifyResult()
    first_line: dict[str, int] = {}
    listed: dict[str, Path | None] = {}  # id -> its image file (None: not found)
    for line, row in _rows(csv_path):
        image_id = row.get("id", "").strip()
        if "_bad" in row:
            result.findings.append(Finding("invalid_row", image_id, line, "", row["_bad"]))
            continue
        reason = unsafe_id_reason(image_id)
        if reason:
            result.findings.append(Finding("invalid_row", image_id, line, "", f"invalid id ({reason})"))
            continue
        landmark = row.get("landmark_id", "").strip()
        if landmark:
            try:
                check_landmark_id(landmark, f"line {line}")
            except ValueError as exc:
                result.findings.append(Finding("invalid_row", image_id, line, "", str(exc)))
        if image_id in first_line:
            result.findings.append(Finding("duplicate_id", image_id, line, "", f"also on line {first_line[image_id]}"))
            continue
        first_line[image_id] = line
        listed[image_id] = next((p for p in image_path_candidates(images_dir, image_id) if p.is_file()), None)
    result.ids = len(first_line)

    # Files below the folder that no row resolves to; a missing id's file may be among them, misplaced.
    resolved = {p for p in listed.values() if p is not None}
    by_stem: dict[str, Path] = {}
    for path in _image_files(images_dir):
        if path not in resolved:
            by_stem.setdefault(path.stem, path)
            result.findings.append(Finding("unlisted_image", path.stem, None, str(path), "no row of the CSV refers to this file"))
    for image_id, path in listed.items():
        if path is None:
            where = by_stem.get(image_id)
            hint = f"; a file of that name is at {where}, but build-index does not look there" if where else ""
            expected = " or ".join(str(p) for p in image_path_candidates(images_dir, image_id)[:2])
            result.findings.append(Finding("missing_image", image_id, first_line[image_id], expected, f"no image file{hint}"))

    # Header checks are I/O-bound: threads overlap the reads (decoding releases the GIL too).
    todo = [(i, p) for i, p in listed.items() if p is not None]
    bar = tqdm(total=len(todo), desc="images", unit="img", disable=not progress or bool(os.environ.get("TQDM_DISABLE")))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for (image_id, path), reason in zip(todo, pool.map(lambda t: _check(t[1], decode), todo)):
            bar.update(1)
            if reason is not None:
                result.findings.append(Finding("unreadable_image", image_id, first_line[image_id], str(path), reason))
    bar.close()
    result.images_checked = len(todo)
    order = {k: n for n, k in enumerate(KINDS)}
    result.findings.sort(key=lambda f: (order[f.kind], f.line or 0, f.path))
    if out_csv is not None:
        result.report = Path(out_csv)
        result.report.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(result.report, keep_suffix=True) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(REPORT_COLUMNS)
            for x in result.findings:
                writer.writerow([x.kind, x.id, "" if x.line is None else x.line, x.path, x.reason])
    logger.info("verify-data: %s", result.counts)
    return result
