"""CFA: Coupled-hypersphere-based Feature Adaptation (Lee, Lee, Song; IEEE Access 2022, arXiv 2206.04325).

Frozen backbone maps are 3x3-average-pooled, resized to the first layer's grid
and concatenated. A learnable patch descriptor (CoordConv + 1x1 convolution,
output D/gamma_d channels) maps them into a space where a memory bank C - the
per-location mean of the training descriptors, optionally compressed to
H*W/gamma_c items by k-means - is a set of hypersphere centres. Training pulls
each patch inside radius r of its K nearest items and pushes the next J out to a
squared distance of at least r^2 - alpha (the soft-boundary loss, r learned as in
the official code).
The anomaly score of a patch is its softmin-weighted distance to the nearest
items; the map is upsampled and Gaussian-smoothed as the official code does (scipy's filter).

All nearest-memory searches are batched matrix products and min passes on the
device (`uad.ops.knn`), with a sparse backward; no Python loop runs over positions
or images.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm import tqdm

from uad.errors import ConfigError
from uad.methods.base import AnomalyMethod, EpochLog, FitInfo
from uad.methods.cfa.params import Params
from uad.methods.fitting import TrainingFeatures, TrainingSteps
from uad.ops.kmeans import kmeans
from uad.ops.knn import nearest_distances
from uad.ops.smoothing import gaussian_blur
from uad.runtime import autocast, storage_dtype


class CoordConvDescriptor(nn.Module):
    """1x1 convolution over features plus two coordinate channels (rows, columns in [-1, 1]).

    The coordinate channels are the same for every image, so their share of the
    convolution is added as a (D, H, W) constant instead of concatenated onto the
    input: no copy of the (B, C, H, W) features. The output is fp32 (the distances'
    dtype) even when the convolution runs in bf16.
    """

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels + 2, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]
        weight = self.conv.weight
        coords = weight[:, c:, 0, 0].float()  # (D, 2): row and column weights
        rows = torch.linspace(-1, 1, h, device=x.device).view(h, 1)
        cols = torch.linspace(-1, 1, w, device=x.device).view(1, w)
        constant = coords[:, :1, None] * rows + coords[:, 1:, None] * cols + self.conv.bias.float()[:, None, None]
        return F.conv2d(x, weight[:, :c]) + constant


def soft_boundary_loss(nearest: torch.Tensor, radius: torch.Tensor, k: int, j: int, alpha: float,
                       nu: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CFA's coupled-hypersphere loss on each patch's K + J smallest squared distances (ascending).

    Attraction: the K nearest items should lie inside radius r. Repulsion: the next
    J items (ranks K+1..K+J, hard negatives) are penalised while their squared distance is below
    r^2 - alpha (the official code's margin: alpha loosens the repulsion).
    Returns (L_att, L_rep), each already scaled by 1/nu.
    """
    r2 = radius.pow(2)
    attract = F.relu(nearest[:, :k] - r2).mean() / nu
    repel = F.relu(r2 - nearest[:, k: k + j] - alpha).mean() / nu if j > 0 else nearest.new_zeros(())
    return attract, repel


def softmin_score(nearest: torch.Tensor) -> torch.Tensor:
    """Patch score from its K smallest squared distances (ascending): the nearest distance
    times its softmin weight."""
    d = nearest.clamp_min(0).sqrt()
    return F.softmin(d, dim=1)[:, 0] * d[:, 0]


class CFA(AnomalyMethod):
    name = "cfa"
    params: Params

    def __init__(self, params: Params, *, image_size: int, precision: str = "fp32", resolve_weights: bool = True,
                 memory_size: int | None = None):
        super().__init__(params, image_size=image_size, precision=precision, resolve_weights=resolve_weights)
        c = params
        self.grid = image_size // self.extractor.strides[0]
        channels = sum(self.extractor.channels)
        if channels // c.gamma_d < 1:
            raise ConfigError(f"cfa.gamma_d: {c.gamma_d} leaves no descriptor channel (the layers give {channels}); "
                              f"use at most {channels}")
        self.descriptor = CoordConvDescriptor(channels, channels // c.gamma_d)
        self.radius = nn.Parameter(torch.tensor(c.radius))
        size = memory_size or self.grid * self.grid // c.gamma_c
        if size < c.k + c.j:
            raise ConfigError(f"cfa.k + cfa.j = {c.k + c.j} nearest items are asked for, but the memory bank holds "
                              f"{size} ({self.grid}x{self.grid} patches / cfa.gamma_c {c.gamma_c}); lower cfa.k, "
                              f"cfa.j or cfa.gamma_c, or raise image_size")
        self.register_buffer("memory", torch.zeros(size, channels // c.gamma_d))
        self._shapes: list[tuple[int, int, int]] = []  # (h, w, C) of each pooled map, set by pooled_maps
        # fp32 scoring on a GPU: the distances on tensor cores at fp32's accuracy (`matmul_3xtf32`; tf32
        # and bf16 already use plain TF32). Training keeps the fp32 matmul, so fitted models stay as they were.
        self.split_tf32 = precision == "fp32"

    def extractor_options(self) -> dict:
        return {"export": "official_resnet" if self.params.feature_export == "official" else "output"}

    def hyper(self) -> dict:
        return {"memory_size": len(self.memory)}

    def pooled_maps(self, images: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
        """3x3-averaged backbone maps, each at its own resolution, in the autocast dtype."""
        with torch.no_grad():
            maps = [F.avg_pool2d(f, 3, 1, 1) for f in self.features(images, keep_dtype=True)]
        self._shapes = [(m.shape[2], m.shape[3], m.shape[1]) for m in maps]
        return maps

    def patch_features(self, images: np.ndarray) -> torch.Tensor:
        """What fit caches: `pooled_maps` packed into one (B, N) row per image, before upsampling
        to the grid (a quarter of the bytes for WRN50; each batch is upsampled when used)."""
        return torch.cat([m.permute(0, 2, 3, 1).flatten(1) for m in self.pooled_maps(images)], 1)

    def _unpack(self, rows: torch.Tensor) -> list[torch.Tensor]:
        maps, start = [], 0
        for h, w, ch in self._shapes:
            maps.append(rows[:, start: start + h * w * ch].unflatten(1, (h, w, ch)).permute(0, 3, 1, 2))
            start += h * w * ch
        return maps

    def _grid_features(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The descriptor's input: the maps upsampled (bilinear) to the first layer's grid, concatenated."""
        g = self.grid
        return torch.cat([m if m.shape[-2:] == (g, g) else
                          F.interpolate(m, size=(g, g), mode="bilinear", align_corners=False) for m in maps], 1)

    def _patches(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Descriptor output per patch, fp32; under bf16 autocast the upsampling and convolution run in bf16."""
        x = self._grid_features(maps)
        with autocast(self.precision, self.device):
            return rearrange(self.descriptor(x), "b d h w -> (b h w) d")

    @torch.no_grad()
    def _init_memory(self, feats: TrainingFeatures, generator: torch.Generator) -> None:
        """Per-location mean of the (untrained) descriptor over the training set, then k-means if gamma_c > 1."""
        mean = sum(self.descriptor(self._grid_features(self._unpack(b)).float()).sum(0) for b in feats.chunks())
        mean = mean / len(feats)  # (D, H, W)
        memory = rearrange(mean, "d h w -> (h w) d")
        if self.params.gamma_c > 1:
            memory = kmeans(memory, len(self.memory), self.params.kmeans_iters, generator)
        self.memory.copy_(memory)

    def fit(self, images: np.ndarray, generator: torch.Generator, *, batch_size: int = 16,
            log: EpochLog | None = None) -> FitInfo:
        c = self.params
        feats = TrainingFeatures(images, self.patch_features, storage_dtype(self.precision), batch_size,
                                 self.device)
        self._init_memory(feats, generator)
        self.radius.requires_grad_(c.learn_radius)
        optim = torch.optim.AdamW([*self.descriptor.parameters(), self.radius], lr=c.lr, weight_decay=c.weight_decay,
                                  amsgrad=c.amsgrad, capturable=TrainingSteps.graphed_on(self.device))

        def step(index: torch.Tensor) -> tuple[torch.Tensor, ...]:
            nearest = nearest_distances(self._patches(self._unpack(feats[index])), self.memory, c.k + c.j)
            attract, repel = soft_boundary_loss(nearest, self.radius, c.k, c.j, c.alpha, c.nu)
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

    def anomaly_maps(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        patches = self._patches(self.pooled_maps(images))
        split = self.split_tf32 and self.device.type == "cuda"
        scores = softmin_score(nearest_distances(patches, self.memory, self.params.k, split))
        maps = scores.view(-1, 1, self.grid, self.grid)
        maps = F.interpolate(maps, size=self.image_size, mode="bilinear", align_corners=False)
        return gaussian_blur(maps[:, 0], self.params.blur_sigma)
