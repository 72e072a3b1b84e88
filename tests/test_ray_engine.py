"""--engine ray on a real two-node Ray cluster (ray.cluster_utils.Cluster: two raylets on this machine, 1 CPU
each): the same index and the same submission as the local engine, shards written by the actors themselves,
resume without duplicates, a retried task's shard published once, the version check, actors' warnings in the
driver's log, and a one-line error when Ray is not installed. The cluster is started once for the module."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from index.reader import IndexReader
from index.writer import IndexWriter
from tests.conftest import FAST_BUILD

runner = CliRunner()
CODE_ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ray_cluster():
    """Two Ray nodes on this machine with their own resources (1 CPU each), no dashboard; the driver joins by
    address (as `--ray-address` does). Shut down at the end of the module."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from ray.cluster_utils import Cluster

    # The nodes' workers import this checkout (they inherit the raylets' environment), not the installed copy.
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE_ROOT), old) if p)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def assert_same_index(a_dir, b_dir):
    a, b = IndexReader.open(a_dir), IndexReader.open(b_dir)
    assert a.size == b.size
    assert len(set(b.metadata["id"])) == b.size  # no duplicate rows
    ma, mb = a.metadata.set_index("id"), b.metadata.set_index("id")
    assert set(ma.index) == set(mb.index)
    assert (ma.loc[mb.index, "landmark_id"].to_numpy() == mb["landmark_id"].to_numpy()).all()
    xa = a.global_descriptors(a.find_rows(list(mb.index)))
    np.testing.assert_allclose(b.global_descriptors(), xa, atol=2e-3)  # float16 storage, thread-count rounding
    for row_b, row_a in enumerate(a.find_rows(list(mb.index))[:5]):
        kp_a, _ = a.local_features(int(row_a))
        kp_b, _ = b.local_features(row_b)
        np.testing.assert_allclose(kp_a, kp_b, atol=1e-3)


def test_build_index_on_two_nodes_matches_local(ray_cluster, demo_data, built_index, tmp_path):
    index = tmp_path / "ray"
    result = invoke("build-index", "--train", demo_data.train_csv, "--images", demo_data.images_dir, "--index", index,
                    "--local-conf", "rootsift", *FAST_BUILD, "--engine", "ray", "--ray-address", ray_cluster.address,
                    "--ray-workers", 2)
    assert result.exit_code == 0, result.output
    assert_same_index(built_index, index)
    # the local engine's row order, and the shards were written on both nodes, by the actors
    assert list(IndexReader.open(index).metadata["id"]) == list(IndexReader.open(built_index).metadata["id"])
    assert "received by the driver, 2 node(s)" in result.output, result.output  # the CLI's log (INFO)


def test_build_index_ray_resumes_without_duplicates(ray_cluster, demo_data, built_index, tmp_path, monkeypatch,
                                                    caplog):
    """A driver killed after two shard reports; the rerun extracts only what no shard holds. An unreadable
    image: its warning, logged by the actor, reaches the driver's log."""
    from engines import RayOptions, build_index
    from engines import ray as ray_engine
    from retrieval.data import read_references
    from retrieval.defaults import DEFAULT_GLOBAL
    from retrieval.global_model import resolve_global_conf

    refs = read_references(demo_data.train_csv, demo_data.images_dir, None)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    refs = refs.copy()
    refs.loc[len(refs)] = {**refs.iloc[0].to_dict(), "id": "broken", "path": str(bad)}
    gconf = resolve_global_conf(DEFAULT_GLOBAL, image_size=224)
    index = tmp_path / "ray"
    real_relog, reports = ray_engine.relog, []

    def dying(text, where):  # the driver dies after two shard reports
        if len(reports) == 2:
            raise KeyboardInterrupt("simulated kill")
        reports.append(where)
        return real_relog(text, where)

    monkeypatch.setattr(ray_engine, "relog", dying)
    run = dict(local_conf="rootsift", batch_size=4, shard_size=4, engine="ray", progress=False,
               ray_options=RayOptions(address=ray_cluster.address, workers=1))
    with pytest.raises(KeyboardInterrupt):
        build_index(refs, index, gconf, **run)
    monkeypatch.setattr(ray_engine, "relog", real_relog)
    written = {p.name for p in (index / "shards").glob("shard-*.h5")}
    assert len(written) >= 2  # by the actor: the driver received two reports only
    caplog.clear()
    stats = build_index(refs, index, gconf, **run)
    assert stats["already_stored"] >= 8  # the finished shards are not recomputed...
    assert stats["already_stored"] + stats["extracted"] + stats["skipped"] == len(refs)
    assert stats["n_duplicates"] == 0  # ...and no image is in two shards
    assert stats["skipped"] == 1 and stats["driver_bytes_per_image"] <= 1024
    assert_same_index(built_index, index)
    assert "broken" in (index / "skipped.csv").read_text()
    warned = [r for r in caplog.records if "skipped broken" in r.getMessage()]
    assert warned and "[ray worker " in warned[0].getMessage() and warned[0].levelno == logging.WARNING


def test_a_retried_task_publishes_its_shard_once(demo_data, tmp_path, monkeypatch, request):
    """The same block given to an actor twice (Ray retrying a task): one shard, the images extracted once."""
    pytest.importorskip("ray")
    import logging

    from engines.ray import PACKAGE_LOGGERS, ShardActor, runtime_versions
    from retrieval.data import read_references

    # The actor runs in this process here (in Ray it has a worker process of its own), and it sends the package
    # loggers' records to the driver instead of printing them: put them back afterwards.
    for name in PACKAGE_LOGGERS:
        log = logging.getLogger(name)
        monkeypatch.setattr(log, "propagate", log.propagate)
        monkeypatch.setattr(log, "handlers", list(log.handlers))
    import torch

    threads = torch.get_num_threads()  # the actor sets its own torch threads: give this process its own back
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    from retrieval.defaults import DEFAULT_GLOBAL
    from retrieval.extract import FeatureExtractor
    from retrieval.global_model import resolve_global_conf

    refs = read_references(demo_data.train_csv, demo_data.images_dir, None).head(3)
    fx = FeatureExtractor(resolve_global_conf(DEFAULT_GLOBAL, image_size=128), "rootsift", device="cpu")
    index = tmp_path / "idx"
    db = IndexWriter.create_or_open(index, fx.index_config(), fx.global_extractor.dim)
    actor = ShardActor(str(index), fx.index_config(), db.dim, None, "cpu", 4, runtime_versions())
    batch = {"pos": np.arange(3), "id": refs["id"].to_numpy(object), "landmark_id": refs["landmark_id"].to_numpy(object),
             "path": refs["path"].to_numpy(object), "shard": np.full(3, 1_000_000), "shard_rows": np.full(3, 3)}
    first = actor(batch)
    assert sorted(p.name for p in (index / "shards").iterdir()) == ["shard-1000000.h5"]

    def never(*args, **kwargs):
        raise AssertionError("extracted twice")

    monkeypatch.setattr(actor.fx, "iter_paths", never)
    second = actor(batch)
    assert sorted(p.name for p in (index / "shards").iterdir()) == ["shard-1000000.h5"]
    import json

    r1, r2 = json.loads(first["report"][0]), json.loads(second["report"][0])
    assert (r1["written"], r1["retried"], r2["written"], r2["retried"]) == (3, False, 3, True)
    assert "earlier attempt" in second["log"][0]
    stats = db.commit()
    assert stats["n_added"] == 3 and stats["n_duplicates"] == 0


def test_worker_version_mismatch_is_one_line(ray_cluster, demo_data, tmp_path, monkeypatch):
    from engines import ray as ray_engine

    real = ray_engine.runtime_versions()
    monkeypatch.setattr(ray_engine, "runtime_versions", lambda: {**real, "landmarks": "0.0.9"})  # the driver only
    result = invoke("build-index", "--train", demo_data.train_csv, "--images", demo_data.images_dir,
                    "--index", tmp_path / "idx", *FAST_BUILD, "--engine", "ray", "--ray-address", ray_cluster.address)
    assert result.exit_code == 2, result.output
    # the command's error is one line naming both versions (around it: Ray's own report of the failed actor,
    # forwarded to the driver's console)
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert f"runs landmarks {real['landmarks']} (code {real['code']}" in errors[0]
    assert "the driver runs landmarks 0.0.9 (" in errors[0]


def test_engine_ray_without_ray_is_one_line(demo_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    result = invoke("build-index", "--train", demo_data.train_csv, "--images", demo_data.images_dir,
                    "--index", tmp_path / "idx", *FAST_BUILD, "--engine", "ray")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and '".[ray]"' in lines[0], result.output
    assert not (tmp_path / "idx").exists()


def test_predict_on_two_nodes_matches_local(ray_cluster, demo_data, built_index, tmp_path):
    import ray
    import torch

    local_out, ray_out = tmp_path / "local.csv", tmp_path / "ray.csv"
    common = ["predict", "--index", built_index, "--queries", demo_data.holdout_csv, "--images", demo_data.images_dir]
    # Byte-identical needs the same torch thread count as the actors (1 CPU each): another count sums the
    # convolutions in another order, which moves confidences in the 6th decimal.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = invoke(*common, "--out", local_out, "--workers", 0)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    ray_args = ["--engine", "ray", "--ray-address", ray_cluster.address]
    result = invoke(*common, "--out", ray_out, *ray_args, "--ray-workers", 2)
    assert result.exit_code == 0, result.output
    assert ray_out.read_text() == local_out.read_text()
    # order was preserved for that dataset only, not for every Ray Data pipeline of the process
    assert ray.data.DataContext.get_current().execution_options.preserve_order is False
    # resumable as locally: a rerun finds every query in the evidence file and sends nothing to Ray
    before = ray_out.with_name(ray_out.name + ".evidence.jsonl").read_text()
    result = invoke(*common, "--out", ray_out, *ray_args)
    assert result.exit_code == 0, result.output
    assert ray_out.with_name(ray_out.name + ".evidence.jsonl").read_text() == before
    assert ray_out.read_text() == local_out.read_text()
