"""PatchCore's parameters; the defaults are the paper's (and its official code's, amazon-science/
patchcore-inspection): WideResNet-50-2 layer2+3, 3x3 neighbourhoods, 1024-d patch features, a 10 %
greedy coreset chosen in a 128-d random projection, the map smoothed with a Gaussian of sigma 4.

The image score is where the paper and its code differ: the paper re-weights the largest patch
distance (its eq. 7); the official code, whose numbers the paper reports, takes the plain maximum.
`image_score` chooses; the default is the maximum (of the smoothed map, this project's image score
for every method)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from uad.errors import ConfigError
from uad.methods.params import MethodParams, at_most, param, positive

MAX_DIMS = 16_384  # a patch feature's width: the memory bank is (items x dims) float32
MAX_PATCH = 15  # the aggregation neighbourhood, in feature-map cells


@dataclass(frozen=True)
class Params(MethodParams):
    backbone: str = param("wide_resnet50_2", "timm backbone; the paper's is wide_resnet50_2 (torchvision weights)")
    patch_size: int = param(3, "neighbourhood p of the local aggregation: each layer's map averaged over p x p "
                               "cells (odd)")
    pretrain_dims: int = param(1024, "each layer's channels adaptively average-pooled to this width (the official "
                                     "pretrain_embed_dimension)")
    embed_dims: int = param(1024, "the layers' pooled features concatenated and pooled to this width: the patch "
                                  "feature (the official target_embed_dimension)")
    coreset_ratio: float = param(0.1, "memory bank = this fraction of the training patches (at least 1), chosen by "
                                      "greedy coreset; 1 = keep all")
    projection_dims: int = param(128, "the coreset's distances are those of a random Gaussian projection to this "
                                      "many dims (seeded by `seed`); >= embed_dims = no projection")
    image_score: Literal["max", "reweighted"] = param(
        "max", "max = maximum of the smoothed map (the official code's maximum patch score, after smoothing); "
               "reweighted = the paper's eq. 7 on the largest patch distance")
    num_neighbors: int = param(9, "b of eq. 7: the memory items near the nearest item m* that re-weight the image "
                                  "score (reweighted only; the paper gives no b, 9 is anomalib's)")
    blur_sigma: float = param(4.0, "Gaussian smoothing of the upsampled map in pixels (scipy's filter), 0 = off")

    DEFAULT_LAYERS = {
        "resnet": ("layer2", "layer3"),
        "efficientnet_lite": ("blocks.2", "blocks.3"),  # strides 8 and 16, like ResNet layer2-3
    }

    def check(self, where: str, image_size: int) -> None:
        """Ranges only: the memory bank against `num_neighbors` is checked when it is built (`fit`)."""
        super().check(where, image_size)
        for name in ("coreset_ratio", "blur_sigma"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{where}.{name}: {getattr(self, name)} must be a finite number")
        positive(self, where, ("patch_size", "pretrain_dims", "embed_dims", "coreset_ratio", "projection_dims",
                               "num_neighbors"))
        positive(self, where, ("blur_sigma",), allow_zero=True)
        at_most(self, where, {"patch_size": MAX_PATCH, "pretrain_dims": MAX_DIMS, "embed_dims": MAX_DIMS,
                              "coreset_ratio": 1, "projection_dims": MAX_DIMS, "num_neighbors": 1024,
                              "blur_sigma": 256})
        if self.patch_size % 2 == 0:
            raise ConfigError(f"{where}.patch_size: {self.patch_size} must be odd (the neighbourhood is centred "
                              f"on its patch)")
