"""The index manifest (``manifest.json``), the package's errors, and atomic file writes.

Every file of an index directory that must be whole is written through
:func:`atomic_output`: write to ``<name>.<pid>.<random>.tmp`` (unique per
writer, so two processes never write the same temp file), flush and fsync it,
then ``os.replace`` it over the final name and fsync the directory. A reader
(or a process killed at any point) therefore sees either the old or the new
file, never a partial one; stray ``*.tmp`` files of dead writers are garbage.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import uuid
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: append-only segments (format 1: global.h5/local.h5/metadata.csv, upgraded on write)
LEGACY_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TMP_SUFFIX = ".tmp"

# Keys the index itself maintains; update_manifest() refuses to overwrite them
# so that a caller cannot make the manifest disagree with the data files.
MANAGED_KEYS = frozenset(
    {
        "format_version",
        "package_version",
        "index_id",
        "created",
        "updated",
        "config",
        "dim",
        "counts",
        "faiss",
        "local_bytes_per_image",
        "segments",
        "local_dim",
        "local_sets",
        "retired",
        "asmk",
    }
)


class IndexFormatError(ValueError):
    """An index file is missing a field, truncated or otherwise unreadable.

    The message always names the offending file.
    """


class ConfigMismatchError(ValueError):
    """An existing index was built with a different configuration than requested."""


def package_version() -> str:
    """Version of the installed ``landmarks`` distribution, ``"0+unknown"`` when not installed."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("landmarks")
    except PackageNotFoundError:
        return "0+unknown"


def utc_now() -> str:
    """Current time as an ISO-8601 UTC string with second precision."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------- atomic writes


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename inside it survives a power loss (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. directories cannot be fsynced on some platforms/filesystems
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """fsync a closed file by name (h5py and faiss write through their own handles)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path(path: Path) -> Path:
    """A temporary name, unique to this writer (pid + random), for a file renamed to ``path`` when whole."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def tmp_owner_alive(path: Path) -> bool:
    """Whether the process that named temp file ``path`` (``<name>.<pid>.<random>.tmp``) still runs on this host.

    Names without a pid (older writers) count as dead.
    """
    parts = Path(path).name.split(".")
    if len(parts) < 4 or not parts[-3].isdigit():
        return False
    pid = int(parts[-3])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists but is not ours, or cannot tell: keep the file
    return True


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success fsync it and ``os.replace`` it onto ``path``.

    The one way every file of the project is written whole or not at all. On an exception the temporary
    file is removed and ``path`` is untouched. ``keep_suffix``: the temporary name also ends with ``path``'s
    suffix, for writers that infer the format from it (``cv2.imwrite``, matplotlib, PIL); the parent folder
    is created if needed.
    """
    path = Path(path)
    tmp = tmp_path(path)
    if keep_suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp.with_name(tmp.name + path.suffix)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


# --------------------------------------------------------------------------- manifest


def normalise_config(config: dict) -> dict:
    """JSON round trip of ``config`` (tuples become lists, keys strings) so comparisons are exact.

    Raises ValueError when ``config`` is not a dict or not JSON-serialisable.
    """
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    try:
        return json.loads(json.dumps(config, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise ValueError(f"config is not JSON-serialisable: {e}") from e


def new_manifest(config: dict, dim: int) -> dict:
    """A manifest for an empty index of ``dim``-dimensional global descriptors."""
    now = utc_now()
    return {
        "format_version": FORMAT_VERSION,
        "package_version": package_version(),
        # identifies this index (kept when the directory is moved or copied; a new build gets a new one):
        # evidence files made against one index are never mixed with another's
        "index_id": uuid.uuid4().hex,
        "created": now,
        "updated": now,
        "config": normalise_config(config),
        "dim": int(dim),
        "counts": {"images": 0, "landmarks": 0, "nonlandmarks": 0, "local_features": 0},
        "faiss": {},
        "thresholds": {},
        "local_bytes_per_image": 0.0,
        "segments": [],  # published segments in row order: {"file", "rows", "local_features", "nonlandmarks"}
        "local_dim": None,
        "local_sets": {},  # secondary local feature sets: {name: {"conf", "dim", "parts"}} (index/local_sets.py)
        "retired": [],  # replaced files kept for readers: {"file", "since"} (writer.py, "Retired files")
    }


def read_manifest(path: str | os.PathLike) -> dict:
    """Read and validate ``manifest.json``.

    Raises FileNotFoundError when it does not exist and IndexFormatError (naming
    the file) when it is truncated, not JSON, lacks a field or is too new.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as e:
        raise IndexFormatError(f"{path}: cannot read manifest: {e}") from e
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise IndexFormatError(f"{path}: not valid JSON (truncated?): {e}") from e
    if not isinstance(manifest, dict):
        raise IndexFormatError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    for key, kind in (("format_version", int), ("dim", int), ("config", dict), ("counts", dict)):
        if not isinstance(manifest.get(key), kind):
            raise IndexFormatError(f"{path}: field {key!r} missing or not {kind.__name__}")
    if manifest["format_version"] > FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: format_version {manifest['format_version']} is newer than this package "
            f"supports ({FORMAT_VERSION}); upgrade the landmarks package"
        )
    if manifest["dim"] <= 0:
        raise IndexFormatError(f"{path}: dim must be positive, got {manifest['dim']}")
    # Fields added by later writers of the same format version get defaults.
    manifest.setdefault("faiss", {})
    manifest.setdefault("thresholds", {})
    manifest.setdefault("local_bytes_per_image", 0.0)
    manifest.setdefault("segments", [])
    manifest.setdefault("local_dim", None)
    manifest.setdefault("local_sets", {})
    manifest.setdefault("retired", [])  # files replaced by a commit/compaction, kept for readers (writer.py)
    if not isinstance(manifest["segments"], list):
        raise IndexFormatError(f"{path}: field 'segments' is not a list")
    if not isinstance(manifest["local_sets"], dict) or not all(
        isinstance(e, dict) and isinstance(e.get("parts"), list) and isinstance(e.get("dim"), int)
        for e in manifest["local_sets"].values()
    ):
        raise IndexFormatError(f"{path}: field 'local_sets' is not a dict of {{name: {{conf, dim, parts}}}}")
    return manifest


def write_manifest(path: str | os.PathLike, manifest: dict) -> None:
    """Write ``manifest`` atomically, stamping ``updated``."""
    manifest["updated"] = utc_now()
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def merge_manifest_fields(manifest: dict, fields: dict[str, Any]) -> dict:
    """Return a copy of ``manifest`` with caller-owned ``fields`` applied.

    ``thresholds`` is merged shallowly (new keys override, others kept); every
    other field is replaced. Index-managed keys raise ValueError.
    """
    bad = sorted(set(fields) & MANAGED_KEYS)
    if bad:
        raise ValueError(f"manifest fields {bad} are maintained by the index and cannot be set")
    out = copy.deepcopy(manifest)
    for key, value in normalise_config(fields).items():
        if key == "thresholds":
            if not isinstance(value, dict):
                raise ValueError(f"thresholds must be a dict, got {type(value).__name__}")
            out.setdefault("thresholds", {}).update(value)
        else:
            out[key] = value
    return out


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys at which two JSON-like configurations differ (sorted, recursive into dicts)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                out.append(name)
            else:
                out.extend(config_diff(a[key], b[key], name))
        return out
    return [] if a == b else [prefix or "<root>"]


def _lookup(config: Any, dotted: str) -> Any:
    cur = config
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return "<absent>"
        cur = cur[part]
    return cur


def check_config(path: Path, stored: dict, requested: dict) -> None:
    """Raise ConfigMismatchError unless the stored and requested configurations are equal.

    The message names the index, the differing keys with both values, and both
    configurations in full.
    """
    requested = normalise_config(requested)
    diff = config_diff(stored, requested)
    if not diff:
        return
    details = "; ".join(
        f"{key}: index={_lookup(stored, key)!r} requested={_lookup(requested, key)!r}"
        for key in diff
    )
    raise ConfigMismatchError(
        f"index at {path} was built with a different configuration. Differing keys: {details}. "
        f"Index configuration: {json.dumps(stored, sort_keys=True)}. "
        f"Requested configuration: {json.dumps(requested, sort_keys=True)}. "
        "Use the configuration the index was built with, or build a new index in another directory."
    )
