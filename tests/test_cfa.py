import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uad import methods
from uad.data.prepared import load_split
from uad.methods.base import TrainingFeatures
from uad.methods.cfa import (
    CFA,
    CoordConvDescriptor,
    gaussian_kernel_size,
    kmeans,
    nearest_distances,
    smallest,
    soft_boundary_loss,
    softmin_score,
    matmul_3xtf32,
    shifted_distances,
    tf32_split,
    squared_distances,
)
from uad.runtime import backend_flag, seed_everything

from .conftest import tiny_config


@pytest.mark.parametrize("d", [7, 8])  # the augmented operands' width: 8 and 12
def test_squared_distances_equal_cdist(d):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, d, generator=g), torch.randn(9, d, generator=g)
    torch.testing.assert_close(squared_distances(a, b), torch.cdist(a, b) ** 2, rtol=1e-4, atol=1e-4)
    shifted = shifted_distances(a.double(), b.double())
    torch.testing.assert_close(shifted, (torch.cdist(a, b).double() ** 2 - (a.double() ** 2).sum(1, keepdim=True)),
                               rtol=1e-5, atol=1e-5)


def _as_tf32(x: torch.Tensor) -> torch.Tensor:
    """What a TF32 tensor core reads of fp32 `x`, at worst: the low 13 mantissa bits truncated."""
    return (x.contiguous().view(torch.int32) & -(1 << 13)).view(torch.float32)


def test_tf32_split_is_exact_and_hi_is_tf32():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=g) * torch.logspace(-6, 6, 1000)
    hi, lo = tf32_split(x)
    assert torch.equal(hi + lo, x)  # exact, no rounding in the sum
    assert torch.equal(_as_tf32(hi), hi)  # tensor cores read hi unchanged
    assert (lo.abs() <= x.abs() * 2.0 ** -11).all()  # hi is x rounded to nearest, not truncated
    assert torch.equal(tf32_split(-x)[0], -hi)
    with pytest.raises(TypeError, match="fp32"):
        tf32_split(x.double())  # its bits are not fp32's: splitting them would be garbage


def test_matmul_3xtf32_keeps_fp32_accuracy_under_tf32_inputs():
    """With every operand truncated to TF32 as a tensor core may read it (emulated in fp64), the split
    product stays within 2^-20 of the products' size, where a plain TF32 product errs by more than 2^-12."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(300, 40, generator=g), torch.randn(200, 40, generator=g)
    exact = a.double() @ b.double().T
    scale = a.double().abs() @ b.double().abs().T
    lh, ll = tf32_split(a)
    rh, rl = tf32_split(b)
    split = sum(_as_tf32(x).double() @ _as_tf32(y).double().T for x, y in ((lh, rh), (lh, rl), (ll, rh)))
    plain = _as_tf32(a).double() @ _as_tf32(b).double().T
    assert ((split - exact).abs() / scale).max() < 2.0 ** -20
    assert ((plain - exact).abs() / scale).max() > 2.0 ** -12
    # the function itself (on the CPU, where the flag is ignored, all in fp32): fp32's own accuracy
    before = torch.backends.cuda.matmul.allow_tf32
    got = matmul_3xtf32(a, b).double()
    assert ((got - exact).abs() / scale).max() < 1e-6
    assert torch.backends.cuda.matmul.allow_tf32 == before  # the global flag is restored


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (TF32 tensor cores)")
def test_matmul_3xtf32_on_tensor_cores_is_as_accurate_as_fp32():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4096, 152, generator=g), torch.randn(4096, 152, generator=g)
    exact = a.double() @ b.double().T
    scale = a.double().abs() @ b.double().abs().T
    split = matmul_3xtf32(a.cuda(), b.cuda()).cpu().double()
    with backend_flag(torch.backends.cuda.matmul, "allow_tf32", True):
        tf32 = (a.cuda() @ b.cuda().T).cpu().double()
    with backend_flag(torch.backends.cuda.matmul, "allow_tf32", False):
        fp32 = (a.cuda() @ b.cuda().T).cpu().double()
    err = {name: ((x - exact).abs() / scale).max().item() for name, x in (("3xtf32", split), ("tf32", tf32),
                                                                         ("fp32", fp32))}
    # H100: 1.4e-6, fp32 3.8e-7, plain TF32 2.1e-4
    assert err["3xtf32"] < 10 * err["fp32"] and err["3xtf32"] < err["tf32"] / 50, err


def test_split_distances_pick_the_same_nearest_items():
    g = torch.Generator().manual_seed(2)
    patches, memory = torch.randn(500, 37, generator=g), torch.randn(64, 37, generator=g)
    plain = nearest_distances(patches, memory, 3)
    split = nearest_distances(patches, memory, 3, split_tf32=True)
    torch.testing.assert_close(split, plain, rtol=1e-5, atol=1e-5)


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


@pytest.mark.parametrize("n", [1, 3, 6, 12])
def test_smallest_equals_sorted_topk(n):
    dist2 = torch.rand(300, 50, generator=torch.Generator().manual_seed(n))
    values, index = smallest(dist2.clone(), n)  # n > MIN_PASSES takes topk
    expected = dist2.topk(n, dim=1, largest=False)
    torch.testing.assert_close(values, expected.values, rtol=0, atol=0)
    assert torch.equal(index, expected.indices)
    with pytest.raises(ValueError, match="nearest of only 50 memory items"):
        smallest(dist2.clone(), 51)


def test_nearest_distances_sparse_backward_equals_dense_autograd():
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(40, 5, dtype=torch.float64, generator=g)
    patches = torch.randn(30, 5, dtype=torch.float64, generator=g, requires_grad=True)
    weights = torch.rand(30, 4, dtype=torch.float64, generator=g)
    got = nearest_distances(patches, memory, 4)
    (grad_got,) = torch.autograd.grad((got * weights).sum(), patches)
    dense = ((patches[:, None] - memory[None]) ** 2).sum(-1)
    expected = dense.topk(4, dim=1, largest=False).values
    (grad_expected,) = torch.autograd.grad((expected * weights).sum(), patches)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-10, atol=1e-10)


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


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = (centres[:, None] + 0.1 * torch.randn(3, 40, 2, generator=g)).reshape(-1, 2)
    found = kmeans(points, 3, 50, torch.Generator().manual_seed(1))
    assert found.shape == (3, 2)
    nearest = torch.cdist(centres, found).min(1).values
    assert (nearest < 0.1).all()


def test_gaussian_kernel_matches_scipy_truncation():
    assert gaussian_kernel_size(4.0) == 33 and gaussian_kernel_size(1.0) == 9


def fitted(prepared, n_images=None, **cfa):
    cfg = tiny_config(model="cfa", cfa={"epochs": 2, **cfa})
    model = methods.create(cfg)
    images = load_split(prepared, "train").images[:n_images]
    history = []
    info = model.fit(images, seed_everything(cfg.seed), lambda e, logs: history.append(logs))
    model.calibrate(images, cfg.evaluate.target_fpr, 8)
    return cfg, model, info, history


def test_memory_bank_is_the_per_location_mean_and_independent_of_the_image_count(prepared):
    cfg = tiny_config(model="cfa", cfa={"epochs": 1})
    images = load_split(prepared, "train").images
    for n in (4, 8):
        model = methods.create(cfg)
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


def test_cfa_trains_learns_the_radius_and_round_trips(prepared, tmp_path):
    cfg, model, info, history = fitted(prepared, epochs=3)
    assert isinstance(model, CFA) and len(history) == 3
    assert history[-1]["loss_attract"] < history[0]["loss_attract"]
    assert history[-1]["radius"] != pytest.approx(1e-5)  # learned, as in the official code
    test = load_split(prepared, "test")
    scores = model.score(test.images, 5)
    assert scores.maps.shape == (len(test), 64, 64) and torch.isfinite(scores.maps).all()
    model.save(tmp_path / "m", info, {})
    again = methods.load(tmp_path / "m", cfg)
    torch.testing.assert_close(again.score(test.images, 3).maps, scores.maps, rtol=0, atol=0)
    _, fixed, _, fixed_history = fitted(prepared, epochs=2, learn_radius=False)
    assert fixed_history[-1]["radius"] == pytest.approx(1e-5)


def test_cfa_flags_defects(prepared):
    _, model, _, _ = fitted(prepared, epochs=5)
    test = load_split(prepared, "test")
    maps = model.score(test.images, 8).maps.numpy()
    inside = np.array([m[k > 0].mean() for m, k in zip(maps, test.masks) if k.any()])
    outside = np.array([m[k == 0].mean() for m, k in zip(maps, test.masks) if k.any()])
    assert np.mean(inside > outside) >= 0.75
