"""Reference collections: GLDv2-style CSVs or a folder per landmark, resolved to image paths.

A reference table has the columns ``id``, ``landmark_id`` (string; "" means a
non-landmark/distractor image) and ``path``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import pandas as pd

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def expand_image_paths(paths: Sequence[str | Path], recursive: bool = False) -> list[Path]:
    """Query paths as the user gave them, with each folder replaced by its image files.

    A folder means the files in it with an image extension (:data:`IMAGE_EXTENSIONS`, any case), sorted;
    with ``recursive`` those of its subfolders too. Other files are skipped and counted in the log. A file
    is kept whatever its name (decoding tells whether it is an image), and so is a path that does not
    exist (the loader reports it as "file not found"). Raises ValueError when folders were given and no
    image at all is left.
    """
    out: list[Path] = []
    folders = 0
    for path in map(Path, paths):
        if not path.is_dir():
            out.append(path)
            continue
        folders += 1
        files = sorted(p for p in (path.rglob("*") if recursive else path.iterdir()) if p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        subfolders = 0 if recursive else sum(1 for p in path.iterdir() if p.is_dir())
        note = f"; {subfolders} subfolders not searched (--recursive searches them)" if subfolders else ""
        log = logger.warning if not images else logger.info
        log("%s: %d images, %d non-image files skipped%s", path, len(images), len(files) - len(images), note)
        out.extend(images)
    if folders and not out:
        raise ValueError(f"no image files in {', '.join(str(p) for p in paths)} (extensions: {' '.join(IMAGE_EXTENSIONS)})")
    return out


def unsafe_id_reason(image_id: str) -> str | None:
    """Why ``image_id`` cannot be used as a file name, or ``None`` if it can."""
    if image_id == "":
        return "empty id"
    if image_id.startswith("/"):
        return "starts with '/'"
    for bad in ("/", "\\", "..", "\x00"):
        if bad in image_id:
            return f"contains {bad!r}"
    return None


def _line(row_index: int) -> int:
    """1-based file line of a data row (header is line 1)."""
    return int(row_index) + 2


def _check_field_counts(path: Path) -> None:
    """Refuse rows with more or fewer fields than the header: pandas would shift or pad them silently."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return
            for row in reader:
                if row and any(field.strip() for field in row) and len(row) != len(header):
                    raise ValueError(
                        f"{path}, line {reader.line_num}: {len(row)} fields but the header has {len(header)} "
                        f"({', '.join(header)})"
                    )
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc})") from exc
    except csv.Error as exc:
        raise ValueError(f"{path}: cannot parse CSV: {exc}") from exc


def check_landmark_id(landmark_id: str, where: str) -> str:
    """Landmark ids go into Kaggle submissions as ``"<id> <confidence>"``: no spaces, commas or quotes."""
    if any(ch.isspace() or ch in ',"' for ch in landmark_id):
        raise ValueError(
            f"{where}: landmark id {landmark_id!r} contains a space, comma or quote, which the submission "
            "format (id,\"<landmark> <confidence>\") cannot hold; rename it (e.g. spaces to underscores)"
        )
    return landmark_id


def read_table(csv_path: str | Path, required: Sequence[str] = ("id",)) -> pd.DataFrame:
    """Read a CSV of string columns and validate its ``id`` column.

    Blank lines are dropped (line numbers stay those of the file); ``id`` and
    the ``required`` columns are stripped of surrounding whitespace. The
    returned frame keeps a ``_line`` column with each row's file line.

    Raises:
        ValueError: missing/empty/unparsable file, missing columns, no data
            rows, empty/unsafe/duplicate ids (naming ids and lines).
    """
    path = Path(csv_path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: file is empty")
    _check_field_counts(path)
    try:
        df = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,
            encoding="utf-8-sig",
            index_col=False,  # never turn the first column into an index (rows with a trailing comma)
        )
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot parse CSV: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: missing required column(s) {missing}; expected {list(required)}, found {list(df.columns)}"
        )
    df["_line"] = [_line(i) for i in range(len(df))]
    blank = (df.drop(columns="_line") == "").all(axis=1)
    df = df.loc[~blank].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"{path}: no data rows (header only)")
    for col in required:
        df[col] = df[col].str.strip()

    for image_id, line in zip(df["id"], df["_line"]):
        reason = unsafe_id_reason(image_id)
        if reason is not None:
            raise ValueError(f"{path}, line {line}: invalid id {image_id!r} ({reason}); ids must be safe file names")
    dup = df["id"].duplicated(keep=False)
    if dup.any():
        dups = df.loc[dup]
        groups = dups.groupby("id", sort=False)["_line"].apply(list)
        first_id, lines = next(iter(groups.items()))
        more = f" ({len(groups) - 1} more duplicated id(s))" if len(groups) > 1 else ""
        raise ValueError(f"{path}: duplicate id {first_id!r} on lines {lines}{more}")
    return df



def image_path_candidates(images_dir: Path, image_id: str) -> list[Path]:
    """Where an id's image may be: ``<dir>/<id>.jpg`` or GLDv2's ``<dir>/<a>/<b>/<c>/<id>.jpg``."""
    flat = images_dir / f"{image_id}.jpg"
    paths = [flat]
    if len(image_id) >= 3:
        paths.append(images_dir / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg")
    paths += [images_dir / f"{image_id}{ext}" for ext in IMAGE_EXTENSIONS if ext != ".jpg"]
    return paths


def resolve_image_path(images_dir: Path, image_id: str) -> Path:
    """The existing image file of ``image_id``, or the flat ``<dir>/<id>.jpg`` path when none exists.

    A missing file is not an error here: extraction reports it in ``skipped.csv``.
    """
    candidates = image_path_candidates(images_dir, image_id)
    for path in candidates:
        if path.is_file():
            return path
    return candidates[0]


def read_reference_csv(csv_path: str | Path, images_dir: str | Path) -> pd.DataFrame:
    """Read a GLDv2 ``id,landmark_id[,url]`` CSV and resolve each id's image path.

    Returns a DataFrame with columns ``id``, ``landmark_id`` ("" = non-landmark), ``path``.
    """
    df = read_table(csv_path, ("id", "landmark_id"))
    # Absolute paths: the index is used later from other working directories.
    images_dir = Path(images_dir).expanduser().resolve()
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {images_dir}")
    for lm, line in zip(df["landmark_id"], df["_line"]):
        if lm:
            check_landmark_id(lm.strip(), f"{csv_path}, line {line}")
    out = pd.DataFrame(
        {
            "id": df["id"],
            "landmark_id": df["landmark_id"].str.strip(),
            "path": [str(resolve_image_path(images_dir, i)) for i in df["id"]],
        }
    )
    n_lm = (out["landmark_id"] != "").sum()
    logger.info(
        "%s: %d images, %d of %d landmarks, %d non-landmark",
        csv_path, len(out), n_lm, out.loc[out["landmark_id"] != "", "landmark_id"].nunique(), len(out) - n_lm,
    )
    return out


def read_folder_layout(images_dir: str | Path) -> pd.DataFrame:
    """A folder per landmark: ``<dir>/<landmark>/<file>``; files directly in ``<dir>`` are non-landmarks.

    Image ids are ``<landmark>/<file stem>`` (or the stem for non-landmarks),
    which are unique because file names are unique within a folder.
    """
    images_dir = Path(images_dir).expanduser().resolve()
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {images_dir}")
    rows = []
    for path in sorted(images_dir.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        rel = path.relative_to(images_dir)
        if len(rel.parts) == 1:
            rows.append((path.stem, "", str(path)))
        else:
            landmark = check_landmark_id(rel.parts[0], f"{images_dir / rel.parts[0]} (landmark folder)")
            rows.append(("/".join(rel.parts[:-1] + (path.stem,)), landmark, str(path)))
    if not rows:
        raise ValueError(f"{images_dir}: no images found (expected <landmark>/<image> files)")
    df = pd.DataFrame(rows, columns=["id", "landmark_id", "path"])
    dup = df["id"].duplicated(keep=False)
    if dup.any():
        raise ValueError(
            f"{images_dir}: several files share the id {df.loc[dup, 'id'].iloc[0]!r} (same name, other extension)"
        )
    logger.info("%s: %d images in %d landmark folders", images_dir, len(df), df["landmark_id"].replace("", pd.NA).nunique())
    return df


def read_references(
    csv_path: str | Path | None, images_dir: str | Path, distractors_csv: str | Path | None = None
) -> pd.DataFrame:
    """References from a CSV (or the folder layout when no CSV), plus optional distractor ids (non-landmarks)."""
    df = read_reference_csv(csv_path, images_dir) if csv_path else read_folder_layout(images_dir)
    if distractors_csv:
        extra = read_table(distractors_csv, ("id",))
        extra = pd.DataFrame(
            {
                "id": extra["id"],
                "landmark_id": "",
                "path": [str(resolve_image_path(Path(images_dir).expanduser().resolve(), i)) for i in extra["id"]],
            }
        )
        clash = set(extra["id"]) & set(df["id"])
        if clash:
            raise ValueError(
                f"{distractors_csv}: id {sorted(clash)[0]!r} is also in the reference CSV (an index.csv written by "
                "split already includes the distractors it did not use as queries: drop --distractors)"
            )
        df = pd.concat([df, extra], ignore_index=True)
        logger.info("%s: %d distractor (non-landmark) images added", distractors_csv, len(extra))
    return df
