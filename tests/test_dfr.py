import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uad import methods
from uad.data.prepared import load_split
from uad.methods.dfr import DFR, FeatCAE, RegionalFeatures, pca_dimension, pool_matrix, resize_matrix
from uad.runtime import seed_everything

from .conftest import tiny_config


@pytest.mark.parametrize("n_in, n_out", [(4, 16), (7, 64), (16, 16), (32, 256)])
def test_resize_matrix_is_bilinear_align_corners(n_in, n_out):
    x = torch.randn(2, 3, n_in, n_in, dtype=torch.float64)
    a = resize_matrix(n_in, n_out)
    expected = F.interpolate(x, size=n_out, mode="bilinear", align_corners=True)
    torch.testing.assert_close(a @ x @ a.T, expected)


@pytest.mark.parametrize("kernel, stride", [(4, 4), (6, 2), (3, 1), (5, 5)])
def test_pool_matrix_is_replicate_padded_average_pooling(kernel, stride):
    n, pad = 32, (kernel - stride) // 2
    x = torch.randn(1, 2, n, n, dtype=torch.float64)
    p = pool_matrix(n, kernel, stride)
    expected = F.avg_pool2d(F.pad(x, (pad,) * 4, mode="replicate"), kernel, stride)
    torch.testing.assert_close(p @ x @ p.T, expected)


def test_regional_features_equal_resize_then_pool():
    """The folded linear maps give DFR's generator: resize every layer to the input, pool, concat."""
    torch.manual_seed(0)
    feats = [torch.randn(2, 5, 64, 64), torch.randn(2, 7, 16, 16), torch.randn(2, 3, 8, 8)]
    gen = RegionalFeatures([64, 16, 8], image_size=64, kernel=4, stride=4)
    expected = torch.cat([F.avg_pool2d(F.interpolate(f, size=64, mode="bilinear", align_corners=True), 4, 4)
                          for f in feats], 1)
    out = gen(feats)
    assert out.shape == (2, 15, 16, 16)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_cae_follows_the_paper_sizes():
    cae = FeatCAE(3456, 200)
    convs = [m for m in cae.modules() if isinstance(m, torch.nn.Conv2d)]
    hidden = (3456 + 400) // 2
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (3456, hidden), (hidden, 400), (400, 200), (200, 400), (400, hidden), (hidden, 3456)]
    assert all(c.kernel_size == (1, 1) for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in cae.modules()) == 4
    assert isinstance(cae.encoder[-1], torch.nn.Conv2d) and isinstance(cae.decoder[-1], torch.nn.Conv2d)


def test_pca_dimension_counts_components_for_the_variance():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(20, 20, generator=g))[0]
    # variances 100, 50, 25, then 0.1 each: three components hold > 90 %
    scales = torch.tensor([10.0, 7.07, 5.0] + [0.316] * 17)
    x = (torch.randn(4000, 20, generator=g) * scales) @ basis.T
    feats = x.T.reshape(1, 20, 40, 100)
    assert pca_dimension(feats, 0.9) == 3
    assert pca_dimension(feats, 0.5) == 1
    assert pca_dimension(feats, 1.0) == 20


def fitted(prepared, **overrides):
    cfg = tiny_config(model="dfr", **overrides)
    model = methods.create(cfg)
    train = load_split(prepared, "train")
    losses = []
    info = model.fit(train.images, seed_everything(cfg.seed), lambda epoch, logs: losses.append(logs["loss"]))
    model.calibrate(train.images, cfg.evaluate.target_fpr, 8)
    return cfg, model, info, losses


def test_dfr_trains_scores_and_round_trips(prepared, tmp_path):
    cfg, model, info, losses = fitted(prepared, dfr={"epochs": 4})
    assert isinstance(model, DFR) and len(losses) == 4 and losses[-1] < losses[0]
    assert info.extra["latent_dim"] == model.latent_dim >= 1
    test = load_split(prepared, "test")
    scores = model.score(test.images, 5)
    assert scores.maps.shape == (len(test), 64, 64)
    torch.testing.assert_close(scores.image, scores.maps.flatten(1).amax(1))
    assert torch.isfinite(model.threshold) and model.threshold > model.normal_quantiles[0]
    model.save(tmp_path / "m", info, {"fit_seconds": 1.0})
    again = methods.load(tmp_path / "m", cfg)
    torch.testing.assert_close(again.score(test.images, 3).maps, scores.maps, rtol=0, atol=0)
    assert float(again.threshold) == float(model.threshold)


def test_explicit_latent_dim_skips_pca(prepared):
    _, model, info, _ = fitted(prepared, dfr={"latent_dim": 7, "epochs": 1})
    assert model.latent_dim == 7 and model.cae.encoder[-1].out_channels == 7


def test_training_is_reproducible(prepared):
    *_, first = fitted(prepared)
    *_, second = fitted(prepared)
    assert first == second
    *_, other_seed = fitted(prepared, seed=1)
    assert other_seed != first


def test_loading_with_other_backbone_weights_is_refused(prepared, tmp_path):
    cfg, model, info, _ = fitted(prepared, dfr={"epochs": 1})
    model.save(tmp_path / "m", info, {})
    with pytest.raises(ValueError, match="backbone weights .* differ"):
        methods.load(tmp_path / "m", tiny_config(model="dfr", dfr={"epochs": 1, "pretrained": False}))


def test_reconstruction_error_flags_an_inserted_defect(prepared):
    """Maps must be higher inside a defect than on the rest of the same image."""
    _, model, _, _ = fitted(prepared, dfr={"epochs": 40})
    test = load_split(prepared, "test")
    maps = model.score(test.images, 8).maps.numpy()
    inside = [m[k > 0].mean() for m, k in zip(maps, test.masks) if k.any()]
    outside = [m[k == 0].mean() for m, k in zip(maps, test.masks) if k.any()]
    assert np.mean(np.array(inside) > np.array(outside)) >= 0.75
