"""DFR's own pieces; what every method must do is in test_methods.py."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uad.data.prepared import load_split
from uad.methods.base import create
from uad.methods.dfr.model import FeatCAE, RegionalFeatures, pca_dimension, pool_matrix, resize_matrix
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
    cae = FeatCAE(3456, 201)
    hidden = (3456 + 402) // 2
    assert cae.widths == [3456, hidden, 402, 201, 402, hidden, 3456]
    convs = [m for m in cae.modules() if isinstance(m, torch.nn.Conv2d)]
    # inner widths padded to multiples of 8 (inert channels): 1929 -> 1936, 402 -> 408, 201 -> 208
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (3456, 1936), (1936, 408), (408, 208), (208, 408), (408, 1936), (1936, 3456)]
    assert all(c.kernel_size == (1, 1) for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in cae.modules()) == 4
    assert isinstance(cae.encoder[-1], torch.nn.Conv2d) and isinstance(cae.decoder[-1], torch.nn.Conv2d)


def test_cae_applies_its_modules_as_matmuls_over_rows():
    """`rows` (what training and scoring run) computes what the Conv2d / BatchNorm2d modules compute on
    maps, in train mode (batch statistics, running statistics and their counter) and in eval mode."""
    torch.manual_seed(0)
    cae = FeatCAE(24, 5).double()
    reference = copy.deepcopy(cae)
    x = torch.randn(3, 24, 5, 7, dtype=torch.float64).to(memory_format=torch.channels_last)
    for train in (True, False):
        cae.train(train), reference.train(train)
        out = cae(x)
        torch.testing.assert_close(out, reference.decoder(reference.encoder(x)), rtol=1e-12, atol=1e-12)
        assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
        for name, buffer in reference.named_buffers():
            torch.testing.assert_close(dict(cae.named_buffers())[name], buffer, rtol=1e-12, atol=0, msg=name)
    assert int(cae.encoder[1].num_batches_tracked) == 1


def _train(cae: FeatCAE, x: torch.Tensor, steps: int, weight_decay: float) -> torch.Tensor:
    optim = torch.optim.Adam(cae.parameters(), lr=1e-2, weight_decay=weight_decay)
    for i in range(steps):
        batch = x[i % 2:: 2]
        optim.zero_grad()
        F.mse_loss(cae(batch), batch).backward()
        optim.step()
    return cae.eval()(x)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_padded_cae_trains_exactly_like_the_unpadded_one(weight_decay):
    """Same seed: the same initial weights in the leading slices, the same outputs (fp64) after
    Adam steps in train mode, eval outputs equal, and every padded parameter still exactly 0.
    (Adam normalises tiny gradients, so summation-order noise grows to ~1e-10 in 6 steps.)"""
    torch.manual_seed(3)
    plain = FeatCAE(24, 5, align=1).double()
    torch.manual_seed(3)
    padded = FeatCAE(24, 5).double()
    assert plain.widths == padded.widths == [24, 17, 10, 5, 10, 17, 24]
    after_padded = torch.rand(())
    torch.manual_seed(3)
    FeatCAE(24, 5, align=1)
    assert torch.rand(()) == after_padded  # padding draws no random numbers
    x = torch.randn(8, 24, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(padded(x), plain(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_train(padded, x, 6, weight_decay), _train(plain, x, 6, weight_decay),
                               rtol=1e-7, atol=1e-8)
    for (name, p), (_, q) in zip(padded.named_parameters(), plain.named_parameters()):
        lead = tuple(slice(0, n) for n in q.shape)
        torch.testing.assert_close(p[lead], q, rtol=1e-7, atol=1e-8, msg=name)
        rest = p.detach().clone()
        rest[lead] = 0
        assert not rest.any(), f"{name}: a padded entry moved"


def test_pca_dimension_counts_components_for_the_variance():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(20, 20, generator=g))[0]
    # variances 100, 50, 25, then 0.1 each: three components hold > 90 %
    scales = torch.tensor([10.0, 7.07, 5.0] + [0.316] * 17)
    x = (torch.randn(4000, 20, generator=g) * scales) @ basis.T
    assert pca_dimension(x, 0.9) == 3
    assert pca_dimension(x, 0.5) == 1
    assert pca_dimension(x, 1.0) == 20


def test_pca_dimension_follows_sklearns_rule():
    """The official code's PCA(n_components=0.9): the fewest components whose cumulative explained
    variance is strictly more than 0.9, also on real-looking spectra and at an exact tie."""
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(1)
    for scale in (torch.logspace(0, -2, 30), torch.linspace(1, 0.1, 30)):
        x = torch.randn(3000, 30, generator=g, dtype=torch.float64) * scale
        for variance in (0.5, 0.8, 0.9, 0.95):
            assert pca_dimension(x, variance) == PCA(n_components=variance).fit(x.numpy()).n_components_
    # four equal components: exactly 0.5 after two; sklearn takes a third, as we do
    tie = torch.cat([torch.eye(4), -torch.eye(4)]).double() * 3
    assert pca_dimension(tie, 0.5) == 3 == PCA(n_components=0.5).fit(tie.numpy()).n_components_


def fitted(prepared, **overrides):
    cfg = tiny_config(model="dfr", **overrides)
    model = create(cfg)
    train = load_split(prepared, "train")
    losses = []
    info = model.fit(train.images, seed_everything(cfg.seed), batch_size=8,
                     log=lambda epoch, logs: losses.append(logs["loss"]))
    return cfg, model, info, losses


def test_dfr_trains_and_chooses_its_latent_size(prepared):
    _, model, info, losses = fitted(prepared, dfr={"epochs": 4})
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert info.extra["latent_dim"] == model.latent_dim >= 1 and model.hyper() == {"latent_dim": model.latent_dim}


def test_explicit_latent_dim_skips_pca(prepared):
    _, model, info, _ = fitted(prepared, dfr={"latent_dim": 7, "epochs": 1})
    assert model.latent_dim == 7 and model.cae.widths[3] == 7 and model.cae.encoder[-1].out_channels == 8


def test_reconstruction_error_flags_an_inserted_defect(prepared):
    """Maps must be higher inside a defect than on the rest of the same image."""
    _, model, _, _ = fitted(prepared, dfr={"epochs": 40})
    test = load_split(prepared, "test")
    maps = model.score(test.images, 8).maps.numpy()
    inside = [m[k > 0].mean() for m, k in zip(maps, test.masks) if k.any()]
    outside = [m[k == 0].mean() for m, k in zip(maps, test.masks) if k.any()]
    assert np.mean(np.array(inside) > np.array(outside)) >= 0.75
