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

All nearest-memory searches are batched matrix products and min passes on the
device, with a sparse backward; no Python loop runs over positions or images.
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

from uad.config import CFAConfig, Config, ConfigError
from uad.methods.base import AnomalyMethod, EpochLog, FitInfo, TrainingFeatures, TrainingSteps
from uad.runtime import autocast, backend_flag, round_up, storage_dtype


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


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


TF32_DROPPED_BITS = 13  # fp32 keeps 23 mantissa bits, TF32 10


def tf32_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 `x` as hi + lo, exactly: hi rounded to TF32's 10 mantissa bits, so tensor cores read it
    unchanged, and lo the remainder (|lo| <= 2^-11 |x|)."""
    if x.dtype != torch.float32:
        raise TypeError(f"tf32_split takes fp32 tensors, got {x.dtype}")
    bits = x.contiguous().view(torch.int32)
    hi = ((bits + (1 << (TF32_DROPPED_BITS - 1))) & -(1 << TF32_DROPPED_BITS)).view(torch.float32)
    return hi, x - hi


def matmul_3xtf32(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left @ right.T for fp32 operands at close to fp32's accuracy, on TF32 tensor cores.

    hi.hi + hi.lo + lo.hi as one TF32 matmul over operands concatenated along the inner
    dimension (the output is written once); what it drops, lo.lo and the TF32 rounding of lo,
    is ~2^-21 of each product, where a plain TF32 matmul drops ~2^-11. Measured on the H100
    (4096 x 4096 x 152, error relative to sum |a||b|): 1.4e-6, fp32 3.8e-7, plain TF32 2.1e-4;
    CFA's fp32 scoring on MTD 2,698 -> 3,072 img/s with AUROCs within 2e-5.
    """
    lh, ll = tf32_split(left)
    rh, rl = tf32_split(right)
    a, b = torch.cat([lh, lh, ll], 1), torch.cat([rh, rl, rh], 1)
    with backend_flag(torch.backends.cuda.matmul, "allow_tf32", True):
        return a @ b.T


def shifted_distances(patches: torch.Tensor, memory: torch.Tensor, split_tf32: bool = False) -> torch.Tensor:
    """||c||^2 - 2 p.c for every patch (rows) and memory item (columns): the squared distance
    less ||p||^2, which orders each row the same. Always in fp32, also under bf16 autocast:
    the expansion cancels, so bf16 would lose the small distances that decide the nearest items.

    One matmul of augmented operands, [p, 1, 0..] . [-2c, ||c||^2, 0..] (width rounded up to a
    multiple of 4 for aligned kernels), writes the matrix once: an `addmm` with a broadcast
    ||p||^2 + ||c||^2 term materialises that term, copies it into the output and reads it
    back, three extra passes over the largest tensor of the step. `split_tf32` computes that
    matmul by `matmul_3xtf32` (fp32 operands only).
    """
    with torch.autocast(device_type=patches.device.type, enabled=False):
        p, c = _wide(patches), _wide(memory)
        d = p.shape[1]
        width = round_up(d + 1, 4)
        left = p.new_zeros(len(p), width)
        left[:, :d] = p
        left[:, d] = 1
        right = c.new_zeros(len(c), width)
        right[:, :d] = c * -2
        right[:, d] = (c * c).sum(1)
        return matmul_3xtf32(left, right) if split_tf32 else left @ right.T


def squared_distances(patches: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """||p - c||^2 for every patch (rows) and memory item (columns), in fp32 or wider."""
    p = _wide(patches)
    return shifted_distances(p, memory).add_((p * p).sum(1, keepdim=True))


MIN_PASSES = 8  # up to this many neighbours, repeated min passes beat topk's radix select


def smallest(dist2: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The n smallest entries of each row, ascending, and their columns. Overwrites `dist2`.

    CFA asks for a handful of neighbours among thousands of items: n passes of `min`,
    each masking what it found, read the matrix n times, where `topk` reads it more.
    """
    if n > dist2.shape[1]:
        raise ValueError(f"asked for the {n} nearest of only {dist2.shape[1]} memory items")
    if n > MIN_PASSES:
        return dist2.topk(n, dim=1, largest=False)
    values, index = [], []
    for _ in range(n):
        v, i = dist2.min(1, keepdim=True)
        values.append(v)
        index.append(i)
        dist2.scatter_(1, i, float("inf"))
    return torch.cat(values, 1), torch.cat(index, 1)


class _Nearest(torch.autograd.Function):
    """Squared distances to each patch's n nearest memory items, with a sparse backward.

    The gradient of ||p - c||^2 is 2 (p - c) for the n chosen items only, gathered by
    `embedding_bag`: no dense (patches x items) gradient and no second matmul. The
    memory bank is fixed in CFA and gets no gradient.
    """

    @staticmethod
    def forward(ctx, patches: torch.Tensor, memory: torch.Tensor, n: int, split_tf32: bool) -> torch.Tensor:
        values, index = smallest(shifted_distances(patches, memory, split_tf32), n)
        ctx.save_for_backward(patches, memory, index)
        p = _wide(patches)
        return values.add_((p * p).sum(1, keepdim=True))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        patches, memory, index = ctx.saved_tensors
        p = _wide(patches)
        grad = grad.to(p.dtype)
        pulled = F.embedding_bag(index, memory.to(p.dtype), per_sample_weights=grad, mode="sum")
        return (2 * (p * grad.sum(1, keepdim=True) - pulled)).to(patches.dtype), None, None, None


def nearest_distances(patches: torch.Tensor, memory: torch.Tensor, n: int, split_tf32: bool = False) -> torch.Tensor:
    """(P, n) squared distances from each patch to its n nearest memory items, ascending, in fp32 or wider."""
    return _Nearest.apply(patches, memory, n, split_tf32)


def soft_boundary_loss(nearest: torch.Tensor, radius: torch.Tensor, k: int, j: int, alpha: float,
                       nu: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CFA's coupled-hypersphere loss on each patch's K + J smallest squared distances (ascending).

    Attraction: the K nearest items should lie inside radius r. Repulsion: the next
    J items (ranks K+1..K+J, hard negatives) should lie beyond r^2 + alpha.
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
        self.split_tf32 = cfg.precision == "fp32"

    def hyper(self) -> dict:
        return {"memory_size": len(self.memory)}

    def pooled_maps(self, images: np.ndarray) -> list[torch.Tensor]:
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

    def anomaly_maps(self, images: np.ndarray) -> torch.Tensor:
        patches = self._patches(self.pooled_maps(images))
        split = self.split_tf32 and self.device.type == "cuda"
        scores = softmin_score(nearest_distances(patches, self.memory, self.section.k, split))
        maps = rearrange(scores, "(b h w) -> b 1 h w", b=len(images), h=self.grid)
        maps = F.interpolate(maps, size=self.image_size, mode="bilinear", align_corners=False)
        sigma = self.section.blur_sigma
        if sigma > 0:
            k = gaussian_kernel_size(sigma)
            maps = kornia.filters.gaussian_blur2d(maps, (k, k), (sigma, sigma), border_type="reflect")
        return maps[:, 0]
