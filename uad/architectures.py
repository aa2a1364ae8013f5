"""The zoo's backbone architectures in plain PyTorch, module for module as timm builds them.

A stage that scores or trains needs a backbone's layers, not a model library:
importing timm pulls in torchvision and torch._dynamo and costs a stage process
more than PyTorch itself. These definitions carry timm's module paths and
state-dict keys (in timm's order, so weight fingerprints and layer names are
unchanged) and compute bit for bit what timm's models compute up to their last
feature map; tests hold them to timm for every backbone in `uad.zoo`. Classifier
heads are left out: no method reads them.

Covered: TF-ported EfficientNet-Lite (TensorFlow "same" padding, batch-norm
eps 1e-3, ReLU6), torchvision-style ResNets (basic and bottleneck blocks, wide
variants) and VGG without batch norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class Conv2dSame(nn.Conv2d):
    """TensorFlow "same" convolution: pads asymmetrically (more at the end) from the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride),
                                 reversed(self.dilation)):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _same_conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """timm's `padding="same"`: static symmetric padding where it exists (stride 1), else dynamic."""
    if stride == 1:
        return nn.Conv2d(cin, cout, k, 1, (k - 1) // 2, groups=groups, bias=False)
    return Conv2dSame(cin, cout, k, stride, 0, groups=groups, bias=False)


class BatchNormAct2d(nn.BatchNorm2d):
    """Batch norm followed by an activation, as one module (timm's layout: `drop` and `act` inside)."""

    def __init__(self, channels: int, eps: float, act: bool):
        super().__init__(channels, eps=eps)
        self.drop = nn.Identity()
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


_TF_EPS = 1e-3


class DepthwiseSeparableConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int):
        super().__init__()
        self.has_skip = stride == 1 and cin == cout
        self.conv_dw = _same_conv(cin, cin, k, stride, groups=cin)
        self.bn1 = BatchNormAct2d(cin, _TF_EPS, act=True)
        self.aa = nn.Identity()
        self.se = nn.Identity()
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = BatchNormAct2d(cout, _TF_EPS, act=False)
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.se(self.aa(self.bn1(self.conv_dw(x))))))
        return self.drop_path(y) + x if self.has_skip else y


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = _divisible(cin * expand)
        self.has_skip = stride == 1 and cin == cout
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = BatchNormAct2d(mid, _TF_EPS, act=True)
        self.conv_dw = _same_conv(mid, mid, k, stride, groups=mid)
        self.bn2 = BatchNormAct2d(mid, _TF_EPS, act=True)
        self.aa = nn.Identity()
        self.se = nn.Identity()
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = BatchNormAct2d(cout, _TF_EPS, act=False)
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        y = self.bn3(self.conv_pwl(self.se(self.aa(y))))
        return self.drop_path(y) + x if self.has_skip else y


def _divisible(v: float, divisor: int = 8) -> int:
    """Channel rounding of EfficientNet: nearest multiple of 8, never more than 10 % below `v`."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


# (block kind, repeats, kernel, stride, expansion, channels) of EfficientNet-Lite's seven stages
_LITE_STAGES = [("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40), ("ir", 3, 3, 2, 6, 80),
                ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192), ("ir", 1, 3, 1, 6, 320)]


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite feature trunk: fixed 32-channel stem and 1280-channel head, ReLU6, no SE."""

    def __init__(self, width: float, depth: float):
        super().__init__()
        self.conv_stem = _same_conv(3, 32, 3, 2)
        self.bn1 = BatchNormAct2d(32, _TF_EPS, act=True)
        stages, cin = [], 32
        for i, (kind, repeats, k, stride, expand, channels) in enumerate(_LITE_STAGES):
            cout = _divisible(channels * width)
            if 0 < i < len(_LITE_STAGES) - 1:  # the first and last stages keep their depth
                repeats = math.ceil(repeats * depth)
            blocks = []
            for b in range(repeats):
                s = stride if b == 0 else 1
                blocks.append(DepthwiseSeparableConv(cin, cout, k, s) if kind == "ds"
                              else InvertedResidual(cin, cout, k, s, expand))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self.bn2 = BatchNormAct2d(1280, _TF_EPS, act=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, base_width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.drop_block = nn.Identity()
        self.act1 = nn.ReLU(inplace=True)
        self.aa = nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        y = self.bn2(self.conv2(y))
        y += x if self.downsample is None else self.downsample(x)
        return self.act2(y)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, base_width: int):
        super().__init__()
        width = int(planes * base_width / 64)
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.drop_block = nn.Identity()
        self.act2 = nn.ReLU(inplace=True)
        self.aa = nn.Identity()
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(y)))))
        y = self.bn3(self.conv3(y))
        y += x if self.downsample is None else self.downsample(x)
        return self.act3(y)


class ResNet(nn.Module):
    """ResNet feature trunk (stem, max-pool, four stages), torchvision's layout as timm names it."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: list[int], base_width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, depth in enumerate(depths):
            planes = 64 * 2 ** i
            blocks = []
            for b in range(depth):
                blocks.append(block(cin, planes, 2 if b == 0 and i > 0 else 1, base_width))
                cin = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


class VGG(nn.Module):
    """VGG convolutional features without batch norm (`features.<i>` as torchvision numbers them)."""

    def __init__(self, config: list[int | str]):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]

ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "tf_efficientnet_lite0": lambda: EfficientNetLite(1.0, 1.0),
    "tf_efficientnet_lite1": lambda: EfficientNetLite(1.0, 1.1),
    "tf_efficientnet_lite2": lambda: EfficientNetLite(1.1, 1.2),
    "vgg19": lambda: VGG(_VGG19),
    "wide_resnet50_2": lambda: ResNet(Bottleneck, [3, 4, 6, 3], base_width=128),
    "resnet18": lambda: ResNet(BasicBlock, [2, 2, 2, 2]),
}


def build(arch: str) -> nn.Module:
    """A freshly initialised feature trunk of `arch` (a key of `ARCHITECTURES`)."""
    return ARCHITECTURES[arch]()
