"""Extraction throughput: global descriptors (images/s) and local features (ms/image), in one run.

Measures on generated photos (the synthetic package): the global model with the
image decoding in the main process (baseline) vs in DataLoader workers, and
the per-image cost of each local configuration. Ratios are against the
baseline measured in the same run.

Then the real build path (``extract.main``: decode + resize + model + shard writes + commit, global
descriptors only) against a bare forward pass of the same model on pre-made input tensors of the same
shapes, same batch size and torch threads. The last line is one JSON object with
``pipeline_img_s``, ``bare_img_s`` and ``ratio`` (pipeline / bare), measured in this run.

    python benchmarks/bench_extract.py --images 96 --device cpu
    python benchmarks/bench_extract.py --images 96 --skip-local --repeats 3   # just the pipeline vs bare figure
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from retrieval import extract
from retrieval.extract import FeatureExtractor, decode_item
from retrieval.image_io import load_image
from retrieval.local_features import local_confs, make_local_extractor
from synthetic import generate_demo_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--image-size", type=int, default=640, help="size of the generated photos")
    ap.add_argument("--conf", default="lite0-gem")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=None, help="decode workers of the build path (default: the product's)")
    ap.add_argument("--local-images", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3, help="pipeline / bare measurements (best of each)")
    ap.add_argument("--skip-local", action="store_true", help="skip the local-feature table and the workers table")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        n_lm = max(2, args.images // 4)
        data = generate_demo_dataset(Path(tmp) / "d", n_landmarks=n_lm, refs_per_landmark=(3, 3),
                                     n_distractor_refs=max(0, args.images - 3 * n_lm), n_distractor_queries=0,
                                     queries_per_landmark=0, image_size=args.image_size, seed=7)
        paths = sorted(str(p) for p in data.images_dir.glob("*.jpg"))[: args.images]
        fx = FeatureExtractor(args.conf, None, device=args.device)
        print(f"{len(paths)} generated photos of {args.image_size} px; global {args.conf} at "
              f"{fx.global_conf['image_size']} px on {fx.global_extractor.device}, batch {args.batch_size}")
        list(fx.iter_paths(paths[:8], batch_size=args.batch_size, num_workers=0))  # warm-up
        if not args.skip_local:
            workers_and_local_tables(fx, paths, args)
        result = pipeline_vs_bare(fx, paths, Path(tmp), args)
    print(json.dumps(result))


def pipeline_vs_bare(fx: FeatureExtractor, paths: list[str], tmp: Path, args: argparse.Namespace) -> dict:
    """The build path (extract.main, global only) vs bare forwards of the same model, best of --repeats."""
    gx = fx.global_extractor
    conf = fx.global_conf
    # Pre-made tensors: the inputs the pipeline feeds the network (decoded, resized, normalised), in the
    # pipeline's batches, grouped by input size as GlobalExtractor does.
    items = [decode_item(p, int(conf["image_size"]), conf["resize"], None) for p in paths]
    batches = []
    for b in range(0, len(items), args.batch_size):
        groups: dict[tuple, list[np.ndarray]] = {}
        for it in items[b: b + args.batch_size]:
            groups.setdefault(it.global_image.shape, []).append(it.global_image)
        for ims in groups.values():
            x = torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float().to(gx.device)
            batches.append(((x - gx.mean) / gx.std).contiguous())
    n_passes = len(conf["scales"]) * (2 if conf["flip"] else 1)

    def bare() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for x in batches:
                for _ in range(n_passes):
                    gx._forward(x)
        return len(paths) / (time.perf_counter() - start)

    refs = pd.DataFrame({"id": [Path(p).stem for p in paths], "landmark_id": "1", "path": paths})

    def pipeline(run: int) -> float:
        start = time.perf_counter()
        stats = extract.main(refs, tmp / f"pipeline{run}", conf, None, batch_size=args.batch_size,
                             num_workers=args.workers, progress=False, extractor=fx)
        assert stats["extracted"] == len(paths), stats
        return len(paths) / (time.perf_counter() - start)

    bare()  # warm-up
    bare_rates, pipe_rates = [], []
    for run in range(args.repeats):  # interleaved, so a load change on the machine hits both
        bare_rates.append(bare())
        pipe_rates.append(pipeline(run))
    bare_rate, pipe_rate = max(bare_rates), max(pipe_rates)
    print(f"{'build path vs bare forward':40s} {'img/s':>8s}")
    print(f"{'bare forward (pre-made tensors)':40s} {bare_rate:8.1f}")
    workers = extract.default_workers(fx.global_extractor.device.type) if args.workers is None else args.workers
    print(f"{f'extract.main ({workers} decode workers)':40s} {pipe_rate:8.1f}  ratio {pipe_rate / bare_rate:.3f}")
    return {
        "pipeline_img_s": round(pipe_rate, 2), "bare_img_s": round(bare_rate, 2), "ratio": round(pipe_rate / bare_rate, 3),
        "images": len(paths), "batch_size": args.batch_size, "workers": workers,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "conf": args.conf,
        "device": str(fx.global_extractor.device), "repeats": args.repeats,
        "pipeline_runs": [round(r, 2) for r in pipe_rates], "bare_runs": [round(r, 2) for r in bare_rates],
    }


def workers_and_local_tables(fx: FeatureExtractor, paths: list[str], args: argparse.Namespace) -> None:
    """The original tables: decode in the main process vs DataLoader workers; local features per image."""
    rates = {}
    for workers in (0, args.workers or 2):
        start = time.perf_counter()
        n = sum(1 for _ in fx.iter_paths(paths, batch_size=args.batch_size, num_workers=workers))
        rates[workers] = n / (time.perf_counter() - start)
    base = rates[0]
    print(f"{'global extraction':40s} {'img/s':>8s} {'x baseline':>10s}")
    for workers, rate in rates.items():
        label = "decode in main process (baseline)" if workers == 0 else f"decode in {workers} DataLoader workers"
        print(f"{label:40s} {rate:8.1f} {rate / base:10.2f}")

    print(f"{'local features (1024 px max side)':40s} {'ms/img':>8s} {'keypoints':>10s}")
    images = [load_image(p, max_side=1024)[0] for p in paths[: args.local_images]]
    for name in local_confs:
        ex = make_local_extractor(name, device=args.device)
        if ex.needs_pca:
            ex.set_pca(ex.fit_pca([ex.extract_raw(im) for im in images[:4]]))
        ex.extract(images[0])  # warm-up
        times, counts = [], []
        for im in images:
            t = time.perf_counter()
            feats = ex.extract(im)
            times.append(1000 * (time.perf_counter() - t))
            counts.append(len(feats))
        print(f"{name:40s} {statistics.median(times):8.1f} {statistics.median(counts):10.0f}")


if __name__ == "__main__":
    main()
