"""Extraction throughput: global descriptors (images/s) and local features (ms/image), in one run.

Measures on generated photos (synthetic.photos): the global model with the
image decoding in the main process (baseline) vs in DataLoader workers, and
the per-image cost of each local configuration. Ratios are against the
baseline measured in the same run.

    python benchmarks/bench_extract.py --images 96 --device cpu
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from retrieval.extract import FeatureExtractor
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
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--local-images", type=int, default=12)
    args = ap.parse_args()
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
        rates = {}
        for workers in (0, args.workers):
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
