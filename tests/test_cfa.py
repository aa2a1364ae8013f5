"""CFA's own pieces; what every method must do is in test_methods.py."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uad.backbones import FeatureExtractor
from uad.data.prepared import load_split
from uad.errors import ConfigError
from uad.methods.base import create
from uad.methods.cfa.model import CoordConvDescriptor, soft_boundary_loss, softmin_score
from uad.methods.fitting import TrainingFeatures
from uad.ops.knn import nearest_distances
from uad.runtime import seed_everything

from .conftest import tiny_config


def test_coordconv_descriptor_shapes_and_coordinates():
    d = CoordConvDescriptor(6, 3)
    assert d.conv.in_channels == 8 and d.conv.kernel_size == (1, 1)
    out = d(torch.randn(2, 6, 5, 7))
    assert out.shape == (2, 3, 5, 7)
    with torch.no_grad():  # read the coordinate channels back through the conv
        d.conv.weight.zero_()
        d.conv.bias.zero_()
        d.conv.weight[0, 6] = 1.0  # row coordinate
        d.conv.weight[1, 7] = 1.0  # column coordinate
    out = d(torch.zeros(1, 6, 5, 7))
    torch.testing.assert_close(out[0, 0, :, 0], torch.linspace(-1, 1, 5))
    torch.testing.assert_close(out[0, 1, 0, :], torch.linspace(-1, 1, 7))


def test_descriptor_equals_the_convolution_over_concatenated_coordinates():
    """The coordinate channels' share is added as a constant: the paper's CoordConv, values and gradients."""
    x = torch.randn(2, 6, 5, 7, generator=torch.Generator().manual_seed(0))
    d = CoordConvDescriptor(6, 4)
    rows = torch.linspace(-1, 1, 5).view(1, 1, 5, 1).expand(2, 1, 5, 7)
    cols = torch.linspace(-1, 1, 7).view(1, 1, 1, 7).expand(2, 1, 5, 7)
    expected = d.conv(torch.cat([x, rows, cols], 1))
    got = d(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    (grad_got,) = torch.autograd.grad(got.square().sum(), d.conv.weight)
    (grad_expected,) = torch.autograd.grad(expected.square().sum(), d.conv.weight)
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-4, atol=1e-4)


def test_soft_boundary_loss_on_a_hand_made_example():
    # one patch, squared distances to its 6 nearest memory items (ascending)
    dist2 = torch.tensor([[0.01, 0.02, 0.03, 0.2, 0.5, 3.0]])
    r = torch.tensor(0.1)  # r^2 = 0.01
    att, rep = soft_boundary_loss(dist2, r, k=3, j=3, alpha=0.1, nu=1.0)
    # K nearest: 0.01, 0.02, 0.03 -> excess over r^2: 0, 0.01, 0.02 -> mean 0.01
    assert att.item() == pytest.approx(0.01)
    # next J: 0.2, 0.5, 3.0 are all beyond r^2 - alpha -> no repulsion
    assert rep.item() == pytest.approx(0.0)
    # a large radius makes the hard negatives too close: r^2 = 1.0
    att, rep = soft_boundary_loss(dist2, torch.tensor(1.0), k=3, j=3, alpha=0.1, nu=1e-3)
    assert att.item() == pytest.approx(0.0)
    # (1.0 - 0.2 - 0.1) + (1.0 - 0.5 - 0.1) + 0 = 1.1, mean over 3 = 0.3667, times 1/nu
    assert rep.item() == pytest.approx(1.1 / 3 * 1000, rel=1e-5)


def test_soft_boundary_loss_gradient_moves_the_radius():
    r = torch.nn.Parameter(torch.tensor(0.1))
    att, rep = soft_boundary_loss(torch.tensor([[0.5, 0.6, 0.7, 5.0, 6.0, 7.0]]), r, 3, 3, 0.1, 1.0)
    (att + rep).backward()
    assert r.grad < 0  # patches outside the sphere pull r outwards


def test_score_is_monotone_in_distance():
    memory = torch.zeros(4, 3)
    memory[1:, 0] = torch.tensor([5.0, 6.0, 7.0])  # one item at the origin, three far away
    steps = torch.linspace(0, 2, 21)
    patches = torch.zeros(21, 3)
    patches[:, 1] = steps  # moving away from the origin item, orthogonally to the others
    scores = softmin_score(nearest_distances(patches, memory, 3))
    assert scores[0] == 0 and (scores.diff() > 0).all()


def fitted(prepared, n_images=None, **cfa):
    cfg = tiny_config(model="cfa", cfa={"epochs": 2, **cfa})
    model = create(cfg)
    images = load_split(prepared, "train").images[:n_images]
    history = []
    info = model.fit(images, seed_everything(cfg.seed), batch_size=8, log=lambda e, logs: history.append(logs))
    return cfg, model, info, history


def test_memory_bank_is_the_per_location_mean_and_independent_of_the_image_count(prepared):
    cfg = tiny_config(model="cfa", cfa={"epochs": 1})
    images = load_split(prepared, "train").images
    for n in (4, 8):
        model = create(cfg)
        seed_everything(0)
        maps = model.pooled_maps(images[:n])
        store = TrainingFeatures(images[:n], model.patch_features, torch.float32, 3, model.device)
        for got, want in zip(model._unpack(store.data), maps):  # the packed cache holds the maps
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        model._init_memory(store, torch.Generator().manual_seed(0))
        grid = 64 // model.extractor.strides[0]
        assert model.memory.shape == (grid * grid, sum(model.extractor.channels))
        with torch.no_grad():
            up = [F.interpolate(m, size=grid, mode="bilinear", align_corners=False) for m in maps[1:]]
            expected = model.descriptor(torch.cat([maps[0], *up], 1)).mean(0).flatten(1).T
        torch.testing.assert_close(model.memory, expected, rtol=1e-5, atol=1e-5)


def test_gamma_c_compresses_the_memory_bank(prepared):
    _, model, info, _ = fitted(prepared, gamma_c=4, gamma_d=2, epochs=1, kmeans_iters=20)
    grid = 64 // model.extractor.strides[0]
    assert info.extra["memory_size"] == grid * grid // 4 == len(model.memory)
    assert model.memory.shape[1] == sum(model.extractor.channels) // 2


def test_cfa_learns_the_radius_unless_told_not_to(prepared):
    _, _, _, history = fitted(prepared, epochs=3)
    assert history[-1]["loss_attract"] < history[0]["loss_attract"]
    assert history[-1]["radius"] != pytest.approx(1e-5)  # learned, as in the official code
    _, _, _, fixed_history = fitted(prepared, epochs=2, learn_radius=False)
    assert fixed_history[-1]["radius"] == pytest.approx(1e-5)


def test_official_export_is_leaky_relu_of_the_stages_pre_activation_sums():
    """The official CFA ResNet returns leaky_relu(x + identity, 0.01) of each stage's last block, where
    timm returns relu(x + identity): the same where positive, 0.01 x where negative. Hooks on the
    last blocks' final activations read the sums independently of the extractor."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    official = FeatureExtractor("resnet18", ["layer1", "layer2", "layer3"], pretrained=False,
                                export="official_resnet")
    plain = FeatureExtractor("resnet18", ["layer1", "layer2", "layer3"], pretrained=False)
    with torch.no_grad():  # timm zero-initialises the last batch norm of each block: give it a residual
        for m in official.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_()
                m.bias.normal_()
    plain.load_state_dict(official.state_dict())
    sums = []
    for block in (official.steps[-3][-1], official.steps[-2][-1], official.steps[-1][-1]):
        block.act2.register_forward_hook(lambda m, inp, out: sums.append(inp[0]))
    got, timm_out = official(images), plain(images)
    assert len(sums) == 3
    for g, t, s in zip(got, timm_out, sums):
        torch.testing.assert_close(g, F.leaky_relu(s, 0.01))
        torch.testing.assert_close(t, F.relu(s))
        assert (g < 0).any() and (t >= 0).all()


def test_official_export_needs_a_resnet():
    with pytest.raises(ConfigError, match="cfa.feature_export: 'official' is the official code's export of ResNet"):
        tiny_config(model="cfa", cfa={"feature_export": "official"})
    cfg = tiny_config(model="cfa", cfa={"backbone": "resnet18", "pretrained": False, "feature_export": "official"})
    assert create(cfg).extractor.export == "official_resnet"


def test_cfa_flags_defects(prepared):
    _, model, _, _ = fitted(prepared, epochs=5)
    test = load_split(prepared, "test")
    maps = model.score(test.images, 8).maps.numpy()
    inside = np.array([m[k > 0].mean() for m, k in zip(maps, test.masks) if k.any()])
    outside = np.array([m[k == 0].mean() for m, k in zip(maps, test.masks) if k.any()])
    assert np.mean(inside > outside) >= 0.75
