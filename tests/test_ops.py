"""The shared kernels: nearest-neighbour search, k-means, Gaussian smoothing (each against a reference)."""

import numpy as np
import pytest
import scipy.ndimage
import torch

from uad.ops.kmeans import kmeans
from uad.ops.knn import matmul_3xtf32, nearest_distances, shifted_distances, smallest, squared_distances, tf32_split
from uad.ops.smoothing import gaussian_blur, kernel_radius
from uad.runtime import backend_flag


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


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = (centres[:, None] + 0.1 * torch.randn(3, 40, 2, generator=g)).reshape(-1, 2)
    found = kmeans(points, 3, 50, torch.Generator().manual_seed(1))
    assert found.shape == (3, 2)
    nearest = torch.cdist(centres, found).min(1).values
    assert (nearest < 0.1).all()


def test_nearest_distances_without_gradient_equal_the_autograd_path():
    g = torch.Generator().manual_seed(5)
    memory, patches = torch.randn(50, 6, generator=g), torch.randn(40, 6, generator=g)
    with torch.no_grad():
        plain = nearest_distances(patches, memory, 3)
    traced = nearest_distances(patches.clone().requires_grad_(), memory, 3)
    torch.testing.assert_close(plain, traced.detach(), rtol=1e-6, atol=1e-6)


def test_gaussian_kernel_matches_scipy_truncation():
    assert 2 * kernel_radius(4.0) + 1 == 33 and 2 * kernel_radius(1.0) + 1 == 9


@pytest.mark.parametrize("sigma, shape", [(4.0, (3, 64, 48)), (1.5, (2, 20, 31)), (20.0, (1, 40, 30))])
def test_gaussian_blur_equals_scipys_filter_including_the_borders(sigma, shape):
    """scipy's 'reflect' repeats the edge pixel (the official CFA code's smoothing); kornia's does not."""
    maps = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = np.stack([scipy.ndimage.gaussian_filter(m.numpy(), sigma, mode="reflect", truncate=4.0)
                         for m in maps])
    np.testing.assert_allclose(gaussian_blur(maps, sigma).numpy(), expected, rtol=0, atol=1e-7)
    assert torch.equal(gaussian_blur(maps, 0), maps)
