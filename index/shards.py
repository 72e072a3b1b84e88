"""Shards: ``shards/shard-XXXXXX.h5``, one extraction batch not yet committed.

Datasets ``ids``, ``landmark_ids``, ``paths``, ``descriptors`` (float16) and
optionally ``local_keypoints``, ``local_descriptors``, ``local_offsets`` (attr
``local_dim``) and ``local_sizes``. Readers wrap h5py/OSError errors into
IndexFormatError naming the shard.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .hdf5 import _STR, _dataset, _read_str, h5_file, open_h5
from .manifest import IndexFormatError, TMP_SUFFIX, fsync_dir, fsync_file

SHARDS_DIR = "shards"

_SHARD_RE = re.compile(r"^shard-(\d{6,})\.h5$")
_SHARD_ANY_RE = re.compile(r"^shard-(\d{6,})\.h5")


def shard_number(path: Path) -> int | None:
    """Sequence number of a shard or shard temp file, None for other names."""
    m = _SHARD_ANY_RE.match(path.name)
    return int(m.group(1)) if m else None


def list_shards(shards_dir: Path) -> list[Path]:
    """Complete shards (temp files excluded), in sequence order."""
    if not shards_dir.is_dir():
        return []
    found = [p for p in shards_dir.iterdir() if _SHARD_RE.match(p.name)]
    return sorted(found, key=lambda p: int(_SHARD_RE.match(p.name).group(1)))


@dataclass
class ShardBatch:
    """One extraction batch for :meth:`~index.writer.IndexWriter.write_shard`: image ``i`` is row ``i`` of
    every field (checked there, with the index's dimensions).

    Attributes:
        ids, landmark_ids, paths: n strings each; ids non-empty, landmark_id "" = non-landmark.
        xb: ``(n, dim)`` float32 global descriptors (L2-normalised by write_shard and stored as float16).
        local_keypoints: per image ``(k_i, 4)`` float32 ``[x, y, scale, score]``, or None (no local features).
        local_descriptors: per image ``(k_i, d)`` float32/float16, or None; ``d`` fixed per index.
        local_sizes: optional ``(n, 2)`` int ``[width, height]`` of the image the local features were detected on
            (what ``local_image_size`` returns).
    """

    ids: Sequence[str]
    landmark_ids: Sequence[str]
    paths: Sequence[str]
    xb: np.ndarray
    local_keypoints: Sequence[np.ndarray] | None = None
    local_descriptors: Sequence[np.ndarray] | None = None
    local_sizes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


def write_shard_file(
    shards_dir: Path,
    ids: list[str],
    landmark_ids: list[str],
    paths: list[str],
    desc16: np.ndarray,
    local: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    local_sizes: np.ndarray | None = None,
    seq: int | None = None,
) -> Path:
    """Write one batch as the next ``shard-XXXXXX.h5``; atomic and never overwriting another shard.

    The file is written under a unique temp name, fsynced, then hard-linked to
    the first free sequence number (``os.link`` fails if the name exists, so
    concurrent writers, e.g. Ray workers, cannot clobber each other), and the
    temp name removed. ``local`` is (keypoints (M, 4) float32, descriptors
    (M, d) float16, offsets (n+1,) int64). ``seq``: exactly this sequence number
    (FileExistsError naming the shard when it is taken: e.g. a retried task
    already published it).
    """
    shards_dir.mkdir(parents=True, exist_ok=True)
    tmp = shards_dir / f"shard-000000.h5.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    try:
        with h5_file(tmp, "w") as f:
            f.attrs["dim"] = desc16.shape[1]
            f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=_STR)
            f.create_dataset("landmark_ids", data=np.asarray(landmark_ids, dtype=object), dtype=_STR)
            f.create_dataset("paths", data=np.asarray(paths, dtype=object), dtype=_STR)
            f.create_dataset("descriptors", data=desc16)
            if local is not None:
                kp, ld, off = local
                f.attrs["local_dim"] = ld.shape[1]
                f.create_dataset("local_keypoints", data=kp)
                f.create_dataset("local_descriptors", data=ld)
                f.create_dataset("local_offsets", data=off)
                if local_sizes is not None:
                    f.create_dataset("local_sizes", data=np.asarray(local_sizes, dtype=np.int32))
        fsync_file(tmp)
        fixed = seq is not None
        if not fixed:
            existing = [n for n in (shard_number(p) for p in shards_dir.iterdir()) if n is not None]
            seq = max(existing, default=-1) + 1
        while True:
            final = shards_dir / f"shard-{seq:06d}.h5"
            try:
                os.link(tmp, final)
                break
            except FileExistsError:
                if fixed:
                    raise FileExistsError(f"{final} already exists") from None
                seq += 1
            except OSError:  # filesystem without hard links: plain rename (single writer assumed)
                if final.exists():
                    if fixed:
                        raise FileExistsError(f"{final} already exists") from None
                    seq += 1
                    continue
                os.replace(tmp, final)
                break
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(shards_dir)
    return final


class ShardReader:
    """Reads one shard file; errors name the shard."""

    def __init__(self, path: Path):
        self.path = path
        with open_h5(path) as f:
            try:
                self.ids = _read_str(_dataset(f, "ids", path, 1), path)
                self.n = len(self.ids)
                desc = _dataset(f, "descriptors", path, 2, np.float16)
                self.dim = int(desc.shape[1])
                if desc.shape[0] != self.n:
                    raise IndexFormatError(f"{path}: {self.n} ids but {desc.shape[0]} descriptors")
                self.has_local = "local_offsets" in f
                self.has_sizes = "local_sizes" in f
                self.local_dim = int(f.attrs["local_dim"]) if self.has_local else None
                self.local_offsets = (
                    np.asarray(_dataset(f, "local_offsets", path, 1, np.int64)[()])
                    if self.has_local
                    else None
                )
            except (KeyError, OSError) as e:
                raise IndexFormatError(f"{path}: unreadable shard: {e}") from e
        if self.local_offsets is not None and len(self.local_offsets) != self.n + 1:
            raise IndexFormatError(
                f"{path}: local_offsets has {len(self.local_offsets)} entries, expected {self.n + 1}"
            )

    def landmark_ids(self) -> np.ndarray:
        """The shard's landmark ids, in row order."""
        with open_h5(self.path) as f:
            try:
                return _read_str(f["landmark_ids"], self.path)
            except (KeyError, OSError) as e:
                raise IndexFormatError(f"{self.path}: unreadable shard: {e}") from e

    def read(self, keep: np.ndarray) -> dict[str, np.ndarray]:
        """Arrays of the rows where ``keep`` (bool, (n,)) is true, local features concatenated."""
        out: dict[str, np.ndarray] = {}
        with open_h5(self.path) as f:
            try:
                out["ids"] = self.ids[keep]
                out["landmark_ids"] = _read_str(f["landmark_ids"], self.path)[keep]
                out["paths"] = _read_str(f["paths"], self.path)[keep]
                out["descriptors"] = np.asarray(f["descriptors"][()])[keep]
                if self.has_local:
                    counts = np.diff(self.local_offsets)
                    kp = np.asarray(f["local_keypoints"][()])
                    ld = np.asarray(f["local_descriptors"][()])
                    if kp.shape[0] != self.local_offsets[-1] or ld.shape[0] != self.local_offsets[-1]:
                        raise IndexFormatError(f"{self.path}: local arrays do not match local_offsets")
                    feat_keep = np.repeat(keep, counts)  # per-feature mask from the per-image mask
                    out["local_counts"] = counts[keep]
                    out["local_keypoints"] = kp[feat_keep]
                    out["local_descriptors"] = ld[feat_keep]
                    if "local_sizes" in f:
                        out["local_sizes"] = np.asarray(f["local_sizes"][()])[keep]
            except (KeyError, OSError) as e:
                raise IndexFormatError(f"{self.path}: unreadable shard: {e}") from e
        return out
