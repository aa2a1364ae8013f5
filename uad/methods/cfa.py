"""CFA: Coupled-hypersphere-based Feature Adaptation (Lee, Lee, Song; IEEE Access 2022, arXiv 2206.04325).

Frozen backbone maps are 3x3-average-pooled, resized to the first layer's grid
and concatenated. A learnable patch descriptor (CoordConv + 1x1 convolution,
output D/gamma_d channels) maps them into a space where a memory bank C - the
per-location mean of the training descriptors, optionally compressed to
H*W/gamma_c items by k-means - is a set of hypersphere centres. Training pulls
each patch inside radius r of its K nearest items and pushes it beyond r + alpha
from the next J (the soft-boundary loss, r learned as in the official code).
The anomaly score of a patch is its softmin-weighted distance to the nearest
items; the map is upsampled and Gaussian-smoothed (kornia).

All nearest-memory searches are batched matrix products and `topk` on the
device; no Python loop runs over positions or images.
"""

from __future__ import annotations

import math

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm import tqdm

from uad.config import CFAConfig, Config
from uad.methods.base import AnomalyMethod, EpochLog, FitInfo, TrainingFeatures, TrainingSteps
from uad.runtime import autocast, storage_dtype


class CoordConvDescriptor(nn.Module):
    """1x1 convolution over features plus two coordinate channels (rows, columns in [-1, 1])."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels + 2, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        rows = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
        cols = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
        return self.conv(torch.cat([x, rows, cols], 1))


def squared_distances(patches: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """||p||^2 + ||c||^2 - 2 p.c for every patch (rows) and memory item (columns), one matmul.

    Always in fp32, also under bf16 autocast: the expansion cancels, so bf16 would
    lose the small distances that decide the nearest items.
    """
    with torch.autocast(device_type=patches.device.type, enabled=False):
        patches, memory = patches.float(), memory.float()
        return torch.addmm((patches * patches).sum(1, keepdim=True) + (memory * memory).sum(1),
                           patches, memory.T, alpha=-2.0)


def soft_boundary_loss(dist2: torch.Tensor, radius: torch.Tensor, k: int, j: int, alpha: float,
                       nu: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CFA's coupled-hypersphere loss on squared distances (patches x memory items).

    Attraction: the K nearest items should lie inside radius r. Repulsion: the next
    J items (ranks K+1..K+J, hard negatives) should lie beyond r^2 + alpha.
    Returns (L_att, L_rep), each already scaled by 1/nu.
    """
    nearest = dist2.topk(k + j, dim=1, largest=False).values  # sorted ascending
    r2 = radius.pow(2)
    attract = F.relu(nearest[:, :k] - r2).mean() / nu
    repel = F.relu(r2 - nearest[:, k:] - alpha).mean() / nu if j > 0 else nearest.new_zeros(())
    return attract, repel


def softmin_score(dist2: torch.Tensor, k: int) -> torch.Tensor:
    """Patch score: softmin weight of the nearest of the K nearest items times its distance."""
    d = dist2.topk(k, dim=1, largest=False).values.clamp_min(0).sqrt()
    return F.softmin(d, dim=1)[:, 0] * d[:, 0]


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


def gaussian_kernel_size(sigma: float) -> int:
    """scipy's gaussian_filter support with truncate=4 (33 taps for sigma 4)."""
    return 2 * int(4 * sigma + 0.5) + 1


class CFA(AnomalyMethod):
    name = "cfa"

    def __init__(self, cfg: Config, memory_size: int | None = None):
        super().__init__(cfg)
        self.section: CFAConfig = cfg.cfa  # narrows the type for the CFA-only fields
        c = self.section
        self.grid = cfg.image_size // self.extractor.strides[0]
        channels = sum(self.extractor.channels)
        self.descriptor = CoordConvDescriptor(channels, max(1, channels // c.gamma_d))
        self.radius = nn.Parameter(torch.tensor(c.radius))
        size = memory_size or max(1, self.grid * self.grid // c.gamma_c)
        self.register_buffer("memory", torch.zeros(size, channels // c.gamma_d))

    def hyper(self) -> dict:
        return {"memory_size": len(self.memory)}

    def patch_features(self, images: np.ndarray) -> torch.Tensor:
        """Frozen input of the descriptor: pooled backbone maps at the first layer's grid."""
        with torch.no_grad():
            maps = [F.avg_pool2d(f, 3, 1, 1) for f in self.features(images)]
            return torch.cat([F.interpolate(m, size=self.grid, mode="bilinear", align_corners=False)
                              if m.shape[-1] != self.grid else m for m in maps], 1)

    def _patches(self, feats: torch.Tensor) -> torch.Tensor:
        """Descriptor output per patch; under bf16 autocast the conv runs in bf16 whatever the storage."""
        return rearrange(self.descriptor(feats.float()), "b d h w -> (b h w) d")

    @torch.no_grad()
    def _init_memory(self, feats: TrainingFeatures, generator: torch.Generator) -> None:
        """Per-location mean of the (untrained) descriptor over the training set, then k-means if gamma_c > 1."""
        mean = sum(self.descriptor(b.float()).sum(0) for b in feats.chunks()) / len(feats)  # (D, H, W)
        memory = rearrange(mean, "d h w -> (h w) d")
        if self.section.gamma_c > 1:
            memory = kmeans(memory, len(self.memory), self.section.kmeans_iters, generator)
        self.memory.copy_(memory)

    def fit(self, images: np.ndarray, generator: torch.Generator, log: EpochLog | None = None) -> FitInfo:
        c = self.section
        feats = TrainingFeatures(images, self.patch_features, storage_dtype(self.precision),
                                 self.cfg.evaluate.batch_size, self.device)
        self._init_memory(feats, generator)
        self.radius.requires_grad_(c.learn_radius)
        optim = torch.optim.AdamW([*self.descriptor.parameters(), self.radius], lr=c.lr, weight_decay=c.weight_decay,
                                  amsgrad=c.amsgrad, capturable=TrainingSteps.graphed_on(self.device))

        def step(index: torch.Tensor) -> tuple[torch.Tensor, ...]:
            with autocast(self.precision, self.device):
                dist2 = squared_distances(self._patches(feats[index]), self.memory)
            attract, repel = soft_boundary_loss(dist2, self.radius, c.k, c.j, c.alpha, c.nu)
            (attract + repel).backward()
            optim.step()
            return attract.detach(), repel.detach()

        run = TrainingSteps(step, optim, self.device)
        steps = max(1, len(feats) // c.batch_size)  # drop_last, as the official loader
        history: dict[str, float] = {}
        self.descriptor.train()
        for epoch in tqdm(range(c.epochs), desc="cfa epochs", unit="epoch", leave=False, mininterval=1.0):
            order = torch.randperm(len(feats), generator=generator).to(self.device)
            totals = torch.zeros(2, device=self.device)
            for s in range(steps):
                totals += torch.stack(run(order[s * c.batch_size: (s + 1) * c.batch_size]))
            att, rep = (totals / steps).tolist()
            history = {"loss": att + rep, "loss_attract": att, "loss_repel": rep,
                       "radius": float(self.radius.detach())}
            if log:
                log(epoch, history)
        self.descriptor.eval()
        return FitInfo(epochs=c.epochs, final_loss=history.get("loss", math.nan),
                       extra={"memory_size": len(self.memory), "descriptor_channels": self.memory.shape[1],
                              "radius": float(self.radius.detach()), "features_cached": feats.cached})

    def anomaly_maps(self, images: np.ndarray) -> torch.Tensor:
        feats = self.patch_features(images)
        with autocast(self.precision, self.device):
            patches = self._patches(feats)
        scores = softmin_score(squared_distances(patches, self.memory), self.section.k)
        maps = rearrange(scores, "(b h w) -> b 1 h w", b=len(feats), h=self.grid)
        maps = F.interpolate(maps, size=self.image_size, mode="bilinear", align_corners=False)
        sigma = self.section.blur_sigma
        if sigma > 0:
            k = gaussian_kernel_size(sigma)
            maps = kornia.filters.gaussian_blur2d(maps, (k, k), (sigma, sigma), border_type="reflect")
        return maps[:, 0]
