"""``skipped.csv``: ``id,path,reason``, append-only (one line per skipped image, repeated ids allowed: the last
reason wins); deduplicated at commit.

Readers wrap OSError/csv errors into IndexFormatError naming the file.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pandas as pd

from .manifest import IndexFormatError, atomic_output

SKIPPED_NAME = "skipped.csv"
SKIPPED_COLUMNS = ["id", "path", "reason"]


def read_skipped_rows(path: Path) -> dict[str, tuple[str, str]]:
    """``skipped.csv`` as {id: (path, reason)} in first-seen order, last reason winning ({} when absent).

    Lines that do not have three fields (e.g. a line cut by a kill) are ignored.
    """
    rows: dict[str, tuple[str, str]] = {}
    if not path.exists():
        return rows
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is not None and header != SKIPPED_COLUMNS:
                raise IndexFormatError(f"{path}: columns {header}, expected {SKIPPED_COLUMNS}")
            for rec in reader:
                if len(rec) == 3 and rec[0]:
                    rows[rec[0]] = (rec[1], rec[2])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise IndexFormatError(f"{path}: cannot parse skipped table: {e}") from e
    return rows


def read_skipped(path: Path) -> pd.DataFrame:
    """``skipped.csv`` deduplicated (empty table when absent)."""
    rows = read_skipped_rows(path)
    return pd.DataFrame([(k, p, r) for k, (p, r) in rows.items()], columns=SKIPPED_COLUMNS, dtype=object)


def append_skipped(path: Path, rows: dict[str, tuple[str, str]]) -> None:
    """Append rows to ``skipped.csv`` (O(new rows); fsynced). The caller holds the writer lock."""
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    new = not path.exists() or path.stat().st_size == 0
    if new:
        writer.writerow(SKIPPED_COLUMNS)
    for id_, (p, reason) in rows.items():
        writer.writerow([id_, p, reason])
    with open(path, "a+b") as f:
        if not new:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a line cut by a kill: end it so it stays one (ignored) line
                f.write(b"\n")
        f.write(buf.getvalue().encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def write_skipped(path: Path, rows: dict[str, tuple[str, str]]) -> None:
    """Replace ``skipped.csv`` atomically with ``rows`` (used to deduplicate it at commit)."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(SKIPPED_COLUMNS)
            for id_, (p, reason) in rows.items():
                writer.writerow([id_, p, reason])
