"""`landmarks train`: learned whitening (math, checkpoint, build-index --weights, refusals), the fine-tune route's
resume after kill -9, Ray Train workers against one worker, bad input. Tiny generated data, resnet18 untrained."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from tests.conftest import textured_image

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--conf", "resnet18-gem", "--weights", "random", "--image-size", "48"]


def _write_set(root: Path, sizes=(3, 2, 1, 1), nonlandmarks: int = 1) -> tuple[Path, Path]:
    """Images of a few landmarks (each a texture seen with small shifts) + non-landmarks; (csv, images dir)."""
    from PIL import Image

    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    for lm, n in enumerate(sizes):
        base = textured_image(96, seed=lm)
        for k in range(n):
            im = np.roll(base, 4 * k, axis=1)
            Image.fromarray(im).save(images / f"l{lm}i{k}.jpg")
            rows.append((f"l{lm}i{k}", str(lm)))
    for k in range(nonlandmarks):
        Image.fromarray(textured_image(96, seed=100 + k)).save(images / f"n{k}.jpg")
        rows.append((f"n{k}", ""))
    csv = root / "train.csv"
    pd.DataFrame(rows, columns=["id", "landmark_id"]).to_csv(csv, index=False)
    return csv, images


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_learned_whitening_math():
    """C_S^-1/2 whitens the matching-pair covariance; shrinkage 1 keeps cosines of centred vectors."""
    from retrieval.training.whiten import apply_whitening, learn_whitening

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    diffs = rng.normal(size=(500, 8)) * np.array([5, 1, 1, 1, 1, 1, 1, 0.2])  # nuisance along axis 0
    m, p = learn_whitening(x, diffs, shrinkage=0.0)
    cs = diffs.T @ diffs / len(diffs)
    np.testing.assert_allclose(p @ cs @ p.T, np.eye(8), atol=1e-4)
    assert np.allclose(m, x.mean(0), atol=1e-6)
    m1, p1 = learn_whitening(x, diffs, shrinkage=1.0)
    y = apply_whitening(x, m1, p1)
    c = (x - m1) / np.linalg.norm(x - m1, axis=1, keepdims=True)
    np.testing.assert_allclose(y @ y.T, c @ c.T, atol=1e-4)
    assert learn_whitening(x, diffs, 0.3, dim=3)[1].shape == (3, 8)
    with pytest.raises(ValueError, match="shrinkage"):
        learn_whitening(x, diffs, 1.5)


def test_ledoit_wolf_shrinkage_adapts_to_the_number_of_pairs():
    """shrinkage "auto": the Ledoit-Wolf intensity of the pair differences: large with few pairs (an unshrunk
    C_S^-1/2 would blow up what they do not constrain), small with many; a bad value is refused by name."""
    from retrieval.training.whiten import learn_whitening, resolve_shrinkage

    rng = np.random.default_rng(1)
    scales = np.linspace(3, 0.2, 32)  # an anisotropic nuisance: shrinking towards the identity costs something
    few, many = (rng.normal(size=(n, 32)) * scales for n in (8, 4000))
    a_few, a_many = resolve_shrinkage("auto", few), resolve_shrinkage("auto", many)
    assert 0 <= a_many < 0.1 < a_few <= 1, (a_few, a_many)
    assert resolve_shrinkage("auto", few[:1]) == 1.0 and resolve_shrinkage("0.25", few) == 0.25
    x = rng.normal(size=(50, 32))
    np.testing.assert_allclose(learn_whitening(x, few, "auto")[1], learn_whitening(x, few, a_few)[1], atol=1e-5)
    for bad in ("much", 1.5, "-0.1"):
        with pytest.raises(ValueError, match="shrinkage"):
            resolve_shrinkage(bad, few)


def test_finetune_math():
    """Dynamic margins fall with landmark size; the ArcFace loss prefers the true landmark; warm-up then cosine;
    the validation split holds out whole landmarks that have a second image."""
    from retrieval.training.data import split_by_landmark
    from retrieval.training.finetune import SubCenterArcFace, dynamic_margins, epoch_order, lr_factor

    m = dynamic_margins(np.array([1, 2, 10, 100]), 0.05, 0.5)
    assert m[0] == pytest.approx(0.5) and m[-1] == pytest.approx(0.05) and np.all(np.diff(m) < 0)
    torch.manual_seed(0)
    head = SubCenterArcFace(4, m, subcenters=2)
    emb = head.weight[[0, 2]].detach().clone()  # on a sub-centre of landmarks 0 and 1
    right = head(emb, torch.tensor([0, 1]))
    wrong = head(emb, torch.tensor([1, 0]))
    assert float(right) < float(wrong)
    assert lr_factor(0, 100, 10) == pytest.approx(0.1) and lr_factor(9, 100, 10) == 1.0
    assert lr_factor(55, 100, 10) == pytest.approx(0.5) and lr_factor(100, 100, 10) == pytest.approx(0.0)
    labels = np.array([0] * 50 + [1])
    assert np.mean(epoch_order(labels, 1.0, 4000, 0, 0) == 50) == pytest.approx(0.5, abs=0.05)  # class-balanced
    np.testing.assert_array_equal(epoch_order(labels, 0.5, 10, 3, 2), epoch_order(labels, 0.5, 10, 3, 2))
    names = np.array(["a", "a", "b", "b", "b", "c", "d", "d"])
    val = split_by_landmark(names, 0.3, 0)
    assert val.any() and not val[names == "c"].any()
    assert all(val[names == n].all() or not val[names == n].any() for n in set(names))


def test_train_whiten_then_build_index(tmp_path):
    """CPU `train` takes the whiten route and says so; build-index --weights builds that model (descriptors = the
    whitening of the frozen ones), records it in the manifest; another model's rows and a replaced file are refused."""
    from retrieval.global_model import GlobalExtractor
    from retrieval.training.checkpoint import read_checkpoint
    csv, images = _write_set(tmp_path / "data")
    res = _invoke("train", "--train", csv, "--images", images, "--out", tmp_path / "g1", *TINY, "--views", 2)
    assert res.exit_code == 0, res.output
    assert "route whiten (no GPU" in res.output
    ckpt = read_checkpoint(tmp_path / "g1" / "model.pt")
    assert ckpt["global_conf"]["model"] == "resnet18" and ckpt["neck"] == {"kind": "whiten", "input_norm": True}
    assert ckpt["training"]["images"] == 7 and ckpt["training"]["landmarks"] == 4  # one-image landmarks kept

    idx = tmp_path / "idx"
    res = _invoke("build-index", "--train", csv, "--images", images, "--index", idx, "--weights",
                  tmp_path / "g1" / "model.pt", "--local-conf", "none", "--workers", 0)
    assert res.exit_code == 0, res.output
    from index.reader import IndexReader

    with IndexReader.open(idx) as db:
        gconf = db.manifest["config"]["global"]
    assert gconf["model"] == "resnet18" and gconf["image_size"] == 48 and gconf["checkpoint"]["route"] == "whiten"
    # the index's model is the frozen network followed by the learned whitening
    trained = GlobalExtractor(gconf)
    frozen = GlobalExtractor("resnet18-gem", weights="random", image_size=48)
    ims = [textured_image(96, seed=s) for s in (0, 7)]
    head = ckpt["head"]
    p, b = head["proj.weight"].numpy(), head["proj.bias"].numpy()
    expected = frozen(ims) @ p.T + b  # the neck's L2(P x - P m), x the frozen unit descriptor
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(trained(ims), expected, atol=1e-4)

    # another trained model (other seed: other augmented views) may not add rows to this index
    res = _invoke("train", "--train", csv, "--images", images, "--out", tmp_path / "g2", *TINY, "--views", 2, "--seed", 1)
    assert res.exit_code == 0, res.output
    res = _invoke("build-index", "--train", csv, "--images", images, "--index", idx, "--weights",
                  tmp_path / "g2" / "model.pt", "--local-conf", "none")
    assert res.exit_code == 2 and "different configuration" in res.output and "checkpoint" in res.output
    # a checkpoint replaced at the index's path: queries are refused, not answered with another model
    (tmp_path / "g1" / "model.pt").write_bytes((tmp_path / "g2" / "model.pt").read_bytes())
    res = _invoke("query", "--index", idx, images / "l0i0.jpg")
    assert res.exit_code == 2 and "is not the checkpoint" in res.output
    # --index: an index's own labelled rows (7 of 8: the non-landmark left out)
    res = _invoke("train", "--index", idx, "--out", tmp_path / "g3", *TINY, "--views", 0)
    assert res.exit_code == 0 and "7 images of 4 landmarks" in res.output, res.output


def test_train_bad_input(tmp_path):
    """No landmark at all: one-line refusal; an unreadable image: reported, skipped (exit 1), the rest trained."""
    csv, images = _write_set(tmp_path / "data", sizes=(2, 1), nonlandmarks=2)
    empty = tmp_path / "none.csv"
    pd.DataFrame({"id": ["n0", "n1"], "landmark_id": ["", ""]}).to_csv(empty, index=False)
    res = _invoke("train", "--train", empty, "--images", images, "--out", tmp_path / "x", *TINY)
    assert res.exit_code == 2 and "no labelled landmark image at all" in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "none.csv" in errors[0]
    res = _invoke("train", "--train", csv, "--images", images, "--out", tmp_path / "x", *TINY, "--shrinkage", "lots")
    assert res.exit_code == 2 and "'lots'" in res.output and not (tmp_path / "x" / "model.pt").exists()
    (images / "l0i1.jpg").write_bytes(b"not a jpeg")
    res = _invoke("train", "--train", csv, "--images", images, "--out", tmp_path / "g", *TINY, "--views", 1)
    assert res.exit_code == 1, res.output
    skipped = pd.read_csv(tmp_path / "g" / "skipped.csv")
    assert list(skipped["id"]) == ["l0i1"]
    assert "2 images of 2 landmarks" in res.output


FT = [*TINY[:4], "--image-size", "32", "--route", "finetune", "--epochs", "6", "--batch-size", "2",
      "--checkpoint-every", "1", "--val-fraction", "0", "--seed", "3", "-q"]


def _train_cmd(csv, images, out, *extra):
    code = "import sys; from cli import app; sys.argv = ['landmarks'] + sys.argv[1:]; app()"
    return [sys.executable, "-c", code, "-q", "train", "--train", str(csv), "--images", str(images), "--out", str(out),
            *FT[:-1], *extra]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    return {**{f"b.{k}": v for k, v in ck["backbone"].items()}, **{f"h.{k}": v for k, v in ck["head"].items()}}


def test_finetune_resume_after_kill9_gives_the_same_checkpoint(tmp_path):
    csv, images = _write_set(tmp_path / "data", sizes=(2, 2, 1), nonlandmarks=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    subprocess.run(_train_cmd(csv, images, tmp_path / "a"), check=True, env=env, cwd=ROOT, timeout=300)
    proc = subprocess.Popen(_train_cmd(csv, images, tmp_path / "b"), env=env, cwd=ROOT)
    state = tmp_path / "b" / "state.pt"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists() and not (tmp_path / "b" / "model.pt").exists(), "killed too late to test resume"
    step = torch.load(state, weights_only=True)["step"]
    assert 0 < step < 12
    subprocess.run(_train_cmd(csv, images, tmp_path / "b", "--resume"), check=True, env=env, cwd=ROOT, timeout=300)
    a, b = _tensors(tmp_path / "a" / "model.pt"), _tensors(tmp_path / "b" / "model.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ray_two_workers_train_what_one_worker_trains(tmp_path):
    """Ray Train, same global batch: 2 CPU workers (each half of every batch, gradients averaged) give the weights
    1 worker gives, to float32 round-off (summation order differs): max |difference| <= 1e-5 of the largest weight.
    SGD: Adam divides each gradient by its own running scale, so on weights whose gradient is ~0 it turns round-off
    into full-size steps and no tolerance in weights would hold."""
    pytest.importorskip("ray.train")
    import ray

    from engines import RayOptions
    from retrieval.training import run

    csv, images = _write_set(tmp_path / "data", sizes=(2, 2, 1), nonlandmarks=0)
    common = dict(train=csv, images=images, route="finetune", global_conf="resnet18-gem", weights="random",
                  image_size=32, seed=0, val_fraction=0, progress=False,
                  finetune={"epochs": 2, "batch_size": 4, "checkpoint_every": 100, "optimizer": "sgd", "lr": 0.01})
    one = run.main(tmp_path / "one", device="cpu", **common)  # one worker: the same loop in this process
    # a fresh local instance of 2 CPUs (not a cluster another process of this machine may be running)
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        two = run.main(tmp_path / "two", engine="ray", ray_options=RayOptions(workers=2), **common)
    finally:
        ray.shutdown()
    assert one["route"] == two["route"] == "finetune"
    a, b = _tensors(Path(one["model"])), _tensors(Path(two["model"]))
    scale = max(float(v.abs().max()) for v in a.values())
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-5 * scale, worst
    # and training moved the weights at all (a test that cannot fail would not show equality of anything)
    from retrieval.training.finetune import build_net

    net0, _ = build_net({"model": "resnet18", "weights": "random", "gem_p": 3.0, "mean": None, "std": None}, None)
    start = {f"b.{k}": v for k, v in net0.backbone.state_dict().items()}
    assert max(float((a[k] - start[k]).abs().max()) for k in start if k in a and a[k].is_floating_point()) > 1e-4
