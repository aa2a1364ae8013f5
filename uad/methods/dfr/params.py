"""DFR's parameters; the defaults are the official code's (YoungGod/DFR, main.py), i.e. the paper's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from uad.errors import ConfigError
from uad.methods.params import MethodParams, at_most, param, positive

# the 12 ReLU outputs of VGG19 up to relu4_4: 3456 channels (the official code's `seg-quality-l12`)
VGG19_RELUS = tuple(f"features.{i}" for i in (1, 3, 6, 8, 11, 13, 15, 17, 20, 22, 24, 26))


@dataclass(frozen=True)
class Params(MethodParams):
    backbone: str = param("vgg19", "timm backbone; the paper's is vgg19 (torchvision weights)")
    kernel: int = param(4, "regional feature window: every layer resized to the input, averaged over k x k")
    stride: int = param(4, "regional feature stride")
    latent_dim: Union[Literal["auto"], int] = param("auto", "autoencoder latent size; auto = PCA")
    pca_variance: float = param(0.9, "auto latent size: fewest components explaining more than this variance")
    pca_images: int = param(10, "training images the PCA sees")
    epochs: int = param(150, "training epochs")
    batch_size: int = param(4, "training batch")
    lr: float = param(1.0e-4, "Adam learning rate")
    weight_decay: float = param(0.0, "Adam weight decay")

    DEFAULT_LAYERS = {
        "vgg19": VGG19_RELUS,
        # stages 0-4 (strides 2..16, 272 channels for lite0): DFR's multi-scale stack on a CPU budget
        "efficientnet_lite": ("blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4"),
        "resnet": ("layer1", "layer2", "layer3"),
    }

    def grid(self, image_size: int) -> int:
        """Side of the grid of regions (64 for the paper's 256 px, k = s = 4)."""
        pad = (self.kernel - self.stride) // 2
        return (image_size + 2 * pad - self.kernel) // self.stride + 1

    def check(self, where: str, image_size: int) -> None:
        super().check(where, image_size)
        positive(self, where, ("kernel", "stride", "pca_images", "epochs", "batch_size", "lr"))
        positive(self, where, ("weight_decay",), allow_zero=True)
        at_most(self, where, {"epochs": 100_000, "batch_size": 65_536, "pca_images": 100_000})
        if not 0 < self.pca_variance <= 1:
            raise ConfigError(f"{where}.pca_variance: {self.pca_variance} must be in (0, 1]")
        if self.latent_dim != "auto" and self.latent_dim < 1:
            raise ConfigError(f"{where}.latent_dim: {self.latent_dim} must be 'auto' or a positive integer")
        if self.stride > self.kernel:
            raise ConfigError(f"{where}.stride: {self.stride} must not exceed {where}.kernel ({self.kernel})")
        if image_size % self.stride:
            raise ConfigError(f"{where}.stride: image_size {image_size} must be divisible by the stride "
                              f"{self.stride}")
        grid = self.grid(image_size)
        if grid < 2:
            raise ConfigError(f"{where}.kernel, {where}.stride: {self.kernel} and {self.stride} leave a "
                              f"{max(grid, 0)}x{max(grid, 0)} grid of regions at image_size {image_size}; the "
                              f"anomaly map needs at least 2x2")
