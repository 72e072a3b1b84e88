"""--engine ray: the same index and the same submission as the local engine, resume without duplicates,
and a one-line error when Ray is not installed. A local Ray instance with 2 CPUs, started once."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from index.database import IndexDatabase
from tests.conftest import FAST_BUILD, read_csv

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance (2 CPUs, no dashboard) shared by this module's tests, shut down at the end."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from retrieval.ray_engine import RayOptions, init_ray

    init_ray(RayOptions(num_cpus=2))
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def assert_same_index(a_dir, b_dir):
    a, b = IndexDatabase.open(a_dir), IndexDatabase.open(b_dir)
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


def test_build_index_ray_matches_local(ray_local, demo_data, built_index, tmp_path):
    index = tmp_path / "ray"
    result = invoke("build-index", "--train", demo_data.train_csv, "--images", demo_data.images_dir, "--index", index,
                    "--local-conf", "rootsift", *FAST_BUILD, "--engine", "ray", "--ray-workers", 2)
    assert result.exit_code == 0, result.output
    assert_same_index(built_index, index)


def test_build_index_ray_resumes_without_duplicates(ray_local, demo_data, built_index, tmp_path, monkeypatch):
    from retrieval import extract
    from retrieval.defaults import DEFAULT_GLOBAL
    from retrieval.data import read_references
    from retrieval.global_model import resolve_global_conf

    refs = read_references(demo_data.train_csv, demo_data.images_dir, None)
    gconf = resolve_global_conf(DEFAULT_GLOBAL, image_size=224)
    index = tmp_path / "ray"
    original = IndexDatabase.write_shard
    calls = []

    def dying(self, *args, **kwargs):  # a kill after two shards are on disk
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(IndexDatabase, "write_shard", dying)
    from retrieval.ray_engine import RayOptions

    run = dict(local_conf="rootsift", batch_size=4, shard_size=4, engine="ray", ray_options=RayOptions(workers=1),
               progress=False)
    with pytest.raises(KeyboardInterrupt):
        extract.main(refs, index, gconf, **run)
    monkeypatch.setattr(IndexDatabase, "write_shard", original)
    stats = extract.main(refs, index, gconf, **run)
    assert stats["already_stored"] == 8  # the two finished shards are not recomputed
    assert stats["extracted"] == len(refs) - 8
    assert_same_index(built_index, index)


def test_engine_ray_without_ray_is_one_line(demo_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    result = invoke("build-index", "--train", demo_data.train_csv, "--images", demo_data.images_dir,
                    "--index", tmp_path / "idx", *FAST_BUILD, "--engine", "ray")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and '".[ray]"' in lines[0], result.output
    assert not (tmp_path / "idx").exists()


def test_predict_ray_matches_local(ray_local, demo_data, built_index, tmp_path):
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
    result = invoke(*common, "--out", ray_out, "--engine", "ray", "--ray-workers", 1)
    assert result.exit_code == 0, result.output
    assert ray_out.read_text() == local_out.read_text()
    # resumable as locally: a rerun finds every query in the evidence file and sends nothing to Ray
    before = ray_out.with_name(ray_out.name + ".evidence.jsonl").read_text()
    result = invoke(*common, "--out", ray_out, "--engine", "ray")
    assert result.exit_code == 0, result.output
    assert ray_out.with_name(ray_out.name + ".evidence.jsonl").read_text() == before
    assert ray_out.read_text() == local_out.read_text()
