"""Reference collections: GLDv2-style CSVs or a folder per landmark, resolved to image paths.

A reference table has the columns ``id``, ``landmark_id`` (string; "" means a
non-landmark/distractor image) and ``path``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def validate_id(image_id: str, where: str = "") -> str:
    """Return ``image_id`` if it is a safe file-name stem, else raise ValueError.

    Ids are joined to the image folder, so one like ``../x`` or ``/etc/x``
    would escape it.
    """
    prefix = f"{where}: " if where else ""
    if not image_id or not image_id.strip():
        raise ValueError(f"{prefix}empty image id")
    if image_id != image_id.strip():
        raise ValueError(f"{prefix}image id {image_id!r} has leading or trailing spaces")
    if "/" in image_id or "\\" in image_id or "\x00" in image_id or image_id in (".", "..") or ".." in image_id:
        raise ValueError(f"{prefix}image id {image_id!r} is not a plain file name (it could escape the image folder)")
    return image_id


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


def read_table_csv(csv_path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """Read a CSV as strings, checking required columns, empty and duplicate ids (errors name file and line)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"CSV file not found: {csv_path}")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{csv_path}: empty CSV file (expected a header with columns {', '.join(required)})") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{csv_path}: malformed CSV ({exc})") from exc
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(
            f"{csv_path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}; "
            f"expected {', '.join(required)}"
        )
    df["id"] = df["id"].str.strip()
    for i, image_id in enumerate(df["id"]):
        validate_id(image_id, f"{csv_path}, line {i + 2}")
    dup = df["id"].duplicated(keep=False)
    if dup.any():
        first = df.loc[dup, "id"].iloc[0]
        lines = [str(i + 2) for i in df.index[df["id"] == first]]
        raise ValueError(
            f"{csv_path}: duplicate id {first!r} on lines {', '.join(lines)} ({int(dup.sum())} rows with duplicated ids)"
        )
    return df


def read_reference_csv(csv_path: str | Path, images_dir: str | Path) -> pd.DataFrame:
    """Read a GLDv2 ``id,landmark_id[,url]`` CSV and resolve each id's image path.

    Returns a DataFrame with columns ``id``, ``landmark_id`` ("" = non-landmark), ``path``.
    """
    df = read_table_csv(Path(csv_path), ("id", "landmark_id"))
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {images_dir}")
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
    images_dir = Path(images_dir)
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
            landmark = rel.parts[0]
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
        extra = read_table_csv(Path(distractors_csv), ("id",))
        extra = pd.DataFrame(
            {
                "id": extra["id"],
                "landmark_id": "",
                "path": [str(resolve_image_path(Path(images_dir), i)) for i in extra["id"]],
            }
        )
        clash = set(extra["id"]) & set(df["id"])
        if clash:
            raise ValueError(f"{distractors_csv}: id {sorted(clash)[0]!r} is also in the reference CSV")
        df = pd.concat([df, extra], ignore_index=True)
        logger.info("%s: %d distractor (non-landmark) images added", distractors_csv, len(extra))
    return df
