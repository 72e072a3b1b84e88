"""Service benchmark: requests/s and p50/p95 latency of ``landmarks serve`` at 1, 4 and 16 concurrent clients,
next to the same photos through the Python API in-process (``Recognizer.recognize`` in a loop).

Then ``--reloads`` POST /reload under 4 clients: the server's RSS before and after, which stays flat
(a replaced index snapshot is closed when its requests end; the models are shared across reloads).

The ratio service/in-process shows what HTTP, multipart upload, the thread pool and JSON cost (target >= 0.8
at 4 clients). All traffic goes to 127.0.0.1; each level is bounded by a request count and a time limit.
Without --index, a synthetic collection is generated and indexed first (RootSIFT, as the demo).

    python benchmarks/bench_serve.py                       # generated data, about 2 minutes on 2 cores
    python benchmarks/bench_serve.py --index idx/ --images queries/ --requests 200

Ends with ONE JSON line of the headline figures of this run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from serve_data import generated_index

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(lat: list[float]) -> tuple[float, float]:
    a = np.asarray(lat) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


def in_process(rec, images: list[Path], n_requests: int, max_seconds: float) -> dict:
    lat: list[float] = []
    start = time.perf_counter()
    while len(lat) < n_requests and time.perf_counter() - start < max_seconds:
        t = time.perf_counter()
        rec.recognize(images[len(lat) % len(images)])
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    p50, p95 = percentiles(lat)
    return {"requests": len(lat), "rps": len(lat) / wall, "p50_ms": p50, "p95_ms": p95}


def load_level(url: str, payloads: list[tuple[str, bytes]], clients: int, n_requests: int, max_seconds: float) -> dict:
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = [0]
    start = time.perf_counter()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while True:
                with lock:
                    i = counter[0]
                    counter[0] += 1
                if i >= n_requests or time.perf_counter() - start > max_seconds:
                    return
                name, data = payloads[i % len(payloads)]
                t = time.perf_counter()
                r = c.post("/recognize", files={"image": (name, data, "image/jpeg")})
                dt = time.perf_counter() - t
                with lock:
                    if r.status_code == 200:
                        lat.append(dt)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    p50, p95 = percentiles(lat) if lat else (float("nan"), float("nan"))
    return {"clients": clients, "requests": len(lat), "errors": errors[0], "rps": len(lat) / wall, "p50_ms": p50, "p95_ms": p95}


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return float("nan")


def reload_level(url: str, payloads: list[tuple[str, bytes]], pid: int, reloads: int, max_seconds: float) -> dict:
    """``reloads`` POST /reload while 4 clients recognise: the server's RSS before and after, snapshots left open."""
    before = rss_mb(pid)
    result: dict = {}
    traffic = threading.Thread(target=lambda: result.update(load_level(url, payloads, 4, 10**9, max_seconds)))
    traffic.start()
    start = time.perf_counter()
    done = 0
    with httpx.Client(base_url=url, timeout=120) as c:
        while done < reloads and time.perf_counter() - start < max_seconds:
            if c.post("/reload").status_code == 200:
                done += 1
    traffic.join()
    health = httpx.get(f"{url}/health").json()
    return {"reloads": done, "rss_mb_before": round(before, 1), "rss_mb_after": round(rss_mb(pid), 1),
            "open_snapshots": health.get("open_snapshots"), "requests_during": result.get("requests", 0),
            "errors_during": result.get("errors", 0)}


def start_server(index: Path, port: int, workers: int, log: Path, torch_threads: int) -> subprocess.Popen:
    fh = open(log, "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "-q", "serve", "--index", str(index), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", str(workers)], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": str(torch_threads)})
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"server did not start; log:\n{log.read_text()[-2000:]}")
        time.sleep(0.3)


def stop_server(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop ``landmarks serve`` as Ctrl-C does (a clean shutdown), killing it if it has not exited in ``timeout``."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=None, help="an existing index (default: build one on generated photos)")
    ap.add_argument("--images", type=Path, default=None, help="folder of query photos (default: the generated holdout)")
    ap.add_argument("--landmarks", type=int, default=16, help="generated landmarks when no --index is given")
    ap.add_argument("--max-images", type=int, default=24, help="distinct query photos cycled through")
    ap.add_argument("--requests", type=int, default=48, help="requests per measurement (bounded)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="time limit per measurement")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--workers", type=int, default=4, help="server recognition threads")
    ap.add_argument("--reloads", type=int, default=20, help="POST /reload under traffic at the end (server RSS before/after)")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="intra-op threads of torch on both sides (OMP_NUM_THREADS for the server); on a shared machine "
                         "more than 1 makes spin-waiting OpenMP threads many times slower")
    ap.add_argument("--work-dir", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        index = args.index
        images_dir = args.images
        if index is None:
            index, images = generated_index(work, args.landmarks)
        else:
            if images_dir is None:
                raise SystemExit("--images is needed with --index")
            images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        images = images[: args.max_images]
        if not images:
            raise SystemExit("no query photos")
        payloads = [(p.name, p.read_bytes()) for p in images]

        import torch

        from retrieval.recognize import Recognizer

        torch.set_num_threads(args.torch_threads)
        rec = Recognizer.from_index(index)
        for p in images:  # warm-up: models, caches, the OS page cache of the index
            rec.recognize(p)

        def baseline(when: str) -> dict:
            res = in_process(rec, images, args.requests, args.max_seconds)
            print(f"in-process Recognizer.recognize ({when}): {res['rps']:.2f} req/s  p50 {res['p50_ms']:.0f} ms  "
                  f"p95 {res['p95_ms']:.0f} ms  ({res['requests']} requests)", flush=True)
            return res

        before = baseline("before")
        port = free_port()
        proc = start_server(index, port, args.workers, work / "server.log", args.torch_threads)
        url = f"http://127.0.0.1:{port}"
        try:
            load_level(url, payloads, 4, len(payloads), args.max_seconds)  # warm-up
            levels = []
            for clients in (int(c) for c in args.clients.split(",")):
                res = load_level(url, payloads, clients, args.requests, args.max_seconds)
                levels.append(res)
                print(f"service, {clients:2d} clients: {res['rps']:.2f} req/s  p50 {res['p50_ms']:.0f} ms  "
                      f"p95 {res['p95_ms']:.0f} ms  ({res['requests']} requests, {res['errors']} errors)  "
                      f"{res['rps'] / before['rps']:.2f}x in-process (before)", flush=True)
            health = httpx.get(f"{url}/health").json()
            reloads = reload_level(url, payloads, proc.pid, args.reloads, args.max_seconds) if args.reloads else {}
            if reloads:
                print(f"{reloads['reloads']} reloads under 4 clients: server RSS {reloads['rss_mb_before']:.0f} -> "
                      f"{reloads['rss_mb_after']:.0f} MB, {reloads['open_snapshots']} snapshot(s) open after, "
                      f"{reloads['requests_during']} requests ({reloads['errors_during']} errors)", flush=True)
        finally:
            stop_server(proc, timeout=20)
        # measured again after the service (other load on a shared machine drifts): the mean is the baseline
        after = baseline("after")
        base = {k: (before[k] + after[k]) / 2 for k in ("rps", "p50_ms", "p95_ms")}
        print(f"in-process baseline (mean of both): {base['rps']:.2f} req/s; service at 4 clients: "
              f"{next((r['rps'] for r in levels if r['clients'] == 4), float('nan')) / base['rps']:.2f}x", flush=True)

    by_clients = {str(r["clients"]): r for r in levels}
    headline = {
        "bench": "serve",
        "cpus": os.cpu_count(),
        "index_images": health["images"],
        "query_images": len(payloads),
        "server_workers": args.workers,
        "torch_threads": args.torch_threads,
        "in_process_rps": round(base["rps"], 3),
        "in_process_p50_ms": round(base["p50_ms"], 1),
        "in_process_rps_before_after": [round(before["rps"], 3), round(after["rps"], 3)],
        **{f"rps_{c}": round(r["rps"], 3) for c, r in by_clients.items()},
        **{f"p50_ms_{c}": round(r["p50_ms"], 1) for c, r in by_clients.items()},
        **{f"p95_ms_{c}": round(r["p95_ms"], 1) for c, r in by_clients.items()},
        "ratio_4_clients": round(by_clients["4"]["rps"] / base["rps"], 3) if "4" in by_clients else None,
        "errors": sum(r["errors"] for r in levels),
        "global_batches": health["global_batches"],
        **{f"reload_{k}": v for k, v in reloads.items()},
    }
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
