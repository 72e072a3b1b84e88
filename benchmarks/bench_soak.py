"""Soak test of ``landmarks serve``: several clients for a long time, good photos mixed with bad files, pixel
bombs, tiny images, batches, match pictures and reloads; the server's memory must stay flat.

Reports requests served, answers by status, p50/p99 latency of the recognitions, the server's RSS after the
warm-up and at the end (and its peak), against the bound the service states in /health (answer cache +
thumbnail cache): growth beyond it would be a leak. All traffic goes to 127.0.0.1; every loop is bounded by
the duration and the run stops by itself. Without --index a synthetic collection is generated and indexed
(RootSIFT, as the demo); query photos are enlarged to 1024 px, the size the product works at (a decoded
1024-px photo in every cached answer is what used to fill memory).

    python benchmarks/bench_soak.py --duration 600 --clients 6      # the figure in docs/figures.md
    python benchmarks/bench_soak.py --duration 60                   # a quick look

Ends with ONE JSON line of the headline figures of this run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import struct
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import cv2
import httpx
import numpy as np

from bench_serve import free_port, rss_mb, start_server, stop_server
from serve_data import generated_index

KINDS = (  # (what a client sends, weight)
    ("recognize", 60), ("neighbours", 10), ("batch", 5), ("matches", 8), ("bad_file", 6), ("truncated", 3),
    ("pixel_bomb", 3), ("tiny", 3), ("thumbnail", 2),
)


def pixel_bomb(side: int = 40_000) -> bytes:
    """A PNG header claiming side x side pixels (a few hundred bytes): refused from its header (413)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def enlarged_jpeg(path: Path, side: int) -> bytes:
    img = cv2.imread(str(path))
    scale = side / max(img.shape[:2])
    img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_CUBIC)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_status: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.latency: list[float] = []  # seconds of the recognitions answered 200
        self.rids: list[str] = []

    def add(self, kind: str, status: int, seconds: float, expected: set[int], detail: str = "") -> None:
        with self.lock:
            self.by_status[str(status)] += 1
            self.by_kind[kind] += 1
            if kind in ("recognize", "neighbours") and status == 200:
                self.latency.append(seconds)
            if status not in expected and len(self.unexpected) < 20:
                self.unexpected.append(f"{kind}: {status} {detail[:160]}")


def client(url: str, payloads: list[tuple[str, bytes]], stats: Stats, deadline: float, seed: int) -> None:
    rng = random.Random(seed)
    kinds, weights = zip(*KINDS)
    bomb = pixel_bomb()
    tiny = cv2.imencode(".png", np.full((2, 3, 3), 200, np.uint8))[1].tobytes()
    with httpx.Client(base_url=url, timeout=120) as c:
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            name, data = payloads[rng.randrange(len(payloads))]
            t = time.perf_counter()
            try:
                if kind == "recognize":
                    r = c.post("/recognize", files={"image": (name, data, "image/jpeg")})
                    if r.status_code == 200:
                        with stats.lock:
                            stats.rids.append(r.headers["X-Request-Id"])
                    expected = {200, 503}
                elif kind == "neighbours":
                    r, expected = c.post("/neighbours?k=20", files={"image": (name, data, "image/jpeg")}), {200, 503}
                elif kind == "batch":
                    files = [("image", payloads[rng.randrange(len(payloads))][:2]) for _ in range(3)]
                    r, expected = c.post("/recognize/batch", files=files + [("image", ("bad.jpg", b"not a photo"))]), {200, 503}
                elif kind == "matches":
                    with stats.lock:
                        rid = stats.rids[rng.randrange(len(stats.rids))] if stats.rids else "0" * 16
                    r, expected = c.get(f"/matches/{rid}.png?candidates={rng.randint(1, 3)}"), {200, 404, 503}
                elif kind == "bad_file":
                    r, expected = c.post("/recognize", files={"image": ("notes.jpg", b"this is not a photo\n" * 50)}), {400}
                elif kind == "truncated":
                    r, expected = c.post("/recognize", files={"image": (name, data[: len(data) // 3])}), {400}
                elif kind == "pixel_bomb":
                    r, expected = c.post("/recognize", files={"image": ("bomb.png", bomb, "image/png")}), {413}
                elif kind == "tiny":
                    r, expected = c.post("/recognize", files={"image": ("tiny.png", tiny, "image/png")}), {200, 503}
                else:
                    with stats.lock:
                        rid = stats.rids[-1] if stats.rids else None
                    ref = "none"
                    if rid:
                        res = c.get(f"/results/{rid}?k=1")
                        if res.status_code == 200 and res.json()["neighbours"]:
                            ref = res.json()["neighbours"][0]["id"]
                    r, expected = c.get(f"/thumbnails/{ref}"), {200, 404, 503}
                stats.add(kind, r.status_code, time.perf_counter() - t, expected, r.text if r.status_code >= 400 else "")
            except httpx.HTTPError as exc:
                stats.add(kind, 0, time.perf_counter() - t, set(), f"{type(exc).__name__}: {exc}")


def reloader(url: str, every_s: float, deadline: float, out: Counter) -> None:
    with httpx.Client(base_url=url, timeout=120) as c:
        while time.monotonic() + every_s < deadline:
            time.sleep(every_s)
            out[str(c.post("/reload").status_code)] += 1


def sampler(pid: int, deadline: float, out: list, every_s: float = 5.0) -> None:
    while time.monotonic() < deadline:
        out.append(rss_mb(pid))
        time.sleep(every_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load after the warm-up")
    ap.add_argument("--clients", type=int, default=6, help="concurrent clients (4 to 8 in the figure)")
    ap.add_argument("--workers", type=int, default=4, help="server recognition threads")
    ap.add_argument("--reload-every", type=float, default=30.0, help="seconds between POST /reload")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds of load before the starting RSS is taken")
    ap.add_argument("--side", type=int, default=1024, help="query photos are enlarged to this longer side")
    ap.add_argument("--index", type=Path, default=None, help="an existing index (default: build one on generated photos)")
    ap.add_argument("--images", type=Path, default=None, help="folder of query photos (with --index)")
    ap.add_argument("--landmarks", type=int, default=16, help="generated landmarks when no --index is given")
    ap.add_argument("--torch-threads", type=int, default=1, help="OMP_NUM_THREADS of the server")
    ap.add_argument("--work-dir", type=Path, default=None)
    args = ap.parse_args()
    if not 1 <= args.clients <= 64 or args.duration <= 0:
        raise SystemExit("--clients 1..64 and a positive --duration")
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        index = args.index
        if index is None:
            index, images = generated_index(work, args.landmarks)
        else:
            if args.images is None:
                raise SystemExit("--images is needed with --index")
            images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:32]
        payloads = [(p.name, enlarged_jpeg(p, args.side)) for p in images]
        port = free_port()
        proc = start_server(index, port, args.workers, work / "server.log", args.torch_threads)
        url = f"http://127.0.0.1:{port}"
        stats, warm = Stats(), Stats()
        reloads: Counter[str] = Counter()
        samples: list[float] = []
        try:
            health0 = httpx.get(f"{url}/health").json()
            rss_loaded = rss_mb(proc.pid)
            end = time.monotonic() + args.warmup  # fills the caches and the allocator's pools
            threads = [threading.Thread(target=client, args=(url, payloads, warm, end, 1000 + i)) for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rss_start = rss_mb(proc.pid)
            start = time.perf_counter()
            end = time.monotonic() + args.duration
            threads = [threading.Thread(target=client, args=(url, payloads, stats, end, i)) for i in range(args.clients)]
            threads += [threading.Thread(target=reloader, args=(url, args.reload_every, end, reloads)),
                        threading.Thread(target=sampler, args=(proc.pid, end, samples))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            rss_end = rss_mb(proc.pid)
            health = httpx.get(f"{url}/health").json()
        finally:
            stop_server(proc, timeout=30)
        server_log = (work / "server.log").read_text(errors="replace")

    limits = health["limits"]
    bound_mb = float(limits["answer_cache_mb"]) + float(limits["thumbnail_cache_mb"])
    lat = np.asarray(stats.latency) * 1000 if stats.latency else np.asarray([np.nan])
    served = sum(stats.by_kind.values())
    growth = rss_end - rss_start
    print(f"{args.clients} clients, {wall:.0f} s, {args.workers} workers, photos at {args.side} px, "
          f"index of {health0['images']} images")
    print(f"requests: {served} ({served / wall:.2f}/s) by kind {dict(stats.by_kind)}")
    print(f"answers by status: {dict(sorted(stats.by_status.items()))}; unexpected: {len(stats.unexpected)}")
    for line in stats.unexpected[:10]:
        print(f"  {line}")
    print(f"recognitions answered 200: {len(stats.latency)}, p50 {np.percentile(lat, 50):.0f} ms, "
          f"p99 {np.percentile(lat, 99):.0f} ms")
    print(f"reloads: {dict(reloads)}; snapshots open at the end: {health['open_snapshots']}")
    print(f"server RSS: {rss_loaded:.0f} MB loaded, {rss_start:.0f} MB after the {args.warmup:.0f} s warm-up, "
          f"{rss_end:.0f} MB at the end (peak {max(samples, default=rss_end):.0f} MB); growth {growth:+.0f} MB, "
          f"stated cache bound {bound_mb:.0f} MB; caches at the end {health['caches']}")
    print(f"server log: {server_log.count('Traceback')} tracebacks")
    headline = {
        "bench": "soak", "duration_s": round(wall, 1), "clients": args.clients, "workers": args.workers,
        "side_px": args.side, "index_images": health0["images"], "requests": served,
        "requests_per_s": round(served / wall, 2), "by_status": dict(sorted(stats.by_status.items())),
        "by_kind": dict(stats.by_kind), "unexpected": len(stats.unexpected),
        "recognize_p50_ms": round(float(np.percentile(lat, 50)), 1), "recognize_p99_ms": round(float(np.percentile(lat, 99)), 1),
        "reloads": dict(reloads), "open_snapshots_end": health["open_snapshots"],
        "rss_mb_loaded": round(rss_loaded, 1), "rss_mb_start": round(rss_start, 1), "rss_mb_end": round(rss_end, 1),
        "rss_mb_peak": round(max(samples, default=rss_end), 1), "rss_growth_mb": round(growth, 1),
        "cache_bound_mb": bound_mb, "flat_within_bound": bool(growth <= bound_mb),
        "caches_end": health["caches"], "server_tracebacks": server_log.count("Traceback"),
    }
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
