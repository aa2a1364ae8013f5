"""DFR: Deep Feature Reconstruction (Shi, Yang, Qi; Neurocomputing 2021, arXiv 2012.07122).

Multi-scale regional features (every chosen layer resized to the input size,
averaged over k x k windows, concatenated) are reconstructed by a deep 1x1
convolutional autoencoder trained on normal images with an MSE loss. The
anomaly map is the per-region reconstruction error upsampled to the input.

Resize-then-pool is linear along each axis, so each layer's regional features
are computed as A_h @ F @ A_w^T with fixed matrices built once: the same
numbers as interpolate + avg-pool (tested), without materialising the
input-sized intermediate maps, as two batched matmuls on channels-last maps.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from uad.methods.base import AnomalyMethod, EpochLog, FitInfo
from uad.methods.dfr.params import Params
from uad.methods.fitting import TrainingFeatures, TrainingSteps
from uad.runtime import autocast, round_up, storage_dtype


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D linear interpolation with align_corners=True (DFR's resize)."""
    eye = torch.eye(n_in, dtype=torch.float64)[None]  # channel c is the unit vector e_c
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=True)[0].T


def pool_matrix(n: int, kernel: int, stride: int) -> torch.Tensor:
    """(n_out, n) matrix of 1-D average pooling after replication padding by (kernel - stride) // 2."""
    pad = (kernel - stride) // 2
    n_out = (n + 2 * pad - kernel) // stride + 1
    m = torch.zeros(n_out, n, dtype=torch.float64)
    for o in range(n_out):
        for j in range(o * stride - pad, o * stride - pad + kernel):
            m[o, min(max(j, 0), n - 1)] += 1.0 / kernel
    return m


class RegionalFeatures(nn.Module):
    """DFR's multi-scale regional feature generator as fixed per-axis linear maps."""

    def __init__(self, sizes: list[int], image_size: int, kernel: int, stride: int):
        super().__init__()
        pool = pool_matrix(image_size, kernel, stride)
        for i, size in enumerate(sizes):
            self.register_buffer(f"a{i}", (pool @ resize_matrix(size, image_size)).float(), persistent=False)
        self.grid = pool.shape[0]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """(B, sum C, G, G) in the features' dtype (bf16 under bf16 autocast), channels-last.

        Works on the backbone's channels-last maps as (B, h, w*C) matrices: rows are mixed
        by one batched matmul, then columns by another, and each result lands in its
        channel slice of the output. No layout conversion, and the autoencoder's 1x1
        convolutions take the channels-last output as it is.
        """
        dtype = feats[0].dtype
        b, g = feats[0].shape[0], self.grid
        out = torch.empty(b, g, g, sum(f.shape[1] for f in feats), device=feats[0].device, dtype=dtype)
        start = 0
        for i, f in enumerate(feats):
            a = getattr(self, f"a{i}").to(dtype)
            _, c, h, w = f.shape
            rows = a @ f.permute(0, 2, 3, 1).reshape(b, h, w * c)  # (B, G, w*C)
            out[..., start: start + c] = (a @ rows.view(b * g, w, c)).view(b, g, g, c)
            start += c
        return out.permute(0, 3, 1, 2)


ALIGN = 8  # tensor cores take bf16 / tf32 channel counts in multiples of 8 / 4


def _block(c_in: int, c_out: int, act: bool, init: bool = True) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, 1) if init else nn.utils.skip_init(nn.Conv2d, c_in, c_out, 1)
    return [conv, nn.BatchNorm2d(c_out), nn.ReLU()] if act else [conv]


@torch.no_grad()
def _pad_block(block: list[nn.Module], c_in: int, c_out: int) -> list[nn.Module]:
    """The same block at widths (c_in, c_out) >= its own, the extra channels inert.

    The paper's parameters fill the leading slices and everything else is zero
    (BatchNorm's scale too): extra output channels are 0, extra input channels meet
    zero weights, so the block computes the same function, the extra parameters'
    gradients are exactly 0 and Adam (with or without weight decay) never moves them.
    Draws no random numbers.
    """
    padded = _block(c_in, c_out, act=len(block) > 1, init=False)
    for old, new in zip(block, padded):
        for name, tensor in new.named_parameters():
            tensor.zero_()[tuple(slice(0, n) for n in getattr(old, name).shape)] = getattr(old, name)
    return padded


class FeatCAE(nn.Module):
    """The paper's 1x1 convolutional autoencoder: C -> (C+2d)/2 -> 2d -> d -> 2d -> (C+2d)/2 -> C.

    The PCA-chosen widths are rarely multiples of 8; the GPU then falls back to slow
    unaligned kernels (and layout conversions) for every convolution. So the inner
    widths are padded up to multiples of `align` with inert channels (`_pad_block`):
    the same function, the same training trajectory and the same random initialisation
    as the unpadded network, which `widths` records.
    """

    def __init__(self, channels: int, latent: int, align: int = ALIGN):
        super().__init__()
        hidden = (channels + 2 * latent) // 2
        self.widths = [channels, hidden, 2 * latent, latent, 2 * latent, hidden, channels]
        padded = [self.widths[0], *(round_up(w, align) for w in self.widths[1:-1]), self.widths[-1]]
        blocks = [_block(self.widths[i], self.widths[i + 1], act=i not in (2, 5)) for i in range(6)]
        blocks = [_pad_block(b, padded[i], padded[i + 1]) for i, b in enumerate(blocks)]
        self.encoder = nn.Sequential(*blocks[0], *blocks[1], *blocks[2])
        self.decoder = nn.Sequential(*blocks[3], *blocks[4], *blocks[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W), every position on its own; channels-last in and out.

        A 1x1 convolution is a matmul over positions: the maps are viewed as rows (free for
        channels-last maps, DFR's regional features) and handed to `rows`.
        """
        b, c, h, w = x.shape
        out = self.rows(x.permute(0, 2, 3, 1).reshape(b * h * w, c))
        return out.view(b, h, w, -1).permute(0, 3, 1, 2)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """(M, C) -> (M, C): the autoencoder on M feature vectors, as matmuls on row-major data.

        The modules stay Conv2d and BatchNorm2d (their state-dict keys and shapes are the
        saved model's), applied as the functions they compute on vectors: a 1x1 convolution
        is `linear` with the (out, in) view of its weight, and batch norm over (N, H, W) is
        batch norm over rows, running statistics and their counter updated alike. As rows,
        the GPU runs every layer as one matmul on the layout it is stored in, with no
        layout conversion around a convolution.
        """
        for m in (*self.encoder, *self.decoder):
            if isinstance(m, nn.Conv2d):
                x = F.linear(x, m.weight.flatten(1), m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                if m.training:
                    m.num_batches_tracked.add_(1)
                x = F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, m.training, m.momentum,
                                 m.eps)
            else:
                x = m(x)
        return x


def pca_dimension(samples: torch.Tensor, variance: float) -> int:
    """Fewest principal components whose explained variance exceeds `variance` (sklearn's
    `PCA(n_components=variance)` rule, which the official code uses: strictly more than).

    `samples` is (n, C): one regional feature vector per row, as in the paper's PCA over
    every position of the training images.
    """
    x = samples.double()
    x = x - x.mean(0)
    eig = torch.linalg.eigvalsh(x.T @ x / max(len(x) - 1, 1)).flip(0).clamp_min(0)
    ratio = eig.cumsum(0) / eig.sum()
    target = torch.tensor(variance, dtype=ratio.dtype, device=ratio.device)
    return min(int(torch.searchsorted(ratio, target, right=True).item()) + 1, len(ratio))


def adam(cae: FeatCAE, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Adam:
    """The autoencoder's optimiser. Where steps are replayed as CUDA graphs it is capturable and
    fused: one kernel updates every parameter (the same rule as the multi-kernel update, one pass
    over 12 M parameters and their moments instead of several)."""
    graphed = TrainingSteps.graphed_on(device)
    return torch.optim.Adam(cae.parameters(), lr=lr, weight_decay=weight_decay, capturable=graphed,
                            fused=graphed or None)


def reconstruction_step(cae: FeatCAE, optim: torch.optim.Optimizer, precision: str, device: torch.device, *,
                        compiled: bool) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """One training step on a batch of regional vectors: (M, C) rows in the storage dtype in, the
    detached fp32 mean squared error out (forward, backward, optimiser step; gradients zeroed by
    the caller, as `TrainingSteps` does). `compiled`: the forward and loss go through
    `torch.compile`, which fuses batch norm, ReLU, the casts and the squared error."""
    def reconstruction_loss(x: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device):
            recon = cae.rows(x)
        return F.mse_loss(recon.float(), x.float())

    if compiled:
        reconstruction_loss = torch.compile(reconstruction_loss, dynamic=False)

    def step(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loss = reconstruction_loss(x)
        loss.backward()
        optim.step()
        return (loss.detach(),)

    return step


class DFR(AnomalyMethod):
    name = "dfr"
    params: Params
    # On a GPU the training step's forward and loss are compiled (`reconstruction_step`): batch norm,
    # ReLU, the casts and the squared error fuse into few kernels instead of separate passes over
    # activations thousands of channels deep. The compiled step is captured in the CUDA graph
    # like the eager one (tests/test_training_steps.py compares both).
    COMPILE_ON_CUDA: bool = True

    def __init__(self, params: Params, *, image_size: int, precision: str = "fp32", resolve_weights: bool = True,
                 latent_dim: int | None = None):
        super().__init__(params, image_size=image_size, precision=precision, resolve_weights=resolve_weights)
        self.regional = RegionalFeatures(self._layer_sizes(), image_size, params.kernel, params.stride)
        self.channels = sum(self.extractor.channels)
        self.latent_dim: int | None = None
        self.cae: FeatCAE | None = None
        if latent_dim is not None:
            self._build_cae(latent_dim)

    def _layer_sizes(self) -> list[int]:
        return [self.image_size // s for s in self.extractor.strides]

    def _build_cae(self, latent: int) -> None:
        self.latent_dim = latent
        self.cae = FeatCAE(self.channels, latent).to(self.device)

    def hyper(self) -> dict:
        return {"latent_dim": self.latent_dim}

    def regional_features(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, C, G, G) channels-last, in the autocast dtype: bf16 features are not widened to fp32."""
        with torch.no_grad():
            return self.regional(self.features(images, keep_dtype=True))

    def regional_rows(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, G*G, C): the regional features as one row per region (a view of the channels-last maps)."""
        x = self.regional_features(images)
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])

    def fit(self, images: np.ndarray, generator: torch.Generator, *, batch_size: int = 16,
            log: EpochLog | None = None) -> FitInfo:
        cfg = self.params
        feats = TrainingFeatures(images, self.regional_rows, storage_dtype(self.precision), batch_size, self.device)
        if cfg.latent_dim == "auto":
            sample = torch.cat(list(feats.chunks(cfg.pca_images)))
            latent = pca_dimension(sample.reshape(-1, sample.shape[-1]), cfg.pca_variance)
        else:
            latent = cfg.latent_dim
        self._build_cae(latent)
        assert self.cae is not None
        cae = self.cae
        optim = adam(cae, cfg.lr, cfg.weight_decay, self.device)
        train = reconstruction_step(cae, optim, self.precision, self.device,
                                    compiled=self.COMPILE_ON_CUDA and self.device.type == "cuda")

        def step(index: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return train(feats[index].flatten(0, 1))

        run = TrainingSteps(step, optim, self.device)
        cae.train()
        loss_value = float("nan")
        for epoch in tqdm(range(cfg.epochs), desc="dfr epochs", unit="epoch", leave=False, mininterval=1.0):
            order = torch.randperm(len(feats), generator=generator).to(self.device)
            total = torch.zeros((), device=self.device)
            for start in range(0, len(order), cfg.batch_size):
                index = order[start: start + cfg.batch_size]
                total += run(index)[0] * len(index)
            loss_value = float(total / len(feats))
            if log:
                log(epoch, {"loss": loss_value})
        cae.eval()
        return FitInfo(epochs=cfg.epochs, final_loss=loss_value,
                       extra={"latent_dim": latent, "feature_channels": self.channels,
                              "features_cached": feats.cached})

    def anomaly_maps(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        assert self.cae is not None, "DFR is not fitted"
        x = self.regional_features(images)
        with autocast(self.precision, self.device):
            recon = self.cae(x)
        # fp32 difference, then one reduction pass: these maps are 3456 channels deep
        err = torch.linalg.vector_norm(recon.float().sub_(x), dim=1, keepdim=True).square_().div_(x.shape[1])
        return F.interpolate(err, size=self.image_size, mode="bilinear", align_corners=True)[:, 0]
