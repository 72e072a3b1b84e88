"""Running the recognizer over many query images, streaming per-query evidence to a JSONL file.

The evidence file makes long runs resumable (queries already in it are
skipped; a line cut by a crash is dropped) and lets ``tune-threshold`` and
later analyses re-decide without running any model again. Its first line
identifies the index and the recognition settings; a file made against
another index or with other settings is refused rather than mixed in.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from index.manifest import atomic_output
from retrieval.recognize import Evidence, Recognizer

logger = logging.getLogger(__name__)

EVIDENCE_VERSION = 3  # 3: the cascade's second matcher (inliers2), early exit the same for evaluate and predict
# Parameters that change the evidence itself (not just the decision taken from it).
EVIDENCE_KEYS = ("k", "candidate_score", "alpha", "num_candidates", "refs_per_candidate", "max_verifications",
                 "distractor_discount", "distractor_k", "on_demand_local", "confirm_inliers", "cascade", "cascade_pairs",
                 "cascade_resolve_inliers", "cascade_resolve_margin")


def evidence_header(rec: Recognizer, verify: bool, early_exit: bool) -> dict[str, Any]:
    """What an evidence file was made with: the index identity and the evidence-shaping parameters."""
    manifest = rec.db.manifest
    return {
        "evidence_version": EVIDENCE_VERSION,
        "index": str(Path(rec.db.path).resolve()),
        "index_id": manifest.get("index_id"),
        "index_created": manifest.get("created"),
        "index_images": int(rec.db.size),
        "params": {k: rec.conf[k] for k in EVIDENCE_KEYS},
        "match_conf": rec.match_conf,
        "second_set": rec.second_name if rec.second is not None else None,
        "second_match_conf": rec.second_match_conf,
        "verify": verify,
        "early_exit": early_exit,
        "confirm_inliers": rec.conf["confirm_inliers"] if early_exit else None,
    }


def read_evidence(path: str | Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """(header, {query id: record}) from an evidence file; a truncated last line is ignored."""
    path = Path(path)
    if not path.is_file():
        return None, {}
    header = None
    records: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if n >= len(lines) - 1:  # the last line, cut by an interruption
                logger.warning("%s: ignoring a truncated last line (%d)", path, n)
                continue
            raise ValueError(f"{path}, line {n}: not valid JSON") from None
        if header is None:
            if "evidence_version" not in obj:
                raise ValueError(f"{path}: not an evidence file (no header line)")
            header = obj
        else:
            records[obj["id"]] = obj
    return header, records


def _evidence_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    # not the index path: an index directory may be moved; its creation time and size identify it
    keys = ("evidence_version", "index_id", "index_created", "index_images", "params", "match_conf", "second_set",
            "second_match_conf", "verify", "early_exit", "confirm_inliers")
    return [k for k in keys if a.get(k) != b.get(k)]


def collect_evidence(
    rec: Recognizer,
    ids: Sequence[str],
    paths: Sequence[str],
    evidence_path: str | Path,
    verify: bool = True,
    early_exit: bool = True,
    progress: bool = True,
    num_workers: int | None = None,
    engine: str = "local",
    ray_options: Any = None,
    device: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Evidence for every query, resuming from ``evidence_path``.

    Returns {id: {"id", "evidence": Evidence | None, "error": str | None, "timings": {...}}}
    (records for ids not asked for are ignored). ``early_exit``: apply the recognizer's ``confirm_inliers``
    (off by default), as ``predict`` does; evaluate and predict must pass the same value so that the evidence
    evaluate stores (and tune-threshold re-decides) is the evidence predict decides on.

    ``engine="ray"``: the queries still to do are spread over Ray actors (``ray_options``: a
    :class:`retrieval.ray_engine.RayOptions`), each with its own read-only ``Recognizer`` of the same
    index and settings (``device`` for the actors' models); this process writes the evidence file as
    with ``engine="local"``, in the same order.
    """
    evidence_path = Path(evidence_path)
    evidence_path.parent.mkdir(parents=True, exist_ok=True)
    header = evidence_header(rec, verify, early_exit)
    old_header, records = read_evidence(evidence_path)
    if old_header is not None and _evidence_diff(old_header, header):
        diff = _evidence_diff(old_header, header)
        raise ValueError(
            f"{evidence_path} was made with other settings ({', '.join(diff)} differ); "
            "delete it or choose another output folder"
        )
    if old_header is None:
        with open(evidence_path, "w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
    else:
        # Rewrite without a possibly truncated last line, atomically, before appending.
        with atomic_output(evidence_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(old_header) + "\n")
            for rec_ in records.values():
                f.write(json.dumps(rec_) + "\n")
    wanted = set(ids)

    def done(i: int) -> bool:
        # Failed queries are retried (the file may have been fixed); a record made from another file
        # (same id, other --images folder) is recomputed.
        r = records.get(ids[i])
        return r is not None and not r.get("error") and r.get("path", paths[i]) == paths[i]

    todo = [i for i in range(len(ids)) if not done(i)]
    if len(ids) - len(todo):
        logger.info("%s: %d of %d queries already done, resuming", evidence_path, len(ids) - len(todo), len(ids))
    bar = tqdm(total=len(todo), desc="queries", unit="img", disable=not progress or bool(os.environ.get("TQDM_DISABLE")))
    todo_paths = [paths[i] for i in todo]
    if engine == "ray":
        from retrieval.ray_engine import map_paths

        actor_kwargs = {"index_dir": str(Path(rec.db.path).resolve()), "conf": dict(rec.conf), "match_conf": dict(rec.match_conf),
                        "device": device, "verify": verify, "early_exit": early_exit}
        results = map_paths(todo_paths, EvidenceActor, actor_kwargs, ray_options)
    else:
        results = evidence_records(rec, todo_paths, verify, early_exit, num_workers)
    with open(evidence_path, "a", encoding="utf-8") as f:
        for pos, result in results:
            qid = ids[todo[pos]]
            record = {"id": qid, **result}
            record["path"] = paths[todo[pos]]  # as given here (a Ray actor saw it made absolute)
            if record["error"]:
                logger.warning("query %s skipped: %s", qid, record["error"])
            f.write(json.dumps(record) + "\n")
            f.flush()
            records[qid] = record
            bar.update(1)
    bar.close()
    out = {}
    for qid in ids:
        r = records[qid]
        out[qid] = {**r, "evidence": Evidence.from_json(r["evidence"]) if r.get("evidence") else None}
    missing = wanted - set(out)
    assert not missing
    return out


def evidence_records(
    rec: Recognizer, paths: Sequence[str], verify: bool = True, early_exit: bool = True, num_workers: int | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(position, evidence record without its id) for each query path, in order: what the evidence file stores."""
    for pos, res in rec.fx.iter_paths(list(paths), num_workers=num_workers):
        if isinstance(res, str):
            yield pos, {"path": paths[pos], "evidence": None, "error": res, "timings": {}}
        else:
            ev, timings = rec.evidence(res, verify=verify, early_exit=early_exit)
            yield pos, {"path": paths[pos], "evidence": ev.to_json(), "error": None,
                        "timings": {k: round(v, 5) for k, v in {**res.timings, **timings}.items()}}


class EvidenceActor:
    """Ray actor (``--engine ray``): one read-only Recognizer of the index; per batch, evidence records.

    Runs :func:`evidence_records`, the local engine's code, with the driver's resolved settings.
    """

    def __init__(self, index_dir: str, conf: Mapping[str, Any], match_conf: Mapping[str, Any], device: str | None,
                 verify: bool, early_exit: bool, threads: int = 1):
        import torch

        torch.set_num_threads(max(1, int(threads)))
        self.rec = Recognizer.from_index(index_dir, device=device, match_conf=dict(match_conf), **dict(conf))
        self.verify, self.early_exit = verify, early_exit

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from retrieval.ray_engine import pack_results

        paths = [str(p) for p in batch["path"]]
        out: list[Any] = [None] * len(paths)
        for i, record in evidence_records(self.rec, paths, self.verify, self.early_exit, num_workers=0):
            out[i] = record
        return pack_results(batch["pos"], out)


def timing_summary(records: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Median milliseconds per stage over the queries (and per RANSAC pair)."""
    stages: dict[str, list[float]] = {}
    per_pair: list[float] = []
    for r in records.values():
        t = r.get("timings") or {}
        for k, v in t.items():
            if k != "pairs":
                stages.setdefault(k, []).append(v)
        if t.get("pairs"):
            per_pair.append(t["verify"] / t["pairs"])
    out = {f"{k}_ms": round(1000 * float(np.median(v)), 2) for k, v in stages.items()}
    if per_pair:
        out["verify_per_pair_ms"] = round(1000 * float(np.median(per_pair)), 2)
    totals = [sum(v for k, v in (r.get("timings") or {}).items() if k != "pairs") for r in records.values() if r.get("timings")]
    if totals:
        out["total_ms"] = round(1000 * float(np.median(totals)), 2)
    return out
