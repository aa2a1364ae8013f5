"""PaDiM: a Patch Distribution Modeling framework (Defard, Setkov, Loesch, Audigier; ICPR 2021, arXiv 2011.08785).

Embedding: the chosen layers' maps upsampled (nearest) to the first layer's grid of
G x G positions and concatenated, as the reimplementations do (xiahaifeng1995's
unfold/fold concatenation is exactly nearest upsampling by the integer stride ratio);
then d channels of the C, drawn without replacement from the run's generator once per
fit and stored with the model (`index`, sorted: the distance does not depend on order).

Fit: per position p, the mean mu_p and the unbiased covariance
Sigma_p = sum (x - mu_p)(x - mu_p)^T / (N - 1) + epsilon I (the paper's 0.01) of the N
training embeddings, accumulated in one pass over the images by Chan's pairwise update
(batch means and centred scatters merged with a rank-one correction), so that the
float32 accumulator never subtracts two large sums: features far from zero lose no
digits. At the end each Sigma_p is factorised in float64 (Cholesky, Sigma_p = L L^T),
a batch of positions at a time, and W_p = L^-1 is stored: Sigma_p^-1 = W_p^T W_p.

Score: M(x_p) = sqrt((x_p - mu_p)^T Sigma_p^-1 (x_p - mu_p)) = ||W_p (x_p - mu_p)||, one
batched matmul over positions (G^2 products of (B, d) by (d, d)). The sum of squares
keeps float32's rounding error near eps * sqrt(cond Sigma_p), where the quadratic form
with an explicit inverse would have eps * cond Sigma_p; the covariance's small
eigenvalues (down to epsilon when N < d) decide the largest distances. The G x G map
is upsampled to the input (bilinear, align_corners=False) and smoothed with a Gaussian
of sigma 4 (scipy's filter); the image score is its maximum. Statistics and distances
run as exact fp32 matmuls whatever `precision` says: TF32 or bf16 would perturb exactly
the small eigen-directions that the inverse amplifies.

Memory, for P = G^2 positions and d channels (G = input / first layer's stride):
- the model: the factors W, P * d^2 * 4 bytes (float32: float64 would double it), plus
  the means P * d * 4. WRN50 at 256 px (G = 64, d = 550): 4096 * 550^2 * 4 = 4.96e9 bytes;
  lite0 at 128 px (G = 32, d = 100): 1024 * 100^2 * 4 = 4.1e7 bytes. (W is lower triangular;
  packing it would halve this at the cost of the plain batched matmul.)
- fit: the same buffer first accumulates the scatter matrices and is then turned into
  W in place, `INVERT_BYTES` of float64 work at a time, so the peak is P * d^2 * 4 bytes
  plus that workspace and one batch's features (B * C * P * 4 bytes for the upsampled
  concatenation of C channels).
- score: the factors plus, per batch, the concatenation and two (P, B, d) float32 tensors.
Models whose factors would exceed `MAX_STATE_BYTES` are refused when built (ConfigError
naming padim.d), before any work: lower d or image_size. A GPU must hold the factors
(5 GB for the paper's setting); on a CPU they are ordinary memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from uad.errors import ConfigError, UadError
from uad.methods.base import AnomalyMethod, EpochLog, FitInfo
from uad.methods.fitting import batches
from uad.methods.padim.params import Params
from uad.ops.smoothing import gaussian_blur
from uad.runtime import backend_flag

MAX_STATE_BYTES = 32 * 2**30  # the factors of one model; the paper's setting needs 4.6 GiB
INVERT_BYTES = 2**28  # float64 workspace per batch of positions when the covariances are factorised
ROWS = 16  # images per block of the scoring matmul (see `mahalanobis`)


@contextlib.contextmanager
def exact_matmul(device: torch.device) -> Iterator[None]:
    """fp32 matmuls at fp32's accuracy inside the block: no autocast, no TF32."""
    with torch.autocast(device_type=device.type, enabled=False):
        if device.type == "cuda":
            with backend_flag(torch.backends.cuda.matmul, "allow_tf32", False):
                yield
        else:
            yield


class GaussianMoments:
    """Per-position mean and scatter matrix of (P, B, d) batches, merged by Chan's pairwise update.

    The mean is float64 (P * d, small); the scatter sum (x - mean)(x - mean)^T is float32
    (P * d^2, the model's largest tensor) and is updated in place by one batched matmul per batch.
    """

    def __init__(self, positions: int, d: int, device: torch.device):
        self.count = 0
        self.mean = torch.zeros(positions, d, dtype=torch.float64, device=device)
        self.scatter = torch.zeros(positions, d, d, device=device)

    def update(self, x: torch.Tensor) -> None:
        """Add a batch x of shape (P, B, d): M2 += centred^T centred + delta delta^T * n_a n_b / n."""
        b = x.shape[1]
        total = self.count + b
        with exact_matmul(x.device):
            batch_mean = x.sum(1, dtype=torch.float64) / b
            delta = batch_mean - self.mean
            # the rank-one correction is one more row of the same matmul: one pass over the scatter
            rows = torch.cat([x - batch_mean.float()[:, None],
                              (delta * (self.count * b / total) ** 0.5).float()[:, None]], 1)
            self.scatter.baddbmm_(rows.transpose(1, 2), rows)
        self.mean += delta * (b / total)
        self.count = total

    def whitening(self, epsilon: float) -> torch.Tensor:
        """W with W^T W = (scatter / (N - 1) + epsilon I)^-1 per position: the inverse Cholesky factor,
        computed in float64 a batch of positions at a time and written over the scatter (float32)."""
        if self.count < 2:
            raise UadError(f"padim: a covariance needs at least 2 training images; got {self.count}")
        p, d, _ = self.scatter.shape
        eye = torch.eye(d, dtype=torch.float64, device=self.scatter.device)
        step = max(1, INVERT_BYTES // (3 * d * d * 8))  # covariance, factor and inverse in float64
        for s in range(0, p, step):
            cov = self.scatter[s: s + step].double().div_(self.count - 1).add_(eye, alpha=epsilon)
            chol, info = torch.linalg.cholesky_ex(cov)
            if bool(info.any()):
                raise UadError(f"padim.epsilon: {epsilon} leaves a covariance that is not positive definite "
                               f"(features of very large magnitude); raise it")
            self.scatter[s: s + step] = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
        return self.scatter


def mahalanobis(x: torch.Tensor, mean: torch.Tensor, whiten: torch.Tensor) -> torch.Tensor:
    """(P, B) distances of embeddings x (P, B, d) to per-position Gaussians: ||W_p (x - mean_p)||.

    The batch is zero-padded to a multiple of `ROWS` images: BLAS picks its kernel, and with it
    the order of the sums, by the row count, and a handful of rows takes another path than a
    full block. Padded, an image's distances are the same bits in any batch (scoring is
    reproducible across batch sizes); the padding costs nothing at the usual batch of 16 and
    little below it, where reading the factors, not the arithmetic, bounds the time.
    """
    b = x.shape[1]
    x = F.pad(x - mean[:, None], (0, 0, 0, (-b) % ROWS))
    with exact_matmul(x.device):
        y = torch.matmul(x, whiten.transpose(1, 2))
    # the first b columns by a gather: a slice would make torch.export guard on the padded size
    return y.square().sum(-1).sqrt().index_select(1, torch.arange(b, device=x.device))


class PaDiM(AnomalyMethod):
    name = "padim"
    params: Params

    def __init__(self, params: Params, *, image_size: int, precision: str = "fp32", resolve_weights: bool = True,
                 fitted: bool = False):
        """`fitted`: a saved model is loaded next, so the statistics get their full (uninitialised) size."""
        super().__init__(params, image_size=image_size, precision=precision, resolve_weights=resolve_weights)
        d = params.d
        self.channels = sum(self.extractor.channels)
        if d > self.channels:
            raise ConfigError(f"padim.d: {d} is more than the {self.channels} channels of {params.backbone}'s "
                              f"layers {list(self.extractor.layers)}; use at most {self.channels}")
        self.grid = -(-image_size // self.extractor.strides[0])
        self.positions = self.grid * self.grid
        state = self.positions * d * d * 4
        if state > MAX_STATE_BYTES:
            raise ConfigError(f"padim.d: {d} channels at {self.grid}x{self.grid} positions (image_size {image_size}) "
                              f"need {state / 2**30:.1f} GiB of inverse covariances (positions * d^2 * 4 bytes), "
                              f"more than the supported {MAX_STATE_BYTES / 2**30:.0f} GiB; lower padim.d or "
                              f"image_size")
        self.fitted = fitted
        n = self.positions if fitted else 0
        self.register_buffer("index", torch.zeros(d if fitted else 0, dtype=torch.long))  # selected channels
        self.register_buffer("mean", torch.zeros(n, d))  # (P, d)
        self.register_buffer("whiten", torch.empty(n, d, d))  # (P, d, d): W_p^T W_p = Sigma_p^-1

    def hyper(self) -> dict:
        return {"fitted": self.fitted}

    def concatenated(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, C, G, G) float32: every layer's map upsampled (nearest) to the grid, concatenated."""
        g = self.grid
        return torch.cat([f if f.shape[-2:] == (g, g) else F.interpolate(f, size=(g, g), mode="nearest")
                          for f in self.features(images)], 1)

    def embedding(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(P, B, d) float32: the selected channels of each position, positions first (the batched
        matmuls' batch dimension)."""
        x = self.concatenated(images).index_select(1, self.index)
        return x.permute(2, 3, 0, 1).reshape(self.positions, -1, self.params.d)

    @torch.no_grad()
    def fit(self, images: np.ndarray, generator: torch.Generator, *, batch_size: int = 16,
            log: EpochLog | None = None) -> FitInfo:
        d = self.params.d
        self.index = torch.randperm(self.channels, generator=generator)[:d].sort().values.to(self.device)
        moments = GaussianMoments(self.positions, d, self.device)
        for batch in batches(images, batch_size, desc="padim fit"):
            moments.update(self.embedding(batch))
        self.mean = moments.mean.float()
        self.whiten = moments.whitening(self.params.epsilon)
        self.fitted = True
        return FitInfo(extra={"d": d, "feature_channels": self.channels, "positions": self.positions,
                              "images": moments.count, "state_bytes": self.whiten.numel() * 4})

    def anomaly_maps(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        assert self.fitted, "PaDiM is not fitted"
        dist = mahalanobis(self.embedding(images), self.mean, self.whiten)  # (P, B)
        maps = dist.T.reshape(-1, 1, self.grid, self.grid)
        maps = F.interpolate(maps, size=self.image_size, mode="bilinear", align_corners=False)
        return gaussian_blur(maps[:, 0], self.params.blur_sigma)
