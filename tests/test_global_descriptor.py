"""Global descriptor math and model: GeM by hand, L2 norm, batch invariance, weights loading."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval import backbones
from retrieval.global_model import GlobalExtractor, gem, resolve_global_conf, target_size


def test_gem_matches_hand_computation():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    expected = ((1 + 8 + 27 + 64) / 4) ** (1 / 3)
    assert gem(x, 3.0).item() == pytest.approx(expected, rel=1e-6)
    assert gem(x, 1.0).item() == pytest.approx(2.5, rel=1e-6)  # p = 1 is the mean
    assert gem(x, 50.0).item() == pytest.approx(4.0, rel=0.05)  # large p tends to the max
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert gem(x, 3.0, mask=mask).item() == pytest.approx(((1 + 8) / 2) ** (1 / 3), rel=1e-6)
    # negative activations are clamped, so the result stays finite
    assert torch.isfinite(gem(-x, 3.0)).all()


def test_target_size_keeps_aspect():
    assert target_size(800, 400, 384, "longer") == (384, 192)
    assert target_size(800, 400, 384, "shorter") == (768, 384)


def test_unknown_conf_lists_choices():
    with pytest.raises(ValueError, match="lite0-gem"):
        resolve_global_conf("nope")
    with pytest.raises(ValueError, match="unknown global configuration key 'colour'; choose one of"):
        resolve_global_conf("lite0-gem", colour="red")


@pytest.fixture(scope="module")
def small_extractor():
    torch.manual_seed(0)
    return GlobalExtractor("resnet18-gem", device="cpu", weights="random", image_size=96)


def _images(n, seed=0, shape=(120, 90)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (*shape, 3), dtype=np.uint8) for _ in range(n)]


def test_descriptors_unit_norm_and_batch_invariant(small_extractor):
    ims = _images(4)
    batch = small_extractor(ims)
    assert batch.shape == (4, 512) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    single = np.concatenate([small_extractor([im]) for im in ims])
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_mixed_sizes_batch_equals_single(small_extractor):
    ims = _images(2, seed=1) + _images(1, seed=2, shape=(60, 140))
    batch = small_extractor(ims)
    single = np.concatenate([small_extractor([im]) for im in ims])
    # images of different sizes are never padded together: exactly the single-image result
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_multiscale_flip_still_unit_norm():
    ex = GlobalExtractor("resnet18-gem", device="cpu", weights="random", image_size=64, scales=[0.707, 1.0], flip=True)
    d = ex(_images(2))
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    assert ex([]).shape == (0, 512)
    with pytest.raises(ValueError, match="RGB"):
        ex([np.zeros((10, 10), np.uint8)])


def test_mismatched_state_dict_fails_loudly(tmp_path):
    ckpt = tmp_path / "wrong.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(3, 3)}}, ckpt)
    with pytest.raises(backbones.WeightsMismatchError, match="missing"):
        backbones.create_backbone("resnet18", weights=ckpt)
    other = tmp_path / "other.pth"
    torch.save(backbones.create_backbone("resnet34", weights="random").state_dict(), other)
    with pytest.raises(backbones.WeightsMismatchError):
        backbones.create_backbone("resnet18", weights=other)
    with pytest.raises(FileNotFoundError):
        backbones.create_backbone("resnet18", weights=tmp_path / "absent.pth")


def test_local_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    src = backbones.create_backbone("resnet18", weights="random")
    ckpt = tmp_path / "r18.pth"
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}}, ckpt)
    loaded = backbones.create_backbone("resnet18", weights=ckpt)
    for (k, a), b in zip(src.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_in_order_mapping_refuses_shape_conflicts():
    target = backbones.create_backbone("resnet18", weights="random")
    sd = dict(target.state_dict())
    first = next(iter(sd))
    sd[first] = torch.zeros(1)
    with pytest.raises(backbones.WeightsMismatchError, match="does not fit"):
        backbones._map_in_order(sd, target, "test")


@pytest.mark.parametrize("model_name,conf_name", [("tf_efficientnet_lite0", "lite0-gem"), ("tf_efficientnet_lite2", "lite2-gem")])
def test_packaged_weights_are_real_imagenet_weights(model_name, conf_name):
    """Every tensor of the packaged checkpoint maps onto timm's model and gives ImageNet behaviour."""
    import timm

    if backbones.packaged_weights_file(model_name) is None:
        pytest.skip(f"the weights package for {model_name} is not installed")
    full = timm.create_model(model_name, pretrained=False)
    state = backbones._packaged_state_dict(model_name)
    assert set(state) == set(full.state_dict())
    full.load_state_dict(state, strict=True)
    full.eval()
    # A generated checkerboard: ImageNet-trained weights name a grid-like class (crossword puzzle,
    # window screen, shoji); random weights would not.
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    grid_like = {"crossword puzzle, crossword", "window screen", "shoji", "honeycomb"}
    yy, xx = np.mgrid[0:224, 0:224]
    for period in (28,):  # a 28-px checkerboard: grid-like classes for both Lite0 and Lite2
        board = (((yy // period) + (xx // period)) % 2 * 255).astype(np.float32)
        x = (torch.from_numpy(np.stack([board] * 3))[None] / 255.0 - 0.5) / 0.5
        with torch.no_grad():
            top3 = full(x).softmax(-1)[0].topk(3).indices.tolist()
        names = {info.index_to_description(i) for i in top3}
        assert names & grid_like, (period, names)
    # the named configuration uses these weights without any network access
    ex = GlobalExtractor(conf_name, device="cpu", image_size=128)
    d = ex(_images(2))
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)


def test_one_photo_gets_one_global_descriptor_on_every_path(tmp_path):
    """A large JPEG described for `query` (global only) and for `recognize` (with local features at 1024 px)
    gets the identical global descriptor: the global image must not be decoded at the local size (finding 6)."""
    from PIL import Image

    from retrieval.extract import FeatureExtractor
    from tests.conftest import textured_image

    big = np.concatenate([np.concatenate([textured_image(800, seed=s) for s in (0, 1, 2)], axis=1)] * 2, axis=0)
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path, quality=92)  # 2400 x 1600: draft decoding applies
    conf = {"model": "resnet18", "weights": "random", "image_size": 128}
    global_only = FeatureExtractor(conf, None, device="cpu").describe_image(path)
    with_local = FeatureExtractor(conf, "rootsift", device="cpu", local_image_size=1024).describe_image(path)
    assert with_local.local is not None and len(with_local.local) > 0
    np.testing.assert_array_equal(global_only.global_desc, with_local.global_desc)
