"""CFA's parameters; the defaults are the official code's (sungwool/CFA_for_anomaly_localization), the
paper's "R" setting: WideResNet-50-2 layer1-3, learned radius, 30 epochs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from uad import zoo
from uad.errors import ConfigError
from uad.methods.params import MethodParams, at_most, param, positive


@dataclass(frozen=True)
class Params(MethodParams):
    backbone: str = param("wide_resnet50_2", "timm backbone; the paper's is wide_resnet50_2 (torchvision weights)")
    feature_export: Literal["official", "timm"] = param(
        "official", "official = the official code's ResNet stage outputs (leaky ReLU of the pre-activation "
                    "sums); timm = the stages' outputs (what anomalib uses; the only choice for other backbones)")
    gamma_d: int = param(1, "descriptor channels = input channels / gamma_d")
    gamma_c: int = param(1, "memory bank = H*W / gamma_c items (k-means when > 1)")
    k: int = param(3, "nearest memory items attracted, and used for scoring")
    j: int = param(3, "next-nearest items repelled (hard negatives)")
    alpha: float = param(0.1, "repulsion margin on squared distances")
    nu: float = param(1.0e-3, "loss scale 1/nu")
    radius: float = param(1.0e-5, "initial hypersphere radius r")
    learn_radius: bool = param(True, "official code: r is optimised (repulsion active); anomalib keeps it fixed")
    epochs: int = param(30, "training epochs")
    batch_size: int = param(4, "training batch (the last incomplete batch is dropped, as officially)")
    lr: float = param(1.0e-3, "AdamW learning rate")
    weight_decay: float = param(5.0e-4, "AdamW weight decay")
    amsgrad: bool = param(True, "AdamW's amsgrad variant")
    blur_sigma: float = param(4.0, "Gaussian smoothing of the upsampled map in pixels (scipy's filter), 0 = off")
    kmeans_iters: int = param(3000, "k-means iterations when gamma_c > 1 (the official code's max_iter)")

    DEFAULT_LAYERS = {
        "resnet": ("layer1", "layer2", "layer3"),
        "efficientnet_lite": ("blocks.1", "blocks.2", "blocks.3"),  # strides 4, 8, 16, like ResNet layer1-3
    }

    def check(self, where: str, image_size: int) -> None:
        super().check(where, image_size)
        positive(self, where, ("gamma_d", "gamma_c", "k", "epochs", "batch_size", "kmeans_iters", "lr", "nu",
                               "radius"))
        positive(self, where, ("j", "alpha", "weight_decay", "blur_sigma"), allow_zero=True)
        at_most(self, where, {"epochs": 100_000, "batch_size": 65_536, "kmeans_iters": 100_000, "k": 1024,
                              "j": 1024, "blur_sigma": 256})
        if self.feature_export == "official" and zoo.BACKBONES[self.backbone].family != "resnet":
            raise ConfigError(f"{where}.feature_export: 'official' is the official code's export of ResNet "
                              f"stages; {self.backbone} needs 'timm'")
