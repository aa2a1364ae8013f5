"""Greedy coreset (k-centre) selection in a random projection, on the points' device.

The greedy k-centre rule (Sener & Savarese 2018; PatchCore's Algorithm 1) starts from one point
and repeatedly adds the point farthest from those chosen so far, so that every point ends close
to a chosen one: the covering radius is within a factor 2 of the best possible for that many
centres. Distances are measured after a random Gaussian projection to a few dimensions
(`random_projection`, Johnson-Lindenstrauss: pairwise distances kept within a factor 1 +- eps
for O(log N / eps^2) dimensions), which makes each step cheap; the caller keeps the chosen
points' full features.

Bounds, for N points of d (projected) dimensions and a coreset of k:
- time: k steps, each one pass over the (N, d) points (a matrix-vector product, a running
  minimum and an argmax: O(N d) work in a few kernels, with no synchronisation with the host):
  O(k N d) in all; PatchCore's k = ratio * N makes it O(ratio N^2 d).
- memory: the points, their squared norms and each point's distance to the nearest chosen one:
  (N (d + 2) + k) elements; no (N, N) or (N, k) matrix is ever formed.
"""

from __future__ import annotations

import torch


def random_projection(dims: int, to: int, generator: torch.Generator) -> torch.Tensor:
    """(dims, to) float32 matrix of independent N(0, 1/to) entries, drawn from `generator` (on the
    CPU, so that every device gets the same matrix): x @ it keeps ||x||^2 in expectation."""
    return torch.randn(dims, to, generator=generator, dtype=torch.float64).div_(to ** 0.5).float()


def greedy_coreset(points: torch.Tensor, size: int, start: int) -> torch.Tensor:
    """Indices (size,) of the greedy k-centre coreset of `points` (N, d), in the order chosen: first
    `start`, then each time the point whose squared Euclidean distance to its nearest chosen point
    is largest (the lowest index among ties). fp32, or fp64 points kept as they are.

    Each step updates every point's nearest-centre distance with ||x||^2 - 2 x.c + ||c||^2 for the
    new centre c, one matrix-vector product; indices stay on the device throughout.
    """
    n = points.shape[0]
    if not 1 <= size <= n:
        raise ValueError(f"a coreset of {size} from {n} points: the size must be in 1..{n}")
    if not 0 <= start < n:
        raise ValueError(f"start {start} is not one of the {n} points")
    x = points if points.dtype in (torch.float32, torch.float64) else points.float()
    norms = (x * x).sum(1)
    chosen = torch.empty(size, dtype=torch.long, device=x.device)
    chosen[0] = start
    closest = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    for i in range(1, size):
        centre = chosen[i - 1: i]
        step = torch.addmv(norms, x, x.index_select(0, centre)[0], alpha=-2).add_(norms.index_select(0, centre))
        torch.minimum(closest, step, out=closest)
        chosen[i] = closest.argmax()
    return chosen
