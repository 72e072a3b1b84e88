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

from engines.ray import RayActor, pack_results
from retrieval.recognize import Evidence, Recognizer

from .jsonl import read_jsonl

logger = logging.getLogger(__name__)

EVIDENCE_VERSION = 3  # 3: the cascade's second matcher (inliers2), early exit the same for evaluate and predict
# Parameters that change the evidence itself (not just the decision taken from it).
EVIDENCE_KEYS = ("k", "candidate_score", "alpha", "global_rerank", "global_rerank_k", "num_candidates",
                 "refs_per_candidate", "max_verifications", "distractor_discount", "distractor_k", "on_demand_local",
                 "confirm_inliers", "cascade", "cascade_pairs", "cascade_resolve_inliers", "cascade_resolve_margin")


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
        # the ASMK channel (an index option), when it runs: absent otherwise, so earlier evidence stays valid
        **({"asmk": {"candidates": rec.conf["asmk_candidates"], "codebook": rec.asmk.entry["codebook"]}}
           if rec.asmk is not None else {}),
    }


def read_evidence(path: str | Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """(header, {query id: record}) from an evidence file; a truncated last line is ignored."""
    path = Path(path)
    if not path.is_file():
        return None, {}
    header = None
    records: dict[str, dict[str, Any]] = {}
    for obj in read_jsonl(path):
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
            "second_match_conf", "verify", "early_exit", "confirm_inliers", "asmk")
    return [k for k in keys if a.get(k) != b.get(k)]


_DECODER = json.JSONDecoder()


def _record_fields(line: str) -> tuple[str, str | None, bool]:
    """(id, path, ok) of an evidence record line.

    Only those values are parsed when the line has the layout :func:`collect_evidence` writes
    (``{"id": .., "path": .., "evidence": {50 neighbours ..}, "error": .., "timings": {..}}``); any other
    line is parsed whole. Raises ValueError (JSONDecodeError) for a line that is not a record.
    """
    if line.startswith('{"id": '):
        qid, at = _DECODER.raw_decode(line, 7)
        path = None
        if line.startswith(', "path": ', at):
            path, at = _DECODER.raw_decode(line, at + 10)
        e = line.rfind('"error": ')  # after the evidence: only the timings' numbers follow it
        if isinstance(qid, str) and e > at and isinstance(path, (str, type(None))):
            error, end = _DECODER.raw_decode(line, e + 9)
            if line.startswith(', "timings": ', end) and line.rstrip().endswith("}"):
                return qid, path, not error
    record = json.loads(line)
    if not isinstance(record, dict) or "id" not in record:
        raise ValueError("not an evidence record")
    return record["id"], record.get("path"), not record.get("error")


def scan_evidence(path: str | Path, wanted: Mapping[str, str]) -> tuple[dict[str, Any] | None, dict[str, int], int]:
    """One streaming pass over an evidence file: (header, {query id: byte offset of its record}, end).

    Only the queries of ``wanted`` ({id: image path}) that are done are kept: a record without an error,
    made from the same image path (the last such line of an id wins). No record is kept in memory.
    ``end`` is the length of the file without a last line cut by an interruption (or an unparsable last
    line); a bad line anywhere else raises ValueError naming the file and line.
    """
    path = Path(path)
    header: dict[str, Any] | None = None
    done: dict[str, int] = {}
    end = 0
    bad: tuple[int, int] | None = None  # (line number, offset) of an unparsable line: fine only if it is the last
    with open(path, "rb") as f:
        offset = 0
        for n, raw in enumerate(f, start=1):
            if bad is not None:
                raise ValueError(f"{path}, line {bad[0]}: not valid JSON")
            at, offset = offset, offset + len(raw)
            if not raw.strip():
                end = offset
                continue
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("no line end")  # the last line, cut by an interruption
                if header is None:
                    obj = json.loads(raw)
                else:
                    qid, qpath, ok = _record_fields(raw.decode("utf-8"))
            except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                bad = (n, at)
                continue
            end = offset
            if header is None:
                if not isinstance(obj, dict) or "evidence_version" not in obj:
                    raise ValueError(f"{path}: not an evidence file (no header line)")
                header = obj
            elif qid in wanted:
                if ok and (qpath is None or qpath == wanted[qid]):
                    done[qid] = at
                else:
                    done.pop(qid, None)  # failed (retried: the file may have been fixed) or made from another file
    if bad is not None:
        logger.warning("%s: ignoring a truncated last line (%d)", path, bad[0])
    return header, done, end


class EvidenceRecords(Mapping[str, dict]):
    """The evidence of a run's queries, read back from the evidence file one record at a time.

    ``records[qid]`` and iteration (``items()``, ``values()``: one open file, in query order) parse a
    record when it is asked for, so a caller that decides query by query holds one record at a time:
    memory stays flat in the number of queries. A record is ``{"id", "path", "evidence": Evidence | None,
    "error": str | None, "timings": {...}}``.
    """

    def __init__(self, path: str | Path, ids: Sequence[str], offsets: Mapping[str, int]):
        self.path = Path(path)
        self._ids = list(dict.fromkeys(ids))
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __contains__(self, qid: object) -> bool:
        return qid in self._offsets

    def _read(self, f, qid: str) -> dict[str, Any]:
        f.seek(self._offsets[qid])
        line = f.readline()
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{self.path}: the record of {qid!r} (byte {self._offsets[qid]}) is not valid JSON") from None
        return {**r, "evidence": Evidence.from_json(r["evidence"]) if r.get("evidence") else None}

    def __getitem__(self, qid: str) -> dict[str, Any]:
        with open(self.path, "rb") as f:
            return self._read(f, qid)

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:  # type: ignore[override]
        with open(self.path, "rb") as f:
            for qid in self._ids:
                yield qid, self._read(f, qid)

    def values(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        return (r for _, r in self.items())


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
) -> EvidenceRecords:
    """Evidence for every query, resuming from ``evidence_path``.

    Returns the records of ``ids`` as an :class:`EvidenceRecords` mapping {id: {"id", "evidence": Evidence |
    None, "error": str | None, "timings": {...}}} that reads them back from the file as they are used
    (records for ids not asked for are ignored). ``early_exit``: apply the recognizer's ``confirm_inliers``
    (off by default), as ``predict`` does; evaluate and predict must pass the same value so that the evidence
    evaluate stores (and tune-threshold re-decides) is the evidence predict decides on.

    Resuming is one streaming pass over the file that keeps only the byte offsets of the queries already
    done; a last line cut by an interruption is truncated in place and new records are appended, so
    neither memory nor the time to resume grows with the records' size.

    ``engine="ray"``: the queries still to do are spread over Ray actors (``ray_options``: a
    :class:`engines.RayOptions`), each with its own read-only ``Recognizer`` of the same
    index and settings (``device`` for the actors' models); this process writes the evidence file as
    with ``engine="local"``, in the same order.
    """
    evidence_path = Path(evidence_path)
    evidence_path.parent.mkdir(parents=True, exist_ok=True)
    header = evidence_header(rec, verify, early_exit)
    wanted = dict(zip(ids, paths))
    old_header, offsets, end = scan_evidence(evidence_path, wanted) if evidence_path.is_file() else (None, {}, 0)
    if old_header is not None and _evidence_diff(old_header, header):
        diff = _evidence_diff(old_header, header)
        raise ValueError(
            f"{evidence_path} was made with other settings ({', '.join(diff)} differ); "
            "delete it or choose another output folder"
        )
    if old_header is None:
        with open(evidence_path, "w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
    elif end < evidence_path.stat().st_size:
        # Drop a line cut by an interruption, in place, before appending.
        with open(evidence_path, "r+b") as f:
            f.truncate(end)

    # Failed queries are retried (the file may have been fixed); a record made from another file
    # (same id, other --images folder) is recomputed: scan_evidence left both out of `offsets`.
    todo = [i for i in range(len(ids)) if ids[i] not in offsets]
    if len(ids) - len(todo):
        logger.info("%s: %d of %d queries already done, resuming", evidence_path, len(ids) - len(todo), len(ids))
    bar = tqdm(total=len(todo), desc="queries", unit="img", disable=not progress or bool(os.environ.get("TQDM_DISABLE")))
    todo_paths = [paths[i] for i in todo]
    if engine == "ray":
        from engines.ray import map_paths

        actor_kwargs = {"index_dir": str(Path(rec.db.path).resolve()), "conf": dict(rec.conf), "match_conf": dict(rec.match_conf),
                        "device": device, "verify": verify, "early_exit": early_exit}
        results = map_paths(todo_paths, EvidenceActor, actor_kwargs, ray_options)
    else:
        results = evidence_records(rec, todo_paths, verify, early_exit, num_workers)
    with open(evidence_path, "ab") as f:
        for pos, result in results:
            qid = ids[todo[pos]]
            record = {"id": qid, **result}
            record["path"] = paths[todo[pos]]  # as given here (a Ray actor saw it made absolute)
            if record["error"]:
                logger.warning("query %s skipped: %s", qid, record["error"])
            at = f.tell()
            f.write((json.dumps(record) + "\n").encode("utf-8"))
            f.flush()
            offsets[qid] = at
            bar.update(1)
    bar.close()
    missing = [q for q in ids if q not in offsets]
    assert not missing, missing[:3]
    return EvidenceRecords(evidence_path, ids, offsets)


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


class EvidenceActor(RayActor):
    """Ray actor (``--engine ray``): one read-only Recognizer of the index; per batch, evidence records.

    Runs :func:`evidence_records`, the local engine's code, with the driver's resolved settings (checked
    against the driver's versions at start; warnings sent back, see :class:`engines.ray.RayActor`).
    """

    def __init__(self, index_dir: str, conf: Mapping[str, Any], match_conf: Mapping[str, Any], device: str | None,
                 verify: bool, early_exit: bool, versions: Mapping[str, str], threads: int = 1):
        super().__init__(versions, threads)
        self.rec = Recognizer.from_index(index_dir, device=device, match_conf=dict(match_conf), **dict(conf))
        self.verify, self.early_exit = verify, early_exit

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        out: list[Any] = [None] * len(paths)
        for i, record in evidence_records(self.rec, paths, self.verify, self.early_exit, num_workers=0):
            out[i] = record
        return pack_results(batch["pos"], out, self.take_warnings(), self.where)


# Counts among a query's timings (pairs verified by each matcher, LightGlue layers run): not seconds.
COUNT_KEYS = ("pairs", "pairs2", "layers2")


def timing_summary(records: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Median milliseconds per stage over the queries (and per pair of each matcher)."""
    stages: dict[str, list[float]] = {}
    per_pair: dict[str, list[float]] = {"verify": [], "verify2": []}
    for r in records.values():
        t = r.get("timings") or {}
        for k, v in t.items():
            if k not in COUNT_KEYS:
                stages.setdefault(k, []).append(v)
        for stage, count in (("verify", "pairs"), ("verify2", "pairs2")):
            if t.get(count):
                per_pair[stage].append(t[stage] / t[count])
    out = {f"{k}_ms": round(1000 * float(np.median(v)), 2) for k, v in stages.items()}
    for stage, values in per_pair.items():
        if values:
            out[f"{stage}_per_pair_ms"] = round(1000 * float(np.median(values)), 2)
    totals = [sum(v for k, v in (r.get("timings") or {}).items() if k not in COUNT_KEYS) for r in records.values()
              if r.get("timings")]
    if totals:
        out["total_ms"] = round(1000 * float(np.median(totals)), 2)
    return out
