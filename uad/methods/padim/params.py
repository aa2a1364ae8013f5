"""PaDiM's parameters; the defaults are the paper's best setting: WideResNet-50-2 layer1-3, d = 550 of
its 1792 channels, covariance + 0.01 I, the map smoothed with a Gaussian of sigma 4. There is no official
code; where the paper is silent the most-used reimplementation (xiahaifeng1995) decides."""

from __future__ import annotations

import math
from dataclasses import dataclass

from uad.errors import ConfigError
from uad.methods.params import MethodParams, at_most, param, positive

MAX_D = 4096  # one position's inverse covariance is d^2 * 4 bytes: 64 MiB at this bound


@dataclass(frozen=True)
class Params(MethodParams):
    backbone: str = param("wide_resnet50_2", "timm backbone; the paper's best is wide_resnet50_2 (torchvision "
                                             "weights)")
    d: int = param(550, "randomly selected feature channels (seeded by `seed`); the paper: 550 of WRN50's 1792, "
                        "100 of ResNet18's 448; at most the layers' channels")
    epsilon: float = param(0.01, "covariance regularisation: each position's covariance + epsilon * I (the "
                                 "paper's 0.01)")
    blur_sigma: float = param(4.0, "Gaussian smoothing of the upsampled map in pixels (scipy's filter), 0 = off")

    DEFAULT_LAYERS = {
        "resnet": ("layer1", "layer2", "layer3"),
        "efficientnet_lite": ("blocks.1", "blocks.2", "blocks.3"),  # strides 4, 8, 16, like ResNet layer1-3
    }

    def check(self, where: str, image_size: int) -> None:
        """Ranges only: `d` against the layers' channels, and the state's size, are checked when the
        model is built (`PaDiM.__init__`), where the backbone's channels are known."""
        super().check(where, image_size)
        for name in ("epsilon", "blur_sigma"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{where}.{name}: {getattr(self, name)} must be a finite number")
        positive(self, where, ("d", "epsilon"))
        positive(self, where, ("blur_sigma",), allow_zero=True)
        at_most(self, where, {"d": MAX_D, "blur_sigma": 256, "epsilon": 1.0e6})
