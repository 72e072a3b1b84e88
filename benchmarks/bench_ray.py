"""--engine ray vs --engine local on one machine: build-index and predict, wall time and equal results.

On one machine Ray cannot be faster than the local engine (same cores, same code); the point is that its
overhead (actor start-up, one model load per actor) is small, that the driver is out of the data path (the
actors write the shards; ``driver_bytes_per_image`` is the pickled size of everything the driver received
from Ray during the build, per image), and that the results are the same (``equal``: same ids, order and
labels, descriptors within float16 rounding, byte-identical submission).
Ray runs on a local instance with --num-cpus CPUs, or with --nodes N >= 2 on a cluster of N Ray nodes on
this machine (``ray.cluster_utils.Cluster``, --cpus-per-node each: a real multi-node run, the actors spread
over the nodes), with --ray-workers CPU actors; the local engine uses the same torch threads per process as
each actor when --threads is given. Ray's own start-up is reported apart (``ray_init_s``); the build and
predict times include the actors' start-up and model loads.

    PYTHONPATH=. python benchmarks/bench_ray.py --landmarks 16 --queries-per-landmark 2
    PYTHONPATH=. python benchmarks/bench_ray.py --nodes 2
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engines import RayOptions, build_index
from engines.ray import CODE_ROOT, init_ray
from eval import predict
from index.reader import IndexReader
from retrieval.data import read_references
from retrieval.global_model import resolve_global_conf
from synthetic import generate_demo_dataset


def start_cluster(nodes: int, cpus_per_node: int):
    """``nodes`` Ray nodes on this machine (their workers import this checkout); returns the cluster."""
    from ray.cluster_utils import Cluster

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE_ROOT), os.environ.get("PYTHONPATH")) if p)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus_per_node, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus_per_node)
    cluster.wait_for_nodes()
    return cluster


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--landmarks", type=int, default=16)
    ap.add_argument("--queries-per-landmark", type=int, default=2)
    ap.add_argument("--conf", default="lite0-gem")
    ap.add_argument("--local-conf", default="rootsift")
    ap.add_argument("--image-size", type=int, default=224, help="global model input size")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance (--nodes 1)")
    ap.add_argument("--nodes", type=int, default=1, help="Ray nodes: 1 a local instance, >= 2 a cluster on this machine")
    ap.add_argument("--cpus-per-node", type=int, default=1, help="CPUs of each node with --nodes >= 2")
    ap.add_argument("--ray-workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the local engine (actors: 1 each)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = generate_demo_dataset(tmp / "data", n_landmarks=args.landmarks, refs_per_landmark=(2, 4),
                                     queries_per_landmark=args.queries_per_landmark, n_distractor_refs=args.landmarks // 2,
                                     n_distractor_queries=args.landmarks // 2, image_size=480, seed=3)
        refs = read_references(data.train_csv, data.images_dir, None)
        gconf = resolve_global_conf(args.conf, image_size=args.image_size)
        start = time.perf_counter()
        cluster = start_cluster(args.nodes, args.cpus_per_node) if args.nodes > 1 else None
        init_ray(RayOptions(address=cluster.address) if cluster else RayOptions(num_cpus=args.num_cpus))
        import ray

        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_init_s = time.perf_counter() - start
        options = RayOptions(workers=args.ray_workers)
        out: dict = {"references": len(refs), "nodes": args.nodes, "ray_init_s": round(ray_init_s, 2)}
        for engine in ("local", "ray"):
            start = time.perf_counter()
            stats = build_index(refs, tmp / engine, gconf, args.local_conf, batch_size=args.batch_size, num_workers=1,
                                progress=False, engine=engine, ray_options=options if engine == "ray" else None)
            out[f"build_{engine}_s"] = round(time.perf_counter() - start, 2)
        out["driver_bytes_per_image"] = stats["driver_bytes_per_image"]
        out["ray_nodes_used"] = stats["ray_nodes"]
        for engine in ("local", "ray"):
            start = time.perf_counter()
            predict.main(tmp / "local", data.holdout_csv, data.images_dir, tmp / f"{engine}.csv", progress=False,
                         num_workers=1, engine=engine, ray_options=options if engine == "ray" else None)
            out[f"predict_{engine}_s"] = round(time.perf_counter() - start, 2)
        a, b = IndexReader.open(tmp / "local"), IndexReader.open(tmp / "ray")
        ids_a, ids_b = list(a.metadata["id"]), list(b.metadata["id"])
        out["same_ids_and_order"] = ids_a == ids_b
        out["same_labels"] = list(a.metadata["landmark_id"]) == list(b.metadata["landmark_id"])
        out["max_descriptor_diff"] = float(np.abs(a.global_descriptors() - b.global_descriptors()).max())
        sub = {e: list(csv.reader(open(tmp / f"{e}.csv"))) for e in ("local", "ray")}
        out["queries"] = len(sub["local"]) - 1
        out["submission_identical"] = sub["local"] == sub["ray"]
        out["same_answers"] = [r[1].split(" ")[0] for r in sub["local"]] == [r[1].split(" ")[0] for r in sub["ray"]]
        conf_diff = [abs(float(x[1].split(" ")[1]) - float(y[1].split(" ")[1]))
                     for x, y in zip(sub["local"][1:], sub["ray"][1:]) if x[1] and y[1]]
        out["max_confidence_diff"] = max(conf_diff, default=0.0)
        out["equal"] = bool(out["same_ids_and_order"] and out["same_labels"] and out["max_descriptor_diff"] <= 2e-3
                            and out["submission_identical"])
        out["build_ray_over_local"] = round(out["build_ray_s"] / out["build_local_s"], 3)
        out["predict_ray_over_local"] = round(out["predict_ray_s"] / out["predict_local_s"], 3)
        out.update(num_cpus=args.num_cpus, ray_workers=args.ray_workers, local_torch_threads=args.threads,
                   conf=args.conf, local_conf=args.local_conf, image_size=args.image_size, cpus=os.cpu_count())
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    for k, v in out.items():
        print(f"{k:28s} {v}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
