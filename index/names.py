"""Landmark names: read from GLDv2's ``*_label_to_category.csv`` or a ``landmark_id,name`` CSV, kept in the index.

GLDv2's category is a Wikimedia Commons URL
(``http://commons.wikimedia.org/wiki/Category:St_Pancras_railway_station``); the name is its last part,
percent-decoded, without ``Category:``, underscores as spaces. A name is data from a file: control characters
are dropped when it is read, and every output escapes it for its medium (JSON by ``json.dumps``).

The names live in the index directory as the aux arrays ``aux/landmark_names.npz`` (UTF-8 bytes and
offsets: 200 k GLDv2 names take ~6 MB, not a fixed-width string per name); no index format change.
"""
from __future__ import annotations

import csv
import re
import urllib.parse
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from index.aux_files import AUX_DIR, read_aux_file
from index.reader import IndexReader
from index.writer import IndexWriter

AUX_NAME = "landmark_names"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean_name(text: str) -> str:
    """A name as shown: control characters (terminal escapes, newlines) removed, spaces collapsed."""
    return " ".join(_CONTROL.sub(" ", text).split())


def name_from_category(category: str) -> str:
    """``.../wiki/Category:St_Pancras_railway_station`` -> ``St Pancras railway station`` (a plain text stays)."""
    text = category.strip()
    if "://" in text or text.startswith("Category:"):
        last = urllib.parse.urlsplit(text).path.rstrip("/").rsplit("/", 1)[-1] if "://" in text else text
        text = urllib.parse.unquote(last).removeprefix("Category:").replace("_", " ")
    return clean_name(text)


def read_names_csv(path: str | Path) -> dict[str, str]:
    """{landmark id: name} from ``landmark_id,category`` (GLDv2) or ``landmark_id,name``.

    Raises:
        ValueError: missing file or columns, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    names: dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = fields
            column = "name" if "name" in fields else "category" if "category" in fields else None
            if "landmark_id" not in fields or column is None:
                raise ValueError(f"{path}: expected columns landmark_id and category (GLDv2 *_label_to_category.csv) "
                                 f"or name; found {fields}")
            for row in reader:
                lm = (row.get("landmark_id") or "").strip()
                name = name_from_category(row.get(column) or "")
                if lm and name:
                    names[lm] = name
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc})") from exc
    except csv.Error as exc:
        raise ValueError(f"{path}: cannot parse CSV: {exc}") from exc
    if not names:
        raise ValueError(f"{path}: no landmark names in it")
    return names


def folder_names(landmark_ids: Iterable[str]) -> dict[str, str]:
    """The folder-per-landmark layout: each landmark is named by its folder, underscores as spaces (a landmark
    id, hence a folder name, cannot hold spaces: ``Tower_Bridge`` is shown as "Tower Bridge")."""
    return {lm: clean_name(lm.replace("_", " ")) for lm in landmark_ids if lm}


def _pack(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), np.uint8).copy(), offsets


def _unpack(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = data.tobytes()
    return [raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def store_names(index_dir: str | Path, names: Mapping[str, str]) -> int:
    """Merge ``names`` into the index's names (new ones win); returns how many the index now holds."""
    with IndexWriter.open_for_write(index_dir) as db:
        merged = {**load_names(db), **{str(k): clean_name(str(v)) for k, v in names.items()}}
        ids, id_offsets = _pack(list(merged))
        text, text_offsets = _pack(list(merged.values()))
        db.write_aux(AUX_NAME, {"id_utf8": ids, "id_offsets": id_offsets, "name_utf8": text, "name_offsets": text_offsets})
    return len(merged)


def load_names(index: str | Path | IndexReader) -> dict[str, str]:
    """{landmark id: name} stored with the index ({} when it has none).

    Give the reader a command already holds: the names are read through it. A path reads the one small
    names file of that index directory, without opening the index (its FAISS file and segments).
    """
    if isinstance(index, IndexReader):
        arrays = index.read_aux(AUX_NAME)
    else:
        arrays = read_aux_file(Path(index) / AUX_DIR / f"{AUX_NAME}.npz")
    if not arrays:
        return {}
    return dict(zip(_unpack(arrays["id_utf8"], arrays["id_offsets"]), _unpack(arrays["name_utf8"], arrays["name_offsets"])))


def with_names(obj: Any, names: Mapping[str, str]) -> Any:
    """A copy of a JSON-like answer with ``landmark_name`` right after every ``landmark_id`` (None: unnamed)."""
    if isinstance(obj, list):
        return [with_names(x, names) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out[key] = with_names(value, names)
        if key == "landmark_id":
            out["landmark_name"] = names.get(value) if value else None
    return out
