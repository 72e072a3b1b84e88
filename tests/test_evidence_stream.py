"""Evidence files read as streams: the resume scan keeps byte offsets, never records; records are read back one at a
time. The end-to-end resume through predict is in test_recognition.py."""
from __future__ import annotations

import json

import pytest

from eval.evidence import EvidenceRecords, _record_fields, scan_evidence
from retrieval.recognize import Evidence

HEADER = {"evidence_version": 2, "index_id": "abc", "params": {"k": 3}}


def record(qid: str, path: str, error: str | None = None) -> dict:
    ev = None if error else {
        "neighbours": [[f"r{j}", str(j % 2), round(0.9 - 0.1 * j, 3)] for j in range(3)],
        "candidates": [{"landmark_id": "1", "vote": 0.9, "sim": 0.9, "inliers": 25, "best_match_id": "r0",
                        "verified_refs": 1, "raw_sim": 0.9}],
        "discount": 0.0,
    }
    return {"id": qid, "path": path, "evidence": ev, "error": error, "timings": {"decode": 0.01, "global": 0.02}}


def write(path, lines: list[str]) -> None:
    path.write_bytes("".join(lines).encode())


def test_scan_keeps_offsets_of_done_queries_and_drops_a_cut_last_line(tmp_path):
    path = tmp_path / "e.jsonl"
    recs = [record("a", "/q/a.jpg"), record("b", "/q/b.jpg", error="corrupt"), record("c", "/old/c.jpg"),
            record("d", "/q/d.jpg"), record("a", "/q/a.jpg")]
    lines = [json.dumps(HEADER) + "\n"] + [json.dumps(r) + "\n" for r in recs]
    cut = json.dumps(record("e", "/q/e.jpg"))[:40]
    write(path, lines + [cut])
    wanted = {q: f"/q/{q}.jpg" for q in "abcde"}
    header, offsets, end = scan_evidence(path, wanted)
    assert header == HEADER
    # b failed (retried), c was made from another file (recomputed), e was cut; a's last line wins
    assert set(offsets) == {"a", "d"}
    assert offsets["a"] == sum(len(l) for l in lines[:5]) and offsets["d"] == sum(len(l) for l in lines[:4])
    assert end == sum(len(l) for l in lines) == path.stat().st_size - len(cut)
    # a record of another query (not wanted) is ignored
    assert set(scan_evidence(path, {"d": "/q/d.jpg"})[1]) == {"d"}

    stream = EvidenceRecords(path, ["d", "a", "d"], offsets)
    assert list(stream) == ["d", "a"] and len(stream) == 2 and "a" in stream and "b" not in stream
    got = dict(stream.items())
    assert list(got) == ["d", "a"]
    assert isinstance(got["a"]["evidence"], Evidence) and got["a"]["evidence"] == Evidence.from_json(recs[0]["evidence"])
    assert got["d"]["path"] == "/q/d.jpg" and got["d"]["error"] is None and got["d"]["timings"]["global"] == 0.02
    assert stream["a"]["evidence"] == got["a"]["evidence"]


def test_scan_refuses_a_bad_line_that_is_not_the_last(tmp_path):
    path = tmp_path / "e.jsonl"
    write(path, [json.dumps(HEADER) + "\n", json.dumps(record("a", "/a"))[:30] + "\n", json.dumps(record("b", "/b")) + "\n"])
    with pytest.raises(ValueError, match=r"e.jsonl, line 2: not valid JSON"):
        scan_evidence(path, {"a": "/a", "b": "/b"})
    # the same bad line last (cut, even with its newline) is dropped
    write(path, [json.dumps(HEADER) + "\n", json.dumps(record("b", "/b")) + "\n", json.dumps(record("a", "/a"))[:30] + "\n"])
    header, offsets, end = scan_evidence(path, {"a": "/a", "b": "/b"})
    assert set(offsets) == {"b"} and end == len(json.dumps(HEADER)) + len(json.dumps(record("b", "/b"))) + 2
    # a cut header alone: no header (the file is started again); a file of something else is refused
    write(path, [json.dumps(HEADER)[:10]])
    assert scan_evidence(path, {}) == (None, {}, 0)
    write(path, ['{"id": "x"}\n'])
    with pytest.raises(ValueError, match="not an evidence file"):
        scan_evidence(path, {})


def test_record_fields_fast_and_slow_alike():
    odd = record("q1", '/x/"error": null, "timings": odd.jpg')
    for r in (record("q1", "/p.jpg"), record("q1", "/p.jpg", error='bad "error": 1'), odd,
              {k: v for k, v in record("q1", "/p.jpg").items() if k != "path"}):
        line = json.dumps(r)
        want = (r["id"], r.get("path"), not r["error"])
        assert _record_fields(line) == want
        assert _record_fields(json.dumps(r, indent=None, separators=(",", ":"))) == want  # another layout: parsed whole
    with pytest.raises(ValueError):
        _record_fields('{"id": "q1", "path": "/p.jpg", "evidence": {"neigh')


def test_timing_summary_counts_pairs_and_layers_not_as_seconds():
    """Pair counts and LightGlue's layers are counts among the timings: the totals and stages are seconds only."""
    from eval.evidence import timing_summary

    records = {"a": {"timings": {"local": 0.1, "verify": 0.02, "pairs": 10.0, "local2": 0.5, "verify2": 0.9,
                                 "pairs2": 3.0, "layers2": 15.0}},
               "b": {"timings": {"local": 0.1, "verify": 0.04, "pairs": 20.0}}}
    out = timing_summary(records)
    assert "pairs2_ms" not in out and "layers2_ms" not in out and "pairs_ms" not in out
    assert out["verify2_per_pair_ms"] == 300.0 and out["verify_per_pair_ms"] == 2.0
    assert out["total_ms"] == round(1000 * (1.52 + 0.14) / 2, 2)  # median of the two queries' seconds
