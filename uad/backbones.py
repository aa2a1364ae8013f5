"""Frozen backbones that return the outputs of named layers.

The networks come from `uad.architectures` (timm's layouts in plain PyTorch, so a
stage does not import a model library). Layers are module paths of the model (`layer2`, `features.26`,
`blocks.3.1`). The extractor keeps only the part of the network up to the last
requested layer (a "trunk" of the model's top-level modules, nested
`nn.Sequential`s flattened where a layer lies inside) and captures the
requested outputs with forward hooks: nothing after the deepest layer runs.

`export="official_resnet"` captures what the official CFA code exports for a
ResNet stage instead of its output: leaky ReLU (slope 0.01) of the last block's
pre-activation residual sum. The computation inside the network is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uad import architectures, zoo
from uad.errors import ConfigError, shorten
from uad.weights import fingerprint, load_weights


def _contains(path: str, layer: str) -> bool:
    return layer == path or layer.startswith(path + ".")


def _trunk_steps(module: nn.Module, layers: Sequence[str], prefix: str = "") -> list[tuple[str, nn.Module]]:
    """(path, module) steps whose sequential composition is the forward pass up to the layers."""
    steps = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        inner = [lay for lay in layers if lay.startswith(path + ".")]
        if inner and type(child) is nn.Sequential:
            steps += _trunk_steps(child, layers, path + ".")
        else:
            steps.append((path, child))
    return steps


class FeatureExtractor(nn.Module):
    """Frozen backbone; `forward(images in [0, 1])` returns one map per requested layer."""

    def __init__(self, backbone: str, layers: Sequence[str], *, weights: str = "", pretrained: bool = True,
                 param: str = "layers", export: str = "output"):
        """`param` names the parameter the layers came from, for the error about an unknown one;
        `export` is "output" or "official_resnet" (see the module's docstring)."""
        super().__init__()
        if backbone not in zoo.BACKBONES:
            raise ConfigError(f"unknown backbone {backbone!r}; choose one of {sorted(zoo.BACKBONES)}")
        info = zoo.BACKBONES[backbone]
        with torch.random.fork_rng(devices=[]):  # the backbone's initialisation leaves the seeded RNG alone
            model = architectures.build(info.arch)
        names = dict(model.named_modules())
        unknown = [lay for lay in layers if lay not in names]
        if unknown:
            top = [n for n, _ in model.named_children()]
            raise ConfigError(f"{param}: {backbone} has no layer {shorten(unknown[0])}; layers are module paths "
                              f"such as {top}")
        steps = _trunk_steps(model, layers)
        last = max(i for i, (path, _) in enumerate(steps) if any(_contains(path, lay) for lay in layers))
        steps = steps[: last + 1]
        kept = [path for path, _ in steps]
        required = [k for k in model.state_dict() if any(k.startswith(p + ".") for p in kept)]
        self.weights_source = load_weights(model, info, weights=weights, pretrained=pretrained, required=required)
        self.steps = nn.ModuleList(m for _, m in steps)
        self.step_paths = kept
        self.layers = list(layers)
        self.backbone = backbone
        # the input normalisation is part of a saved model (its state), like the weights
        self.register_buffer("mean", torch.tensor(info.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(info.std).view(1, 3, 1, 1))
        for m in self.modules():  # captured outputs must not be overwritten by in-place activations
            if hasattr(m, "inplace"):
                m.inplace = False
        self._captured: dict[str, torch.Tensor] = {}
        for lay in self.layers:
            if export == "official_resnet":
                _last_activation(names[lay], lay, param).register_forward_hook(self._hook(lay, pre_activation=True))
            else:
                names[lay].register_forward_hook(self._hook(lay))
        self.export = export
        self.requires_grad_(False)
        self.eval()
        self.weights_fingerprint = self.compute_fingerprint()
        self.channels, self.strides = self._probe()

    def compute_fingerprint(self) -> str:
        """Short SHA-256 of the trunk's weights (parameters and batch-norm statistics)."""
        return fingerprint(self.steps.state_dict().values())

    def _hook(self, layer: str, pre_activation: bool = False):
        def hook(_module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self._captured[layer] = F.leaky_relu(inputs[0], 0.01) if pre_activation else output
        return hook

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Always stays in eval mode: batch-norm statistics are part of the frozen backbone."""
        return super().train(False)

    @torch.no_grad()
    def _probe(self) -> tuple[list[int], list[int]]:
        size = 64
        feats = self(torch.zeros(1, 3, size, size))
        return [f.shape[1] for f in feats], [size // f.shape[-1] for f in feats]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images - self.mean) / self.std
        self._captured.clear()
        for step in self.steps:
            x = step(x)
        feats = [self._captured[lay] for lay in self.layers]
        self._captured.clear()
        return feats


def _last_activation(stage: nn.Module, layer: str, param: str) -> nn.Module:
    """The final ReLU of a ResNet stage's last block (act3 of a Bottleneck, act2 of a BasicBlock)."""
    blocks = list(stage.children()) if isinstance(stage, nn.Sequential) else []
    act = getattr(blocks[-1], "act3", None) or getattr(blocks[-1], "act2", None) if blocks else None
    if act is None:
        raise ConfigError(f"{param}: {layer!r} is not a ResNet stage of residual blocks; the official export "
                          f"needs one (use feature_export: timm)")
    return act


def to_input(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NHWC batch (numpy or tensor) -> float NCHW in [0, 1] on `device`, channels-last.

    A numpy batch is copied (mmaps are read-only) into ordinary memory, not a page-locked
    buffer: allocating a fresh pinned buffer per batch costs more than the overlap it buys.
    """
    if images.dtype not in (np.uint8, torch.uint8):
        raise TypeError(f"images must be uint8 in [0, 255], got {images.dtype}")
    t = torch.from_numpy(np.array(images)) if isinstance(images, np.ndarray) else images
    t = t.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    return t.contiguous(memory_format=torch.channels_last)
