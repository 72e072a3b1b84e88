"""ALIKED's extraction on ONNX Runtime against PyTorch, in one run, on real photos at 640, 800 and 1024 px.

What a query pays for its ALIKED features (``extract``: the dense network, keypoint selection, descriptors) with
ALIKED's dense network on each runtime (retrieval/fast_runtime.py), on the same photos in the same process,
alternating the runtimes photo by photo (and which goes first) so that a busy machine slows both alike. For each
side in --sides the photos are enlarged to that longer side (benchmarks/upscaled.py; devset-large's photos are at
most 800 px) and ALIKED detects at that size (``resize_max`` = side), with the stored conf's keypoint budget.
Agreement is checked on the same photos: keypoint counts, the share of keypoints with one of the other runtime's
within 0.01 px (worst photo), and the largest difference between those keypoints' descriptors.

    python benchmarks/bench_runtime.py --data ../shared/devset-large
    python benchmarks/bench_runtime.py --data ../shared/devset-large --sides 800 --photos 10 --threads 2

Ends with one JSON line: per side the mean seconds per photo on each runtime, their ratio (onnxruntime / torch),
the seconds saved per photo, and the agreement figures; and the seconds to open the runtime (from the cached file).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from upscaled import upscale_photo


def photos_of(data: Path, n: int) -> list[Path]:
    """The first ``n`` holdout queries that exist, then references to make up ``n``."""
    out: list[Path] = []
    for csv in ("holdout.csv", "train.csv"):
        for i in pd.read_csv(data / csv)["id"].astype(str):
            p = data / "images" / f"{i}.jpg"
            if p.is_file() and p not in out:
                out.append(p)
            if len(out) == n:
                return out
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="GLDv2-style folder: train.csv, holdout.csv, images/")
    ap.add_argument("--sides", default="640,800,1024", help="comma-separated detection sizes (longer side, px)")
    ap.add_argument("--photos", type=int, default=20, help="photos timed at each side")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per photo and runtime (the median counts)")
    ap.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime intra-op threads")
    ap.add_argument("--conf", default="aliked", help="local conf whose keypoint budget and settings are used")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from retrieval import fast_runtime
    from retrieval.fast_runtime import RUNTIME_ENV
    from retrieval.local_features import local_confs, make_local_extractor

    if not fast_runtime.onnxruntime_available():
        raise SystemExit("ONNX Runtime is not installed: pip install -e '.[onnx]'")
    photos = photos_of(args.data, args.photos)
    out: dict[str, dict] = {}
    os.environ[RUNTIME_ENV] = "onnxruntime"
    probe = make_local_extractor(local_confs[args.conf])
    fast_runtime.cached_onnx(probe.model, probe.conf["model_name"])  # export (once) before timing the opening
    start = time.perf_counter()
    probe.extract(np.zeros((64, 64, 3), np.uint8))  # opens the session from the cached file
    open_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        for side in (int(s) for s in args.sides.split(",")):
            exs = {}
            for runtime in ("torch", "onnxruntime"):
                os.environ[RUNTIME_ENV] = runtime
                exs[runtime] = make_local_extractor({**local_confs[args.conf], "resize_max": side})
                assert exs[runtime].runtime == runtime
            images = []
            for p in photos:
                dst = Path(tmp) / f"{side}-{p.name}"
                upscale_photo(p, dst, side)
                images.append(np.asarray(Image.open(dst).convert("RGB")))
            for ex in exs.values():
                ex.extract(images[0])  # warm-up: first-call allocations are not a photo's cost
            secs: dict[str, list[float]] = {r: [] for r in exs}
            kp_counts_equal, kp_same, desc_diff, n_kp = 0, [], 0.0, []
            for i, image in enumerate(images):
                order = list(exs) if i % 2 == 0 else list(exs)[::-1]
                feats = {}
                times: dict[str, list[float]] = {r: [] for r in exs}
                for _ in range(args.repeats):
                    for r in order:
                        t = time.perf_counter()
                        feats[r] = exs[r].extract(image)
                        times[r].append(time.perf_counter() - t)
                for r in exs:
                    secs[r].append(statistics.median(times[r]))
                a, b = feats["torch"], feats["onnxruntime"]
                n_kp.append(len(a))
                kp_counts_equal += len(a) == len(b)
                if len(a) and len(b):  # pair each keypoint with the other runtime's nearest (ties may swap order)
                    d = np.linalg.norm(a.keypoints[:, None] - b.keypoints[None], axis=2)
                    nearest = d.argmin(axis=1)
                    same = d[np.arange(len(a)), nearest] < 0.01
                    kp_same.append(float(same.mean()))
                    if same.any():
                        desc_diff = max(desc_diff, float(np.abs(a.descriptors[same] - b.descriptors[nearest[same]]).max()))
            mean = {r: statistics.mean(v) for r, v in secs.items()}
            out[str(side)] = {
                "torch_s": round(mean["torch"], 3), "onnxruntime_s": round(mean["onnxruntime"], 3),
                "ratio": round(mean["onnxruntime"] / mean["torch"], 3),
                "saved_s": round(mean["torch"] - mean["onnxruntime"], 3),
                "keypoints_mean": round(statistics.mean(n_kp), 1),
                "same_keypoint_count": f"{kp_counts_equal}/{len(images)}",
                "keypoints_within_0.01px": round(min(kp_same, default=0.0), 4),  # worst photo
                "max_descriptor_diff": float(f"{desc_diff:.2g}"),
            }
            print(f"{side} px: torch {mean['torch']:.3f} s, onnxruntime {mean['onnxruntime']:.3f} s a photo "
                  f"(x{out[str(side)]['ratio']}); {out[str(side)]}", flush=True)
    import onnxruntime

    print(json.dumps({"bench": "runtime", "data": str(args.data), "photos": len(photos), "threads": args.threads,
                      "conf": args.conf, "max_keypoints": probe.conf["max_keypoints"],
                      "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "open_s": round(open_s, 2),
                      "sides": out}))


if __name__ == "__main__":
    main()
