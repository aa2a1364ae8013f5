"""PatchCore (Roth, Pemula, Zepeda, Schoelkopf, Brox, Gehler; CVPR 2022, arXiv 2106.08265).

Locally aware patch features: each chosen layer's map is averaged over p x p neighbourhoods
(stride 1, zero padding counted, the paper's p = 3), the deeper maps are upsampled (bilinear,
align_corners=False) to the first layer's grid of G x G patches, and each patch's channels
are reduced by adaptive average pooling: every layer's to `pretrain_dims`, then their
concatenation to `embed_dims` (the official code's two poolings; 1024 and 1024 for WRN50).
The official code pools each layer's unfolded (C, p, p) neighbourhood as one flat vector;
here the neighbourhood is averaged first (the paper's "local smoothing over each individual
feature map") and the channels pooled after. The two agree exactly when C is a multiple of
the pooled width (WRN50's layer3) and nearly otherwise (WRN50's layer2, 512 channels to
1024: after both poolings the official weights a neighbourhood's centre 2/10 and the others
1/10, here all 1/9), and this keeps C, not 9C, values per patch. Both poolings are linear
in the channels: one fixed matrix W of (sum C, embed_dims). When the layers have fewer
channels than embed_dims (lite0's 40 + 80 against 1024), the pooled features span only a
sum C-dimensional subspace, so each is kept in an orthonormal basis of it instead (x R^T,
with W^T = QR): the same distances and inner products in sum C instead of embed_dims
numbers, which the memory bank, the coreset and every distance computation pay for. The
map (`embedding`, W or R^T) is saved with the model.

Memory bank: a greedy coreset (`uad.ops.coreset`) of `coreset_ratio` of all training
patches (the official int(N * ratio), at least 1), chosen in a random Gaussian projection to
`projection_dims` drawn from the run's generator, from a start drawn from it too (the paper's
Algorithm 1; the official sampler starts instead from the mean distance to 10 random points).

Score: a patch's Euclidean distance to its nearest memory item (the paper's s; the official
code's faiss search yields squared distances), one G x G map per image, upsampled (bilinear)
to the input and smoothed with a Gaussian of sigma 4 (scipy's filter), as the paper and its
code do. The image score is the map's maximum (`image_score: max`; the official code takes
the maximum patch score before smoothing), or the paper's eq. 7 (`reweighted`): with m_test*
the patch farthest from the memory bank, m* its nearest item and s* their distance,
s = (1 - exp(s*) / sum_{m in N_b(m*)} exp(||m_test* - m||)) * s*, N_b(m*) the b nearest items
of m* in the bank (m* itself first). `forward` and `score` return the same image scores, and
the export carries them.

Bounds, for N training patches (images x G^2), a bank of k = ratio * N items of D = min(sum C,
embed_dims) numbers, a projection to d dims and B test images of P = G^2 patches:
- fit memory: the training features N * D * 4 bytes (cached on the device when they take at
  most half of its free memory, else recomputed per batch: `TrainingFeatures`), their
  projection N * d * 4, the coreset's N * 2 * 4 and the bank k * D * 4. A full MVTec AD
  category at 256 px (G = 32, about 400 images: N ~ 4e5) with D = 1024: 1.6e9 + 2e8 bytes.
- fit time: the backbone pass, the projection O(N D d) and the greedy selection O(k N d) =
  O(ratio N^2 d) (`uad.ops.coreset`).
- score memory: the bank, the batch's features B * P * D * 4 and one block of distances of at
  most `DISTANCE_BYTES` (`uad.ops.knn.nearest`); time O(B P k D) per batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from uad.errors import ConfigError
from uad.methods.base import AnomalyMethod, EpochLog, FitInfo, Scores
from uad.methods.fitting import TrainingFeatures, batches
from uad.methods.patchcore.params import Params
from uad.ops.coreset import greedy_coreset, random_projection
from uad.ops.knn import nearest
from uad.ops.smoothing import gaussian_blur
from uad.runtime import autocast, storage_dtype


def adaptive_pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_in, n_out) float64 matrix M with x @ M = adaptive_avg_pool1d(x, n_out) for rows x of n_in values."""
    return F.adaptive_avg_pool1d(torch.eye(n_in, dtype=torch.float64)[:, None, :], n_out)[:, 0, :]


def pooling_matrix(channels: list[int], pretrain_dims: int, embed_dims: int) -> torch.Tensor:
    """(sum channels, embed_dims) float64: each layer's channels pooled to `pretrain_dims`, the layers'
    results concatenated and pooled to `embed_dims`, as one linear map W."""
    per_layer = torch.block_diag(*(adaptive_pool_matrix(c, pretrain_dims) for c in channels))
    return per_layer @ adaptive_pool_matrix(len(channels) * pretrain_dims, embed_dims)


def embedding_matrix(channels: list[int], pretrain_dims: int, embed_dims: int) -> torch.Tensor:
    """(sum channels, D) float32 map E of the concatenated channels to patch features, D = min(sum
    channels, embed_dims), with ||x E|| = ||x W|| and x E . y E = x W . y W for all x, y: W itself, or,
    when W is wide, R^T of the reduced QR decomposition W^T = Q R (Q's columns orthonormal)."""
    w = pooling_matrix(channels, pretrain_dims, embed_dims)
    if w.shape[0] >= w.shape[1]:
        return w.float()
    return torch.linalg.qr(w.T).R.T.contiguous().float()


def locally_aware(feats: list[torch.Tensor], patch_size: int, embedding: torch.Tensor) -> torch.Tensor:
    """Patch features (B, h*w, D), rows in raster order, of backbone maps (B, C_j, h_j, w_j): each map
    averaged over patch_size x patch_size cells (zero padding counted), resized (bilinear) to the first
    map's h x w, concatenated and mapped by `embedding` (in the maps' dtype)."""
    h, w = feats[0].shape[-2:]
    maps = [F.avg_pool2d(f, patch_size, 1, patch_size // 2) for f in feats]
    maps = [m if m.shape[-2:] == (h, w) else
            F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False) for m in maps]
    x = torch.cat(maps, 1).permute(0, 2, 3, 1).reshape(-1, h * w, embedding.shape[0])
    return x @ embedding.to(x.dtype)


def reweighted_score(patches: torch.Tensor, distances: torch.Tensor, index: torch.Tensor, memory: torch.Tensor,
                     neighbors: int) -> torch.Tensor:
    """The paper's eq. 7 per image: (B,) from patch features (B, P, D), their distances (B, P) to the
    nearest memory item and that item's index (B, P), in the bank `memory` (M, D)."""
    s_star, where = distances.max(1)
    dims = patches.shape[2]
    m_test = patches.gather(1, where.view(-1, 1, 1).expand(-1, 1, dims))[:, 0]  # (B, D)
    m_star = memory[index.gather(1, where.view(-1, 1))[:, 0]]  # (B, D)
    support = nearest(m_star, memory, neighbors)[1]  # (B, b), m* itself first
    d = (m_test[:, None, :] - memory[support]).square().sum(2).sqrt()
    return (1 - torch.exp(s_star - torch.logsumexp(d, 1))) * s_star


class PatchCore(AnomalyMethod):
    name = "patchcore"
    params: Params

    def __init__(self, params: Params, *, image_size: int, precision: str = "fp32", resolve_weights: bool = True,
                 memory_size: int = 0):
        super().__init__(params, image_size=image_size, precision=precision, resolve_weights=resolve_weights)
        # saved with the model: a QR basis need not come out the same on another machine's LAPACK
        self.register_buffer("embedding", embedding_matrix(self.extractor.channels, params.pretrain_dims,
                                                           params.embed_dims))
        self.register_buffer("memory", torch.zeros(memory_size, self.embedding.shape[1]))
        self._check_neighbors(memory_size)
        # fp32 scoring on a GPU: the distances on tensor cores at fp32's accuracy, as CFA's
        self.split_tf32 = precision == "fp32"

    def hyper(self) -> dict:
        return {"memory_size": len(self.memory)}

    def _check_neighbors(self, size: int) -> None:
        c = self.params
        if size and c.image_score == "reweighted" and c.num_neighbors > size:
            raise ConfigError(f"patchcore.num_neighbors: {c.num_neighbors} nearest items re-weight the image score, "
                              f"but the memory bank holds {size}; lower it, raise patchcore.coreset_ratio or train "
                              f"on more images")

    def embed(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Locally aware patch features (B, G*G, D) of a uint8 NHWC batch, in the autocast dtype."""
        with torch.no_grad(), autocast(self.precision, self.device):
            return locally_aware(self.features(images, keep_dtype=True), self.params.patch_size, self.embedding)

    def _scores(self, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps (B, H, W), image scores (B,)): the whole scoring path, traceable."""
        if len(self.memory) == 0:
            raise RuntimeError("PatchCore is not fitted: its memory bank is empty")
        feats = self.features(images, keep_dtype=True)
        h, w = feats[0].shape[-2:]
        with autocast(self.precision, self.device):
            patches = locally_aware(feats, self.params.patch_size, self.embedding).float()
        split = self.split_tf32 and self.device.type == "cuda"
        values, index = nearest(patches.view(-1, patches.shape[2]), self.memory, 1, split)
        distances = values.clamp_min(0).sqrt().view(-1, patches.shape[1])
        maps = F.interpolate(distances.view(-1, 1, h, w), size=self.image_size, mode="bilinear",
                             align_corners=False)
        maps = gaussian_blur(maps[:, 0], self.params.blur_sigma)
        if self.params.image_score == "max":
            return maps, maps.flatten(1).amax(1)
        return maps, reweighted_score(patches, distances, index.view(-1, patches.shape[1]), self.memory,
                                      self.params.num_neighbors)

    def anomaly_maps(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self._scores(images)[0]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._scores(images)

    @torch.no_grad()
    def score(self, images: np.ndarray, batch_size: int, desc: str | None = None) -> Scores:
        """Anomaly maps and the method's image scores (`image_score`), batched."""
        self.eval()
        parts = [self._scores(b) for b in batches(images, batch_size, desc)]
        return Scores(torch.cat([m for m, _ in parts]), torch.cat([s for _, s in parts]))

    @torch.no_grad()
    def fit(self, images: np.ndarray, generator: torch.Generator, *, batch_size: int = 16,
            log: EpochLog | None = None) -> FitInfo:
        """Fill the memory bank: every training patch's feature, then the greedy coreset of them."""
        c = self.params
        feats = TrainingFeatures(images, self.embed, storage_dtype(self.precision), batch_size, self.device)
        per_image, dims = next(feats.chunks(1)).shape[1:]
        total = len(feats) * per_image
        size = max(1, int(total * c.coreset_ratio))
        self._check_neighbors(size)
        if size == total:
            chosen = torch.arange(total, device=self.device)
        else:
            projection = (random_projection(dims, c.projection_dims, generator).to(self.device)
                          if c.projection_dims < dims else None)
            points = torch.cat([self._project(chunk, projection) for chunk in feats.chunks()])
            start = int(torch.randint(total, (1,), generator=generator))
            chosen = greedy_coreset(points, size, start)
            del points
        self.memory = self._gather(feats, chosen)
        return FitInfo(extra={"memory_size": size, "training_patches": total, "feature_dims": dims,
                              "projection_dims": c.projection_dims if c.projection_dims < dims else None,
                              "features_cached": feats.cached})

    @staticmethod
    def _project(chunk: torch.Tensor, projection: torch.Tensor | None) -> torch.Tensor:
        rows = chunk.reshape(-1, chunk.shape[-1]).float()
        return rows if projection is None else rows @ projection

    def _gather(self, feats: TrainingFeatures, chosen: torch.Tensor) -> torch.Tensor:
        """The chosen patches' features (k, D) float32, in the coreset's order, a batch of images at a time."""
        memory = torch.empty(len(chosen), self.memory.shape[1], device=self.device)
        start = 0
        for chunk in feats.chunks():
            rows = chunk.reshape(-1, chunk.shape[-1])
            inside = ((chosen >= start) & (chosen < start + len(rows))).nonzero()[:, 0]
            memory[inside] = rows[chosen[inside] - start].float()
            start += len(rows)
        return memory
