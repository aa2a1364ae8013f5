"""PaDiM's own pieces against references (numpy, scipy); what every method must do is in test_methods.py."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from uad.data.prepared import load_split
from uad.errors import ConfigError
from uad.methods.base import FitInfo, create, load
from uad.methods.padim.model import GaussianMoments, mahalanobis
from uad.metrics.compute import image_auroc, pixel_auroc
from uad.runtime import seed_everything

from .conftest import tiny_config

CPU = torch.device("cpu")


def moments_of(x: torch.Tensor, splits: list[int], epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Means and factors of (P, N, d) features fed in batches of the given sizes."""
    moments = GaussianMoments(x.shape[0], x.shape[2], CPU)
    for part in x.split(splits, dim=1):
        moments.update(part)
    return moments.mean.clone(), moments.whitening(epsilon).clone()


def reference(x: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """numpy's per-position mean and regularised covariance, as the reference implementation computes them."""
    d = x.shape[2]
    return x.mean(1), np.stack([np.cov(p, rowvar=False) + epsilon * np.eye(d) for p in x])


@pytest.mark.parametrize("offset", [0.0, 1000.0])  # far from zero: a float32 sum of squares would lose it
def test_mean_and_covariance_equal_numpys(offset):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 23, 5, generator=g) * torch.rand(1, 1, 5, generator=g) * 3 + offset
    x[:, :, 1] += 0.5 * x[:, :, 0]  # correlated channels
    mean, whiten = moments_of(x, [5, 1, 17], epsilon=0.01)
    expected_mean, expected_cov = reference(x.double().numpy(), 0.01)
    np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-12, atol=1e-12 * max(offset, 1))
    w = whiten.double().numpy()
    covariance = np.linalg.inv(np.transpose(w, (0, 2, 1)) @ w)  # W^T W is the inverse covariance
    np.testing.assert_allclose(covariance, expected_cov, rtol=1e-5, atol=1e-5 * np.abs(expected_cov).max())
    assert np.allclose(np.triu(w, 1), 0)  # W = L^-1 is lower triangular


def test_the_batching_does_not_change_the_statistics():
    x = torch.randn(3, 20, 4, generator=torch.Generator().manual_seed(1))
    one = moments_of(x, [20], 0.01)
    many = moments_of(x, [1, 2, 3, 14], 0.01)
    torch.testing.assert_close(one[0], many[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(one[1], many[1], rtol=1e-5, atol=1e-5)


def test_fewer_than_n_plus_one_images_are_regularised_not_singular():
    """With fewer images than channels (the usual case for d = 550) the covariance is singular but
    for epsilon I, and the distances are still those of the regularised Gaussian."""
    x = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(2))
    mean, whiten = moments_of(x, [4], epsilon=0.01)
    q = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(3))
    _, cov = reference(x.double().numpy(), 0.01)
    expected = [[scipy_mahalanobis(q[p, b].double().numpy(), mean[p].numpy(), np.linalg.inv(cov[p]))
                 for b in range(3)] for p in range(2)]
    np.testing.assert_allclose(mahalanobis(q, mean.float(), whiten).numpy(), expected, rtol=1e-4)


def test_one_image_is_refused():
    moments = GaussianMoments(2, 3, CPU)
    moments.update(torch.ones(2, 1, 3))
    with pytest.raises(Exception, match="at least 2 training images"):
        moments.whitening(0.01)


def test_mahalanobis_equals_scipys_per_position():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 30, 6, generator=g)
    mean, whiten = moments_of(x, [16, 14], epsilon=0.01)
    q = torch.randn(7, 5, 6, generator=g) * 2
    got = mahalanobis(q, mean.float(), whiten).numpy()
    expected_mean, cov = reference(x.double().numpy(), 0.01)
    expected = np.array([[scipy_mahalanobis(q[p, b].double().numpy(), expected_mean[p], np.linalg.inv(cov[p]))
                          for b in range(5)] for p in range(7)])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # the training mean itself is at distance 0
    assert mahalanobis(mean.float()[:, None], mean.float(), whiten).abs().max() < 1e-3


@pytest.fixture(scope="module")
def fitted(prepared):
    cfg = tiny_config(model="padim")
    train = load_split(prepared, "train")
    model = create(cfg)
    info = model.fit(train.images, seed_everything(cfg.seed), batch_size=3)
    return cfg, model, info


def test_concatenation_is_nearest_upsampling_like_the_reference(fitted, prepared):
    """The reference implementation concatenates by unfold/fold: every deeper map's value fills its
    s x s block of the first layer's grid (s the stride ratio) - np.repeat along both axes."""
    _, model, _ = fitted
    images = load_split(prepared, "test").images[:2]
    feats = [f.numpy() for f in model.features(images)]
    s = [model.grid // f.shape[-1] for f in feats]
    assert s == [1, 2, 4]
    expected = np.concatenate([f.repeat(k, axis=2).repeat(k, axis=3) for f, k in zip(feats, s)], 1)
    np.testing.assert_array_equal(model.concatenated(images).numpy(), expected)


def test_anomaly_maps_follow_the_paper_step_by_step(fitted, prepared):
    """Mahalanobis per position (scipy), bilinear upsampling to the input, scipy's Gaussian of sigma 4."""
    cfg, model, _ = fitted
    images = load_split(prepared, "test").images[:2]
    emb = model.concatenated(images)[:, model.index].double().numpy()  # (B, d, G, G)
    g, d = model.grid, cfg.method().d
    train = load_split(prepared, "train").images
    train_emb = model.concatenated(train)[:, model.index].double().numpy().reshape(len(train), d, g * g)
    dist = np.zeros((len(images), g * g))
    for p in range(g * g):
        inverse = np.linalg.inv(np.cov(train_emb[:, :, p], rowvar=False) + 0.01 * np.eye(d))
        mean = train_emb[:, :, p].mean(0)
        dist[:, p] = [scipy_mahalanobis(e[:, p], mean, inverse) for e in emb.reshape(len(images), d, g * g)]
    up = F.interpolate(torch.from_numpy(dist.reshape(-1, 1, g, g)), size=cfg.image_size, mode="bilinear",
                       align_corners=False)[:, 0].numpy()
    expected = np.stack([gaussian_filter(m, sigma=4) for m in up])
    got = model.anomaly_maps(images).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.max())


def test_channel_choice_is_seeded_and_stored(fitted, prepared, tmp_path):
    cfg, model, info = fitted
    d = cfg.method().d
    index = model.index.tolist()
    assert len(index) == d == info.extra["d"] and index == sorted(set(index)) and 0 <= index[0] and index[-1] < 144
    images = load_split(prepared, "train").images[:3]
    again = create(cfg)
    again.fit(images, seed_everything(cfg.seed), batch_size=3)
    assert again.index.tolist() == index  # the same seed draws the same channels
    again.fit(images, seed_everything(cfg.seed + 1), batch_size=3)
    assert again.index.tolist() != index
    model.save(tmp_path, FitInfo(), {})
    loaded = load(tmp_path)
    assert loaded.index.tolist() == index
    torch.testing.assert_close(loaded.whiten, model.whiten, rtol=0, atol=0)
    torch.testing.assert_close(loaded.mean, model.mean, rtol=0, atol=0)


def test_d_is_checked_against_the_layers_channels():
    with pytest.raises(ConfigError, match=r"padim\.d: 145 is more than the 144 channels"):
        create(tiny_config(model="padim", padim={"d": 145}))
    assert create(tiny_config(model="padim", padim={"d": 144})).params.d == 144
    with pytest.raises(ConfigError, match=r"padim\.d: 449 is more than the 448 channels"):
        create(tiny_config(model="padim", padim={"backbone": "resnet18", "pretrained": False, "d": 449}))


def test_the_state_size_is_bounded():
    with pytest.raises(ConfigError, match=r"padim\.d: 144 channels at 1024x1024 positions .* lower padim\.d"):
        create(tiny_config(model="padim", image_size=4096, padim={"d": 144}))


@pytest.mark.parametrize("values, message", [
    ({"d": 0}, "padim.d: 0 must be positive"),
    ({"d": 5000}, "padim.d: 5000 is more than the supported 4096"),
    ({"epsilon": 0.0}, "padim.epsilon: 0.0 must be positive"),
    ({"epsilon": float("nan")}, "padim.epsilon: nan must be a finite number"),
    ({"blur_sigma": -1.0}, "padim.blur_sigma: -1.0 must be >= 0"),
    ({"blur_sigma": 300.0}, "padim.blur_sigma: 300.0 is more than the supported 256"),
])
def test_parameters_are_validated_by_name(values, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        tiny_config(model="padim", padim=values)


def test_padim_flags_defects(fitted, prepared):
    _, model, _ = fitted
    test = load_split(prepared, "test")
    scores = model.score(test.images, 8)
    masks = torch.from_numpy(np.array(test.masks) > 0)
    assert image_auroc(scores.image, torch.from_numpy(test.labels)) >= 0.85  # 4 good x 8 defective images
    assert pixel_auroc(scores.maps, masks) >= 0.9
