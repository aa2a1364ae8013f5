"""Lloyd's k-means with k-means++ seeding, batched on the points' device."""

from __future__ import annotations

import torch

from uad.ops.knn import squared_distances


def kmeans(points: torch.Tensor, clusters: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding, batched on the points' device; returns the centres."""
    n = len(points)
    if clusters >= n:
        return points.clone()
    pick = torch.randint(n, (1,), generator=generator).item()
    centres = [points[pick]]
    closest = squared_distances(points, points[pick: pick + 1])[:, 0].clamp_min(0)
    for _ in range(clusters - 1):  # k-means++: sample proportionally to squared distance
        probs = (closest / closest.sum()).cpu()
        pick = torch.multinomial(probs, 1, generator=generator).item()
        centres.append(points[pick])
        closest = torch.minimum(closest, squared_distances(points, points[pick: pick + 1])[:, 0].clamp_min(0))
    centres = torch.stack(centres)
    for _ in range(iters):
        assign = squared_distances(points, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=clusters).unsqueeze(1)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        if torch.equal(new, centres):
            break
        centres = new
    return centres


